"""The bench's images and its `data` case: our loader versus the report's ImageFolder pipeline.

Both read the same source images on the same cores: the report's pipeline decodes each
source JPEG and resizes it per sample (ImageFolder + Resize + ToTensor + Normalize, 2
workers, batch 64); ours reads pre-resized shards, either streamed by 2 workers or
decoded once into memory, where a step's cost is an index into a tensor.
"""
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gan_dist.data import (epoch_batches, load_into_memory, load_manifest, memory_epoch_batches, shard_counts,
                           to_device_float)
from gan_dist.shard import pack

# scikit-image's bundled colour photos: no download
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")
REPORT_WORKERS = 2  # the report's --n_cpu 2
BATCH = 64  # the report's --batch_size


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


def pack_sizes(src_folder, out_root, sizes, workers):
    """Pack the source folder into RGB PNG shards at each size; returns {size: shard dir}."""
    dirs = {}
    for size in sizes:
        dirs[size] = Path(out_root) / f"shards{size}"
        pack("folder", dirs[size], src=src_folder, size=size, channels=3, shard_size=500, workers=workers)
    return dirs


def unpack_to_folder(shard_dir, folder):
    """Write a shard directory's images out as files under folder/all/ (for ImageFolder); returns folder."""
    manifest, urls = load_manifest(shard_dir)
    images, _ = load_into_memory(urls, 0, shard_counts(manifest, urls))
    out = Path(folder) / "all"
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img.permute(1, 2, 0).squeeze(2).numpy()).save(out / f"{i:06d}.png")
    return Path(folder)


def _rate(batches, seconds, warmup, to_float=True):
    """Images/s over batches after the first `warmup`, running for at least `seconds` (batches is a
    function of the pass number, so short datasets are read again)."""
    n_imgs, t0, seen, epoch = 0, None, 0, 0
    while True:
        for batch in batches(epoch):
            batch = batch[0] if isinstance(batch, (tuple, list)) else batch
            if to_float:
                batch = to_device_float(batch, "cpu")
            seen += 1
            if seen == warmup:
                t0 = time.perf_counter()
            elif t0 is not None:
                n_imgs += batch.size(0)
                if time.perf_counter() - t0 >= seconds:
                    return n_imgs / (time.perf_counter() - t0)
        epoch += 1


def report_pipeline_rate(folder, size, seconds, warmup=3, workers=REPORT_WORKERS, channels=3):
    """Images/s of the report's loader (ImageFolder, Resize, ToTensor, Normalize) at size x size."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                             transforms.Normalize([0.5] * channels, [0.5] * channels)])
    if channels == 1:
        tf = transforms.Compose([transforms.Grayscale(), tf])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(folder), transform=tf), batch_size=BATCH,
                                         shuffle=True, num_workers=workers, drop_last=True)
    return _rate(lambda epoch: loader, seconds, warmup, to_float=False)


def stream_rate(shard_dir, seconds, warmup=3, workers=REPORT_WORKERS):
    """Images/s of our streamed path: shards decoded to uint8 by `workers`, scaled to float in [-1, 1]."""
    manifest, urls = load_manifest(shard_dir)
    steps = max(1, manifest["count"] // BATCH)
    return _rate(lambda epoch: epoch_batches(urls, BATCH, steps, 0, epoch, workers,
                                             expected=shard_counts(manifest, urls)), seconds, warmup)


def memory_rate(shard_dir, seconds, warmup=3):
    """(images/s, load seconds) of our in-memory path: decode once, then index a uint8 tensor per step."""
    manifest, urls = load_manifest(shard_dir)
    t = time.perf_counter()
    images, _ = load_into_memory(urls, REPORT_WORKERS, shard_counts(manifest, urls))
    load_s = time.perf_counter() - t
    steps = max(1, len(images) // BATCH)
    return _rate(lambda epoch: memory_epoch_batches(images, BATCH, steps, 0, epoch, 0, 1), seconds, warmup), load_s


def data_cases(shard_dirs, report_folders, seconds, channels=3):
    """Measure every data case at each size; returns {name: {"images_per_s", "cores", ...}}.

    shard_dirs and report_folders map a size to our shards and to the image folder the report's pipeline reads.

    `cores` is what each path keeps busy: its worker processes, or the main process alone.
    """
    cases = {}
    for size, shard_dir in sorted(shard_dirs.items()):
        folder = report_folders[size]
        cases[f"data/report_{size}"] = {"images_per_s": report_pipeline_rate(folder, size, seconds, channels=channels),
                                        "cores": REPORT_WORKERS, "what": "ImageFolder+Resize+ToTensor+Normalize"}
        cases[f"data/stream_{size}"] = {"images_per_s": stream_rate(shard_dir, seconds), "cores": REPORT_WORKERS,
                                        "what": "shards streamed, uint8 -> float"}
        rate, load_s = memory_rate(shard_dir, seconds)
        cases[f"data/memory_{size}"] = {"images_per_s": rate, "cores": 1, "load_s": load_s,
                                        "what": "in memory, index + uint8 -> float"}
    for case in cases.values():
        case["images_per_s_per_core"] = case["images_per_s"] / case["cores"]
    return cases
