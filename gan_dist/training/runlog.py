"""The run logs' format, shared by training, the summary page, export and the benchmarks.

A run directory holds three JSON Lines logs, one object per logged step with its `step`:
metrics.jsonl (training rows every --log_steps), samples.jsonl (colour statistics every
--sample_interval) and eval.jsonl (FID/KID every --eval_steps).
"""
import json
from pathlib import Path

TRAIN_LOG = "metrics.jsonl"
LOGS = {"train": TRAIN_LOG, "samples": "samples.jsonl", "eval": "eval.jsonl"}
TRAIN_KEYS = ("loss_D", "loss_G", "D_real", "D_fake")  # the report's names: means over a log interval


def log_path(run_dir, kind="train"):
    return Path(run_dir) / LOGS[kind]


def append_row(path, step, row):
    """Add one step's row to a log."""
    with open(path, "a") as f:
        f.write(json.dumps({"step": step, **row}) + "\n")


def read_log(run_dir, kind="train"):
    """One of a run's logs as rows in step order; a step logged twice (a resume repeating steps) keeps its last row."""
    by_step = {}
    path = log_path(run_dir, kind)
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                by_step[row["step"]] = row
    return [by_step[s] for s in sorted(by_step)]
