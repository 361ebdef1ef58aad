"""Mode coverage on stacked digits: the vanilla MLP, DCGAN and the modern recipe, trained for the same images
(`--recipes modern-dcgan` adds the modern preset on the DCGAN nets).

    python -m benchmarks quality --out bench_results/quality.json --kimg 480 --digits_kimg 500  # make bench-quality
    python -m benchmarks quality --recipes modern --kimg 50 --work runs/q         # one recipe, runs kept
    python -m benchmarks quality --recipes cond-digits --digits_kimg 500 --out bench_results/cond_digits.json

Stacked digits (`gan_dist.shard stacked-digits`) put three of scikit-learn's digits into the
R, G and B channels at 32x32: 1,000 modes. Each recipe is trained through the public CLI
(torchrun, --nproc CPU processes), sampled from its last checkpoint with gan_dist.sample
(G_ema), and judged as in VEEGAN / PacGAN / R3GAN: a digit classifier (an SVM fit on real
digits, its held-out accuracy reported) reads each channel of 26,000 samples; the report
gives the modes that got at least one sample, KL(mode histogram || uniform), split into the
channels' unevenness and the digits' dependence (they add up to it), and the share of
channels read with probability >= 0.8 (ambiguous digits raise the KL too). The same
judge on 26,000 real stacked images gives the floor a generator of the true distribution would
reach with this many samples; 26,000 draws from the judge's mode histogram of the 30,000
training images give what a generator that copies the training set's own (uneven) histogram
would reach. The `digits` case trains the same modern recipe on the ten plain digits and reports the
share of G_ema samples the classifier reads with probability >= 0.8 (and a grid of them beside --picture,
`-digits.png`). The `cond-digits` case (only when named) trains the same recipe class-conditionally (--cond) on the ten
digits and reports, per digit and over all, the share of G_ema samples drawn for that digit that the
classifier reads as it with probability >= 0.8 (a grid with a row per digit beside --picture, `-cond.png`).
Results go to --out (JSON, written after each case), a Markdown table and one PNG of the
recipes' sample grids side by side (--picture).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from benchmarks import ROOT
from gan_dist.benchkit import machine_info
from gan_dist.evaluation.digits import CONFIDENT, confident_share, copy_report, fit_judge, mode_report, requested_report
from gan_dist.evaluation.sample import latents, load_generator, resolve_checkpoint
from gan_dist.networks.models import generate
from gan_dist.training.checkpoint import read_meta
from gan_dist.training.data import load_into_memory
from gan_dist.training.manifest import load_manifest

# the modern recipe is what `--preset modern --size small` resolves to at 32 px (training/presets.py says where each
# value was measured); R1/R2 at 0.5, the weight its first tuning runs chose, for the other recipes
MODERN = ["--preset", "modern", "--size", "small", "--arch", "resnet"]
GAMMA = ["--r1_gamma", "0.5", "--r2_gamma", "0.5"]
RECIPES = {  # the flags each recipe adds to the common ones
    "vanilla": ["--preset", "vanilla"],
    "dcgan": ["--preset", "vanilla", "--arch", "dcgan"],
    "modern": MODERN,
    # the modern preset's loss, penalties, optimizer and schedules on the DCGAN nets (only when named)
    "modern-dcgan": ["--preset", "modern", "--arch", "dcgan", *GAMMA],
}
DEFAULT_RECIPES = ["vanilla", "dcgan", "modern", "digits"]
# the ten plain digits, 1 channel (--digits_kimg): the same modern recipe, unconditional and with --cond
DIGIT_CASES = {"digits": MODERN, "cond-digits": [*MODERN, "--cond"]}
COND_TARGET = (0.97, 0.90)  # the share read as the digit asked for: over all, and for every digit


# ---- the runs

def run(cmd, log):
    """Run cmd (output to log); returns its wall time; raises with the log's tail on failure."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1", "WANDB_MODE": "offline",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        r = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, check=False)
    if r.returncode:
        tail = Path(log).read_text()[-3000:]
        raise RuntimeError(f"{' '.join(map(str, cmd[:6]))} ... failed (exit {r.returncode}); {log}:\n{tail}")
    return time.perf_counter() - t0


def pack(source, out, channels, log):
    if not (out / "manifest.json").is_file():
        run([sys.executable, "-m", "gan_dist.shard", source, "--out", out, "--size", 32, "--channels", channels,
             "--shard_size", 5000, "--workers", 2], log)
    return out


def train(args, name, flags, data, channels, out, kimg, previous=None):
    """Train one recipe through torchrun; returns its figures: wall seconds, steps, images seen, images/s
    and the mean img/s the trainer logged. With `previous` (this case from an earlier --out) and a finished
    run in `out` made with the same steps and flags, the run and its figures are reused."""
    global_batch = args.batch_size * args.nproc
    steps = max(1, round(kimg * 1000 / global_batch))
    flags = [*flags, *args.train_flags.get(name, [])]
    if (previous and previous.get("steps") == steps and previous.get("flags") == flags
            and (out / "checkpoints" / f"checkpoint-{steps}").is_dir()):
        keys = ("train_seconds", "steps", "images", "images_per_s", "trainer_img_per_s", "load_avg_1m")
        return {**{k: previous[k] for k in keys}, "flags": flags, "training_reused": True}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           ROOT / "gan_dist" / "train.py", "--cpu", "--data", data, "--img_size", 32, "--channels", channels,
           "--batch_size", args.batch_size, "--n_cpu", 0, "--max_train_steps", steps, "--checkpointing_steps", steps,
           "--sample_interval", steps, "--log_steps", max(1, steps // 20), "--seed", args.seed,
           "--output_dir", out, "--report_to", "none", *flags]
    if out.exists():
        shutil.rmtree(out)
    seconds = run(cmd, out.parent / f"{name}.log")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["img_per_s"] for r in rows if "img_per_s" in r]
    return {"train_seconds": seconds, "steps": steps, "images": steps * global_batch,
            "images_per_s": steps * global_batch / seconds, "trainer_img_per_s": float(np.mean(speeds)) if speeds
            else None, "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, "flags": flags}


def samples(run_dir, n, seed):
    """n G_ema images (float, [-1, 1]) from the run's last checkpoint, via gan_dist.sample."""
    checkpoint = resolve_checkpoint(run_dir)
    G, _ = load_generator(checkpoint, ema=None)
    z = latents(n, read_meta(checkpoint)["gan_config"]["latent_dim"], seed)
    return generate(G, z, "cpu", batch_size=500).clamp(-1, 1)


def class_samples(run_dir, per_class, seed):
    """per_class G_ema images of each class of a conditional run's last checkpoint (the same latents for every
    class), and the digit each was drawn for: (float images in [-1, 1], digits)."""
    checkpoint = resolve_checkpoint(run_dir)
    G, _ = load_generator(checkpoint, ema=None)
    classes = read_meta(checkpoint)["gan_config"]["classes"]
    z = latents(per_class, read_meta(checkpoint)["gan_config"]["latent_dim"], seed).repeat(len(classes), 1)
    c = torch.arange(len(classes)).repeat_interleave(per_class)
    return generate(G, z, "cpu", batch_size=500, c=c).clamp(-1, 1), np.array([int(classes[k]) for k in c])


def grid(run_dir, path, log, n=64):
    """gan_dist.sample's grid of n images (a conditional G: n per class, a row each)."""
    run([sys.executable, "-m", "gan_dist.sample", "--checkpoint", run_dir, "--n", n, "--grid", path,
         "--seed", 1], log)
    return path


def side_by_side(grids, path):
    """The recipes' grids in one PNG, each with its name above."""
    images = [(name, Image.open(p).convert("RGB")) for name, p in grids]
    w, h = max(i.width for _, i in images), max(i.height for _, i in images)
    sheet = Image.new("RGB", (len(images) * (w + 10) + 10, h + 30), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (name, img) in enumerate(images):
        sheet.paste(img, (10 + k * (w + 10), 25))
        draw.text((10 + k * (w + 10), 6), name, fill="black")
    sheet.save(path)
    return path


def markdown(doc):
    m, judge = doc["machine"], doc["judge"]
    cfg = doc["config"]
    lines = [(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}; {cfg['nproc']} CPU processes, "
              f"{cfg['kimg']} kimg per stacked-digit recipe, {cfg['digits_kimg']} on the ten digits "
              f"(global batch {cfg['global_batch']})"),
             (f"judge: SVM on real digits, held-out accuracy {judge['held_out_accuracy']:.1%} "
              f"({judge['held_out']} digits)")]
    if any("modes" in c for c in doc["cases"].values()) or doc.get("real"):  # a stacked-digit recipe ran
        lines += ["", f"| recipe | modes (of 1,000) | KL ‖ uniform | channels read with p >= {CONFIDENT} | "
                  "train wall | images/s | steps |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    real, copy = doc.get("real"), doc.get("training_copy")
    if real:
        lines.append(f"| real stacked digits (floor) | {real['modes']} | {real['kl']:.3f} | {real['confident']:.1%} "
                     "| | | |")
    if copy:
        lines.append(f"| draws from the training set's mode histogram | {copy['modes']:.0f} | {copy['kl']:.3f} "
                     "| | | | |")
    for name, c in doc["cases"].items():
        if "modes" in c:
            lines.append(f"| {name} | {c['modes']} | {c['kl']:.3f} | {c['confident']:.1%} | "
                         f"{c['train_seconds'] / 60:.1f} min | {c['images_per_s']:.0f} | {c['steps']} |")
    for name, c in doc["cases"].items():
        if "class_shares" in c:
            lines.append(f"\n{name}: {c['confident']:.1%} of {c['samples']} G_ema samples classified with "
                         f"p >= {CONFIDENT} (real digits: {c.get('real_confident', float('nan')):.1%}; "
                         f"class shares {c['class_shares']}); "
                         f"{c['images'] / 1000:g} kimg in {c['train_seconds'] / 60:.1f} min, "
                         f"{c['images_per_s']:.0f} images/s")
    for name, c in doc["cases"].items():
        if "per_digit" in c:
            met = c["read_as_requested"] >= COND_TARGET[0] and c["lowest"] >= COND_TARGET[1]
            lines += [f"\n{name}: the share of G_ema samples drawn for each digit that the judge reads as that digit "
                      f"with p >= {CONFIDENT}; {c['images'] / 1000:g} kimg in {c['train_seconds'] / 60:.1f} min, "
                      f"{c['images_per_s']:.0f} images/s; target >= {COND_TARGET[0]:.0%} over all and every digit "
                      f">= {COND_TARGET[1]:.0%}: {'met' if met else 'not met'}", "",
                      "| digit | " + " | ".join(map(str, c["per_digit"])) + " | all |",
                      "| --- |" + " ---: |" * (len(c["per_digit"]) + 1),
                      "| read as requested | " + " | ".join(f"{v:.1%}" for v in c["per_digit"].values())
                      + f" | {c['read_as_requested']:.1%} |",
                      "| samples | " + " | ".join(map(str, c["samples_per_digit"].values())) + f" | {c['samples']} |"]
            if "spread_vs_real" in c:  # one image per digit reads perfectly: how varied each digit's samples are
                lines.append("| spread / real digits' | " + " | ".join(f"{v:.2f}" for v in c["spread_vs_real"].values())
                             + f" | lowest {c['lowest_spread']:.2f} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks quality", description=__doc__.split("\n")[0])
    p.add_argument("--recipes", nargs="+", choices=[*RECIPES, *DIGIT_CASES], default=DEFAULT_RECIPES,
                   help="digits: the modern recipe on the ten plain digits "
                        "(confidently classified share); cond-digits: the same with --cond (the share read as the "
                        "digit asked for, per digit)")
    p.add_argument("--kimg", type=float, default=480,
                   help="thousands of images each recipe trains on (480: the modern recipe's 30 minutes on 2 cores)")
    p.add_argument("--digits_kimg", type=float, default=None,
                   help="the same for the digits and cond-digits cases (default --kimg)")
    p.add_argument("--nproc", type=int, default=2, help="training processes (torchrun, gloo on the CPU)")
    p.add_argument("--batch_size", type=int, default=32, help="per process")
    p.add_argument("--samples", type=int, default=26_000,
                   help="generated images judged per recipe (cond-digits: a tenth of them per digit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flags", action="append", default=[], metavar="RECIPE=FLAGS",
                   help="extra trainer flags for one recipe, e.g. modern='--r1_gamma 0.1'")
    p.add_argument("--out", default="runs/bench_quality.json", help="the results as JSON")
    p.add_argument("--picture", default=None, help="the side-by-side grids (default: --out with .png)")
    p.add_argument("--work", default=None, help="keep shards and runs here (default: a temporary folder)")
    p.add_argument("--reuse", action="store_true",
                   help="keep the finished runs in --work that --out recorded with the same steps and flags "
                        "(their training figures too) and only judge them again")
    args = p.parse_args(argv)
    for name in ("nproc", "batch_size", "samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    args.digits_kimg = args.kimg if args.digits_kimg is None else args.digits_kimg
    for name in ("kimg", "digits_kimg"):
        if not getattr(args, name) > 0:
            p.error(f"--{name} must be > 0, got {getattr(args, name)}")
    args.train_flags = {}
    for item in args.flags:
        name, _, flags = item.partition("=")
        if name not in RECIPES and name not in DIGIT_CASES:
            p.error(f"--flags {item!r}: expected RECIPE=FLAGS with RECIPE one of "
                    f"{', '.join([*RECIPES, *DIGIT_CASES])}")
        args.train_flags[name] = flags.split()
    args.picture = args.picture or str(Path(args.out).with_suffix(".png"))
    return args


def workspace(args, prefix):
    """(work folder, --out's path, the config to record: the options but --work, and the global batch)."""
    work = Path(args.work or tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k not in ("work", "train_flags")}
    return work, out, {**config, "global_batch": args.batch_size * args.nproc}


def new_doc(config, seed):
    """(the results document: machine, config and the digit judge, the judge's classifier)."""
    clf, accuracy, n_held = fit_judge(seed)
    judge = {"classifier": "SVC(C=10, probability=True) on 1,500 real digits", "held_out_accuracy": accuracy,
             "held_out": n_held, "confident_at": CONFIDENT}
    return {"machine": machine_info(), "config": config, "cases": {}, "judge": judge}, clf


def main(argv=None):
    args = parse_args(argv)
    work, out, config = workspace(args, "gan-quality-")
    config["recipe_flags"] = {**RECIPES, **DIGIT_CASES}
    previous = json.loads(out.read_text())["cases"] if args.reuse and out.is_file() else {}
    doc, clf = new_doc(config, args.seed)

    def save():  # after every case: a cut-short run keeps its figures
        out.write_text(json.dumps(doc, indent=2) + "\n")
    stacked = [r for r in args.recipes if r in RECIPES]
    grids = []
    if stacked:
        data = pack("stacked-digits", work / "stacked32", 3, work / "pack-stacked.log")
        training_set = load_into_memory(load_manifest(str(data))[1])[0].float() / 127.5 - 1
        doc["real"] = mode_report(clf, training_set[:args.samples])
        doc["training_copy"] = copy_report(clf, training_set, args.samples, seed=args.seed)
        save()
    for name in args.recipes:
        kimg = args.digits_kimg if name in DIGIT_CASES else args.kimg
        print(f"quality: {name}, {kimg} kimg", file=sys.stderr, flush=True)
        if name == "digits":
            digits = pack("digits", work / "digits32", 1, work / "pack-digits.log")
            trained = train(args, name, DIGIT_CASES[name], digits, 1, work / name, kimg, previous.get(name))
            judged = confident_share(clf, samples(work / name, args.samples, args.seed + 1))
            real_digits = load_into_memory(load_manifest(str(digits))[1])[0].float() / 127.5 - 1
            judged["real_confident"] = confident_share(clf, real_digits)["confident"]  # the floor
            picture = Path(args.picture)
            judged["picture"] = str(grid(work / name, picture.with_name(f"{picture.stem}-digits.png"),
                                         work / f"{name}-sample.log"))
        elif name == "cond-digits":
            digits = pack("digits", work / "digits32", 1, work / "pack-digits.log")
            trained = train(args, name, DIGIT_CASES[name], digits, 1, work / name, kimg, previous.get(name))
            judged = requested_report(clf, *class_samples(work / name, max(1, args.samples // 10), args.seed + 1))
            picture = Path(args.picture)
            judged["picture"] = str(grid(work / name, picture.with_name(f"{picture.stem}-cond.png"),
                                         work / f"{name}-sample.log", n=10))  # a row of 10 per digit
        else:
            trained = train(args, name, RECIPES[name], data, 3, work / name, kimg, previous.get(name))
            judged = mode_report(clf, samples(work / name, args.samples, args.seed + 1))
            grids.append((name, grid(work / name, work / f"{name}.png", work / f"{name}-sample.log")))
        doc["cases"][name] = {**judged, **trained}
        save()
    if grids:
        doc["picture"] = str(side_by_side(grids, args.picture))
    doc["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    save()
    print(markdown(doc))
    return doc
