"""python -m gan_dist.evaluate: a finished checkpoint scored like the in-training evaluation, with its protocol."""

import json

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from conftest import run_here
from test_metrics import PoolFeatures

from gan_dist.evaluation.evaluate import parse_args, run
from gan_dist.evaluation.metrics import evaluate
from gan_dist.evaluation.sample import load_generator
from gan_dist.training.data import load_into_memory
from gan_dist.training.manifest import load_manifest


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, digits16):
    out = tmp_path_factory.mktemp("evaluate") / "run"
    r = run_here("gan_dist.train", "--cpu", "--data", digits16, "--img_size", 16, "--channels", 1,
                 "--batch_size", 32, "--n_cpu", 0, "--output_dir", out, "--report_to", "none",
                 "--max_train_steps", 4, "--checkpointing_steps", 4, "--ema_kimg", 0.1)
    assert r.returncode == 0, r.stderr[-2000:]
    return out / "checkpoints" / "checkpoint-4"


@pytest.fixture
def accelerator(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # real-feature cache of this test only
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)


def test_same_figures_as_the_in_training_evaluation(checkpoint, digits16, accelerator):
    args = parse_args(["--checkpoint", str(checkpoint.parent.parent), "--data", str(digits16), "--cpu",
                       "--num_gen", "300", "--real_samples", "300", "--n_cpu", "0"])
    result = run(args, accelerator, PoolFeatures())
    # what the trainer does at --eval_steps with --fid_samples 300: G_ema, reals capped at the sample count
    G_ema, _ = load_generator(checkpoint, ema=True)
    _, urls = load_manifest(digits16)
    in_training = evaluate(accelerator, G_ema, PoolFeatures(), load_into_memory(urls)[0], digits16, 100,
                           num_gen=300, seed=0)
    for key in ("fid300", "kid300", "kid300_std", "eval_num_gen", "eval_num_real"):
        assert result[key] == pytest.approx(in_training[key], rel=1e-9), key
    assert result["fid300"] > 0 and result["generator"] == "G_ema" and result["step"] == 4
    protocol = result["protocol"]
    assert protocol["tool"].startswith("torchmetrics-") and "PoolFeatures" in protocol["tool"]
    assert protocol["resize"] == "adaptive-avg-pool-4" and protocol["num_gen"] == 300
    assert protocol["num_real"] == 300 and protocol["real"] == "a fixed random subset of 300 of 1797"


def test_every_real_image_by_default_and_the_trained_G_on_request(checkpoint, digits16, accelerator):
    args = parse_args(["--checkpoint", str(checkpoint), "--data", str(digits16), "--cpu", "--num_gen", "64",
                       "--no-ema", "--n_cpu", "0"])
    result = run(args, accelerator, PoolFeatures())
    assert result["eval_num_real"] == 1797 and result["protocol"]["real"] == "every image of the pack"
    assert result["generator"] == "G"
    # the figures are those of the trained G's images, not G_ema's
    _, urls = load_manifest(digits16)
    reals = load_into_memory(urls)[0]
    scores = {name: evaluate(accelerator, load_generator(checkpoint, ema=ema)[0], PoolFeatures(), reals, digits16,
                             100, num_gen=64, num_real=1797, seed=0)["fid64"]
              for name, ema in (("G", False), ("G_ema", True))}
    assert result["fid64"] == pytest.approx(scores["G"], rel=1e-9) and scores["G"] != pytest.approx(scores["G_ema"])


def test_without_inception_weights_it_says_how_to_get_them(checkpoint, digits16, tmp_path):
    r = run_here("gan_dist.evaluate", "--checkpoint", checkpoint, "--data", digits16, "--cpu",
                 "--out", tmp_path / "fid.json",
                 env={"GAN_DIST_INCEPTION_WEIGHTS": str(tmp_path / "absent.pth"), "XDG_CACHE_HOME": str(tmp_path)})
    assert r.returncode != 0 and r.stderr.startswith("error: ") and "absent.pth" in r.stderr
    assert not (tmp_path / "fid.json").exists()


def test_bad_options_are_refused(digits16):
    r = run_here("gan_dist.evaluate", "--checkpoint", "nowhere", "--data", digits16, "--num_gen", "1")
    assert r.returncode == 2 and "--num_gen must be >= 2" in r.stderr
    r = run_here("gan_dist.evaluate", "--checkpoint", "nowhere", "--data", digits16, "--cpu")
    assert r.returncode == 1 and r.stderr.startswith("error: --checkpoint nowhere")  # before any Inception download


def test_digit_score_needs_no_inception(checkpoint, digits16, tmp_path):
    r = run_here("gan_dist.evaluate", "--checkpoint", checkpoint, "--data", digits16, "--cpu",
                 "--metrics", "digits", "--num_gen", 500, "--out", tmp_path / "digits.json",
                 env={"GAN_DIST_INCEPTION_WEIGHTS": str(tmp_path / "absent.pth")})
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((tmp_path / "digits.json").read_text())
    digits = result["digits"]
    assert 1 <= digits["digit_score"] <= 10 and 0 <= digits["confident"] <= 1 and digits["samples"] == 500
    assert sum(digits["class_shares"]) == pytest.approx(1, abs=1e-3) and "accuracy 0.9" in digits["judge"]
    assert "fid500" not in result and result["generator"] == "G_ema"


def test_digit_judge_tells_real_digits_from_noise():
    from sklearn.datasets import load_digits

    from gan_dist.evaluation.digits import digit_report, fit_judge
    clf, accuracy, _ = fit_judge()
    real = torch.from_numpy(load_digits().images[:500]).float()[:, None] / 8 - 1  # 8x8 in [-1, 1]
    noise = torch.rand(500, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    on_real, on_noise = digit_report(clf, real), digit_report(clf, noise)
    assert accuracy > 0.95 and on_real["digit_score"] > 8 and on_real["confident"] > 0.9
    assert on_noise["digit_score"] < 2 and on_noise["confident"] < 0.5
