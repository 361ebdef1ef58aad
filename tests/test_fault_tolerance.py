"""Stops, kills, bad data and NaN: the run stops cleanly or goes on, and nothing good is lost."""
import json
import os
import shutil
import signal
import sys
import time

import pytest
import torch
from conftest import finish, launch, make_damaged_shards, run_module, run_torchrun, torchrun_cmd
from conftest import train_rows as rows
from safetensors.torch import load_file

from gan_dist.training.checkpoint import resolve_resume


def train_cmd(data, out, *extra):
    return [sys.executable, "-m", "gan_dist.train", "--cpu", "--data", data, "--img_size", 16, "--channels", 1,
            "--batch_size", 16, "--n_cpu", 0, "--output_dir", out, "--report_to", "none", *extra]



def wait_for(predicate, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "timed out waiting for the run to make progress"
        time.sleep(0.2)


def weights(ckpt):
    return {name: load_file(ckpt / name) for name in ("model.safetensors", "model_1.safetensors")}


def same_weights(a, b):
    return all(torch.equal(a[f][k], b[f][k]) for f in a for k in a[f])


def test_sigterm_checkpoints_the_current_step_and_resumes(tmp_path, digits16):
    out = tmp_path / "run"
    proc, timeout = launch(train_cmd(digits16, out, "--max_train_steps", 100000, "--log_steps", 5,
                                     "--checkpointing_steps", 100000))
    wait_for(lambda: (out / "metrics.jsonl").exists(), proc)
    proc.send_signal(signal.SIGTERM)
    r = finish(proc, timeout)
    assert r.returncode == 143, r.stderr[-3000:]
    stopped = int(r.stdout.split("stopped by SIGTERM at step ")[1].split(";")[0])
    ckpt = out / "checkpoints" / f"checkpoint-{stopped}"
    assert json.loads((ckpt / "gan.json").read_text())["global_step"] == stopped
    # weights and state only: safetensors, optimizer/RNG files read with weights_only=True, JSON
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "G_ema.safetensors", "gan.json", "model.safetensors", "model_1.safetensors", "optimizer.bin", "optimizer_1.bin",
        "random_states_0.pkl"]
    r = finish(*launch(train_cmd(digits16, out, "--max_train_steps", stopped + 3, "--log_steps", 1,
                                 "--resume_from_checkpoint", "latest")))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"at step {stopped}" in r.stdout
    assert rows(out)[-1]["step"] == stopped + 3


def test_sigterm_stops_two_ranks_at_the_same_step(tmp_path, digits16):
    out = tmp_path / "run"
    proc, timeout = launch(torchrun_cmd(["--cpu", "--data", digits16, "--img_size", 16, "--channels", 1,
                                         "--batch_size", 16, "--n_cpu", 1, "--cache_gb", 0,
                                         "--max_train_steps", 100000, "--log_steps", 5,
                                         "--checkpointing_steps", 100000, "--output_dir", out,
                                         "--report_to", "none"]), timeout=180)
    wait_for(lambda: (out / "metrics.jsonl").exists(), proc)
    proc.send_signal(signal.SIGTERM)  # torchrun forwards it to both ranks
    r = finish(proc, timeout)  # torchrun itself exits 1 with its own traceback on a SIGTERM
    [ckpt] = list((out / "checkpoints").glob("checkpoint-*"))
    step = json.loads((ckpt / "gan.json").read_text())["global_step"]
    assert step % 10 == 0  # ranks agree every 10 steps and stop together
    assert f"stopped by SIGTERM at step {step}; checkpoint saved" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert {p.name for p in ckpt.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}


def test_two_process_resume_is_bit_exact_with_workers(tmp_path, digits16):
    common = ["--cpu", "--data", digits16, "--img_size", 16, "--channels", 1, "--batch_size", 16, "--n_cpu", 1,
              "--cache_gb", 0, "--log_steps", 2, "--checkpointing_steps", 4, "--report_to", "none"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    resume = ["--resume_from_checkpoint", "latest"]
    for out, steps, extra in ((straight, 8, []), (resumed, 4, []), (resumed, 8, resume)):
        r = run_torchrun([*common, "--output_dir", out, "--max_train_steps", steps, *extra], timeout=240)
        assert r.returncode == 0, r.stderr[-3000:]
    assert same_weights(weights(straight / "checkpoints" / "checkpoint-8"),
                        weights(resumed / "checkpoints" / "checkpoint-8"))


def test_kill_9_while_checkpointing_leaves_a_loadable_checkpoint(tmp_path, digits16):
    out = tmp_path / "run"
    proc, _ = launch(train_cmd(digits16, out, "--max_train_steps", 100000, "--log_steps", 1,
                               "--checkpointing_steps", 1, "--checkpoints_total_limit", 2))
    wait_for(lambda: len(list((out / "checkpoints").glob("checkpoint-*"))) >= 2 if (out / "checkpoints").exists()
             else False, proc)
    time.sleep(0.7)  # checkpoints are written every step: the kill lands in or near a save
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # a checkpoint directory truncated as if killed mid-copy: no gan.json, so it is not a checkpoint
    (out / "checkpoints" / "checkpoint-999999").mkdir()
    (out / "checkpoints" / "checkpoint-999999" / "model.safetensors").write_bytes(b"trunc")
    latest = max(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*")
                 if (p / "gan.json").exists())
    r = finish(*launch(train_cmd(digits16, out, "--max_train_steps", latest + 2, "--log_steps", 1,
                                 "--resume_from_checkpoint", "latest")))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"checkpoint-{latest} at step {latest}" in r.stdout
    assert rows(out)[-1]["step"] == latest + 2
    assert not list((out / "checkpoints").glob(".checkpoint-*.partial"))  # a stale partial is cleared by saving


def test_corrupt_image_and_truncated_shard_are_skipped_and_counted(tmp_path):
    data = make_damaged_shards(tmp_path / "faces")
    out = tmp_path / "run"
    r = run_module("gan_dist.train", "--cpu", "--data", data, "--img_size", 8, "--channels", 1, "--batch_size", 8,
                   "--n_cpu", 0, "--cache_gb", 0, "--max_train_steps", 40, "--log_steps", 10,
                   "--max_skip_fraction", 0.5, "--output_dir", out, "--report_to", "none")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "train-000002.tar" in r.stderr  # the truncated shard is named
    assert rows(out)[-1]["skipped_samples"] >= 1

    r = run_module("gan_dist.train", "--cpu", "--data", data, "--img_size", 8, "--channels", 1, "--batch_size", 8,
                   "--n_cpu", 0, "--max_train_steps", 4, "--output_dir", tmp_path / "in_memory",
                   "--report_to", "none", "--max_skip_fraction", 0.001)
    # in memory: 1 corrupt PNG + the 10 images cut off shard 2, of the 100 the manifest promises
    assert r.returncode != 0 and "11 of 100 images" in r.stderr and "--max_skip_fraction" in r.stderr


def test_a_stop_between_log_steps_saves_the_skipped_samples_counted_so_far(tmp_path):
    """Skips are counted per rank and reduced when a row is logged; a stop saves them too, logged or not."""
    data = make_damaged_shards(tmp_path / "faces")
    out = tmp_path / "run"
    proc, timeout = launch([sys.executable, "-m", "gan_dist.train", "--cpu", "--data", data, "--img_size", 8,
                            "--channels", 1, "--batch_size", 8, "--n_cpu", 0, "--cache_gb", 0,
                            "--max_train_steps", 100000, "--log_steps", 100000, "--checkpointing_steps", 100000,
                            "--sample_interval", 40, "--max_skip_fraction", 0.5, "--output_dir", out,
                            "--report_to", "none"])
    wait_for(lambda: (out / "samples" / "samples_0000040.png").exists(), proc)  # 320 images read: 3 epochs
    proc.send_signal(signal.SIGTERM)
    r = finish(proc, timeout)
    assert r.returncode == 143, r.stderr[-3000:]
    assert not (out / "metrics.jsonl").exists()  # no row was logged
    meta = json.loads(next((out / "checkpoints").glob("checkpoint-*/gan.json")).read_text())
    assert meta["global_step"] >= 40 and meta["skipped_samples"] >= 3  # each epoch meets the damaged samples


def test_nan_stops_with_the_step_and_network_and_keeps_the_last_checkpoint(tmp_path, digits16):
    out = tmp_path / "run"
    assert finish(*launch(train_cmd(digits16, out, "--max_train_steps", 4, "--checkpointing_steps", 4))).returncode == 0
    good = weights(out / "checkpoints" / "checkpoint-4")
    r = finish(*launch(train_cmd(digits16, out, "--max_train_steps", 20, "--log_steps", 1, "--lr", 1e30,
                                 "--resume_from_checkpoint", "latest")))
    assert r.returncode != 0
    assert "loss is" in r.stderr and "at step" in r.stderr and "lower --lr" in r.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-4"]
    assert same_weights(good, weights(out / "checkpoints" / "checkpoint-4"))  # intact and readable


@pytest.mark.parametrize("case,message", [("output_not_writable", "is not writable"),
                                          ("shard_missing", "are missing")])
def test_bad_configuration_fails_before_work(tmp_path, digits16, case, message):
    data, out = digits16, tmp_path / "run"
    if case == "output_not_writable":
        (tmp_path / "a_file").write_text("x")
        out = tmp_path / "a_file" / "run"
    else:
        data = tmp_path / "copy"
        data.mkdir()
        for p in digits16.iterdir():
            if p.name != "train-000001.tar":
                (data / p.name).write_bytes(p.read_bytes())
    r = finish(*launch(train_cmd(data, out, "--max_train_steps", 2)))
    assert r.returncode != 0 and message in r.stderr


def test_resuming_an_older_checkpoint_keeps_the_new_one_and_it_is_latest(tmp_path, digits16):
    out = tmp_path / "run"
    r = finish(*launch(train_cmd(digits16, out, "--max_train_steps", 6, "--checkpointing_steps", 2)))
    assert r.returncode == 0, r.stderr[-3000:]
    older = tmp_path / "kept" / "checkpoint-2"
    shutil.copytree(out / "checkpoints" / "checkpoint-2", older)  # e.g. kept aside, or from another run
    shutil.rmtree(out / "checkpoints" / "checkpoint-2")
    r = finish(*launch(train_cmd(digits16, out, "--max_train_steps", 3, "--checkpointing_steps", 100,
                                 "--checkpoints_total_limit", 2, "--resume_from_checkpoint", older)))
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-6"]
    assert resolve_resume("latest", out).name == "checkpoint-3"
