"""The recipe-quality bench: its judge on real stacked digits, its arithmetic, and a tiny end-to-end run.

Quality itself is only measured by `make bench-quality`, never asserted here.
"""
import json
import math

import numpy as np
import pytest
import torch
from conftest import run_module
from PIL import Image

from benchmarks.quality import samples
from gan_dist.evaluation.digits import channel_features, copy_report, fit_judge, mode_report
from gan_dist.packing.items import SourceOptions
from gan_dist.packing.sources import read_stacked_digits


@pytest.fixture(scope="module")
def judge():
    return fit_judge()


def stacked(n):
    """The first n stacked images, upscaled as the packer does, as floats in [-1, 1], and their labels."""
    items = []
    for item in read_stacked_digits(SourceOptions()).items:
        items.append(item)
        if len(items) == n:
            break
    up = np.stack([np.asarray(Image.fromarray(i.image).resize((32, 32), Image.Resampling.BICUBIC)) for i in items])
    return torch.from_numpy(up).permute(0, 3, 1, 2).float() / 127.5 - 1, np.array([i.label for i in items])


def test_judge_reads_real_stacked_digits(judge):
    clf, accuracy, held_out = judge
    assert accuracy > 0.97 and held_out == 297
    images, labels = stacked(600)
    digits = clf.predict(channel_features(images)).reshape(-1, 3) @ np.array([100, 10, 1])
    assert (digits == labels).mean() > 0.95  # all three channels right


def test_modes_and_kl_arithmetic(judge):
    clf, _, _ = judge
    images, labels = stacked(3000)
    report = mode_report(clf, images)
    hist = np.bincount(labels, minlength=1000)
    assert abs(report["modes"] - (hist > 0).sum()) <= 10  # the judge's few mistakes
    assert report["confident"] > 0.95  # real digits are read with confidence
    noise = torch.rand(300, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert mode_report(clf, noise)["confident"] < 0.5
    one = images[:1].expand(500, -1, -1, -1)  # a collapsed generator: one image
    collapsed = mode_report(clf, one)
    assert collapsed["modes"] == 1 and collapsed["kl"] == pytest.approx(math.log(1000))
    assert collapsed["kl_channels"] == pytest.approx(3 * math.log(10)) and collapsed["kl_dependence"] == 0


def test_kl_splits_into_channel_unevenness_and_dependence(judge):
    clf, _, _ = judge
    images, _ = stacked(3000)
    real = mode_report(clf, images)
    assert real["kl"] == pytest.approx(real["kl_channels"] + real["kl_dependence"])
    # drawn independently: close to the finite-sample floor, (1000 - 28) / (2 * 3000) = 0.16
    assert real["kl_channels"] < 0.02 and 0.1 < real["kl_dependence"] < 0.25
    # the same digit in all three channels: fully dependent, each channel as even as before
    copied = mode_report(clf, images[:, :1].expand(-1, 3, -1, -1))
    assert copied["kl"] == pytest.approx(copied["kl_channels"] + copied["kl_dependence"])
    assert copied["kl_channels"] < 0.02 and copied["kl_dependence"] == pytest.approx(2 * math.log(10), abs=0.05)


def test_draws_from_the_training_histogram_add_their_own_unevenness(judge):
    clf, _, _ = judge
    images, _ = stacked(3000)
    real = mode_report(clf, images)
    copy = copy_report(clf, images, 3000, draws=5)
    assert copy["draws"] == 5 and copy["samples"] == 3000 and copy["training_images"] == 3000
    assert copy["kl"] == pytest.approx(copy["kl_channels"] + copy["kl_dependence"])
    # the set's own KL (about (1000 - 1) / (2 * 3000) from sampling) again on top of it
    assert real["kl"] + 0.1 < copy["kl"] < 2 * real["kl"] + 0.1
    assert copy["modes"] < real["modes"]
    one = copy_report(clf, images[:1].expand(50, -1, -1, -1), 300, draws=2)
    assert one["modes"] == 1 and one["kl"] == pytest.approx(math.log(1000))


def test_stacked_source_labels_are_the_three_digits():
    from sklearn.datasets import load_digits
    digits = load_digits()
    item = next(iter(read_stacked_digits(SourceOptions()).items))
    assert item.image.shape == (8, 8, 3) and item.image.dtype == np.uint8
    r, g, b = (digits.target[np.argmin([np.abs(np.round(d * 255 / 16) - item.image[:, :, c]).sum()
                                        for d in digits.images])] for c in range(3))
    assert item.label == 100 * r + 10 * g + b


def quality_bench(tmp_path, out, *args):
    """`python -m benchmarks quality` on one process at a tiny size, working in tmp_path/work; must succeed."""
    r = run_module("benchmarks", "quality", "--nproc", 1, "--out", out, "--work", tmp_path / "work", *args,
                   env={"OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.benchmarks
def test_quality_bench_end_to_end_tiny(tmp_path, judge):
    out = tmp_path / "q.json"
    r = quality_bench(tmp_path, out, "--recipes", "vanilla", "--kimg", 0.064, "--samples", 200)
    doc = json.loads(out.read_text())
    case = doc["cases"]["vanilla"]
    assert case["steps"] == 2 and case["images"] == 64 and case["samples"] == 200
    # the figures are the judge's reading of the run's own G_ema samples (seed + 1, as the bench draws them)
    again = mode_report(judge[0], samples(tmp_path / "work" / "vanilla", 200, seed=1))
    assert {k: case[k] for k in again} == again
    assert doc["real"]["samples"] == 200 and doc["judge"]["held_out_accuracy"] > 0.97
    assert doc["training_copy"]["samples"] == 200 and doc["training_copy"]["training_images"] == 30_000
    assert 0 <= case["confident"] <= 1 and doc["real"]["confident"] > 0.95
    assert Image.open(out.with_suffix(".png")).size[0] > 0
    assert "| vanilla |" in r.stdout and "floor" in r.stdout and "training set's mode histogram" in r.stdout
    # --reuse judges the finished run again without training it again
    quality_bench(tmp_path, out, "--recipes", "vanilla", "--kimg", 0.064, "--samples", 100, "--reuse")
    again = json.loads(out.read_text())["cases"]["vanilla"]
    assert again["training_reused"] and again["train_seconds"] == case["train_seconds"] and again["samples"] == 100


@pytest.mark.benchmarks
def test_conditional_digits_bench_end_to_end_tiny(tmp_path, judge):
    from benchmarks.quality import class_samples
    from gan_dist.evaluation.digits import requested_report
    out = tmp_path / "c.json"
    r = quality_bench(tmp_path, out, "--recipes", "cond-digits", "--digits_kimg", 0.064, "--samples", 100)
    case = json.loads(out.read_text())["cases"]["cond-digits"]
    assert case["steps"] == 2 and "--cond" in case["flags"] and case["samples"] == 100
    # the figures are the judge's reading of 10 G_ema samples per digit (seed + 1, as the bench draws them)
    images, asked = class_samples(tmp_path / "work" / "cond-digits", 10, seed=1)
    assert asked.tolist() == [d for d in range(10) for _ in range(10)]
    again = json.loads(json.dumps(requested_report(judge[0], images, asked)))  # the JSON's string keys
    assert {k: case[k] for k in again} == again
    assert Image.open(out.with_name("c-cond.png")).size == (10 * 34 + 2, 10 * 34 + 2)  # a row of 10 per digit
    assert "| read as requested |" in r.stdout and "target >= 97% over all" in r.stdout
