"""What launch/gpu_bench.sh measures on one CUDA GPU before its smoke part, written as JSON after every case.

    python -m benchmarks.gpu_session --out $OUT/gpu_session.json     # one CUDA GPU
    python -m benchmarks.gpu_session --cpu --out runs/dry/gpu.json   # the dry run: every case, tiny, on the CPU

In order:
  1. environment: nvidia-smi's essentials (GPU, driver, CUDA, clocks, power, memory, MIG), torch, CUDA
     and cuDNN builds, accelerate, Python, the host's load;
  2. speed: the trainer and the bare loop at fp32 and bf16 (the vanilla MLP, batch 64, data in memory),
     each case run --repeats times, interleaved (A B C D A B C D ...) so a change of clocks or load falls
     on every case alike; images/s and seconds per step by the wall clock beside the GPU's own time per
     step from CUDA events;
  3. profiles: torch.profiler traces of the trainer at fp32 and bf16 and of the bare bf16 loop
     (--profile_steps; Chrome traces and key_averages tables beside the JSON, under profiles/);
  4. sizes: the GPU columns of the size table (images/s, peak memory per modern size at 64 and 128 px)
     wait for the modern sizes, which the trainer does not have yet: recorded as skipped;
  5. resume: a run trained straight through against the same run stopped halfway and resumed, on the
     GPU: the losses logged after the resume and the final weights must be bit-identical.
Each case that fails is recorded with its error and the session goes on.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import step as bench_step
from gan_dist.benchkit import machine_info, make_source_images, pack_sizes
from gan_dist.names import cores
from gan_dist.training.runlog import read_log

SMI_FIELDS = ("name", "driver_version", "memory.total", "memory.used", "power.limit", "power.draw",
              "clocks.sm", "clocks.max.sm", "clocks.mem", "temperature.gpu", "utilization.gpu", "pstate",
              "persistence_mode", "compute_mode", "mig.mode.current")
SPEED_CASES = (  # name, kind, --mixed_precision
    ("trainer_fp32", "trainer", "no"), ("bare_fp32", "bare", "no"),
    ("trainer_bf16", "trainer", "bf16"), ("bare_bf16", "bare", "bf16"))
RESUME_KEYS = ("loss_D", "loss_G", "D_real", "D_fake")


def nvidia_smi():
    """nvidia-smi's essentials per GPU, and the CUDA version the driver supports; {"absent": why} without it."""
    try:
        query = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(SMI_FIELDS)}", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30, check=True).stdout
        full = subprocess.run(["nvidia-smi", "-q"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return {"absent": f"{type(e).__name__}: {e}"[:300]}
    gpus = [dict(zip(SMI_FIELDS, (v.strip() for v in line.split(",")))) for line in query.splitlines() if line]
    cuda = [line.split(":", 1)[1].strip() for line in full.splitlines() if line.strip().startswith("CUDA Version")]
    return {"gpus": gpus, "driver_cuda": cuda[0] if cuda else None}


def environment():
    import accelerate
    env = {"machine": machine_info(), "python": platform.python_version(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
           "accelerate": accelerate.__version__, "cpu_count": os.cpu_count(), "nvidia_smi": nvidia_smi()}
    if hasattr(os, "getloadavg"):
        env["load_average"] = list(os.getloadavg())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["device"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                         "memory_gib": props.total_memory / 2**30, "multiprocessors": props.multi_processor_count}
    return env


class Session:
    """The session's JSON document, written after every case."""

    def __init__(self, out, config):
        self.out = Path(out)
        self.doc = {"environment": environment(), "config": config, "speed": {}, "profiles": {},
                    "sizes": {"skipped": "the size table's modern sizes do not exist in the trainer yet"},
                    "resume": {}, "errors": {}}
        self.save()

    def save(self):
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.doc["load_average_now"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        self.out.write_text(json.dumps(self.doc, indent=2) + "\n")

    def attempt(self, part, name, fn):
        """Run one case; its result or its error goes into the document, which is written either way."""
        t0 = time.perf_counter()
        try:
            result = fn()
        except (RuntimeError, OSError, ValueError, KeyError, subprocess.TimeoutExpired) as e:
            self.doc["errors"][f"{part}/{name}"] = str(e)[-2000:]
            result = None
            print(f"  {part}/{name}: FAILED", file=sys.stderr, flush=True)
        else:
            print(f"  {part}/{name}: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        self.save()
        return result


def speed(session, shards, size, args, work):
    """Each case --repeats times, interleaved; every run kept, the median beside them."""
    cpu = args.cpu
    for i in range(args.repeats):
        for name, kind, mp in SPEED_CASES:
            def run(name=name, kind=kind, mp=mp):
                if kind == "bare":
                    return bench_step.bare_case(shards, args.steps, args.warmup, cpu=cpu, mixed_precision=mp)
                return bench_step.trainer_case(shards, size, 3, args.steps, args.warmup, work / f"{name}_{i}", cpu=cpu,
                                               extra=("--mixed_precision", mp))
            result = session.attempt("speed", f"{name}#{i}", run)
            if result is not None:
                case = session.doc["speed"].setdefault(name, {"runs": []})
                case["runs"].append({k: result[k] for k in ("images_per_s", "sec_per_step", "gpu_sec_per_step")
                                     if k in result} | {"order": i})
                for key in ("images_per_s", "sec_per_step", "gpu_sec_per_step"):
                    values = sorted(r[key] for r in case["runs"] if key in r)
                    if values:
                        case[f"median_{key}"] = values[len(values) // 2]
                session.save()


def profiles(session, shards, size, args, work, folder):
    """Traces of the trainer at fp32 and bf16 and of the bare bf16 loop, copied beside the JSON."""
    for name, mp in (("trainer_fp32", "no"), ("trainer_bf16", "bf16")):
        def run(name=name, mp=mp):
            run_dir = work / f"profile_{name}"
            bench_step.trainer_case(shards, size, 3, args.profile_steps, args.warmup, run_dir, cpu=args.cpu,
                                    extra=("--mixed_precision", mp, "--profile_steps", args.profile_steps,
                                           "--profile_warmup", args.warmup))
            return _keep(run_dir / "profile", folder / name)
        session.doc["profiles"][name] = session.attempt("profiles", name, run)

    def bare():
        bench_step.bare_case(shards, args.profile_steps, args.warmup, cpu=args.cpu, mixed_precision="bf16",
                             profile_dir=work / "profile_bare_bf16")
        return _keep(work / "profile_bare_bf16" / "profile", folder / "bare_bf16")
    session.doc["profiles"]["bare_bf16"] = session.attempt("profiles", "bare_bf16", bare)
    session.save()


def _keep(src, dest):
    if not (src / "trace.json").is_file():
        raise RuntimeError(f"no trace in {src}")
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest)
    return {"trace": str(dest / "trace.json"), "table": str(dest / "key_averages.txt"),
            "trace_mb": (dest / "trace.json").stat().st_size / 2**20}


def resume(session, shards, size, args, work):
    """A run of 2N steps against N steps then N more after a resume: losses and weights bit for bit."""
    n = args.resume_steps
    common = ["--data", shards, "--img_size", size, "--channels", 3, "--batch_size", bench_step.BATCH,
              "--report_to", "none", "--log_steps", max(n // 4, 1), "--checkpointing_steps", n,
              "--sample_interval", 10 * n, "--mixed_precision", "bf16", "--mirror", "--ema_kimg", 1,
              "--no-cudnn_benchmark", *(["--cpu"] if args.cpu else [])]

    def train(out, steps, *extra):
        bench_step._run([sys.executable, "-m", "gan_dist.train", *common, "--output_dir", out,
                         "--max_train_steps", steps, *extra], timeout=600)

    def run():
        from safetensors.torch import load_file
        straight, split = work / "resume_straight", work / "resume_split"
        train(straight, 2 * n)
        train(split, n)
        train(split, 2 * n, "--resume_from_checkpoint", "latest")
        rows_a = [r for r in read_log(straight) if r["step"] > n]
        rows_b = [r for r in read_log(split) if r["step"] > n]
        losses_equal = [(a["step"], all(a[k] == b[k] for k in RESUME_KEYS)) for a, b in zip(rows_a, rows_b)]
        final = f"checkpoints/checkpoint-{2 * n}"
        weights = {}
        for f in sorted((straight / final).glob("*.safetensors")):
            a, b = load_file(f), load_file(split / final / f.name)
            weights[f.name] = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        ok = bool(weights) and all(weights.values()) and all(e for _, e in losses_equal) and len(rows_a) == len(rows_b)
        return {"ok": ok, "steps": 2 * n, "rows_equal": losses_equal, "weights_equal": weights,
                "flags": "bf16 --mirror --ema_kimg 1 --no-cudnn_benchmark"}
    session.doc["resume"] = session.attempt("resume", "bf16", run) or {"ok": False}
    session.save()


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_session", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="the JSON document; profiles/ goes beside it")
    p.add_argument("--work", default=None, help="images, shards and runs (default: a temporary folder)")
    p.add_argument("--cpu", action="store_true", help="the dry run: every case, tiny, on the CPU")
    p.add_argument("--img_size", type=int, default=None, help="default 128 (the dry run: 16)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per speed run (default 300; dry run 4)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 50; dry run 2)")
    p.add_argument("--repeats", type=int, default=None, help="runs of each speed case (default 3; dry run 2)")
    p.add_argument("--profile_steps", type=int, default=None, help="steps in each trace (default 10; dry run 2)")
    p.add_argument("--resume_steps", type=int, default=None, help="steps before the resume (default 100; dry run 2)")
    p.add_argument("--n_images", type=int, default=None, help="source images (default 1024; dry run 128)")
    args = p.parse_args(argv)
    defaults = {"img_size": (128, 16), "steps": (300, 4), "warmup": (50, 2), "repeats": (3, 2),
                "profile_steps": (10, 2), "resume_steps": (100, 2), "n_images": (1024, 128)}
    for name, (gpu, dry) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, dry if args.cpu else gpu)
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if not args.cpu and not torch.cuda.is_available():
        p.error("no CUDA device here (torch.cuda.is_available() is False); --cpu runs the dry run")
    return args


def main(argv=None):
    args = parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gan-gpu-session-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    session = Session(args.out, {k: v for k, v in vars(args).items() if k not in ("out", "work")})
    try:
        src = make_source_images(work / "source", args.n_images, size=max(args.img_size, 64))
        shards = pack_sizes(src, work, [args.img_size], cores(), ("npy",))[args.img_size]["npy"]
        speed(session, shards, args.img_size, args, work)
        profiles(session, shards, args.img_size, args, work, Path(args.out).parent / "profiles")
        resume(session, shards, args.img_size, args, work)
    finally:
        session.doc["seconds"] = time.perf_counter() - t0
        session.save()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    failed = sorted(session.doc["errors"]) + ([] if session.doc["resume"].get("ok") else ["resume (not bit-exact)"])
    if failed:
        sys.exit(f"error: {', '.join(failed)} (see {args.out})")


if __name__ == "__main__":
    main()
