"""FID and KID of a trained generator against the real images of a pack, with the protocol beside every figure.

    python -m gan_dist.evaluate --checkpoint runs/lfw --data shards/lfw                     # fid50k on a GPU
    accelerate launch -m gan_dist.evaluate --checkpoint runs/lfw --data shards/lfw --out fid.json
    python -m gan_dist.evaluate --checkpoint runs/demo --data shards/digits --cpu --num_gen 2000
    python -m gan_dist.evaluate --checkpoint runs/demo --data shards/digits --cpu --metrics digits  # no Inception

G_ema is scored when the checkpoint has it (--no-ema for the trained G), against every real
image in the pack unless --real_samples caps them (StyleGAN2-ADA's "full" protocol). The
result is printed as JSON and written to --out; figures are only comparable when the whole
protocol block matches (tool and weights, resize, sample counts, seed). On digit data,
`--metrics digits` adds (or, alone, replaces) a classifier-based score that needs no
Inception weights. A class-conditional generator (trained with --cond) draws its classes at the
pack's class frequencies; the figures come over all and per class (FID/KID of each class's
samples against its real images; for digits, the share read as the digit asked for).
"""
import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from gan_dist.evaluation.digits import CONFIDENT, digit_report, fit_judge, requested_report
from gan_dist.evaluation.metrics import MetricUnavailable, evaluate, format_result, inception_for_run
from gan_dist.evaluation.sample import SampleError, checkpoint_config, latents, load_generator, resolve_checkpoint
from gan_dist.networks.conditioning import classes_as_data, listed
from gan_dist.networks.models import generate
from gan_dist.training.checkpoint import CheckpointError, read_meta
from gan_dist.training.data import load_into_memory
from gan_dist.training.manifest import DataError, load_manifest

GPU_NUM_GEN, CPU_NUM_GEN = 50_000, 5_000


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m gan_dist.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--metrics", nargs="+", choices=("fid_kid", "digits"), default=["fid_kid"],
                   help="fid_kid: FID and KID (Inception); digits: for 1-channel digit data, the digit score, "
                        f"the share an SVM fit on real digits reads with probability >= {CONFIDENT}, and class shares "
                        "(a class-conditional G: also the share read as the digit asked for, per class)")
    p.add_argument("--checkpoint", required=True, help="a checkpoint-STEP directory, or a run directory (its latest)")
    p.add_argument("--data", required=True, help="the shard directory the generator was trained on")
    p.add_argument("--num_gen", type=int, default=None,
                   help=f"generated images (default {GPU_NUM_GEN:,} on a GPU, {CPU_NUM_GEN:,} on the CPU, where "
                        "Inception is slow; FIDs of different counts are not comparable)")
    p.add_argument("--real_samples", type=int, default=None, help="cap on real images (default: all of the pack)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="score G_ema (default: when the checkpoint has it) or, with --no-ema, the trained G")
    p.add_argument("--inception_weights", default=None,
                   help="Inception weights file (else $GAN_DIST_INCEPTION_WEIGHTS, else a verified download)")
    p.add_argument("--seed", type=int, default=0, help="draws the latents and KID's subsets")
    p.add_argument("--batch_size", type=int, default=64, help="images per forward pass, per process")
    p.add_argument("--n_cpu", type=int, default=2, help="workers decoding the real images")
    p.add_argument("--out", default=None, help="also write the result JSON to this file")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")
    args = p.parse_args(argv)
    for name in ("num_gen", "real_samples"):
        if getattr(args, name) is not None and getattr(args, name) < 2:
            p.error(f"--{name} must be >= 2, got {getattr(args, name)}")
    if args.batch_size < 1 or args.n_cpu < 0:
        p.error("--batch_size must be >= 1 and --n_cpu >= 0")
    return args


def run(args, accelerator, extractor):
    """Score the checkpoint: FID/KID with `extractor` on every rank (a collective) unless it is None, and the
    digit judge on the main process with --metrics digits; return the result dict."""
    checkpoint = resolve_checkpoint(args.checkpoint)
    meta, cfg = read_meta(checkpoint), checkpoint_config(checkpoint)
    G, used_ema = load_generator(checkpoint, args.ema, accelerator.device)
    num_gen = args.num_gen or (GPU_NUM_GEN if accelerator.device.type == "cuda" else CPU_NUM_GEN)
    result = dict(checkpoint=str(checkpoint), step=meta["global_step"], generator="G_ema" if used_ema else "G",
                  data=str(args.data), processes=accelerator.num_processes)
    gen_c = classes_as_data(pack_class_counts(args.data, cfg.classes), num_gen) if cfg.classes else None
    if cfg.classes:
        result["classes_drawn"] = "at the pack's class frequencies (images per class in its manifest)"
    if "digits" in args.metrics and cfg.channels != 1:  # on every rank: none waits for another
        raise SampleError(f"--metrics digits reads one-channel digits; this generator draws {cfg.channels} channels")
    asked = requested_digits(cfg.classes) if "digits" in args.metrics and cfg.classes else None
    if "digits" in args.metrics and accelerator.is_main_process:
        clf, accuracy, held_out = fit_judge(args.seed)
        images = generate(G, latents(num_gen, cfg.latent_dim, args.seed), accelerator.device, args.batch_size, gen_c)
        result["digits"] = {**digit_report(clf, images),
                            "judge": f"SVC(C=10) on 1,500 real digits, held-out accuracy {accuracy:.3f} on {held_out}",
                            "num_gen": num_gen}
        if gen_c is not None:  # the share read as the digit each sample was drawn for, with p >= CONFIDENT
            report = requested_report(clf, images, asked[gen_c.numpy()])
            result["digits"].update(read_as_requested=report["read_as_requested"],
                                    per_class={str(d): v for d, v in report["per_digit"].items()},
                                    lowest=report["lowest"],
                                    spread_vs_real={str(d): v for d, v in report["spread_vs_real"].items()},
                                    lowest_spread=report["lowest_spread"])
    if extractor is not None:
        result.update(fid_kid(args, accelerator, extractor, G, cfg, num_gen, gen_c))
    return result


def pack_class_counts(data, classes):
    """Images per class of the pack at `data`, which must record the generator's `classes` (SampleError if not)."""
    manifest, _ = load_manifest(data)
    if manifest.get("classes") != list(classes):
        held = f"the classes {listed(manifest['classes'])}" if "classes" in manifest else "no class labels"
        raise SampleError(f"--data {data} holds {held}, but this class-conditional generator draws "
                          f"{listed(list(classes))}; pass the pack it was trained on")
    return manifest["class_counts"]


def requested_digits(classes):
    """The digit each class asks for: the classes must be named 0 to 9 (SampleError if not)."""
    if sorted(classes) != [str(d) for d in range(10)]:
        raise SampleError(f"--metrics digits on a class-conditional generator needs the ten classes 0 to 9, the "
                          f"digits; this one draws {listed(list(classes))}")
    return np.array([int(name) for name in classes])


def fid_kid(args, accelerator, extractor, G, cfg, num_gen, gen_c=None):
    manifest, urls = load_manifest(args.data)
    num_real = min(args.real_samples or manifest["count"], manifest["count"])
    reals, labels = (lambda: load_into_memory(urls, args.n_cpu)[0]), None
    if gen_c is not None:  # each real image's class, for the per-class figures: the images are decoded either way
        (reals, labels), _ = load_into_memory(urls, args.n_cpu, num_classes=len(cfg.classes))
    result = evaluate(accelerator, G, extractor, reals, args.data, cfg.latent_dim, num_gen=num_gen,
                      num_real=num_real, batch_size=args.batch_size, seed=args.seed, classes=gen_c, real_labels=labels)
    if "per_class" in result:
        result["per_class"] = {cfg.classes[k]: v for k, v in result["per_class"].items()}
    result["protocol"] = {
        "tool": result["eval_tool"], "resize": result["eval_resize"], "num_gen": result["eval_num_gen"],
        "num_real": result["eval_num_real"], "real": "every image of the pack" if num_real == manifest["count"]
        else f"a fixed random subset of {num_real} of {manifest['count']}",
        "latents": f"N(0, I) from torch.Generator seed {args.seed}", "kid_subsets": 100,
        "kid_subset_size": min(1000, result["eval_num_gen"], result["eval_num_real"])}
    return result


def main(argv=None):
    args = parse_args(argv)
    torch.backends.cudnn.benchmark = True  # the same shapes in every batch: cuDNN's fastest algorithms pay off
    accelerator = Accelerator(cpu=args.cpu)
    try:
        resolve_checkpoint(args.checkpoint), load_manifest(args.data)  # fail fast, before Inception loads
        extractor = None
        if "fid_kid" in args.metrics:
            extractor, why_not = inception_for_run(accelerator, args.inception_weights)
            if extractor is None:
                raise MetricUnavailable(f"{why_not}; or score digit data with --metrics digits alone")
        result = run(args, accelerator, extractor)
    except (MetricUnavailable, SampleError, CheckpointError, DataError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    if accelerator.is_main_process:
        if "eval_tool" in result:
            print(format_result(result), file=sys.stderr)
        text = json.dumps(result, indent=2)
        print(text)
        if args.out:
            tmp = Path(args.out).with_name(f".{Path(args.out).name}.partial")
            tmp.write_text(text + "\n")
            os.replace(tmp, args.out)
    accelerator.end_training()


if __name__ == "__main__":
    main()
