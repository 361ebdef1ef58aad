"""Trackers, metrics.jsonl, progress lines and the summary page, read back from real files."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
from conftest import ROOT, run_torchrun, train_rows
from PIL import Image
from wandb_records import read_run, run_id


def train(data, out, *extra, env_update=None, drop=("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "WANDB_PROJECT")):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update({"WANDB_SILENT": "true", "HOME": str(out.parent / "home"), **(env_update or {})})
    cmd = [sys.executable, "-m", "gan_dist.train", "--cpu", "--data", data, "--img_size", 16, "--channels", 1,
           "--batch_size", 32, "--n_cpu", 0, "--output_dir", out, "--max_train_steps", 6, "--log_steps", 2,
           "--sample_interval", 3, *extra]
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def offline_runs(out):
    return sorted(p for p in (out / "wandb").glob("offline-run-*") if not p.is_symlink())


def test_wandb_goes_offline_without_credentials_and_logs_everything(tmp_path, digits16):
    out = tmp_path / "run"
    r = train(digits16, out, "--report_to", "wandb")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wandb sync" in r.stdout
    [run_dir] = offline_runs(out)
    history, config = read_run(next(run_dir.glob("run-*.wandb")))
    scalars = [row for row in history if "loss_D" in row]
    assert [row["_step"] for row in scalars] == [2, 4, 6]
    for key in ("loss_G", "D_real", "D_fake", "grad_norm_D", "grad_norm_G", "lr_D", "lr_G", "img_per_s",
                "sec_per_step", "data_wait", "kimg", "epoch", "global_batch"):
        assert key in scalars[-1], key
    assert scalars[-1]["grad_norm_D"] > 0 and scalars[-1]["lr_G"] == 0.0002
    assert config["lr"] == 0.0002 and config["data"] == str(digits16) and config["max_train_steps"] == 6
    logged_images = {key.split("/")[0] for row in history for key in row if key.endswith("/path")}
    assert logged_images == {"reals", "samples"}
    media = sorted((run_dir / "files" / "media" / "images").glob("*.png"))
    assert {p.name.split("_")[0] for p in media} == {"reals", "samples"}
    for path in media:
        pixels = np.asarray(Image.open(path), dtype=np.float32)
        assert pixels.std() > 5, f"{path.name} is blank"
    # the same grids are on disk, and the summary was written at the end
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "reals_0000000.png", "samples_0000003.png", "samples_0000006.png"]
    assert (out / "summary.png").is_file() and (out / "summary.html").is_file()


def test_wandb_failure_never_stops_training(tmp_path, digits16):
    # online mode forced, no API key: wandb.init raises; training must go on without trackers
    out = tmp_path / "run"
    r = train(digits16, out, "--report_to", "wandb", env_update={"WANDB_MODE": "online"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "could not start trackers" in r.stdout
    assert [row["step"] for row in train_rows(out)] == [2, 4, 6]
    assert (out / "checkpoints" / "checkpoint-6").is_dir()


def test_tensorboard_and_plain_progress_lines(tmp_path, digits16):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "run"
    r = train(digits16, out, "--report_to", "tensorboard")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "step 2/6 loss_D" in r.stdout  # not a terminal: plain lines instead of a bar
    # Accelerate's TensorBoard tracker writes to logging_dir/project (hparams in a subdirectory)
    acc = EventAccumulator(str(out / "logs" / "gan-dist"), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert [e.step for e in acc.Scalars("loss_D")] == [2, 4, 6]
    assert {"samples", "reals"} <= set(acc.Tags()["images"])
    assert not (out / "wandb").exists()


def test_two_ranks_create_exactly_one_wandb_run(tmp_path, digits16):
    out = tmp_path / "run"
    r = run_torchrun(["--cpu", "--data", digits16, "--img_size", 16, "--channels", 1, "--batch_size", 16,
                      "--n_cpu", 0, "--max_train_steps", 2, "--log_steps", 2, "--output_dir", out,
                      "--report_to", "wandb"], timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(offline_runs(out)) == 1


def test_summary_cli(tmp_path, digits16):
    out = tmp_path / "run"
    assert train(digits16, out, "--report_to", "none").returncode == 0
    assert not (out / "wandb").exists() and not (out / "logs").exists()  # --report_to none: no trackers
    assert len(train_rows(out)) == 3 and (out / "samples" / "samples_0000006.png").is_file()
    (out / "summary.png").unlink()
    r = subprocess.run([sys.executable, "-m", "gan_dist.summary", str(out)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert Image.open(out / "summary.png").size[0] > 500
    page = (out / "summary.html").read_text()
    assert page.count("data:image/png;base64,") == 1 + 2 + 1  # figure, 2 sample grids, reals
    bad = subprocess.run([sys.executable, "-m", "gan_dist.summary", str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert bad.returncode != 0 and "no metrics.jsonl" in bad.stderr


def parts(out):
    """(run id, logged training steps) of each offline W&B run directory, in the order they were written."""
    found = []
    for run_dir in offline_runs(out):
        path = next(run_dir.glob("run-*.wandb"))
        history, _ = read_run(path)
        found.append((run_id(path), [row["_step"] for row in history if "loss_D" in row]))
    return found


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path, digits16):
    out = tmp_path / "run"
    r = train(digits16, out, "--report_to", "wandb", "--max_train_steps", 4, "--checkpointing_steps", 4)
    assert r.returncode == 0, r.stderr[-3000:]
    r = train(digits16, out, "--report_to", "wandb", "--max_train_steps", 8, "--checkpointing_steps", 4,
              "--resume_from_checkpoint", "latest")
    assert r.returncode == 0, r.stderr[-3000:]
    (first, steps1), (second, steps2) = parts(out)
    stored = (out / "wandb_run_id.txt").read_text().strip()
    assert first == second == stored and steps1 == [2, 4] and steps2 == [6, 8]
    meta = json.loads((out / "checkpoints" / "checkpoint-8" / "gan.json").read_text())
    assert meta["wandb_run_id"] == stored


def test_wandb_run_id_from_the_environment_and_from_the_checkpoint(tmp_path, digits16):
    out = tmp_path / "run"
    r = train(digits16, out, "--report_to", "wandb", "--max_train_steps", 2, env_update={"WANDB_RUN_ID": "mine123"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert [rid for rid, _ in parts(out)] == ["mine123"]
    # a checkpoint copied into a new run directory carries its W&B run with it
    moved = tmp_path / "moved"
    (moved / "checkpoints").mkdir(parents=True)
    shutil.copytree(out / "checkpoints" / "checkpoint-2", moved / "checkpoints" / "checkpoint-2")
    r = train(digits16, moved, "--report_to", "wandb", "--max_train_steps", 4, "--resume_from_checkpoint", "latest")
    assert r.returncode == 0, r.stderr[-3000:]
    assert [rid for rid, _ in parts(moved)] == ["mine123"]


def test_two_ranks_resume_into_one_wandb_run(tmp_path, digits16):
    out = tmp_path / "run"
    env = {"HOME": str(tmp_path / "home")}  # no credentials: offline
    common = ["--cpu", "--data", digits16, "--img_size", 16, "--channels", 1, "--batch_size", 16, "--n_cpu", 0,
              "--output_dir", out, "--log_steps", 2, "--checkpointing_steps", 2, "--report_to", "wandb"]
    r = run_torchrun([*common, "--max_train_steps", 2], env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_torchrun([*common, "--max_train_steps", 4, "--resume_from_checkpoint", "latest"], env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    (first, steps1), (second, steps2) = parts(out)
    assert first == second == (out / "wandb_run_id.txt").read_text().strip()
    assert steps1 == [2] and steps2 == [4]
