"""What the smoke check and the benchmarks share: the machine's description, Markdown tables, and source
images (crops of scikit-image's bundled photos, stored as JPEG like LFW) packed at several sizes."""
import os
import platform
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gan_dist.names import FORMATS, cores
from gan_dist.packing.shard import pack

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")


def machine_info():
    """CPU model, cores, torch version and device of this machine."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cuda = torch.cuda.is_available()
    return {"cpu": model, "cores": cores(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "device": torch.cuda.get_device_name(0) if cuda else "cpu (no CUDA device)",
            "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def markdown_table(columns, rows):
    """Markdown lines of a table; columns are header names, those starting with '>' right-aligned."""
    header = [c.lstrip(">") for c in columns]
    rule = ["---:" if c.startswith(">") else "---" for c in columns]
    return [f"| {' | '.join(map(str, cells))} |" for cells in (header, rule, *rows)]


def make_source_images(folder, n, size=250, seed=0, quality=90):
    """Write n RGB JPEGs of size x size (LFW's shape) under folder/all/: random crops of scikit-image photos.

    Returns the folder, which torchvision's ImageFolder reads as one class.
    """
    import skimage.data

    out = Path(folder) / "all"
    out.mkdir(parents=True, exist_ok=True)
    photos = [Image.fromarray(getattr(skimage.data, name)()) for name in PHOTOS]
    rng = np.random.default_rng(seed)
    for i in range(n):
        photo = photos[i % len(photos)]
        w, h = photo.size
        side = int(rng.uniform(0.3, 1.0) * min(w, h))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        img = photo.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        img.save(out / f"{i:06d}.jpg", quality=quality)
    return Path(folder)


def pack_sizes(src_folder, out_root, sizes, workers, formats=FORMATS):
    """Pack the source folder into RGB shards at each size and format; returns {size: {format: shard dir}}."""
    dirs = {}
    for size in sizes:
        for fmt in formats:
            out = Path(out_root) / f"shards{size}_{fmt}"
            pack("folder", out, src=src_folder, size=size, channels=3, shard_size=500, workers=workers, fmt=fmt)
            dirs.setdefault(size, {})[fmt] = out
    return dirs
