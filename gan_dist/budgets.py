"""Budgets for sizes that come from outside: checked before anything of that size is allocated.

Counts, dimensions, member sizes, parameter counts: a few bytes of a manifest, a config or a
checkpoint can ask for terabytes. Each limit here sits far above what a real run needs; the
packer imports this module too, so it imports no torch (networks are counted in networks/figures.py).
"""
MAX_PACK_SIZE = 4096  # shard --size: a 4096^2 RGB image is 48 MiB before encoding
IN_FLIGHT_BYTES = 128 << 20  # source bytes the packer holds per chunk of work
ARCHIVE_RATIO = 64  # an archive's members may inflate to this many times its size (+ ARCHIVE_SLACK) in all
ARCHIVE_SLACK = 256 << 20
TAR_BLOCK = 512  # every sample in a tar shard takes at least one header block
MAX_PARAMS = 500_000_000  # 2 GB of float32 per network: far above any G or D this repo trains
BYTES_PER_PARAM = 20  # training: weights, gradients and two Adam moments (16), plus G_ema
MAX_SAMPLE_BYTES = 4 << 30  # images and latents a sampling command holds in memory
MAX_STEP = 10**9  # a checkpoint's step: no real run gets near it
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
MAX_CLASSES = 65_536  # class labels of a pack or a conditional network (ImageNet-21k has about 21,000)
MAX_CLASS_NAME = 200  # characters in one class name


class BudgetError(ValueError):
    """A size from outside above its budget; the message names it and the limit."""


def class_names_problem(names):
    """What is wrong with a list of class names from outside (a manifest, gan.json, config.json), or None:
    at most MAX_CLASSES distinct, printable strings of 1 to MAX_CLASS_NAME characters."""
    if not isinstance(names, (list, tuple)):
        return f"class names must be a list, got {type(names).__name__}"
    if len(names) > MAX_CLASSES:
        return f"{len(names):,} class names, above the budget of {MAX_CLASSES:,}"
    for name in names:
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_CLASS_NAME or not name.isprintable():
            return (f"class name {str(name)[:40]!r} is not a printable string of 1 to {MAX_CLASS_NAME} "
                    "characters")
    if len(set(names)) != len(names):
        return "class names repeat"
    return None


def archive_budget(archive_bytes):
    """Bytes the members of an archive of `archive_bytes` may inflate to, all together."""
    return ARCHIVE_RATIO * archive_bytes + ARCHIVE_SLACK


def check_sample_bytes(n_images, latent_dim, gan_config, what):
    """Raise BudgetError if n_images images of gan_config (and their latents), as float32, pass MAX_SAMPLE_BYTES."""
    pixels = gan_config.channels * gan_config.img_size ** 2
    need = 4 * n_images * (latent_dim + pixels)
    if need > MAX_SAMPLE_BYTES:
        fits = MAX_SAMPLE_BYTES // (4 * (latent_dim + pixels))
        raise BudgetError(f"{what} {n_images:,} images of {gan_config.img_size}x{gan_config.img_size}x"
                          f"{gan_config.channels} would take {need / 2**30:,.1f} GiB in memory; at most {fits:,} "
                          "fit: draw them in several runs with different --seed")
