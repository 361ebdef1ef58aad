"""The small-data bench: its split, its options, its table, and a tiny end-to-end run.

The overfitting gap itself is only measured by `make bench-small-data`, never asserted here.
"""
import json

import numpy as np
import pytest
import torch
from conftest import run_module
from safetensors.torch import load_file

from benchmarks.small_data import gap_over_time, markdown, mean_d, parse_args, split_digits
from gan_dist.evaluation.sample import checkpoint_config
from gan_dist.networks.models import build_models
from gan_dist.training.checkpoint import WEIGHT_FILES


def test_the_split_is_disjoint_complete_and_seeded():
    train, held_out = split_digits(500, seed=0)
    assert len(train) == 500 and len(held_out) == 1297
    assert not set(train) & set(held_out) and sorted([*train, *held_out]) == list(range(1797))
    assert np.array_equal(train, split_digits(500, seed=0)[0])
    assert not np.array_equal(train, split_digits(500, seed=1)[0])


REFUSED = {  # option and value: what the error says
    ("--steps", "0"): "--steps must be >= 1, got 0",
    ("--checkpoints", "0"): "--checkpoints must be >= 1",
    ("--train_images", "1790"): "--train_images must be from 1 to 1697",
    ("--cases", "cutout"): "invalid choice: 'cutout'",
    ("--recipe", "big"): "invalid choice: 'big'",
    ("--flags", "adaa=--aug_target 0.5"): "expected CASE=FLAGS with CASE one of none, diffaug, ada"}


@pytest.mark.parametrize("argv", REFUSED)
def test_bad_options_are_refused_by_name(capsys, argv):
    message = REFUSED[argv]
    with pytest.raises(SystemExit) as e:
        parse_args(list(argv))
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_the_table_divides_each_gap_by_the_one_without_augmentation():
    def case(gap, p=None):
        return {"gap": gap, "gap_over_time": [{"kimg": 1.0, "gap": gap, "D_train": gap + 1, "D_held_out": 1.0}],
                "p_over_time": [] if p is None else [{"step": 10, "p": p, "r_t": 0.7}], "confident": 0.5,
                "class_shares": [0.1] * 9 + [0.05], "digit_score": 7.0, "train_seconds": 60}
    doc = {"machine": {"cpu": "x", "cores": 2, "torch": "2"}, "judge": {"held_out_accuracy": 0.99},
           "config": {"nproc": 2, "recipe": "digits", "steps": 10, "global_batch": 64},
           "data": {"training": 500, "held_out": 1297, "training_confident": 1.0},
           "cases": {"none": case(2.0), "ada": case(0.5, p=0.25)}}
    table = markdown(doc)
    assert "| none | 2.000 | 1.00 | 3.000 | 1.000 |  | 50.0% | 5.0% | 7.00 | 1.0 min |" in table
    assert "| ada | 0.500 | 0.25 | 1.500 | 1.000 | 0.250 |" in table
    assert "ada, p over time (kimg: p): 0.64: 0.250" in table


@pytest.mark.benchmarks
def test_small_data_bench_end_to_end_tiny(tmp_path):
    out, work = tmp_path / "s.json", tmp_path / "work"
    r = run_module("benchmarks", "small-data", "--steps", 4, "--checkpoints", 2, "--nproc", 1, "--batch_size", 16,
                   "--samples", 100, "--train_images", 200, "--cases", "none", "ada", "--flags", "ada=--aug_p 0.5",
                   "--out", out, "--work", work, env={"OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["data"]["training"] == 200 and doc["data"]["held_out"] == 1597
    none, ada = doc["cases"]["none"], doc["cases"]["ada"]
    assert [row["step"] for row in none["gap_over_time"]] == [2, 4] and none["steps"] == 4
    # the gap is D's reading of the packed digits at the last checkpoint, as mean_d computes it, in batches of 16
    # (the modern recipe's D groups 4 reals for its minibatch std; 1,597 held-out digits fill the last batch up)
    training, held_out = (work / name for name in ("train32", "held-out32"))
    assert gap_over_time(work / "none", *_images(training, held_out), 16, 16)[-1]["gap"] == none["gap"]
    last = work / "none" / "checkpoints" / "checkpoint-4"
    assert none["gap"] == pytest.approx(mean_d(last, _images(training)[0], 16) - mean_d(last, _images(held_out)[0], 16))
    # 18 images: a batch of 16, then 2 read beside the first 14 (D refuses 18 at once: its minibatch std groups 4)
    _, D = build_models(checkpoint_config(last))
    D.load_state_dict(load_file(str(last / WEIGHT_FILES["D"])))
    D.eval()
    images = _images(held_out)[0][:18]
    with pytest.raises(ValueError, match="minibatch std"):
        D(images)
    with torch.no_grad():
        read = torch.cat([D(images[:16]).flatten(), D(torch.cat([images[16:], images[:14]])).flatten()[:2]])
    assert mean_d(last, images, 16) == pytest.approx(float(read.mean()))
    assert none["p_over_time"] == [] and [row["p"] for row in ada["p_over_time"]] == pytest.approx([0.5] * 4)
    assert none["samples"] == 100 and sum(none["class_shares"]) == pytest.approx(1, abs=1e-3)
    assert "| ada |" in r.stdout and "ada, p over time" in r.stdout


def _images(*packs):
    from gan_dist.training.data import load_into_memory
    from gan_dist.training.manifest import load_manifest
    return [load_into_memory(load_manifest(str(p))[1])[0].float() / 127.5 - 1 for p in packs]
