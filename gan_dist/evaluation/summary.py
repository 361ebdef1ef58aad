"""A run's summary page: curves and sample grids, as one PNG and a self-contained HTML page.

    python -m gan_dist.summary runs/demo        # writes runs/demo/summary.png and runs/demo/summary.html

Reads only metrics.jsonl and samples/, so it works for any run, finished or not, with or
without W&B. The trainer writes it at the end of every run.
"""
import argparse
import base64
import html
import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from gan_dist.safe_io import write_atomic  # noqa: E402
from gan_dist.training.runlog import TRAIN_LOG, read_log  # noqa: E402


def _readable(path):
    """True for a grid PNG that decodes whole (a grid cut short by a full disk or a kill is left out)."""
    try:
        with Image.open(path) as img:
            img.load()
        return _step_of(path) >= 0
    except (OSError, ValueError, SyntaxError):
        print(f"warning: {path} is damaged; left out of the summary", file=sys.stderr)
        return False


def sample_grids(run_dir, max_grids=6):
    """Up to max_grids readable fixed-noise grids, evenly spaced over the run, always including the last."""
    grids = [p for p in sorted((Path(run_dir) / "samples").glob("samples_*.png")) if _readable(p)]
    if len(grids) <= max_grids:
        return grids
    picks = {round(i * (len(grids) - 1) / (max_grids - 1)) for i in range(max_grids)}
    return [grids[i] for i in sorted(picks)]


def _step_of(path):
    return int(path.stem.rsplit("_", 1)[1])


def write_summary(run_dir, max_grids=6):
    """Write RUN_DIR/summary.png and RUN_DIR/summary.html; return their paths."""
    run_dir = Path(run_dir)
    rows, grids = read_log(run_dir, "train"), sample_grids(run_dir, max_grids)
    x = [r.get("kimg", r["step"]) for r in rows]
    x_label = "kimg (thousands of images seen)" if rows and "kimg" in rows[0] else "step"

    fig = plt.figure(figsize=(3 * max(len(grids), 4), 7.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1])
    ax_loss, ax_d = top.subplots(1, 2)
    for key, ax in (("loss_D", ax_loss), ("loss_G", ax_loss), ("D_real", ax_d), ("D_fake", ax_d)):
        ax.plot(x, [r.get(key, float("nan")) for r in rows], label=key)
    ax_loss.set(title="losses", xlabel=x_label)
    ax_d.set(title="D(x) and D(G(z)) (probabilities)", xlabel=x_label, ylim=(0, 1))
    for ax in (ax_loss, ax_d):
        ax.legend()
        ax.grid(alpha=0.3)
    if grids:
        for ax, path in zip(bottom.subplots(1, len(grids), squeeze=False)[0], grids):
            ax.imshow(Image.open(path), cmap="gray")
            ax.set_title(f"step {_step_of(path)}")
            ax.axis("off")
    png = run_dir / "summary.png"
    buf = io.BytesIO()
    fig.savefig(buf, dpi=80, format="png")
    plt.close(fig)
    write_atomic(png, buf.getvalue())

    def embed(path):
        return f'<img src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'

    last = rows[-1] if rows else {}
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>" if isinstance(v, float)
                    else f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in last.items())
    reals = run_dir / "samples" / "reals_0000000.png"
    page = (f"<!doctype html><meta charset=utf-8><title>{html.escape(run_dir.name)}</title>"
            f"<style>body{{font-family:sans-serif}} img{{image-rendering:pixelated;margin:4px}} "
            f"figure{{display:inline-block;margin:4px}}</style>"
            f"<h1>Training run: {html.escape(str(run_dir))}</h1>{embed(png)}"
            f"<h2>Last logged values</h2><table>{table}</table><h2>Samples over time</h2>"
            + "".join(f"<figure>{embed(p)}<figcaption>step {_step_of(p)}</figcaption></figure>"
                      for p in sorted((run_dir / "samples").glob("samples_*.png")) if _readable(p))
            + (f"<h2>Real images</h2>{embed(reals)}" if reals.is_file() else ""))
    out_html = run_dir / "summary.html"
    write_atomic(out_html, page)
    return png, out_html


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m gan_dist.summary", description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="a run directory (--output_dir of a training run)")
    args = p.parse_args(argv)
    if not (Path(args.run_dir) / TRAIN_LOG).is_file():
        sys.exit(f"error: {args.run_dir} has no {TRAIN_LOG}; pass the --output_dir of a training run")
    try:
        paths = write_summary(args.run_dir)
    except (OSError, ValueError) as e:  # a full disk, a link where the summary goes
        sys.exit(f"error: writing the summary of {args.run_dir} failed ({getattr(e, 'strerror', None) or e})")
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
