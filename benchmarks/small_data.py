"""Small data: D memorising 500 digits, without augmentation, with DiffAugment and with ADA, on the same budget.

    python -m benchmarks small-data --steps 3000 --out runs/bench_small_data.json     # make bench-small-data
    python -m benchmarks small-data --steps 40 --checkpoints 2 --samples 500 --nproc 1 # a quick check

scikit-learn's 1,797 digits are split at random (--seed): --train_images of them (500) are packed
with `gan_dist.shard folder` at 32x32 and trained on; the others are packed the same way and kept
aside. Each case (--cases: none, diffaug, ada) trains the same recipe (--recipe, one of
`benchmarks quality`'s; default the modern one) for the same --steps through
the public CLI (torchrun, --nproc CPU processes). At each of its --checkpoints checkpoints the
run's D reads every training and every held-out image, unaugmented: the overfitting gap is the
mean D output on the training reals minus the mean on the held-out ones (D's outputs are logits;
a D that has memorised its training set scores them higher than unseen digits of the same
kind). ADA's p and r_t come from the run's metrics.jsonl. At the end the digit judge (an SVM fit
on real digits, gan_dist.evaluation.digits) reads --samples G_ema images: the share read with
probability >= 0.8, each digit's share and the smallest one, and the digit score.
Results go to --out (JSON, written after each case) and a Markdown table on stdout.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from benchmarks.quality import RECIPES, new_doc, run, samples, train, workspace
from gan_dist.evaluation.digits import CONFIDENT, digit_report
from gan_dist.evaluation.sample import checkpoint_config
from gan_dist.networks.models import build_models
from gan_dist.training.checkpoint import WEIGHT_FILES, list_checkpoints
from gan_dist.training.data import load_into_memory
from gan_dist.training.manifest import load_manifest

# the flags each case adds to the recipe's: ADA's p may cross [0, 1] in 20 kimg (StyleGAN2-ADA's 500 is for
# runs of thousands of kimg; a bench of a few hundred would leave p near 0)
CASES = {"none": ["--aug", "none"], "diffaug": ["--aug", "diffaug"], "ada": ["--aug", "ada", "--aug_kimg", "20"]}


def split_digits(train_images, seed):
    """(training indices, held-out indices) into scikit-learn's digits: a seeded random split."""
    from sklearn.datasets import load_digits
    order = np.random.default_rng(seed).permutation(len(load_digits().target))
    return np.sort(order[:train_images]), np.sort(order[train_images:])


def pack_digits(indices, out, log):
    """Pack these digits (8x8 PNGs in a folder, then `gan_dist.shard folder` at 32x32, as the digits pack);
    returns the images as floats in [-1, 1]."""
    from sklearn.datasets import load_digits
    images = np.round(load_digits().images * (255 / 16)).astype(np.uint8)
    folder = out.with_name(out.name + "-png")
    folder.mkdir(parents=True, exist_ok=True)
    for i in indices:
        Image.fromarray(images[i]).save(folder / f"digit{i:04d}.png")
    run([sys.executable, "-m", "gan_dist.shard", "folder", "--src", folder, "--out", out, "--size", 32,
         "--channels", 1, "--shard_size", 5000, "--workers", 1], log)
    return load_into_memory(load_manifest(str(out))[1])[0].float() / 127.5 - 1


@torch.no_grad()
def mean_d(checkpoint, images, batch_size=32):
    """The mean of D's outputs (logits) over images, with the checkpoint's D in eval mode, read in batches of
    `batch_size` (the run's batch per process, so D's minibatch std groups reals as in training); the last batch
    is filled up with the first images, whose second readings are left out."""
    _, D = build_models(checkpoint_config(checkpoint))
    D.load_state_dict(load_file(str(Path(checkpoint) / WEIGHT_FILES["D"])))
    D.eval()
    n = len(images)
    filled = images[torch.arange(-(-n // batch_size) * batch_size) % n]
    return float(torch.cat([D(x).float().flatten() for x in filled.split(batch_size)])[:n].mean())


def gap_over_time(run_dir, training, held_out, global_batch, batch_size):
    """For every checkpoint of the run: D's mean on the training and held-out reals, and their difference."""
    rows = []
    for step, path in list_checkpoints(run_dir):
        on_train, on_held_out = mean_d(path, training, batch_size), mean_d(path, held_out, batch_size)
        rows.append({"step": step, "kimg": step * global_batch / 1000, "D_train": on_train,
                     "D_held_out": on_held_out, "gap": on_train - on_held_out})
    return rows


def p_over_time(run_dir):
    """ADA's p (and r_t over each log interval) from the run's metrics.jsonl."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{"step": r["step"], "p": r["aug_p"], "r_t": r.get("aug_rt")} for r in rows if "aug_p" in r]


def markdown(doc):
    c, m = doc["config"], doc["machine"]
    lines = [(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}; {c['nproc']} CPU processes; "
              f"recipe {c['recipe']}, {c['steps']} steps of {c['global_batch']} images per case; "
              f"{doc['data']['training']} training digits, {doc['data']['held_out']} held out"),
             (f"judge: SVM on real digits, held-out accuracy {doc['judge']['held_out_accuracy']:.1%}; on the "
              f"training digits: {doc['data']['training_confident']:.1%} read with p >= {CONFIDENT}"), "",
             f"| --aug | gap at the end | gap / gap without | D on training reals | D on held-out | p at the end "
             f"| read with p >= {CONFIDENT} | smallest digit share | digit score | train wall |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    base = doc["cases"].get("none", {}).get("gap")
    for name, case in doc["cases"].items():
        end = case["gap_over_time"][-1]
        ratio = f"{case['gap'] / base:.2f}" if base else ""
        p = f"{case['p_over_time'][-1]['p']:.3f}" if case.get("p_over_time") else ""
        lines.append(f"| {name} | {case['gap']:.3f} | {ratio} | {end['D_train']:.3f} | {end['D_held_out']:.3f} | "
                     f"{p} | {case['confident']:.1%} | {min(case['class_shares']):.1%} | "
                     f"{case['digit_score']:.2f} | {case['train_seconds'] / 60:.1f} min |")
    lines.append("")
    for name, case in doc["cases"].items():
        lines.append(f"{name}, gap over time (kimg: gap): "
                     + ", ".join(f"{r['kimg']:g}: {r['gap']:.3f}" for r in case["gap_over_time"]))
        if case.get("p_over_time"):
            lines.append(f"{name}, p over time (kimg: p): " + ", ".join(
                f"{r['step'] * c['global_batch'] / 1000:g}: {r['p']:.3f}" for r in case["p_over_time"]))
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks small-data", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps each case trains for (the budget)")
    p.add_argument("--cases", nargs="+", choices=tuple(CASES), default=list(CASES), help="the --aug values to run")
    p.add_argument("--recipe", choices=tuple(RECIPES), default="modern", help="the recipe of `benchmarks quality`")
    p.add_argument("--train_images", type=int, default=500, help="digits trained on; the other digits are held out")
    p.add_argument("--checkpoints", type=int, default=10, help="checkpoints per run, where the gap is measured")
    p.add_argument("--nproc", type=int, default=2, help="training processes (torchrun, gloo on the CPU)")
    p.add_argument("--batch_size", type=int, default=32, help="per process")
    p.add_argument("--samples", type=int, default=10_000, help="G_ema images the judge reads per case")
    p.add_argument("--seed", type=int, default=0, help="the split, the training runs and the samples")
    p.add_argument("--flags", action="append", default=[], metavar="CASE=FLAGS",
                   help="extra trainer flags for one case, e.g. ada='--aug_target 0.5'")
    p.add_argument("--out", default="runs/bench_small_data.json", help="the results as JSON")
    p.add_argument("--work", default=None, help="keep shards and runs here (default: a temporary folder)")
    args = p.parse_args(argv)
    for name in ("steps", "checkpoints", "nproc", "batch_size", "samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not 1 <= args.train_images <= 1697:
        p.error(f"--train_images must be from 1 to 1697 (at least 100 of the 1,797 digits stay held out), "
                f"got {args.train_images}")
    args.train_flags = {}
    for item in args.flags:
        name, _, flags = item.partition("=")
        if name not in CASES:
            p.error(f"--flags {item!r}: expected CASE=FLAGS with CASE one of {', '.join(CASES)}")
        args.train_flags[name] = flags.split()
    return args


def main(argv=None):
    args = parse_args(argv)
    work, out, config = workspace(args, "gan-small-data-")
    global_batch = config["global_batch"]
    config.update(recipe_flags=RECIPES[args.recipe], case_flags=CASES)
    doc, clf = new_doc(config, args.seed)

    def save():  # after every case: a cut-short run keeps its figures
        out.write_text(json.dumps(doc, indent=2) + "\n")
    train_idx, held_idx = split_digits(args.train_images, args.seed)
    training = pack_digits(train_idx, work / "train32", work / "pack-train.log")
    held_out = pack_digits(held_idx, work / "held-out32", work / "pack-held-out.log")
    doc["data"] = {"training": len(training), "held_out": len(held_out),
                   "training_confident": digit_report(clf, training)["confident"]}
    save()
    every = max(1, args.steps // args.checkpoints)
    for name in args.cases:
        print(f"small-data: --aug {name}, {args.steps} steps", file=sys.stderr, flush=True)
        flags = [*RECIPES[args.recipe], *CASES[name], "--checkpointing_steps", every]
        trained = train(args, name, [str(f) for f in flags], work / "train32", 1, work / name,
                        args.steps * global_batch / 1000)
        gaps = gap_over_time(work / name, training, held_out, global_batch, args.batch_size)
        judged = digit_report(clf, samples(work / name, args.samples, args.seed + 1))
        doc["cases"][name] = {"gap": gaps[-1]["gap"], "gap_over_time": gaps, "p_over_time": p_over_time(work / name),
                              **judged, "smallest_class_share": min(judged["class_shares"]), **trained}
        save()
    doc["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    save()
    print(markdown(doc))
    return doc
