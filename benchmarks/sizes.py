"""The size/speed table: one row per `--size` x resolution of `--preset modern`, with G's and D's parameters, their
forward GFLOPs per image, the peak memory of a training process, and images/s on this CPU (small at 32 and 64 px,
on 1 process and on 2 gloo processes). GPU columns stay empty: they are filled from a GPU run, never estimated.

    python -m benchmarks sizes --out bench_results/sizes.json      # make bench-sizes; also writes sizes.md
    python -m benchmarks sizes --sizes small --resolutions 32 --steps 4 --warmup 2 --mem_sizes small  # quick check

Peak memory is the largest resident set (ru_maxrss) of a fresh `gan_dist.train` process that trains --mem_steps
steps at --mem_batch images (the first step penalises with R1 and R2): the networks, Adam's moments, the
activations kept for the backward passes and Python's own. Rows whose size is not in --mem_sizes are left empty
(large's steps take many minutes each on a CPU). A run the kernel kills (out of this machine's memory) is recorded
as `out_of_memory`, and that size's larger images are not run.
"""
import argparse
import json
import math
import os
import resource
import signal
import sys
import tempfile
from pathlib import Path

from benchmarks.step import _run, read_metrics
from gan_dist.benchkit import machine_info, make_source_images, markdown_table, pack_sizes
from gan_dist.names import cores
from gan_dist.networks.figures import network_figures
from gan_dist.networks.sizes import SIZES, TABLE
from gan_dist.training.options import gan_config, parse_args

SPEED_ROWS = {("small", 32), ("small", 64)}  # the rows timed on the CPU
MACHINE_MIB = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 if hasattr(os, "sysconf") else 0
COLUMNS = ["size", ">px", ">G params (M)", ">D params (M)", ">G GFLOPs/img", ">D GFLOPs/img", ">peak CPU MiB",
           ">CPU img/s, 1 process", ">CPU img/s, 2 gloo", ">GPU img/s", ">GPU peak GiB"]


def train_cmd(size, img_size, shards, out, steps, batch, log_steps, nproc=1):
    """The plain modern recipe at this size, as a user types it (plus the budget and where to write)."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                 Path(__file__).resolve().parents[1] / "gan_dist" / "train.py"] if nproc > 1
                else [sys.executable, "-m", "gan_dist.train"])
    return [*launcher, "--cpu", "--preset", "modern", "--size", size, "--arch", "resnet", "--data", shards,
            "--img_size", img_size, "--channels", 3, "--batch_size", batch, "--n_cpu", 0, "--max_train_steps", steps,
            "--log_steps", log_steps, "--checkpointing_steps", steps + 1, "--sample_interval", steps + 1,
            "--report_to", "none", "--output_dir", out]


def speed(size, img_size, shards, work, steps, warmup, batch, nproc):
    """Images/s of the trainer's own rows after the warm-up steps."""
    total = warmup * math.ceil((warmup + steps) / warmup)
    out = work / f"speed-{size}-{img_size}-{nproc}p"
    _run(train_cmd(size, img_size, shards, out, total, batch, warmup, nproc), timeout=3600,
         env={"OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"})  # one thread a process: quality.py's
    return read_metrics(out, warmup)["images_per_s"]


def peak_memory(size, img_size, shards, work, steps, batch):
    """MiB: the peak resident set of a fresh training process (this module's `peak` command runs it), or None when
    the kernel killed it (SIGKILL: out of this machine's memory)."""
    out = work / f"mem-{size}-{img_size}"
    cmd = train_cmd(size, img_size, shards, out, steps, batch, steps)
    res = _run([sys.executable, "-m", "benchmarks.sizes", "peak", *cmd[3:]], timeout=7200, allow=(-signal.SIGKILL,))
    return None if res.returncode else json.loads(res.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def peak_main(argv):
    """`python -m benchmarks.sizes peak TRAIN_ARGS`: train in this process, then print its peak RSS as JSON."""
    from gan_dist.train import main as train_main
    train_main(argv)
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))  # KiB on Linux


def peak_cell(r):
    """The peak memory cell: MiB, killed for memory, not run after a smaller image was, or not measured."""
    if r.get("out_of_memory") is True:
        return f"> {MACHINE_MIB:.0f} (killed)"
    if r.get("out_of_memory"):
        return "not run"
    return "" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.0f}"


def row_cells(r):
    def f(value, fmt):
        return "" if value is None else format(value, fmt)
    return [r["size"], r["img_size"], f(r["G_params"] / 1e6, ".2f"), f(r["D_params"] / 1e6, ".2f"),
            f(r["G_gflops"], ".3g"), f(r["D_gflops"], ".3g"), peak_cell(r),
            f(r["cpu_img_per_s_1p"], ".0f"), f(r["cpu_img_per_s_2p"], ".0f"), "", ""]


def parse_cli(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks sizes", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="the JSON; the Markdown table goes beside it (.md)")
    p.add_argument("--sizes", default=",".join(SIZES), help="comma-separated sizes (rows)")
    p.add_argument("--resolutions", default="32,64,128,256", help="comma-separated image sizes (rows)")
    p.add_argument("--mem_sizes", default="small,base", help="the sizes whose peak memory is measured")
    p.add_argument("--mem_batch", type=int, default=8, help="images per step of the memory runs")
    p.add_argument("--mem_steps", type=int, default=2, help="steps of each memory run")
    p.add_argument("--batch_size", type=int, default=32, help="images per process per step of the speed runs")
    p.add_argument("--steps", type=int, default=60, help="timed steps of each speed run")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    p.add_argument("--work", type=Path, default=None, help="where the shards and runs go (default: a temp dir)")
    args = p.parse_args(argv)
    args.sizes, args.mem_sizes = args.sizes.split(","), set(args.mem_sizes.split(","))
    args.resolutions = [int(r) for r in args.resolutions.split(",")]
    for size in args.sizes:
        if size not in SIZES:
            p.error(f"--sizes: unknown size {size!r}; choose from {', '.join(SIZES)}")
    for r in args.resolutions:
        if r not in TABLE["small"]:
            p.error(f"--resolutions: {r} has no row; choose from {', '.join(map(str, TABLE['small']))}")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["peak"]:
        return peak_main(argv[1:])
    args = parse_cli(argv)
    with tempfile.TemporaryDirectory(prefix="bench-sizes-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        src = make_source_images(work / "source", 256)
        shards = {r: d["png"] for r, d in pack_sizes(src, work, args.resolutions, cores(), ("png",)).items()}
        config = {k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items() if k not in ("out", "work")}
        doc = {"machine": {**machine_info(), "memory_mib": MACHINE_MIB}, "config": config, "rows": []}
        for size in args.sizes:
            out_of_memory = False  # a larger image of the same size needs more
            for r in args.resolutions:
                cfg = gan_config(parse_args(["--data", "x", "--cpu", "--preset", "modern", "--size", size,
                                             "--img_size", str(r), "--channels", "3"]))
                row = {"size": size, "img_size": r, **network_figures(cfg), "peak_rss_mib": None,
                       "cpu_img_per_s_1p": None, "cpu_img_per_s_2p": None, "gpu_img_per_s": None,
                       "gpu_peak_gib": None}
                print(f"{size} at {r} px ...", file=sys.stderr, flush=True)
                if size in args.mem_sizes and not out_of_memory:
                    row["peak_rss_mib"] = peak_memory(size, r, shards[r], work, args.mem_steps, args.mem_batch)
                    out_of_memory = row["peak_rss_mib"] is None
                    row["out_of_memory"] = out_of_memory
                elif size in args.mem_sizes:
                    row["out_of_memory"] = "not run: a smaller image of this size ran out of memory"
                if (size, r) in SPEED_ROWS:
                    for nproc in (1, 2):
                        row[f"cpu_img_per_s_{nproc}p"] = speed(size, r, shards[r], work, args.steps, args.warmup,
                                                               args.batch_size, nproc)
                doc["rows"].append(row)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(doc, indent=1))
    table = "\n".join(markdown_table(COLUMNS, [row_cells(r) for r in doc["rows"]]))
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)
    return doc


if __name__ == "__main__":
    main()
