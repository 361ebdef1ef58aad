"""Files a run writes in its --output_dir, written so that the directory cannot redirect them.

Before any work, a run directory whose files are symbolic links is refused (they would be
written through: truncating, overwriting or appending to files elsewhere). args.json and
the grids are written to a temporary file and renamed, metrics rows appended with
O_NOFOLLOW. A full disk while writing args.json is an error before training starts; while
appending a metrics row or saving a grid it is a warning, and training goes on to its next
checkpoint, which keeps the last good one if it cannot be written either.
"""
import io
import json

from gan_dist.safe_io import UnsafePath, refuse_links, write_atomic

# every name a run writes directly in OUTPUT_DIR
RUN_FILES = (".lock", "args.json", "metrics.jsonl", "samples.jsonl", "eval.jsonl", "wandb_run_id.txt", "samples",
             "checkpoints", "logs", "wandb", "summary.png", "summary.html")


class RunDirError(Exception):
    """The run directory cannot be written safely (a link in it, a full disk)."""


def check_run_dir(output_dir):
    """Raise RunDirError if a file the run writes in output_dir is a symbolic link."""
    try:
        refuse_links(output_dir, RUN_FILES)
    except UnsafePath as e:
        raise RunDirError(str(e)) from None


def write_args(output_dir, values):
    """Write OUTPUT_DIR/args.json whole or not at all (RunDirError on a full disk)."""
    try:
        write_atomic(output_dir / "args.json", json.dumps(values, indent=2) + "\n")
    except OSError as e:
        raise RunDirError(f"writing {output_dir / 'args.json'} failed ({e.strerror or e}); free space and start "
                          "again") from None


def save_png(image_writer, path, say=print):
    """Write the PNG that image_writer(file object) makes to path via a temporary file; on failure warn, False."""
    buf = io.BytesIO()
    image_writer(buf)
    try:
        write_atomic(path, buf.getvalue())
        return True
    except OSError as e:
        say(f"warning: could not write {path} ({e.strerror or e}); training goes on")
        return False
