"""The trainer on a busy, damaged or too small run directory or pack: one-line errors, nothing good lost."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, make_damaged_shards, run_here
from conftest import train_rows as rows

from gan_dist.dirlock import DirectoryLock


def train(data, out, *extra, size=16):
    return ["gan_dist.train", "--cpu", "--data", data, "--img_size", size, "--channels", 1, "--batch_size", 16,
            "--n_cpu", 0, "--output_dir", out, "--report_to", "none", *extra]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, digits16):
    """A two-step run on digits16 with checkpoint-2."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    r = run_here(*train(digits16, out, "--max_train_steps", 2))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_a_second_trainer_on_the_same_output_dir_is_refused_by_name(tmp_path, finished_run, digits16):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    with DirectoryLock(out, "gan_dist.train (pid 4242 on node7)"):  # the flock a running trainer holds
        r = run_here(*train(digits16, out, "--max_train_steps", 4, "--resume_from_checkpoint", "latest"))
    assert r.returncode == 1 and "is in use by gan_dist.train (pid 4242 on node7)" in r.stderr, r.stderr[-2000:]
    assert not (out / "checkpoints" / "checkpoint-4").exists()
    (out / ".lock").write_text("gan_dist.train (pid 1, killed)\n")  # left by a killed run: nobody holds it
    r = run_here(*train(digits16, out, "--max_train_steps", 4, "--resume_from_checkpoint", "latest"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "checkpoints" / "checkpoint-4").is_dir() and not (out / ".lock").exists()


def corrupt(path, how):
    if how == "gan.json":
        path.write_text('{"global_step": 2, "gan_con')
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif how == "pickled_code":
        torch.save({"state": os.getcwd}, path)  # a reference to a function: weights_only refuses it
    else:
        path.write_bytes(b"\x80\x04not a pickle at all")


@pytest.mark.parametrize("name,how,message", [
    ("gan.json", "gan.json", "gan.json is malformed"),
    ("model.safetensors", "truncated", "is damaged (SafetensorError"),
    ("optimizer.bin", "pickled_code", "is not a trusted checkpoint"),
    ("random_states_0.pkl", "garbage", "random_states_0.pkl is damaged: the resume could not be exact")])
def test_a_damaged_checkpoint_is_a_one_line_error(tmp_path, finished_run, digits16, name, how, message):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    corrupt(out / "checkpoints" / "checkpoint-2" / name, how)
    r = run_here(*train(digits16, out, "--max_train_steps", 4, "--resume_from_checkpoint", "latest"))
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1].startswith("error: "), r.stderr[-2000:]
    assert message in r.stderr and "Traceback" not in r.stderr and "weights_only=False" not in r.stderr


def test_a_full_disk_while_checkpointing_keeps_the_last_good_checkpoint(tmp_path, finished_run, digits16):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    # a 1 MB file size limit: G's weights (about 4 MB) fail to write, as on a full disk
    r = subprocess.run(["prlimit", "--fsize=1000000", sys.executable, "-m",
                        *map(str, train(digits16, out, "--max_train_steps", 4, "--resume_from_checkpoint", "latest"))],
                       capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "WANDB_MODE": "offline"})
    assert r.returncode == 1 and "error: writing checkpoint-4 failed" in r.stderr, r.stderr[-2000:]
    assert "checkpoint-2 is kept" in r.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2"]


def test_images_skipped_at_load_count_against_the_whole_dataset(tmp_path):
    data = make_damaged_shards(tmp_path / "faces", truncate=False)  # 1 corrupt PNG of 100
    r = run_here(*train(data, tmp_path / "run", "--max_train_steps", 4, "--log_steps", 2,
                          "--batch_size", 8, "--max_skip_fraction", 0.02, size=8))
    # 1 of 100 is 1%; against the 16 images of step 2 it would have been 6% and stopped the run
    assert r.returncode == 0, r.stderr[-2000:]
    assert rows(tmp_path / "run")[-1]["skipped_samples"] == 1


def test_a_batch_larger_than_the_dataset_is_an_error(tmp_path):
    from gan_dist.packing.shard import pack
    data = tmp_path / "tiny"
    pack("lfw-subset", data, size=8, channels=1)
    r = run_here(*train(data, tmp_path / "run", "--batch_size", 500, size=8))
    assert r.returncode == 1 and "holds 100 images, fewer than one global batch of 500" in r.stderr


def test_the_manifest_check_can_be_skipped(tmp_path, digits16):
    data = tmp_path / "pack"
    shutil.copytree(digits16, data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = "0" * 64
    (data / "manifest.json").write_text(json.dumps(manifest))
    r = run_here(*train(data, tmp_path / "a", "--max_train_steps", 1))
    assert r.returncode == 1 and "train-000000.tar does not match its sha256" in r.stderr
    r = run_here(*train(data, tmp_path / "b", "--max_train_steps", 1, "--skip_verify"))
    assert r.returncode == 0, r.stderr[-2000:]
