"""Checkpoints: Accelerate's save_state/load_state, made atomic, named by step and pruned.

A checkpoint is `OUTPUT_DIR/checkpoints/checkpoint-STEP/` holding Accelerate's files
(`model.safetensors` = G, `model_1.safetensors` = D, both optimizers, every rank's RNG
state, the registered train state) plus `gan.json` (architecture and step). It is
written to `.checkpoint-STEP.partial` and renamed when every rank has finished, so a
directory named `checkpoint-STEP` is always complete.
"""
import json
import re
import shutil
from pathlib import Path

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
META = "gan.json"
WEIGHT_FILES = {"G": "model.safetensors", "D": "model_1.safetensors"}  # order of prepare()


class TrainState:
    """Counters that must survive a resume; registered with `accelerator.register_for_checkpointing`."""

    def __init__(self):
        self.global_step = 0

    def state_dict(self):
        return {"global_step": self.global_step}

    def load_state_dict(self, state):
        self.global_step = int(state["global_step"])


def list_checkpoints(output_dir):
    """Complete checkpoints under output_dir/checkpoints, oldest first, as (step, path)."""
    root = Path(output_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in root.glob("checkpoint-*")
             if (m := CHECKPOINT_RE.match(p.name)) and (p / META).is_file()]
    return sorted(found)


def resolve_resume(resume_from, output_dir):
    """Map --resume_from_checkpoint (a path or 'latest') to a checkpoint dir, or None to start fresh."""
    if resume_from is None:
        return None
    if resume_from == "latest":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(resume_from)
    if not (path / META).is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint {resume_from}: not a complete checkpoint "
                                f"(no {META}); pass a checkpoint-STEP directory or 'latest'")
    return path


def read_meta(path):
    return json.loads((Path(path) / META).read_text())


def save_checkpoint(accelerator, output_dir, step, gan_config, total_limit=None):
    """Write checkpoint-STEP atomically on all ranks; keep at most `total_limit` checkpoints.

    Every rank must call this (save_state and the barriers are collectives).
    """
    root = Path(output_dir) / "checkpoints"
    final = root / f"checkpoint-{step}"
    partial = root / f".checkpoint-{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # left by a run killed while saving
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / META).write_text(json.dumps(
            {"global_step": step, "gan_config": gan_config.to_dict(), "weights": WEIGHT_FILES}, indent=2))
        if final.exists():  # same step saved twice (e.g. the end of a resumed, finished run)
            shutil.rmtree(final)
        partial.rename(final)
        if total_limit:
            for _, old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final
