"""The run logs' format, shared by training, the summary page, export and the benchmarks.

A run directory holds three JSON Lines logs, one object per logged step with its `step`:
metrics.jsonl (training rows every --log_steps), samples.jsonl (colour statistics every
--sample_interval) and eval.jsonl (FID/KID every --eval_steps).
"""
import json
from pathlib import Path

from gan_dist.safe_io import UnsafePath, append_line, read_jsonl

TRAIN_LOG = "metrics.jsonl"
LOGS = {"train": TRAIN_LOG, "samples": "samples.jsonl", "eval": "eval.jsonl"}
TRAIN_KEYS = ("loss_D", "loss_G", "D_real", "D_fake")  # the report's names: means over a log interval


def log_path(run_dir, kind="train"):
    return Path(run_dir) / LOGS[kind]


def append_row(path, step, row, say=print):
    """Add one step's row to a log, never through a link; on failure say a warning and return False (a full disk
    must not cost the run: its next checkpoint keeps the last good one)."""
    try:
        append_line(path, json.dumps({"step": step, **row}))
        return True
    except (OSError, UnsafePath) as e:
        say(f"warning: could not write to {path} ({getattr(e, 'strerror', None) or e}); training goes on")
        return False


def read_log(run_dir, kind="train"):
    """One of a run's logs as rows in step order; a step logged twice (a resume repeating steps) keeps its last row."""
    by_step = {}
    path = log_path(run_dir, kind)
    if path.is_file():
        for row in read_jsonl(path):  # a line cut short (a full disk, a kill) is left out
            if type(row.get("step")) is int:
                by_step[row["step"]] = row
    return [by_step[s] for s in sorted(by_step)]
