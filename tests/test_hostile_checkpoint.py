"""Hostile inputs at the checkpoint boundary: gan.json and G_ema on resume, gan.json in sample and evaluate,
export's --out."""
import json
import shutil

import pytest
import torch
from conftest import call_main, run_here
from hostile import GB, assert_one_error, run_measured
from safetensors.torch import load_file, save_file

from gan_dist.evaluation.export import main as export_main
from gan_dist.train import main as train_main


def train_args(data, out, *extra):
    return ["--cpu", "--data", data, "--img_size", 16, "--channels", 1, "--batch_size", 16, "--n_cpu", 0,
            "--output_dir", out, "--report_to", "none", *extra]


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory, digits16):
    """A two-step run with G_ema (the modern preset's EMA on the MLP) and checkpoint-2."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    r = run_here("gan_dist.train", *train_args(digits16, out, "--max_train_steps", 2, "--ema_kimg", 1))
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def resumed(run, tmp_path, edit_meta=None):
    out = tmp_path / "run"
    shutil.copytree(run, out)
    if edit_meta:
        path = out / "checkpoints" / "checkpoint-2" / "gan.json"
        meta = json.loads(path.read_text())
        edit_meta(meta)
        path.write_text(json.dumps(meta))
    return out


@pytest.mark.parametrize("edit,message", [
    (lambda m: m.update(global_step=-100), "global_step -100 is not an integer from 0"),
    (lambda m: m.pop("global_batch"), "global_batch missing is not an integer >= 1"),
    (lambda m: m.update(global_batch="16"), "global_batch 16 is not an integer >= 1"),
    (lambda m: m.update(skipped_samples=[1]), "skipped_samples [1] is not an integer >= 0"),
    (lambda m: m.update(colour_drift={"history": 5}), "colour_drift"),
    (lambda m: m.update(global_step=10**12), "global_step 1000000000000 is not an integer from 0"),
    (lambda m: m.update(global_step=1e12), "no global_step"),
])
def test_a_hostile_gan_json_on_resume_is_one_error(tmp_path, ema_run, digits16, capsys, edit, message):
    out = resumed(ema_run, tmp_path, edit)
    code, _, err = call_main(train_main, capsys, *train_args(digits16, out, "--max_train_steps", 4,
                                                             "--resume_from_checkpoint", "latest", "--ema_kimg", 1))
    assert code and err.strip().splitlines()[-1].startswith("error: ") and "gan.json is malformed" in err, err
    assert message in err, err


@pytest.mark.parametrize("damage", ["truncated", "wrong shape"])
def test_a_damaged_g_ema_on_resume_is_one_error(tmp_path, ema_run, digits16, damage):
    out = resumed(ema_run, tmp_path)
    ema = out / "checkpoints" / "checkpoint-2" / "G_ema.safetensors"
    if damage == "truncated":
        ema.write_bytes(ema.read_bytes()[: ema.stat().st_size // 2])
    else:
        tensors = load_file(ema)
        first = next(iter(tensors))
        tensors[first] = torch.zeros(3, 3)
        save_file(tensors, ema)
    r = run_here("gan_dist.train", *train_args(digits16, out, "--max_train_steps", 4, "--resume_from_checkpoint",
                                               "latest", "--ema_kimg", 1))
    assert_one_error(r, "G_ema.safetensors", code=1)


def huge_checkpoint(path):
    """A checkpoint whose gan.json asks for an MLP of 0.8e9 + 0.4e9 parameters (4.8 GB); no weights at all."""
    path.mkdir(parents=True)
    (path / "gan.json").write_text(json.dumps({"global_step": 1, "gan_config": {
        "arch": "mlp", "latent_dim": 100, "img_size": 512, "channels": 3}}))
    return path


def test_sample_refuses_a_gan_json_above_the_parameter_budget(tmp_path):
    ckpt = huge_checkpoint(tmp_path / "checkpoint-1")
    r, peak = run_measured("-m", "gan_dist.sample", "--checkpoint", ckpt, "--grid", tmp_path / "g.png", "--n", 4,
                           "--device", "cpu")
    assert_one_error(r, "above the budget of 500,000,000 parameters", code=1)
    assert peak < GB, f"peak RSS {peak / GB:.2f} GB"


def test_evaluate_refuses_a_gan_json_above_the_parameter_budget(tmp_path, digits16):
    ckpt = huge_checkpoint(tmp_path / "checkpoint-1")
    r, peak = run_measured("-m", "gan_dist.evaluate", "--metrics", "digits", "--checkpoint", ckpt, "--data",
                           digits16, "--cpu", "--num_gen", 16)
    assert_one_error(r, "above the budget of 500,000,000 parameters", code=1)
    assert peak < GB, f"peak RSS {peak / GB:.2f} GB"


def test_export_never_overwrites_another_models_folder(tmp_path, ema_run, capsys):
    other = tmp_path / "bert"
    other.mkdir()
    files = {"config.json": '{"model_type": "bert"}', "model.safetensors": "weights", "README.md": "# BERT"}
    for name, text in files.items():
        (other / name).write_text(text)
    code, _, err = call_main(export_main, capsys, "--checkpoint", ema_run, "--out", other)
    assert code and "not an earlier gan-dist export" in err, err
    assert {p.name: p.read_text() for p in other.iterdir()} == files
    # an earlier export of ours is replaced
    code, _, err = call_main(export_main, capsys, "--checkpoint", ema_run, "--out", tmp_path / "ours")
    assert code == 0, err
    code, _, err = call_main(export_main, capsys, "--checkpoint", ema_run, "--out", tmp_path / "ours")
    assert code == 0, err
