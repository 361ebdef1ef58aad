"""Pack images into WebDataset tar shards plus a manifest.json.

    python -m gan_dist.shard digits --out shards/digits --size 32
    python -m gan_dist.shard lfw-subset --out shards/lfw-subset --size 32
    python -m gan_dist.shard folder --src ~/pictures --out shards/mine --size 128 --channels 3

Every image is converted to `--channels` (1 = greyscale, 3 = RGB), resized to
`--size` x `--size` and stored as a lossless PNG under the key `png` (label, when the
source has one, under `cls`). Shards are written under a temporary name and renamed
when complete; manifest.json is written last, so a directory with a manifest is a
finished pack. No torch here: packing runs anywhere Pillow does.
"""
import argparse
import hashlib
import io
import json
import os
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image, UnidentifiedImageError

MANIFEST = "manifest.json"
SHARD_PATTERN = "train-{:06d}.tar"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MANIFEST_VERSION = 1


class PackError(Exception):
    """A problem with the input or options that the user has to fix."""


# ---- readers: each returns a list of (name, image, label); image is a path or uint8 array

def read_digits(src=None):
    """scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels), white on black."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    return [(f"digit{i}", img, int(label)) for i, (img, label) in enumerate(zip(images, digits.target))]


def read_lfw_subset(src=None):
    """scikit-image's LFW subset: the 100 face crops (25x25 grey); its 100 non-faces are left out."""
    from skimage.data import lfw_subset
    faces = lfw_subset()[:100]
    return [(f"face{i}", np.round(img * 255).astype(np.uint8), None) for i, img in enumerate(faces)]


def read_folder(src):
    """Every image file under `src`, recursively, in sorted path order."""
    if src is None:
        raise PackError("source 'folder' needs --src DIR (a directory of images)")
    root = Path(src).expanduser()
    if not root.is_dir():
        raise PackError(f"--src {src}: not a directory; pass a folder that holds the images")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return [(str(p.relative_to(root)), str(p), None) for p in paths]


SOURCES = {"digits": read_digits, "lfw-subset": read_lfw_subset, "folder": read_folder}


# ---- one image: load, convert, resize, encode (runs in worker processes)

def encode_image(job):
    """Return PNG bytes of the image resized to size x size, or None if it cannot be read."""
    image, size, channels = job
    try:
        img = Image.open(image) if isinstance(image, str) else Image.fromarray(image)
        img = img.convert("L" if channels == 1 else "RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=6)
        return buf.getvalue()
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class _ShardSink:
    """Writes samples into numbered tar shards, each renamed into place when complete."""

    def __init__(self, out_dir, shard_size):
        self.out_dir, self.shard_size = Path(out_dir), shard_size
        self.shards, self.writer, self.count = [], None, 0

    def write(self, sample):
        if self.writer is None:
            name = SHARD_PATTERN.format(len(self.shards))
            self.tmp_path = self.out_dir / f".{name}.partial"
            self.writer = wds.TarWriter(str(self.tmp_path), mtime=0)  # mtime=0: same input, same bytes
            self.shards.append({"file": name, "count": 0})
        self.writer.write(sample)
        self.shards[-1]["count"] += 1
        if self.shards[-1]["count"] == self.shard_size:
            self.close()

    def close(self):
        if self.writer is None:
            return
        self.writer.close()
        self.writer = None
        entry = self.shards[-1]
        entry["sha256"] = sha256_file(self.tmp_path)
        os.replace(self.tmp_path, self.out_dir / entry["file"])


def pack(source, out_dir, src=None, size=32, channels=1, shard_size=1000, workers=1):
    """Pack `source` into WebDataset shards under `out_dir` and write its manifest.

    Args:
        source: a key of SOURCES ("digits", "lfw-subset", "folder").
        out_dir: destination directory; created if missing. An earlier pack there is replaced.
        src: the input directory for "folder".
        size: output images are size x size.
        channels: 1 (greyscale) or 3 (RGB).
        shard_size: images per tar shard.
        workers: processes decoding and encoding images.

    Returns:
        The manifest as a dict.
    """
    if source not in SOURCES:
        raise PackError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    if size < 1 or channels not in (1, 3) or shard_size < 1 or workers < 1:
        raise PackError(f"bad options: --size {size} (>=1), --channels {channels} (1 or 3), "
                        f"--shard_size {shard_size} (>=1), --workers {workers} (>=1)")
    items = SOURCES[source](src)
    if not items:
        raise PackError(f"no images found for source {source!r}" + (f" under {src}" if src else "")
                        + f"; supported suffixes: {' '.join(sorted(IMAGE_SUFFIXES))}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # from here on the directory is not a finished pack

    sink, skipped = _ShardSink(out, shard_size), []
    jobs = ((image, size, channels) for _, image, _ in items)
    with Pool(workers) if workers > 1 else _SerialPool() as pool:
        for (name, _, label), png in zip(items, pool.imap(encode_image, jobs, chunksize=32)):
            if png is None:
                skipped.append(name)
                continue
            sample = {"__key__": f"{sink.count:08d}", "png": png}
            if label is not None:
                sample["cls"] = label
            sink.write(sample)
            sink.count += 1
    sink.close()
    if sink.count == 0:
        raise PackError(f"none of the {len(items)} inputs could be read as an image")

    keep = {s["file"] for s in sink.shards}
    for stale in out.glob("train-*.tar"):  # shards of an earlier, larger pack
        if stale.name not in keep:
            stale.unlink()
    manifest = {
        "version": MANIFEST_VERSION, "source": source, "src": str(src) if src else None,
        "count": sink.count, "size": size, "channels": channels, "image_format": "png",
        "has_labels": items[0][2] is not None, "inputs": len(items),
        "skipped": {"unreadable": len(skipped)}, "skipped_examples": skipped[:20],
        "shards": sink.shards,
    }
    tmp = out / f".{MANIFEST}.partial"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / MANIFEST)
    return manifest


class _SerialPool:
    """Pool stand-in for --workers 1: no processes, same interface."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def imap(fn, iterable, chunksize=1):
        return map(fn, iterable)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m gan_dist.shard", description=__doc__.split("\n")[0])
    p.add_argument("source", choices=sorted(SOURCES), help="where the images come from")
    p.add_argument("--out", required=True, help="output directory for *.tar and manifest.json")
    p.add_argument("--src", default=None, help="input directory (source 'folder')")
    p.add_argument("--size", type=int, default=32, help="output width and height in pixels")
    p.add_argument("--channels", type=int, default=1, choices=(1, 3), help="1 greyscale, 3 RGB")
    p.add_argument("--shard_size", type=int, default=1000, help="images per shard")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="encoding processes")
    args = p.parse_args(argv)
    try:
        m = pack(args.source, args.out, src=args.src, size=args.size, channels=args.channels,
                 shard_size=args.shard_size, workers=args.workers)
    except PackError as e:
        sys.exit(f"error: {e}")
    print(f"packed {m['count']} images ({m['size']}x{m['size']}x{m['channels']}) into "
          f"{len(m['shards'])} shards in {args.out}; skipped {m['skipped']['unreadable']} unreadable")


if __name__ == "__main__":
    main()
