"""What a run leaves behind for people: trackers (W&B, TensorBoard), the metrics logs, sample grids.

Everything here acts on the main process only; other ranks return at once. W&B runs
offline into OUTPUT_DIR/wandb when no credentials are found (sync later with
`wandb sync`), and a tracker that fails to start never stops training.
"""
import netrc
import os
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid, save_image

from gan_dist.safe_io import write_atomic
from gan_dist.training.rundir import save_png
from gan_dist.training.runlog import append_row, log_path

TRACKERS = ("wandb", "tensorboard")
WANDB_RUN_ID_FILE = "wandb_run_id.txt"


def tracker_names(report_to):
    """--report_to value -> list of Accelerate tracker names."""
    if report_to == "none":
        return []
    return list(TRACKERS) if report_to == "all" else [report_to]


def _wandb_has_credentials():
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def stored_wandb_run_id(output_dir):
    path = Path(output_dir) / WANDB_RUN_ID_FILE
    if not path.is_file():
        return None
    return path.read_text().strip() or None


def init_trackers(accelerator, project_name, config, output_dir, checkpoint_run_id=None):
    """Start the Accelerator's trackers on the main process; on failure warn and go on without them.

    One training is one W&B run, however often it is resumed, requeued or restarted: the run id
    is $WANDB_RUN_ID, else the one stored in OUTPUT_DIR/wandb_run_id.txt, else the checkpoint's,
    else a new one; it is resumed with $WANDB_RESUME (default "allow"). Returns the W&B run id
    (None without W&B or off the main process).

    W&B's own variables win over our defaults: WANDB_DIR (else the run directory), WANDB_NAME
    (else the run directory's name), WANDB_MODE (else offline when no API key is found).
    """
    if not accelerator.is_main_process or not accelerator.log_with:
        return None
    wandb_kwargs = {"resume": os.environ.get("WANDB_RESUME", "allow")}
    run_id = os.environ.get("WANDB_RUN_ID") or stored_wandb_run_id(output_dir) or checkpoint_run_id
    if run_id:
        wandb_kwargs["id"] = run_id
    if "WANDB_DIR" not in os.environ:
        wandb_kwargs["dir"] = str(output_dir)
    if "WANDB_NAME" not in os.environ:
        wandb_kwargs["name"] = Path(output_dir).resolve().name
    if "WANDB_MODE" not in os.environ and not _wandb_has_credentials():
        wandb_kwargs["mode"] = "offline"
    try:
        # TensorBoard's hparams take only scalars and strings: lists (Adam betas, widths) go as "0.0,0.99",
        # mappings (the batch split) as one key per entry
        config = {**{k: v for k, v in config.items() if not isinstance(v, dict)},
                  **{f"{k}/{kk}": vv for k, v in config.items() if isinstance(v, dict) for kk, vv in v.items()}}
        config = {k: ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v for k, v in config.items()}
        accelerator.init_trackers(project_name, config=config, init_kwargs={"wandb": wandb_kwargs})
        for tracker in accelerator.trackers:
            if tracker.name == "wandb":  # charts against images seen, comparable across batch sizes
                tracker.run.define_metric("kimg")
                tracker.run.define_metric("*", step_metric="kimg")
                run_id = tracker.run.id
                write_atomic(Path(output_dir) / WANDB_RUN_ID_FILE, run_id + "\n")
                return run_id
    except Exception as e:  # a dashboard must never cost the run
        accelerator.print(f"warning: could not start trackers {accelerator.log_with} ({e!r}); "
                          "training continues; metrics.jsonl and samples/ are still written")
        accelerator.trackers = []
    return None


def finish_run(accelerator, output_dir):
    """End the trackers, write the run's summary page (main process), and say how to upload an offline W&B run."""
    offline = any(t.name == "wandb" and t.run.settings.mode == "offline" for t in accelerator.trackers)
    accelerator.end_training()
    if not accelerator.is_main_process:
        return
    from gan_dist.evaluation.summary import write_summary
    try:
        png, html = write_summary(output_dir)
        print(f"summary: {png} and {html}")
    except Exception as e:  # the run itself is done and saved; a figure must not fail it
        print(f"warning: could not write the summary ({e!r}); try `python -m gan_dist.summary {output_dir}`")
    if offline:
        print(f"W&B ran offline; upload with: wandb sync {Path(output_dir) / 'wandb'}/offline-run-*")


class MetricsLog:
    """Appends one JSON object per logged step to one of the run's logs (main process only).

    kind "train": OUTPUT_DIR/metrics.jsonl, a row per --log_steps; "samples": samples.jsonl,
    colour statistics per --sample_interval; "eval": eval.jsonl, FID/KID per --eval_steps.
    """

    def __init__(self, accelerator, output_dir, kind="train"):
        self.accelerator = accelerator
        self.path = log_path(output_dir, kind)

    def log(self, row, step):
        """Numbers go to the trackers; the whole row (tool names of metrics too) to the file."""
        try:
            self.accelerator.log({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=step)
        except Exception as e:
            self.accelerator.print(f"warning: trackers could not log step {step}: {e!r}")
        if self.accelerator.is_main_process:
            append_row(self.path, step, row, self.accelerator.print)


def log_grid(accelerator, images, output_dir, step, key="samples", nrow=5, caption=None):
    """Save images in [-1, 1] as a grid PNG under OUTPUT_DIR/samples and send it to the trackers (W&B with
    `caption`, e.g. the classes of a conditional grid's rows)."""
    if not accelerator.is_main_process:
        return None
    grid = make_grid(images.float().cpu(), nrow=nrow, normalize=True, value_range=(-1, 1))
    path = Path(output_dir) / "samples" / f"{key}_{step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(lambda f: save_image(grid, f, format="png"), path, accelerator.print)
    hwc = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()  # W&B needs uint8
    for tracker in accelerator.trackers:
        try:
            if tracker.name == "wandb":
                import wandb
                tracker.log({key: wandb.Image(hwc, caption=caption)}, step=step)
            elif tracker.name == "tensorboard":
                tracker.log_images({key: np.ascontiguousarray(hwc)}, step=step, dataformats="HWC")
        except Exception as e:
            accelerator.print(f"warning: {tracker.name} could not log {key} at step {step}: {e!r}")
    return path
