"""The bench's `step` case: our trainer, the vanilla loop and a bare PyTorch loop, each in its own process.

All three train the vanilla MLP pair at batch 64 on the same images. The bare loop is
our models and losses with the trainer's Adam, batches indexed from a tensor in memory,
no Accelerate and no WebDataset: the trainer's images/s over the bare loop's is what our
machinery costs. This module's own entry point runs the bare loop:

    python -m benchmarks.step --data shards/bench64 --steps 100 --warmup 20 [--cpu] [--mixed_precision bf16]
"""
import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time

import torch

from benchmarks import ROOT
from gan_dist.training.runlog import read_log

BATCH = 64  # the vanilla recipe's --batch_size


def _run(cmd, timeout, env=None, allow=()):
    """Run cmd from the checkout; raises with its stderr's tail unless it exits 0 or with a code in `allow`."""
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, "WANDB_MODE": "disabled", **(env or {})}, cwd=ROOT)
    if res.returncode != 0 and res.returncode not in allow:
        raise RuntimeError(f"{' '.join(map(str, cmd[1:4]))} ... failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return res


def _last_json(stdout):
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def trainer_flags():
    """The flags `python -m gan_dist.train --help` lists (to skip cases this trainer cannot run)."""
    res = _run([sys.executable, "-m", "gan_dist.train", "--help"], timeout=120)
    return {word.strip("[],") for word in res.stdout.split() if word.startswith(("--", "[--"))} - {""}


def read_metrics(run_dir, warmup):
    """Sum up a run's training rows after step `warmup`: images/s, seconds per step (wall clock, and the GPU's from
    CUDA events), data-wait fraction, peak GPU memory."""
    rows = read_log(run_dir)
    prev, images, seconds, wait, mem, steps, first, gpu = 0, 0.0, 0.0, 0.0, None, 0, 0.0, None
    for row in rows:
        n = row["step"] - prev
        prev = row["step"]
        if row["step"] <= warmup:
            first += n * row["sec_per_step"]
            continue
        interval = n * row["sec_per_step"]
        images += n * row["global_batch"]
        seconds += interval
        wait += row["data_wait"] * interval
        steps += n
        if "gpu_mem_gb" in row:
            mem = max(mem or 0.0, row["gpu_mem_gb"])
        if "gpu_sec_per_step" in row:
            gpu = (gpu or 0.0) + n * row["gpu_sec_per_step"]
    if not seconds:
        raise RuntimeError(f"{run_dir}: no training rows after the {warmup} warm-up steps")
    # the warm-up steps' seconds hold the first batches and any compiling (--compile)
    out = {"images_per_s": images / seconds, "sec_per_step": seconds / steps, "data_wait": wait / seconds,
           "steps": steps, "warmup_s": first}
    if gpu is not None:  # CUDA events: the device's time per step, beside the wall clock's
        out["gpu_sec_per_step"] = gpu / steps
    if mem is not None:
        out["gpu_mem_gb"] = mem
    return out


def trainer_case(shard_dir, img_size, channels, steps, warmup, out_dir, cpu=True, extra=(), timeout=1800):
    """Run `python -m gan_dist.train` for warmup + steps and measure the steps after the warm-up.

    Metrics rows come every `warmup` steps, so the first row is the warm-up (start-up, first batches)
    and is left out; `extra` passes further flags (--mixed_precision, --cache_gb, --compile).
    """
    total = warmup * math.ceil((warmup + steps) / warmup)
    cmd = [sys.executable, "-m", "gan_dist.train", "--data", shard_dir, "--img_size", img_size, "--channels", channels,
           "--batch_size", BATCH, "--report_to", "none", "--output_dir", out_dir, "--max_train_steps", total,
           "--log_steps", warmup, "--checkpointing_steps", total + 1, "--sample_interval", total + 1,
           "--checkpoints_total_limit", 1, *(["--cpu"] if cpu else []), *extra]
    _run(cmd, timeout)
    return read_metrics(out_dir, warmup)


def vanilla_case(image_folder, img_size, channels, steps, warmup, out_dir, timeout=1800):
    """Run the vanilla loop (benchmarks/vanilla_loop.py) on the image folder for warmup + steps batches."""
    res = _run([sys.executable, "-m", "benchmarks.vanilla_loop", "--data", image_folder, "--img_size", img_size,
                "--channels", channels, "--max-batches", warmup + steps, "--warmup-batches", warmup,
                "--out", out_dir], timeout)
    result = _last_json(res.stdout)
    return {"images_per_s": result["images_per_s"], "steps": result["batches"] - warmup}


def bare_case(shard_dir, steps, warmup, cpu=True, mixed_precision="no", compile_mode=None, timeout=1800,
              profile_dir=None):
    """Run the bare PyTorch loop (this module's main) in a fresh process; with `profile_dir`, a torch.profiler
    trace of its first `steps` steps after the warm-up goes there (training.profiling)."""
    res = _run([sys.executable, "-m", "benchmarks.step", "--data", shard_dir, "--steps", steps,
                "--warmup", warmup, "--mixed_precision", mixed_precision, *(["--cpu"] if cpu else []),
                *(["--compile_mode", compile_mode] if compile_mode else []),
                *(["--profile", profile_dir] if profile_dir else [])], timeout)
    return _last_json(res.stdout)


def bare_loop(shard_dir, steps, warmup, device, mixed_precision="no", seed=0, compile_mode=None, profile_dir=None):
    """Train the MLP pair with plain PyTorch on batches held in memory; returns images/s after `warmup` steps.

    compile_mode: torch.compile G and D with this mode ("reduce-overhead" replays CUDA graphs).
    profile_dir: write a torch.profiler trace of the timed steps there (PROFILE_DIR/profile/)."""
    from gan_dist.networks.losses import d_loss, g_loss
    from gan_dist.networks.models import GANConfig, build_models
    from gan_dist.training.data import load_into_memory, to_device_float
    from gan_dist.training.manifest import load_manifest, shard_counts
    from gan_dist.training.profiling import StepProfiler
    from gan_dist.training.step import adam

    manifest, urls = load_manifest(shard_dir)
    images, _ = load_into_memory(urls, 2, shard_counts(manifest, urls))
    torch.manual_seed(seed)
    cfg = GANConfig("mlp", 100, manifest["size"], manifest["channels"])
    G, D = (net.to(device) for net in build_models(cfg))
    if compile_mode:
        G, D = (torch.compile(net, mode=compile_mode) for net in (G, D))
    opt_G, opt_D = (adam(net.parameters(), 2e-4, (0.5, 0.999), device) for net in (G, D))  # the trainer's
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    scaler = torch.amp.GradScaler(device.type, enabled=mixed_precision == "fp16")
    profiler = StepProfiler(profile_dir, steps if profile_dir else 0, warmup, device)
    events = [torch.cuda.Event(enable_timing=True) for _ in range(2)] if device.type == "cuda" else None
    t0, t_start = None, time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            t0 = time.perf_counter()
            warmup_s = t0 - t_start
            if events:
                events[0].record()
        if compile_mode:
            torch.compiler.cudagraph_mark_step_begin()  # last step's graph outputs are no longer read
        idx = torch.randint(len(images), (BATCH,))
        real_img = to_device_float(images[idx], device)
        gen_z = torch.randn(BATCH, cfg.latent_dim, device=device)
        # (1) D step
        with profiler.phase("D_phase"):
            with autocast():
                gen_img = G(gen_z)
                loss_D = d_loss(D(real_img), D(gen_img.detach()))
            opt_D.zero_grad(set_to_none=True)
            scaler.scale(loss_D).backward()
            scaler.step(opt_D)
        # (2) G step, D frozen as in the trainer
        with profiler.phase("G_phase"):
            D.requires_grad_(False)
            with autocast():
                loss_G = g_loss(D(gen_img))
            opt_G.zero_grad(set_to_none=True)
            scaler.scale(loss_G).backward()
            scaler.step(opt_G)
            scaler.update()
            D.requires_grad_(True)
        profiler.step()
    if events:
        events[1].record()
    _sync(device)
    seconds = time.perf_counter() - t0
    profiler.close()
    out = {"images_per_s": steps * BATCH / seconds, "sec_per_step": seconds / steps, "steps": steps,
           "loss_D": loss_D.item(), "loss_G": loss_G.item(), "device": str(device), "warmup_s": warmup_s}
    if events:  # CUDA events: the device's time per step, beside the wall clock's
        out["gpu_sec_per_step"] = events[0].elapsed_time(events[1]) / 1000 / steps
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.step", description="the bench's bare PyTorch loop")
    p.add_argument("--data", required=True, help="shard directory")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default="no")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU even if a GPU is present")
    p.add_argument("--compile_mode", default=None, help="torch.compile G and D in this mode, e.g. reduce-overhead")
    p.add_argument("--profile", default=None, help="write a profile of the timed steps to PROFILE/profile/")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    print(json.dumps(bare_loop(args.data, args.steps, args.warmup, device, args.mixed_precision,
                               compile_mode=args.compile_mode, profile_dir=args.profile)))


if __name__ == "__main__":
    main()
