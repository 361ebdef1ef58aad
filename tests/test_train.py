import json
import shutil
import signal
import threading
import time

import pytest
import torch
from conftest import call_main, run_here, run_module
from conftest import train_rows as rows
from PIL import Image
from safetensors.torch import load_file

from gan_dist.dirlock import DirectoryLock
from gan_dist.networks.models import GANConfig, build_models
from gan_dist.train import main as train_main
from gan_dist.training.preemption import WATCHDOG


def train(data, out, *extra, run=run_here):
    return run("gan_dist.train", "--cpu", "--data", data, "--img_size", 16, "--channels", 1,
                      "--batch_size", 32, "--n_cpu", 1, "--output_dir", out, "--report_to", "none", *extra)



def test_short_run_writes_metrics_samples_and_checkpoints(tmp_path, digits16):
    out = tmp_path / "run"
    started = time.monotonic()
    r = train(digits16, out, "--max_train_steps", 6, "--log_steps", 2, "--sample_interval", 3,
              "--checkpointing_steps", 4, "--checkpoints_total_limit", 1)
    elapsed = time.monotonic() - started
    assert r.returncode == 0, r.stderr
    logged = rows(out)
    assert [row["step"] for row in logged] == [2, 4, 6]
    for row in logged:
        assert {"loss_D", "loss_G", "D_real", "D_fake", "img_per_s", "kimg", "epoch"} <= row.keys()
        assert 0 < row["D_real"] < 1 and 0 < row["D_fake"] < 1
        assert row["global_batch"] == 32
        # throughput in images of the global batch per second of the interval's wall clock: 2 steps of 32
        # images took 2 * sec_per_step seconds, part of this run's time, part of it waiting for data
        assert row["img_per_s"] * row["sec_per_step"] == pytest.approx(32)
        assert 0 < 2 * row["sec_per_step"] < elapsed and 0 <= row["data_wait"] < 1
    assert logged[-1]["kimg"] == pytest.approx(6 * 32 / 1000)

    samples = sorted(p.name for p in (out / "samples").iterdir())
    assert samples == ["reals_0000000.png", "samples_0000003.png", "samples_0000006.png"]
    assert Image.open(out / "samples" / "samples_0000006.png").size == (5 * 18 + 2, 5 * 18 + 2)  # 5x5 grid

    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-6"]  # limit 1 pruned step 4
    ckpt = out / "checkpoints" / "checkpoint-6"
    meta = json.loads((ckpt / "gan.json").read_text())
    assert meta["global_step"] == 6 and meta["gan_config"]["img_size"] == 16
    G, D = build_models(GANConfig(**meta["gan_config"]))
    assert load_file(ckpt / "model.safetensors").keys() == G.state_dict().keys()
    assert load_file(ckpt / "model_1.safetensors").keys() == D.state_dict().keys()
    assert json.loads((out / "args.json").read_text())["max_train_steps"] == 6


def test_resume_continues_and_matches_an_uninterrupted_run(tmp_path, digits16):
    """6 steps + resume to 10 gives bit-identical weights to 10 straight steps (data in memory; the
    streamed path with loader workers is checked with 2 processes in test_fault_tolerance)."""
    common = ("--log_steps", 2, "--checkpointing_steps", 6, "--sample_interval", 100)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train(digits16, straight, "--max_train_steps", 10, *common).returncode == 0
    assert train(digits16, resumed, "--max_train_steps", 6, *common).returncode == 0
    r = train(digits16, resumed, "--max_train_steps", 10, "--resume_from_checkpoint", "latest", *common)
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout and "step 6" in r.stdout
    assert [row["step"] for row in rows(resumed)] == [2, 4, 6, 8, 10]
    for name in ("model.safetensors", "model_1.safetensors", "G_ema.safetensors"):
        a = load_file(straight / "checkpoints" / "checkpoint-10" / name)
        b = load_file(resumed / "checkpoints" / "checkpoint-10" / name)
        assert all((a[k] == b[k]).all() for k in a), name


@pytest.fixture(scope="module")
def finished_run(digits16, tmp_path_factory):
    """A 2-step run, started with `--resume_from_checkpoint latest` in an empty directory."""
    out = tmp_path_factory.mktemp("finished") / "run"
    r = train(digits16, out, "--max_train_steps", 2, "--resume_from_checkpoint", "latest")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "starting from scratch" in r.stdout  # latest with no checkpoint: a fresh start, not an error
    return out


def test_fresh_run_refuses_to_overwrite_a_run(tmp_path, digits16, finished_run):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = (out / "metrics.jsonl").read_text()
    r = train(digits16, out, "--max_train_steps", 2)
    assert r.returncode != 0 and "already holds a run" in r.stderr
    assert (out / "metrics.jsonl").read_text() == before


def test_resume_with_other_architecture_is_refused(tmp_path, digits16, finished_run):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    r = train(digits16, out, "--max_train_steps", 4, "--latent_dim", 8, "--resume_from_checkpoint", "latest")
    assert r.returncode != 0 and "use a new --output_dir" in r.stderr


@pytest.mark.parametrize("data_arg,extra,message", [
    ("{tmp}/absent", (), "no such directory"),
    ("{tmp}/empty", (), "no manifest.json"),
    ("{digits}", ("--img_size", 32), "pass --img_size 16 --channels 1"),
    ("{digits}", ("--arch", "dcgan"), "needs --img_size 32, 64 or 128"),
    ("{digits}", ("--decode_on_device",), "holds png images; repack it with"),
])
def test_bad_data_and_options_fail_before_training(tmp_path, digits16, capsys, data_arg, extra, message):
    (tmp_path / "empty").mkdir()
    data = data_arg.format(tmp=tmp_path, digits=digits16)
    argv = ["--cpu", "--data", data, "--img_size", 16, "--channels", 1, "--output_dir", tmp_path / "run",
            "--report_to", "none", *extra]
    with pytest.raises(SystemExit) as exc:  # in this process: these checks come before any Accelerator
        train_main([str(a) for a in argv])
    assert exc.value.code != 0
    assert message in str(exc.value.code) + capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_accelerate_launch_and_dcgan(tmp_path):
    """`accelerate launch gan_dist/train.py` runs the same trainer; DCGAN trains at 32 px."""
    from conftest import ROOT

    from gan_dist.packing.shard import pack
    pack("lfw-subset", tmp_path / "faces", size=32, channels=1)
    out = tmp_path / "run"
    r = run_module("accelerate.commands.launch", "--cpu", "--num_processes", 1, "--mixed_precision", "no",
                   "--num_machines", 1, "--dynamo_backend", "no", str(ROOT / "gan_dist" / "train.py"),
                   "--data", tmp_path / "faces", "--img_size", 32, "--channels", 1, "--arch", "dcgan",
                   "--batch_size", 8, "--n_cpu", 0, "--max_train_steps", 3, "--log_steps", 3,
                   "--output_dir", out, "--report_to", "none")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out / "checkpoints" / "checkpoint-3" / "gan.json").read_text())["gan_config"]["arch"] == "dcgan"
    assert rows(out)[-1]["step"] == 3


def test_shards_from_a_url_template_decoded_on_the_device(tmp_path):
    """--shard_url reads shards through any WebDataset URL (here a pipe:), --data only holds the manifest;
    --decode_on_device leaves JPEGs undecoded in the workers and decodes each batch on the device (here the CPU)."""
    from gan_dist.packing.shard import pack
    pack("digits", tmp_path / "jpg", size=16, channels=1, shard_size=500, fmt="jpg")
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "manifest.json").write_bytes((tmp_path / "jpg" / "manifest.json").read_bytes())
    out = tmp_path / "run"
    r = train(tmp_path / "meta", out, "--shard_url", f"pipe:cat {tmp_path / 'jpg'}/{{file}}", "--decode_on_device",
              "--max_train_steps", 2, "--log_steps", 2)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "streamed from 4 shards by 1 workers, JPEG decoded on cpu" in r.stdout
    assert rows(out)[-1]["step"] == 2 and rows(out)[-1]["skipped_samples"] == 0


def test_ema_diffaug_colour_and_offline_metrics_in_a_run(tmp_path, digits16):
    """G_ema is kept and saved, DiffAugment runs, colour drift is logged, FID/KID without weights is skipped."""
    def run(out, *extra, **kwargs):
        return run_here("gan_dist.train", "--cpu", "--data", digits16, "--img_size", 16, "--channels", 1,
                        "--batch_size", 32, "--n_cpu", 0, "--output_dir", out, "--report_to", "none",
                          "--log_steps", 1, *extra, **kwargs)
    out = tmp_path / "run"
    r = run(out, "--max_train_steps", 4, "--sample_interval", 2, "--eval_steps", 2,
            "--diffaug", "color,translation,cutout", "--colour_samples", 64,
            env={"GAN_DIST_INCEPTION_WEIGHTS": str(tmp_path / "absent.pth")})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "training goes on without FID/KID" in r.stdout
    colour = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [row["step"] for row in colour] == [2, 4]
    assert [row["step"] for row in rows(out)] == [1, 2, 3, 4] and all("loss_D" in row for row in rows(out))
    assert not (out / "eval.jsonl").exists()  # FID/KID skipped: no evaluation rows
    assert all(row["real_contrast"] > 0.2 and row["gen_saturation"] == 0 for row in colour)  # grey digits

    # D saw augmented images: at step 1, D's initial weights and the first real batch are those of a run
    # without --diffaug, so D's mean verdict on the reals can only differ through what D was shown
    plain = tmp_path / "plain"
    assert run(plain, "--max_train_steps", 1).returncode == 0
    augmented, unaugmented = rows(out)[0], rows(plain)[0]
    assert abs(augmented["D_real"] - unaugmented["D_real"]) > 1e-4, (augmented, unaugmented)
    assert augmented["loss_D"] != unaugmented["loss_D"]

    ckpt = out / "checkpoints" / "checkpoint-4"
    assert json.loads((ckpt / "gan.json").read_text())["weights"]["G_ema"] == "G_ema.safetensors"
    ema, g = load_file(ckpt / "G_ema.safetensors"), load_file(ckpt / "model.safetensors")
    assert ema.keys() == g.keys() and any(not (ema[k] == g[k]).all() for k in g)  # an average, not a copy
    r = run_here("gan_dist.sample", "--checkpoint", ckpt, "--n", 9, "--grid", tmp_path / "grid.png")
    assert r.returncode == 0, r.stderr[-2000:]
    assert Image.open(tmp_path / "grid.png").size == (3 * 18 + 2, 3 * 18 + 2)  # 3x3 images of 16 px, 2 px apart


def test_bad_diffaug_policy_is_refused(tmp_path, digits16):
    """A usage error: argparse's exit 2 with one error line naming the policy, before the run directory exists."""
    r = train(digits16, tmp_path / "run", "--diffaug", "colour")
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stdout == "", r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert errors == [r.stderr.strip().splitlines()[-1]] == [
        "gan_dist.train: error: unknown DiffAugment policy colour; choose from color, translation, cutout"]
    assert not (tmp_path / "run").exists()  # not even args.json


def test_training_and_evaluation_set_the_gpu_backends_and_the_flags_turn_them_off(tmp_path, digits16, capsys):
    """TF32 and cuDNN's autotuner are set at start (no effect on the CPU, but the same code path as on a GPU)."""
    from accelerate.state import AcceleratorState

    from gan_dist.evaluation.evaluate import main as evaluate_main

    def backends():
        return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    common = ("--cpu", "--data", digits16, "--img_size", 16, "--channels", 1, "--batch_size", 16, "--n_cpu", 0,
              "--max_train_steps", 1, "--report_to", "none")
    before = backends()
    try:
        for flags, expected in ((("--no-allow_tf32", "--no-cudnn_benchmark"), (False, False, False)),
                                ((), (True, True, True))):
            code, _, err = call_main(train_main, capsys, *common, "--output_dir", tmp_path / str(len(flags)), *flags)
            assert code == 0, err[-2000:]
            assert backends() == expected
            AcceleratorState._reset_state(reset_partial_state=True)
        torch.backends.cudnn.benchmark = False
        code, _, err = call_main(evaluate_main, capsys, "--checkpoint", tmp_path / "0", "--data", digits16, "--cpu",
                                 "--metrics", "digits")
        assert torch.backends.cudnn.benchmark
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = before


def test_a_run_in_this_process_gives_back_its_signals_and_its_lock(tmp_path, digits16, capsys, fresh_state):
    """A notebook or a test that trains in its own process goes on afterwards with its own SIGTERM/SIGINT
    handlers, no wakeup fd, no stop-signal watchdog (it could end the process), and the run directory free."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    threads_before = set(threading.enumerate())
    out = tmp_path / "run"
    code, _, err = call_main(train_main, capsys, "--cpu", "--data", digits16, "--img_size", 16, "--channels", 1,
                             "--batch_size", 32, "--n_cpu", 0, "--output_dir", out, "--report_to", "none",
                             "--max_train_steps", 2)
    assert code == 0, err
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert signal.set_wakeup_fd(-1) == -1
    [watchdog] = [t for t in threading.enumerate() if t.name == WATCHDOG and t not in threads_before] or [None]
    if watchdog is not None:  # it sees its socket closed within its 1 s poll
        watchdog.join(timeout=5)
        assert not watchdog.is_alive()
    DirectoryLock(out, "a second trainer").release()  # not DirectoryBusy: the run let go of it
