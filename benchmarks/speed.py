"""Speed of our input path and trainer against the vanilla loop, measured side by side on this machine.

    python -m benchmarks all --out runs/bench.json        # what `make bench` runs (CPU, 5-10 min on 2 cores)
    python -m benchmarks data --sizes 64 128              # loader images/s only
    python -m benchmarks step --img_size 128              # trainer vs the vanilla loop vs a bare loop
    python -m benchmarks step --data shards/lfw           # on shards of your own
    python -m benchmarks gpu --out $OUT/bench_gpu.json    # one CUDA GPU: data paths, fp16, --compile

Every figure is a ratio of two cases measured in the same run on the same machine. Without
--data or --src the bench writes its own source images (random 250x250 crops of
scikit-image's bundled photos, stored as JPEG like LFW) and packs them at each size.
The results are printed as Markdown tables and written as JSON (--out): each case's
images_per_s, the ratios with the cases they divide, and the machine they ran on.
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

import torch

from benchmarks import data as bench_data
from benchmarks import step as bench_step
from gan_dist.benchkit import machine_info, make_source_images, markdown_table, pack_sizes
from gan_dist.names import FORMATS, cores
from gan_dist.training.manifest import load_manifest

COMMANDS = ("data", "step", "all", "gpu")
TARGETS = {  # printed beside the ratios, never asserted
    "data/memory_vs_vanilla_128/per_core": 10.0,
    **{f"data/stream_{fmt}_vs_vanilla_128/per_core": 10.0 for fmt in FORMATS},
    "step/trainer_vs_bare": 0.95,
    "gpu/trainer_bf16_vs_vanilla": 20.0,
}
GPU_IMAGES_PER_S_TARGET = 30_000  # the vanilla MLP at 128x128, bf16, batch 64, one H100-class GPU
PRECISIONS = ("no", "bf16", "fp16")


class Results:
    """Cases and ratios of one bench run; written to `out` after every case so a cut-short run keeps its figures."""

    def __init__(self, out, config):
        self.out = Path(out) if out else None
        self.doc = {"machine": machine_info(), "config": config, "cases": {}, "ratios": {}}

    @property
    def cases(self):
        return self.doc["cases"]

    def add(self, name, case):
        if hasattr(os, "getloadavg"):  # other work on the machine skews a case: keep the evidence with it
            case["load_avg_1m"] = os.getloadavg()[0]
        self.cases[name] = case
        print(f"  {name}: {case['images_per_s']:.0f} images/s", file=sys.stderr, flush=True)
        self.save()

    def ratio(self, name, num, den, key="images_per_s"):
        """Add cases[num][key] / cases[den][key] as `name` (skipped when either case is missing)."""
        if num not in self.cases or den not in self.cases:
            return
        self.doc["ratios"][name] = {"value": self.cases[num][key] / self.cases[den][key], "num": num, "den": den,
                                    "key": key, "target": TARGETS.get(name)}
        self.save()

    def save(self):
        if self.out:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(json.dumps(self.doc, indent=2) + "\n")

    def finish(self):
        if hasattr(os, "getloadavg"):
            self.doc["machine"]["load_average_end"] = list(os.getloadavg())
        self.save()
        print(format_tables(self.doc))


def format_tables(doc):
    """The run as Markdown: the machine, a table of cases and a table of ratios with their targets."""
    m = doc["machine"]

    def opt(c, key, fmt):
        return format(c[key], fmt) if key in c else ""
    cases = [[name, f"{c['images_per_s']:.0f}", opt(c, "images_per_s_per_core", ".0f"), opt(c, "data_wait", ".1%"),
              opt(c, "gpu_mem_gb", ".2f"), opt(c, "load_avg_1m", ".1f"), c.get("what", "")]
             for name, c in doc["cases"].items()]
    ratios = [[name, f"{r['value']:.2f}×", f"≥ {r['target']:g}×" if r["target"] else ""]
              for name, r in doc["ratios"].items()]
    return "\n".join([f"machine: {m['cpu']}, {m['cores']} cores, {m['device']}, torch {m['torch']}", "",
                      *markdown_table(["case", ">images/s", ">per core", ">data wait", ">GPU GiB", ">load", "what"],
                                      cases),
                      "", "load: the 1-minute load average as the case ended (this machine's cores: "
                      f"{m['cores']}; more means other work shared them)", "",
                      *markdown_table(["ratio", ">value", ">target"], ratios)])


# ---- preparing the images and shards

def prepare(args, work, data_sizes, step_sizes):
    """Return (shard dirs {size: {format: dir}}, image folder for the vanilla pipeline by size, channels).

    The data case's sizes get every storage format; a size only the step case uses gets PNG."""
    if args.data:
        manifest, _ = load_manifest(args.data)
        folder = bench_data.unpack_to_folder(args.data, work / "vanilla_images")
        return ({manifest["size"]: {manifest.get("image_format", "png"): Path(args.data)}},
                {manifest["size"]: folder}, manifest["channels"])
    src = Path(args.src) if args.src else None
    if src is None:
        print(f"writing {args.n_images} source images ({args.src_size}x{args.src_size} JPEG) ...", file=sys.stderr)
        src = make_source_images(work / "source", args.n_images, args.src_size)
    print(f"packing {src} at {sorted(data_sizes | step_sizes)} px ...", file=sys.stderr, flush=True)
    shards = pack_sizes(src, work, sorted(data_sizes), cores(), args.formats)
    shards.update(pack_sizes(src, work, sorted(step_sizes - data_sizes), cores(), ("png",)))
    return shards, {size: src for size in shards}, 3


# ---- the cases

def run_data(res, shards, folders, channels, seconds, device=None):
    """The data case at every size: our streamed (each format) and in-memory paths versus the vanilla pipeline."""
    for name, case in bench_data.data_cases(shards, folders, seconds, channels, device).items():
        res.add(name, case)
    for size in sorted(shards):
        ours = [f"stream_{fmt}" for fmt in shards[size]] + ["stream_jpg_on_device", "memory"]
        for path in ours:
            res.ratio(f"data/{path}_vs_vanilla_{size}", f"data/{path}_{size}", f"data/vanilla_{size}")
            res.ratio(f"data/{path}_vs_vanilla_{size}/per_core", f"data/{path}_{size}", f"data/vanilla_{size}",
                      key="images_per_s_per_core")
        res.ratio(f"data/tar_ours_vs_webdataset_{size}", f"data/tar_ours_{size}", f"data/tar_webdataset_{size}")


def best_of(runs):
    """The fastest of repeated runs of a case, with every run's images/s kept: other work on the machine
    only ever slows a run down, so the fastest is the closest to what the code itself costs."""
    best = max(runs, key=lambda r: r["images_per_s"])
    return {**best, "runs": [r["images_per_s"] for r in runs]}


def run_step(res, work, shard_dir, folder, img_size, channels, steps, warmup, vanilla_steps, repeats=1):
    """The step case on the CPU: trainer (in memory and streamed), the vanilla loop, the bare loop.
    The bare loop and the trainer, whose ratio is our overhead, run `repeats` times each, interleaved."""
    common = (shard_dir, img_size, channels, steps, warmup)
    bare, trainer = [], []
    for i in range(repeats):
        bare.append(bench_step.bare_case(shard_dir, steps, warmup, cpu=True))
        trainer.append(bench_step.trainer_case(*common, work / f"run_memory{i}", cpu=True))
    best = f" (best of {repeats})" if repeats > 1 else ""
    res.add("step/bare", {**best_of(bare), "what": "our models + losses, plain PyTorch, batches in memory" + best})
    res.add("step/trainer", {**best_of(trainer), "what": "python -m gan_dist.train --cpu, data in memory" + best})
    res.add("step/trainer_streamed", {**bench_step.trainer_case(*common, work / "run_stream", cpu=True,
                                                                extra=("--cache_gb", "0")),
                                      "what": "python -m gan_dist.train --cpu --cache_gb 0 (2 workers)"})
    res.add("step/vanilla", {**bench_step.vanilla_case(folder, img_size, channels, vanilla_steps, warmup,
                                                     work / "vanilla_out"),
                            "what": "the vanilla loop (benchmarks/vanilla_loop.py), ImageFolder, 2 workers"})
    res.ratio("step/trainer_vs_vanilla", "step/trainer", "step/vanilla")
    res.ratio("step/trainer_vs_bare", "step/trainer", "step/bare")
    res.ratio("step/trainer_streamed_vs_bare", "step/trainer_streamed", "step/bare")


def gpu_cases(has_compile):
    """[(case name, trainer flags)] for the GPU run: every precision, with --compile when the trainer has it."""
    cases = []
    for compile_ in ((False, True) if has_compile else (False,)):
        for mp in PRECISIONS:
            name = f"gpu/trainer_{'fp32' if mp == 'no' else mp}{'_compile' if compile_ else ''}"
            cases.append((name, ("--mixed_precision", mp, *(("--compile",) if compile_ else ()))))
    return cases


STREAMED_GPU_CASES = {  # name: (shard format, trainer flags): bf16 with the data read from the shards every step
    "gpu/trainer_bf16_streamed_npy": ("npy", ("--mixed_precision", "bf16", "--cache_gb", "0")),
    "gpu/trainer_bf16_streamed_jpg_on_device": ("jpg", ("--mixed_precision", "bf16", "--cache_gb", "0",
                                                        "--decode_on_device")),
}


def run_gpu(res, work, shard_dir, folder, img_size, channels, steps, warmup, vanilla_steps, streamed=None):
    """The step case on one CUDA GPU: the vanilla loop, bare loops, the trainer at fp32/bf16/fp16, streamed
    from `streamed` shards ({format: dir}) where given, then with --compile (last: compiling takes longest)."""
    has_compile = "--compile" in bench_step.trainer_flags()
    if not has_compile:
        print("note: `python -m gan_dist.train --help` lists no --compile; skipping the compile cases",
              file=sys.stderr)
    res.doc["config"].update(compile_cases=has_compile, gpu_images_per_s_target=GPU_IMAGES_PER_S_TARGET)
    res.add("gpu/vanilla", {**bench_step.vanilla_case(folder, img_size, channels, vanilla_steps, warmup,
                                                    work / "vanilla_out"),
                           "what": "the vanilla loop on the GPU (fp32, ImageFolder, 2 workers)"})
    for mp in ("no", "bf16"):
        tag = "fp32" if mp == "no" else mp
        res.add(f"gpu/bare_{tag}", {**bench_step.bare_case(shard_dir, steps, warmup, cpu=False, mixed_precision=mp),
                                    "what": f"plain PyTorch loop, {tag}"})

    def trainer(name, shards, flags):
        res.add(name, {**bench_step.trainer_case(shards, img_size, channels, steps, warmup,
                                                 work / name.replace("/", "_"), cpu=False, extra=flags),
                       "what": "python -m gan_dist.train " + " ".join(flags)})
    cases = gpu_cases(has_compile)
    for name, flags in (c for c in cases if "--compile" not in c[1]):
        trainer(name, shard_dir, flags)
    for name, (fmt, flags) in STREAMED_GPU_CASES.items():
        if fmt in (streamed or {}):
            trainer(name, streamed[fmt], flags)
            res.ratio(f"{name}_vs_bf16", name, "gpu/trainer_bf16")
    for name, flags in (c for c in cases if "--compile" in c[1]):
        trainer(name, shard_dir, flags)
    try:  # optional: CUDA graphs through torch.compile; a failure here is a finding, not the end of the run
        res.add("gpu/bare_bf16_cudagraphs", {**bench_step.bare_case(shard_dir, steps, warmup, cpu=False,
                                                                    mixed_precision="bf16",
                                                                    compile_mode="reduce-overhead"),
                                             "what": "plain PyTorch loop, bf16, torch.compile(mode='reduce-overhead')"})
        res.ratio("gpu/bare_bf16_cudagraphs_vs_bare_bf16", "gpu/bare_bf16_cudagraphs", "gpu/bare_bf16")
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        res.doc["errors"] = {**res.doc.get("errors", {}), "gpu/bare_bf16_cudagraphs": str(e)[-2000:]}
        res.save()
    res.ratio("gpu/trainer_bf16_vs_vanilla", "gpu/trainer_bf16", "gpu/vanilla")
    res.ratio("gpu/trainer_fp32_vs_vanilla", "gpu/trainer_fp32", "gpu/vanilla")
    for tag in ("fp32", "bf16"):
        res.ratio(f"gpu/trainer_{tag}_vs_bare_{tag}", f"gpu/trainer_{tag}", f"gpu/bare_{tag}")
    for tag in ("bf16", "fp16"):
        res.ratio(f"gpu/trainer_{tag}_vs_fp32", f"gpu/trainer_{tag}", "gpu/trainer_fp32")
        res.ratio(f"gpu/trainer_{tag}_compile_vs_{tag}", f"gpu/trainer_{tag}_compile", f"gpu/trainer_{tag}")
    res.ratio("gpu/trainer_fp32_compile_vs_fp32", "gpu/trainer_fp32_compile", "gpu/trainer_fp32")


# ---- command line

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    p.add_argument("what", choices=COMMANDS,
                   help="data: loaders; step: training steps on the CPU; all: both; gpu: step cases on one CUDA GPU")
    p.add_argument("--data", default=None, help="run on these shards (their size) instead of the bench's own images")
    p.add_argument("--src", default=None,
                   help="source images to pack at --sizes: a folder with one or more subfolders of images "
                        "(what torchvision's ImageFolder reads); default: the bench writes its own")
    p.add_argument("--out", default=None, help="write the results here as JSON")
    p.add_argument("--work", default=None, help="keep images, shards and runs here (default: a temporary folder)")
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="data case image sizes (default 64 128; gpu: 128)")
    p.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS),
                   help="shard formats the data case streams (gan_dist.shard --format)")
    p.add_argument("--img_size", type=int, default=None,
                   help="step case image size (default 64 on the CPU, where 128 takes 4x longer; gpu: 128)")
    p.add_argument("--n_images", type=int, default=2048, help="source images the bench writes")
    p.add_argument("--src_size", type=int, default=250, help="side of the source images the bench writes (LFW: 250)")
    p.add_argument("--seconds", type=float, default=None, help="timed seconds per data case (default 5; gpu: 3)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per step case (default 100; gpu: 500)")
    p.add_argument("--vanilla_steps", type=int, default=None,
                   help="timed batches of the vanilla loop (default: --steps; gpu: 100)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 20; gpu: 100)")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs of the CPU step case's bare loop and trainer, interleaved; the fastest of each counts")
    args = p.parse_args(argv)
    gpu = args.what == "gpu"
    args.sizes = args.sizes or ([128] if gpu else [64, 128])
    args.img_size = args.img_size or (128 if gpu else 64)
    args.seconds = args.seconds or (3.0 if gpu else 5.0)
    args.steps = args.steps or (500 if gpu else 100)
    args.warmup = args.warmup or (100 if gpu else 20)
    args.vanilla_steps = args.vanilla_steps or (100 if gpu else args.steps)
    for name in ("n_images", "src_size", "steps", "warmup", "vanilla_steps", "img_size", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.n_images < 2 * bench_data.BATCH and not args.data:
        p.error(f"--n_images must be at least {2 * bench_data.BATCH} (two batches of {bench_data.BATCH})")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.what == "gpu" and not torch.cuda.is_available():
        sys.exit("error: `benchmarks gpu` needs a CUDA device and torch.cuda.is_available() is False here; "
                 "run `python -m benchmarks all` for the CPU figures")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gan-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        data_case, step_case = args.what != "step", args.what != "data"
        data_sizes = set(args.sizes) if data_case else set()
        shards, folders, channels = prepare(args, work, data_sizes, {args.img_size} if step_case else set())
        img_size = next(iter(shards)) if args.data else args.img_size
        res = Results(args.out, {k: v for k, v in vars(args).items() if k not in ("out", "work")})
        res.doc["config"].update(img_size=img_size, channels=channels, batch_size=bench_data.BATCH)
        if data_case:
            run_data(res, {s: d for s, d in shards.items() if args.data or s in args.sizes}, folders, channels,
                     args.seconds, device="cuda" if args.what == "gpu" else None)
        if step_case:
            by_format = shards[img_size]
            step_args = (res, work, by_format.get("png", next(iter(by_format.values()))), folders[img_size],
                         img_size, channels, args.steps, args.warmup, args.vanilla_steps)
            if args.what == "gpu":
                run_gpu(*step_args, streamed=by_format)
            else:
                run_step(*step_args, repeats=args.repeats)
        res.doc["seconds"] = time.perf_counter() - t0
        res.finish()
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
