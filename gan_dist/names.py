"""Names the packer, the trainer, the metrics and the bench share (no torch)."""
import os
import re

MANIFEST = "manifest.json"  # the file that marks a finished pack
SHARD_PATTERN = "train-{:06d}.tar"
FORMATS = ("png", "jpg", "npy")  # gan_dist.shard --format; each is also the sample's key in the tar
SHARD_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*\.tar")  # what a manifest may name; used with fullmatch


def cores():
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
