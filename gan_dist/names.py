"""Names the packer, the trainer, the metrics and the bench share (no torch)."""
import os

MANIFEST = "manifest.json"  # the file that marks a finished pack
SHARD_PATTERN = "train-{:06d}.tar"
FORMATS = ("png", "jpg", "npy")  # gan_dist.shard --format; each is also the sample's key in the tar


def cores():
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
