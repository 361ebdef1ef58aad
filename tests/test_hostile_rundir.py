"""Hostile inputs at the run-directory boundary: links, full disks, damaged logs and grids, a second Ctrl-C."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT, call_main, launch, run_here
from hostile import assert_one_error

from gan_dist.dirlock import DirectoryLock
from gan_dist.evaluation.summary import main as summary_main
from gan_dist.safe_io import UnsafePath, append_line, write_atomic
from gan_dist.train import main as train_main
from gan_dist.training.runlog import read_log


def train_args(data, out, *extra):
    return ["--cpu", "--data", data, "--img_size", 16, "--channels", 1, "--batch_size", 16, "--n_cpu", 0,
            "--output_dir", out, "--report_to", "none", *extra]


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim.txt"
    path.write_text("precious\n")
    return path


def test_a_lock_file_that_is_a_link_is_refused_not_truncated(tmp_path, victim):
    os.symlink(victim, tmp_path / ".lock")
    with pytest.raises(UnsafePath, match="symbolic link"):
        DirectoryLock(tmp_path, "test")
    assert victim.read_text() == "precious\n"


def test_atomic_writes_replace_a_link_and_appends_refuse_one(tmp_path, victim):
    os.symlink(victim, tmp_path / "args.json")
    write_atomic(tmp_path / "args.json", "{}")
    assert not (tmp_path / "args.json").is_symlink() and victim.read_text() == "precious\n"
    os.symlink(victim, tmp_path / "metrics.jsonl")
    with pytest.raises(UnsafePath):
        append_line(tmp_path / "metrics.jsonl", "{}")
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("name", ["args.json", "metrics.jsonl", ".lock", "samples"])
def test_a_run_directory_holding_links_is_refused_before_any_work(tmp_path, digits16, victim, capsys, name):
    out = tmp_path / "run"
    out.mkdir()
    os.symlink(victim if name != "samples" else tmp_path, out / name)
    code, _, err = call_main(train_main, capsys, *train_args(digits16, out, "--max_train_steps", 1))
    assert code and err.strip().splitlines()[-1].startswith("error: ") and "is a symbolic link" in err, err
    assert victim.read_text() == "precious\n" and sorted(os.listdir(out)) == [name]


def test_a_full_disk_while_writing_args_json_is_one_error_and_leaves_no_empty_file(tmp_path, digits16):
    out = tmp_path / "run"
    # RLIMIT_FSIZE of 200 bytes: writes past it fail with EFBIG, as on a full disk
    r = subprocess.run(["prlimit", "--fsize=200", sys.executable, "-m", "gan_dist.train",
                        *map(str, train_args(digits16, out, "--max_train_steps", 1))],
                       capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "WANDB_MODE": "offline"})
    assert_one_error(r, "args.json failed (File too large)", code=1)
    assert not (out / "args.json").exists() and not list(out.glob(".args.json*"))


FULL_DISK_WRITES = """
import resource, sys, torch
from accelerate import Accelerator
from gan_dist.training.tracking import MetricsLog, log_grid
out = sys.argv[1]
accelerator = Accelerator(cpu=True)
resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))  # every file stops at 100 bytes: a full disk
MetricsLog(accelerator, out).log({"loss_D": 1.0, "note": "x" * 200}, 1)
log_grid(accelerator, torch.rand(4, 1, 8, 8) * 2 - 1, out, 1)  # noise: a PNG above 100 bytes
print("training goes on")
"""


def test_a_full_disk_while_logging_a_row_or_a_grid_is_a_warning(tmp_path):
    r = subprocess.run([sys.executable, "-c", FULL_DISK_WRITES, str(tmp_path)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "warning: could not write to" in r.stdout and "metrics.jsonl (File too large)" in r.stdout, r.stdout
    assert "samples_0000001.png (File too large)" in r.stdout and r.stdout.strip().endswith("training goes on")
    assert not list((tmp_path / "samples").iterdir())  # no half-written grid
    assert read_log(tmp_path) == []  # the row cut short at 100 bytes is left out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, digits16):
    out = tmp_path_factory.mktemp("rundir") / "run"
    r = run_here("gan_dist.train", *train_args(digits16, out, "--max_train_steps", 2, "--log_steps", 1,
                                                "--sample_interval", 1))
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def test_a_truncated_metrics_line_and_a_damaged_grid_do_not_stop_summary_or_export(tmp_path, tiny_run, capsys):
    import shutil

    from gan_dist.evaluation.export import main as export_main
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss_D": 0.6')  # cut short by a full disk or a kill
    grid = run / "samples" / "samples_0000002.png"
    grid.write_bytes(grid.read_bytes()[:100])
    code, out, err = call_main(summary_main, capsys, run)
    assert code == 0 and "summary.png" in out and f"{grid} is damaged" in err and "Traceback" not in err
    assert [r["step"] for r in read_log(run)] == [1, 2]
    code, out, err = call_main(export_main, capsys, "--checkpoint", run, "--out", tmp_path / "export")
    assert code == 0, err
    assert json.loads((tmp_path / "export" / "config.json").read_text())["global_step"] == 2


def test_a_second_ctrl_c_exits_130_with_one_line(tmp_path, digits16):
    proc, timeout = launch([sys.executable, "-m", "gan_dist.train",
                            *train_args(digits16, tmp_path / "run", "--max_train_steps", 100000, "--log_steps", 1)])
    for line in proc.stdout:
        if line.startswith("step "):  # in the loop
            break
    proc.send_signal(signal.SIGINT)  # a clean stop: finish the step, checkpoint
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)  # ... and again, while that stop is under way
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 130 and "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith("stopping now on a second Ctrl-C")
