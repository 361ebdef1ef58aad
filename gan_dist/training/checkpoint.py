"""Checkpoints: Accelerate's save_state/load_state, made atomic, named by step and pruned.

A checkpoint is `OUTPUT_DIR/checkpoints/checkpoint-STEP/` holding Accelerate's files
(`model.safetensors` = G, `model_1.safetensors` = D, `G_ema.safetensors` when the run keeps
an EMA of G, `optimizer.bin`/`optimizer_1.bin`,
`scaler.pt` with fp16, `random_states_RANK.pkl` for every rank; all loaded with
`weights_only=True`) plus `gan.json`: the networks' config and the run's position (step,
epoch, batch within the epoch, images seen, skipped samples). It is written to
`.checkpoint-STEP.partial` and renamed when every rank has finished, so a directory named
`checkpoint-STEP` is always complete; a run killed while saving leaves only the previous one.
gan.json's `save_index` orders checkpoints by when they were written: `latest` is the last
written and pruning removes the first written, so resuming from an older checkpoint never
loses the new one.
"""
import json
import pickle
import re
import shutil
from pathlib import Path

import torch
from accelerate.utils import load
from safetensors import SafetensorError, safe_open

from gan_dist.budgets import MAX_STEP
from gan_dist.training.augmentation import valid_state as _augment_ok
from gan_dist.training.ema import EMA_FILE, save_ema

CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")  # used with fullmatch: "$" would let a newline through
META = "gan.json"
WEIGHT_FILES = {"G": "model.safetensors", "D": "model_1.safetensors"}  # order of prepare()


def _save_index(path):
    """The order in which a checkpoint was written (0 for one that does not say)."""
    try:
        index = json.loads((path / META).read_text()).get("save_index", 0)
    except (OSError, ValueError, AttributeError):
        return 0
    return index if isinstance(index, int) else 0


def list_checkpoints(output_dir):
    """Complete checkpoints under output_dir/checkpoints as (step, path), in the order they were written:
    the last is the latest even when a resume from an older checkpoint wrote a lower step after a higher one."""
    root = Path(output_dir) / "checkpoints"
    found = [(_save_index(p), int(m.group(1)), p) for p in root.glob("checkpoint-*")
             if (m := CHECKPOINT_RE.fullmatch(p.name)) and (p / META).is_file()]
    return [(step, path) for _, step, path in sorted(found)]


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


def remove_partials(output_dir):
    """Delete checkpoints a killed run left half-written (never read, only in the way)."""
    root = Path(output_dir) / "checkpoints"
    for leftover in [*root.glob(".checkpoint-*.partial"), *root.glob(".checkpoint-*.old")]:
        shutil.rmtree(leftover, ignore_errors=True)


class CheckpointError(Exception):
    """A checkpoint that cannot be resumed from: damaged, not trusted, or not exactly restorable."""


def _int_in(value, low, high=2**62):
    return type(value) is int and low <= value <= high


def _drift_ok(state):
    history = state.get("history") if isinstance(state, dict) else None
    return isinstance(history, dict) and all(
        isinstance(streak, list) and len(streak) <= 10_000 and all(
            isinstance(e, list) and len(e) == 2 and all(type(x) in (int, float) for x in e) for e in streak)
        for streak in history.values())


# what a resume reads from gan.json besides the step: (check, what it must be, required)
RESUME_FIELDS = {"global_batch": (lambda v: _int_in(v, 1), "an integer >= 1", True),
                 "skipped_samples": (lambda v: _int_in(v, 0), "an integer >= 0", False),
                 "colour_drift": (_drift_ok, "a drift history", False),
                 "wandb_run_id": (lambda v: v is None or isinstance(v, str) and len(v) < 256, "a run id", False),
                 "augment": (_augment_ok, "ADA's state (p, signs, count)", False)}


def read_meta(path, resume=False):
    """A checkpoint's gan.json as a dict, its fields checked (CheckpointError names the first that is wrong);
    with `resume`, also the fields a resume reads."""
    file = Path(path) / META
    try:
        meta = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{file} is malformed ({e.__class__.__name__}); use another checkpoint") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("global_step"), int) \
            or not isinstance(meta.get("gan_config"), dict):
        raise CheckpointError(f"{file} is malformed (no global_step or gan_config); use another checkpoint")
    problems = [] if _int_in(meta["global_step"], 0, MAX_STEP) else [
        f"global_step {meta['global_step']!r} is not an integer from 0 to {MAX_STEP:,}"]
    for name, (ok, what, required) in RESUME_FIELDS.items() if resume else ():
        if name in meta and not ok(meta[name]) or required and name not in meta:
            problems.append(f"{name} {str(meta.get(name, 'missing'))[:60]} is not {what}")
    if problems:
        raise CheckpointError(f"{file} is malformed ({problems[0]}); use another checkpoint")
    return meta


def _check_ema(path):
    """Raise CheckpointError unless G_ema.safetensors (if there) is readable and has G's tensor names and shapes."""
    shapes = {}
    for name in (EMA_FILE, WEIGHT_FILES["G"]):
        try:
            with safe_open(str(Path(path) / name), "pt") as f:
                shapes[name] = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except (SafetensorError, OSError) as e:
            reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            raise CheckpointError(f"{Path(path) / name} is damaged ({reason}); use another checkpoint") from None
    if shapes[EMA_FILE] != shapes[WEIGHT_FILES["G"]]:
        raise CheckpointError(f"{Path(path) / EMA_FILE} does not hold G's tensors (other names or shapes); "
                              "resume from another checkpoint")


def _check_random_states(path, rank):
    """Raise CheckpointError unless this rank's RNG file loads: Accelerate skips a bad one silently, and the
    resumed run would then draw other noise than the run it continues."""
    states = Path(path) / f"random_states_{rank}.pkl"
    try:
        loaded = load(states)
        ok = isinstance(loaded, dict) and {"random_state", "numpy_random_seed", "torch_manual_seed"} <= set(loaded)
    except FileNotFoundError:
        raise CheckpointError(f"{path} has no {states.name}: the resume could not be exact; "
                              "resume from another checkpoint (or with the process count it was saved with)") from None
    except pickle.UnpicklingError as e:
        if _code_named(e):
            raise _untrusted(states, e) from None
        ok = False
    except Exception:  # any damage; the file's bytes are not shown
        ok = False
    if not ok:
        raise CheckpointError(f"{states} is damaged: the resume could not be exact; resume from another checkpoint")


def _code_named(error):
    """The line of weights_only's refusal that names a global the pickle would import, if that is why."""
    found = re.search(r"[^\n]*unsupported (global|class)[^\n]*", str(error), re.IGNORECASE)
    return found.group(0)[:200] if found else None


def _untrusted(path, error):
    return CheckpointError(f"{path} is not a trusted checkpoint: it holds pickled objects other than tensors and "
                           f"plain data ({_code_named(error)}); use a checkpoint gan-dist wrote")


def load_checkpoint(accelerator, path):
    """accelerator.load_state(path), with every rank's RNG checked first and damage named (CheckpointError)."""
    _check_random_states(path, accelerator.process_index)
    if (Path(path) / EMA_FILE).is_file():
        _check_ema(path)
    try:
        accelerator.load_state(str(path))  # safetensors, and torch.load(weights_only=True) for the rest
    except pickle.UnpicklingError as e:
        if _code_named(e):
            raise _untrusted(path, e) from None
        raise CheckpointError(f"{path} is damaged (a file is not a readable pickle); use another checkpoint") from None
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path} is damaged ({e.__class__.__name__}: {str(e).splitlines()[0][:200]}); "
                              "resume from another checkpoint") from None


def check_finite(modules, step):
    """Raise FloatingPointError naming the network if any parameter is NaN or infinite."""
    for name, module in modules.items():
        if not all(torch.isfinite(p).all() for p in module.parameters()):
            raise FloatingPointError(f"{name} has non-finite weights at step {step}; not saving them. "
                                     "Resume from the last checkpoint with a lower --lr")


def save_checkpoint(accelerator, output_dir, step, gan_config, position, total_limit=None, ema=None):
    """Write checkpoint-STEP atomically on all ranks; keep at most `total_limit` checkpoints.

    Args:
        position: JSON-able counters of the run (epoch, images seen, ...), stored in gan.json.
        ema: G_ema, saved as G_ema.safetensors (what `python -m gan_dist.sample` uses by default).

    Every rank must call this (save_state and the barriers are collectives).
    """
    root = Path(output_dir) / "checkpoints"
    final = root / f"checkpoint-{step}"
    partial = root / f".checkpoint-{step}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # left by a run killed while saving
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if ema is not None:
                save_ema(ema, partial)
            weights = {**WEIGHT_FILES, **({"G_ema": EMA_FILE} if ema is not None else {})}
            save_index = 1 + max((_save_index(p) for _, p in list_checkpoints(output_dir)), default=0)
            meta = {"global_step": step, "save_index": save_index, **position, "gan_config": gan_config.to_dict(),
                    "weights": weights}
            (partial / META).write_text(json.dumps(meta, indent=2))
    except (OSError, RuntimeError, SafetensorError) as e:  # a full disk or quota, as each writer reports it
        shutil.rmtree(partial, ignore_errors=True)
        last = list_checkpoints(output_dir)
        raise CheckpointError(f"writing checkpoint-{step} failed ({str(e).splitlines()[0][:200]}); "
                              + (f"{last[-1][1].name} is kept: free space and resume with --resume_from_checkpoint "
                                 "latest" if last else "no checkpoint was kept: free space and start again")) from None
    if accelerator.is_main_process:
        replaced = root / f".checkpoint-{step}.old"
        if final.exists():  # the same step trained again after resuming from an older checkpoint
            shutil.rmtree(replaced, ignore_errors=True)
            final.rename(replaced)
        partial.rename(final)
        shutil.rmtree(replaced, ignore_errors=True)
        if total_limit:  # the oldest written go; the one just written is always the newest
            for _, old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final
