"""Every recipe at every precision, end to end through the public CLI: train, checkpoint, resume, sample.

    python -m gan_dist.smoke --out $OUT/smoke.json              # one CUDA GPU (launch/gpu_bench.sh)
    python -m gan_dist.smoke --cpu --img_size 32 --steps 4      # the same checks on the CPU

Each case trains half its steps, resumes from the checkpoint for the rest, then draws images
with `gan_dist.sample`. It passes when every process exits 0, the resume happened, every loss
is finite, the last checkpoint is there and the samples are neither blank nor all alike. The
`ddp` case trains on 2 processes of one machine (two torchrun nodes of one process each, so
both use the one GPU; gloo, since nccl refuses two ranks on one device) and checkpoints, which
checks that both ranks hold identical weights. Cases run side by side (--jobs): this measures
correctness, not speed.
"""
import argparse
import json
import math
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gan_dist.benchkit import machine_info, make_source_images, markdown_table, pack_sizes
from gan_dist.names import cores
from gan_dist.training.runlog import read_log

RECIPES = {  # name: (flags, largest image size it runs at here)
    "vanilla": (("--preset", "vanilla"), 128),
    "dcgan": (("--preset", "vanilla", "--arch", "dcgan"), 128),
    "modern": (("--preset", "modern"), 64),
}
PRECISIONS = ("no", "bf16", "fp16")
SAMPLES = 16
BLANK_STD = 2 / 255  # pixel spread at or under which an image counts as one flat colour


def _run(cmd, log, timeout):
    """Run cmd with its output in `log`; returns (exit code, output)."""
    with open(log, "w") as f:
        try:
            rc = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    return rc, Path(log).read_text(errors="replace")


def sample_check(folder):
    """Per-image pixel spread and spread across images of the PNGs in folder (both 0 for blank or identical)."""
    images = np.stack([np.asarray(Image.open(p), dtype=np.float32) / 255 for p in sorted(Path(folder).glob("*.png"))])
    return {"images": len(images), "pixel_std": float(images.std(axis=tuple(range(1, images.ndim))).mean()),
            "across_images_std": float(images.std(axis=0).mean())}


def finite_losses(run_dir):
    rows = read_log(run_dir)
    return len(rows) > 0 and all(math.isfinite(r[k]) for r in rows for k in ("loss_D", "loss_G")), rows


def train_args(shards, size, flags, steps, out_dir, cpu):
    """The trainer's arguments for one case (after `python -m gan_dist.train` or torchrun's script)."""
    return ["--data", shards, "--img_size", size, "--channels", 3, "--report_to", "none", "--output_dir", out_dir,
            "--max_train_steps", steps, "--log_steps", max(1, steps // 4), "--checkpointing_steps",
            max(1, steps // 2), "--sample_interval", steps, "--n_cpu", 0, *(["--cpu"] if cpu else []), *flags]


def banner(output):
    """The trainer's start-up line naming its processes, backend and device (None if it never started)."""
    return next((line.strip() for line in output.splitlines() if line.strip().startswith("processes")), None)


def recipe_case(work, shards, size, flags, steps, cpu, timeout):
    """Train steps/2, resume to `steps`, sample; returns the case's checks."""
    run_dir, t0 = work / "run", time.perf_counter()
    case = {"flags": list(flags), "img_size": size, "steps": steps}
    half = max(1, steps // 2)
    train = [sys.executable, "-m", "gan_dist.train"]
    rc1, out1 = _run([*train, *train_args(shards, size, flags, half, run_dir, cpu)], work / "train.log", timeout)
    rc2, out2 = _run([*train, *train_args(shards, size, flags, steps, run_dir, cpu), "--resume_from_checkpoint",
                      "latest"], work / "resume.log", timeout) if rc1 == 0 else (None, "")
    rc3, out3 = _run([sys.executable, "-m", "gan_dist.sample", "--checkpoint", run_dir, "--n", SAMPLES,
                      "--out_dir", work / "samples", "--device", "cpu" if cpu else "cuda"],
                     work / "sample.log", timeout) if rc2 == 0 else (None, "")
    finite, rows = finite_losses(run_dir)
    case.update(exit_codes=[rc1, rc2, rc3], resumed=f"resumed from {run_dir / 'checkpoints'}" in out2,
                finite=finite, checkpoint=(run_dir / "checkpoints" / f"checkpoint-{steps}").is_dir(),
                seconds=round(time.perf_counter() - t0, 1))
    case["banner"] = banner(out1)
    if rows and "gpu_mem_gb" in rows[-1]:
        case["gpu_mem_gb"] = max(r.get("gpu_mem_gb", 0.0) for r in rows)
    if rc3 == 0:
        case["samples"] = sample_check(work / "samples")
    case["ok"] = (case["exit_codes"] == [0, 0, 0] and case["resumed"] and finite and case["checkpoint"]
                  and case["samples"]["images"] == SAMPLES and case["samples"]["pixel_std"] > BLANK_STD
                  and case["samples"]["across_images_std"] > BLANK_STD / 4)
    if not case["ok"]:
        case["log_tail"] = (out3 or out2 or out1)[-2000:]
    return case


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_case(work, shards, size, flags, steps, cpu, timeout):
    """2 processes on this machine as two torchrun nodes of one process each (both on GPU 0), gloo."""
    run_dir, port, t0 = work / "run", free_port(), time.perf_counter()
    script = Path(__file__).resolve().parent / "train.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", 2, "--nproc_per_node", 1, "--master_addr",
           "127.0.0.1", "--master_port", port, "--node_rank", "RANK", script,
           *train_args(shards, size, [*flags, "--ddp_backend", "gloo", "--batch_size", 32], steps, run_dir, cpu)]
    logs = [work / f"rank{r}.log" for r in range(2)]
    procs = []
    for r in range(2):
        with open(logs[r], "w") as f:
            procs.append(subprocess.Popen([str(r) if c == "RANK" else str(c) for c in cmd], stdout=f,
                                          stderr=subprocess.STDOUT))
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append("timeout")
    out = logs[0].read_text(errors="replace")
    finite, _ = finite_losses(run_dir)
    case = {"flags": [*flags, "--ddp_backend", "gloo"], "img_size": size, "steps": steps, "exit_codes": codes,
            "banner": banner(out), "finite": finite, "seconds": round(time.perf_counter() - t0, 1),
            "checkpoint": (run_dir / "checkpoints" / f"checkpoint-{steps}").is_dir()}
    case["ok"] = codes == [0, 0] and finite and case["checkpoint"] and "processes 2" in (case["banner"] or "")
    if not case["ok"]:
        case["log_tail"] = out[-2000:] + logs[1].read_text(errors="replace")[-1500:]
    return case


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m gan_dist.smoke", description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="run on the CPU (default: the GPU, which must be there)")
    p.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                   help="--mixed_precision values (no = fp32)")
    p.add_argument("--ddp_precision", choices=(*PRECISIONS, "none"), default="bf16",
                   help="precision of the 2-process modern case; none skips it")
    p.add_argument("--img_size", type=int, default=128, help="image size (the modern recipe runs at most 64)")
    p.add_argument("--steps", type=int, default=100, help="training steps per case (half, then resumed)")
    p.add_argument("--n_images", type=int, default=512, help="source images the bench writes and packs")
    p.add_argument("--jobs", type=int, default=None, help="cases at a time (default: 1 on the CPU, 10 on a GPU)")
    p.add_argument("--timeout", type=float, default=600, help="seconds any one process may take")
    p.add_argument("--work", required=True, help="folder for the images, shards and runs")
    p.add_argument("--out", default=None, help="write the results here as JSON")
    args = p.parse_args(argv)
    if args.steps < 2:
        p.error("--steps must be >= 2 (half are trained, then resumed)")
    if not args.cpu and not torch.cuda.is_available():
        p.error("no CUDA device here (torch.cuda.is_available() is False); pass --cpu to run the checks on the CPU")
    args.jobs = args.jobs or (1 if args.cpu else 10)
    return args


def main(argv=None):
    args = parse_args(argv)
    work = Path(args.work).resolve()
    # cases share the cores: one torch thread pool per core each, not all of them in every process
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores() // args.jobs)))
    sizes = sorted({min(args.img_size, RECIPES[r][1]) for r in args.recipes} | {min(args.img_size, 64)})
    src = make_source_images(work / "source", args.n_images)
    shards = {s: d["png"] for s, d in pack_sizes(src, work, sizes, cores(), ("png",)).items()}
    jobs = {}
    for recipe in args.recipes:
        flags, largest = RECIPES[recipe]
        for mp in args.precisions:
            name = f"{recipe}_{'fp32' if mp == 'no' else mp}"
            size = min(args.img_size, largest)
            jobs[name] = (recipe_case, work / name, shards[size], size, (*flags, "--mixed_precision", mp))
    if args.ddp_precision != "none":
        size = min(args.img_size, 64)
        jobs["modern_ddp2_gloo"] = (ddp_case, work / "modern_ddp2_gloo", shards[size], size,
                                    (*RECIPES["modern"][0], "--mixed_precision", args.ddp_precision))
    doc = {"machine": machine_info(), "config": {k: v for k, v in vars(args).items() if k not in ("out", "work")},
           "cases": {}}

    def run(name):
        fn, folder, shard_dir, size, flags = jobs[name]
        folder.mkdir(parents=True, exist_ok=True)
        return name, fn(folder, shard_dir, size, flags, args.steps, args.cpu, args.timeout)
    with ThreadPoolExecutor(args.jobs) as pool:
        for name, case in pool.map(run, jobs):
            doc["cases"][name] = case
            print(f"  {name}: {'ok' if case['ok'] else 'FAILED'} ({case['seconds']} s)", file=sys.stderr, flush=True)
            if args.out:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(format_table(doc))
    failed = [n for n, c in doc["cases"].items() if not c["ok"]]
    if failed:
        sys.exit(f"error: {len(failed)} smoke case(s) failed: {', '.join(failed)} (logs under {work})")


def format_table(doc):
    rows = [[name, "yes" if c["ok"] else "NO", c["img_size"], c["steps"], ",".join(map(str, c["exit_codes"])),
             c.get("resumed", ""), c["finite"], f"{c['samples']['pixel_std']:.3f}" if "samples" in c else "",
             f"{c['gpu_mem_gb']:.2f}" if "gpu_mem_gb" in c else "", c["seconds"]] for name, c in doc["cases"].items()]
    columns = ["case", "ok", ">px", ">steps", "exits", "resumed", "finite", ">samples std", ">GPU GiB", ">s"]
    return "\n".join([f"device: {doc['machine']['device']}, torch {doc['machine']['torch']}", "",
                      *markdown_table(columns, rows)])


if __name__ == "__main__":
    main()
