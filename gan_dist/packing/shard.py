"""Pack images into WebDataset tar shards plus a manifest.json.

    python -m gan_dist.shard digits --out shards/digits --size 32
    python -m gan_dist.shard lfw    --out shards/lfw --size 64 --channels 3 --center_crop 150
    python -m gan_dist.shard anime  --out shards/anime --size 64 --channels 3
    python -m gan_dist.shard lol    --out shards/lol --size 128 --channels 3 --crops_per_image 4 --seed 0
    python -m gan_dist.shard archive --src ~/faces.zip --out shards/mine --size 128 --channels 3
    python -m gan_dist.shard hf --dataset user/name --split train --image_column image --out shards/x --size 32

Every image is converted to `--channels` (1 = greyscale, 3 = RGB), optionally cropped
(`--center_crop`, or seeded random crops), resized to `--size` x `--size` and stored as
lossless PNG under the key `png` (or `--format jpg` / `npy`; the label, when the source has
one, under `cls` as the class's number, the manifest naming the classes and counting each).
Downloads are cached and checked (gan_dist.packing.download). Shards are written under a
temporary name and renamed when complete; manifest.json is written last, so a directory
with a manifest is a finished pack. No torch here.
"""
import argparse
import io
import json
import os
import sys
import tarfile
from multiprocessing import Pool
from multiprocessing.dummy import Pool as ThreadPool
from pathlib import Path

from tqdm import tqdm

from gan_dist.budgets import IN_FLIGHT_BYTES, MAX_CLASSES, MAX_PACK_SIZE, MAX_SEED, class_names_problem
from gan_dist.dirlock import DirectoryBusy, DirectoryLock
from gan_dist.names import FORMATS, MANIFEST, SHARD_NAME, SHARD_PATTERN, cores
from gan_dist.packing.download import sha256_file
from gan_dist.packing.images import encode_image
from gan_dist.packing.items import PackError, Skip, SourceOptions
from gan_dist.packing.sources import DEFAULTS, IMAGE_SUFFIXES, SOURCES
from gan_dist.safe_io import UnsafePath, open_new, write_atomic

MANIFEST_VERSION = 2
SKIP_REASONS = ("unreadable", "unsupported", "duplicate", "unsafe_path", "download_failed")
PREVIOUS = f".{MANIFEST}.previous"  # the shards of the last finished pack, while a new one replaces it


class _ShardSink:
    """Writes samples ({"__key__", ext: bytes}) as WebDataset tar shards, each renamed into place when complete."""

    def __init__(self, out_dir, shard_size):
        self.out_dir, self.shard_size = Path(out_dir), shard_size
        self.shards, self.writer, self.count = [], None, 0

    def write(self, sample):
        if self.writer is None:
            name = SHARD_PATTERN.format(len(self.shards))
            self.tmp_path = self.out_dir / f".{name}.partial"
            self.file = open_new(self.tmp_path)  # never through a link planted in --out
            self.writer = tarfile.open(fileobj=self.file, mode="w", format=tarfile.PAX_FORMAT)
            self.shards.append({"file": name, "count": 0})
        key = sample["__key__"]
        for ext, value in sample.items():
            if ext != "__key__":
                self._add(f"{key}.{ext}", value if isinstance(value, bytes) else str(value).encode())
        self.shards[-1]["count"] += 1
        if self.shards[-1]["count"] == self.shard_size:
            self.close()

    def _add(self, name, data):
        info = tarfile.TarInfo(name)
        # fixed metadata (mtime 0, no owner): the same input gives the same bytes
        info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o444, "", ""
        self.writer.addfile(info, io.BytesIO(data))

    def close(self):
        if self.writer is None:
            return
        self.writer.close()
        self.file.close()
        self.writer = None
        entry = self.shards[-1]
        entry["sha256"], entry["bytes"] = sha256_file(self.tmp_path), self.tmp_path.stat().st_size
        os.replace(self.tmp_path, self.out_dir / entry["file"])

    def abort(self):
        if self.writer is not None:
            self.writer.close()
            self.file.close()
            self.writer = None
            self.tmp_path.unlink(missing_ok=True)


def _batches(iterable, n, max_bytes=IN_FLIGHT_BYTES):
    """Lists of at most n entries, cut early once the image bytes they hold reach max_bytes."""
    batch, held = [], 0
    for entry in iterable:
        batch.append(entry)
        image = getattr(entry, "image", None)
        held += len(image) if isinstance(image, bytes) else getattr(image, "nbytes", 0)
        if len(batch) == n or held >= max_bytes:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch


def _owned_shards(out):
    """Shard names that an earlier pack into `out` listed in its manifest: the only ones a new pack removes."""
    owned = set()
    for path in (out / MANIFEST, out / PREVIOUS):
        try:
            shards = json.loads(path.read_text()).get("shards", [])
            owned |= {s.get("file") for s in shards if isinstance(s, dict)}
        except (OSError, ValueError, AttributeError, TypeError):
            continue
    return {name for name in owned if isinstance(name, str) and SHARD_NAME.fullmatch(name)}


def pack(source, out_dir, src=None, size=32, channels=1, shard_size=1000, workers=1, *, fmt="png", quality=95,
         center_crop=None, crops_per_image=None, crop_scale=(0.5, 1.0), seed=0, dedup=None, sha256=None,
         cache_dir=None, version=None, retries=5, progress=False, dataset=None, split="train", image_column=None):
    """Pack `source` into WebDataset shards under `out_dir` and write its manifest.

    Args:
        source: a key of SOURCES ("digits", "lfw-subset", "folder", "archive", "lfw", "anime", "lol", "hf").
        out_dir: destination directory; created if missing. An earlier pack there is replaced.
        src: input folder, archive or URL (replaces a downloading source's mirrors).
        size: output images are size x size.
        channels: 1 (greyscale) or 3 (RGB).
        shard_size: images per tar shard.
        workers: processes decoding and encoding images.
        fmt: "png" (lossless), "jpg" (at `quality`) or "npy" (raw uint8).
        center_crop: crop the central N x N (at most the image) before resizing.
        crops_per_image: random square crops per image (side `crop_scale` of the shorter side);
            0 keeps the whole image. Default: 4 for "lol", else 0.
        seed: seed of the random crops.
        dedup: drop images whose pixels repeat an earlier one. Default: on for "anime" and "lol".
        sha256: expected digest of the download (replaces the published one; "none" skips the check).
        cache_dir: download cache; default $XDG_CACHE_HOME/gan-dist (for "hf": the datasets cache, default theirs).
        version: Data Dragon version for "lol" ("latest" or e.g. "16.1.1").
        retries: download attempts per mirror.
        progress: show progress bars.
        dataset: for "hf": a Hub dataset name, a parquet file or folder, an image folder or a save_to_disk folder.
        split: for "hf": the split to pack.
        image_column: for "hf": the column of images; default the dataset's only image column.

    Returns:
        The manifest as a dict.
    """
    if source not in SOURCES:
        raise PackError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    defaults = DEFAULTS.get(source, {})
    crops_per_image = defaults.get("crops_per_image", 0) if crops_per_image is None else crops_per_image
    dedup = defaults.get("dedup", False) if dedup is None else dedup
    if (not 1 <= size <= MAX_PACK_SIZE or not 0 <= seed <= MAX_SEED or channels not in (1, 3) or shard_size < 1
            or workers < 1 or fmt not in FORMATS or not 1 <= quality <= 100 or (center_crop or 0) < 0
            or crops_per_image < 0 or not 0 < crop_scale[0] <= crop_scale[1] <= 1 or retries < 1):
        raise PackError(f"bad options: --size {size} (1-{MAX_PACK_SIZE}), --seed {seed} (0-{MAX_SEED}), "
                        f"--channels {channels} (1 or 3), --shard_size {shard_size} (>=1), --workers {workers} (>=1), "
                        f"--format {fmt} ({'/'.join(FORMATS)}), --quality {quality} (1-100), "
                        f"--center_crop {center_crop} (>=0), --crops_per_image {crops_per_image} (>=0), "
                        f"--crop_scale {crop_scale} (0 < lo <= hi <= 1), --retries {retries} (>=1)")
    if source != "hf" and (dataset or image_column):
        raise PackError(f"--dataset and --image_column are for source hf, not {source!r}")
    opts = SourceOptions(src=None if src is None else str(src), sha256=sha256, cache_dir=cache_dir,
                         version=version, retries=retries, progress=progress, dataset=dataset, split=split,
                         image_column=image_column)
    found = SOURCES[source](opts)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise PackError(f"--out {out_dir} is a file, not a directory; pass a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = DirectoryLock(out, "gan_dist.shard")  # two packers into one directory mix their shards
    except (DirectoryBusy, UnsafePath) as e:
        raise PackError(f"--out {e}") from None
    except OSError as e:
        raise PackError(f"--out {out_dir}: cannot write there ({e.strerror}); pass a directory you can write") from None
    with lock:
        try:
            return _pack_into(out, source, src, found, size, channels, shard_size, workers, fmt, quality,
                              center_crop, crops_per_image, crop_scale, seed, dedup, sha256, version, progress)
        except OSError as e:  # a full disk, a quota, a file size limit: the partial files are gone by now
            for leftover in out.glob(".*.partial"):
                leftover.unlink(missing_ok=True)
            raise PackError(f"writing to --out {out_dir} failed ({e.strerror or e}); nothing half-written is "
                            "left there: free space and pack again") from None


def _pack_into(out, source, src, found, size, channels, shard_size, workers, fmt, quality, center_crop,
               crops_per_image, crop_scale, seed, dedup, sha256, version, progress):
    owned = _owned_shards(out)
    if owned:  # kept aside: an interrupted pack still knows which shards the last one wrote
        write_atomic(out / PREVIOUS, json.dumps({"shards": [{"file": name} for name in sorted(owned)]}))
    (out / MANIFEST).unlink(missing_ok=True)  # from here on the directory is not a finished pack
    for leftover in out.glob(".*.partial"):  # from an interrupted pack
        leftover.unlink()

    if found.classes is not None and class_names_problem(found.classes):
        raise PackError(f"source {source!r}: {class_names_problem(found.classes)}")
    sink, skipped, examples, seen = _ShardSink(out, shard_size), dict.fromkeys(SKIP_REASONS, 0), [], set()
    stats = {"source_images": 0}
    class_counts, unlabelled = [0] * len(found.classes or ()), [0]
    crops = list(range(crops_per_image)) if crops_per_image else [None]

    def skip(name, reason):
        skipped[reason] = skipped.get(reason, 0) + 1
        if len(examples) < 20:
            examples.append(name)

    def jobs(entries):
        work = []
        for entry in entries:
            if isinstance(entry, Skip):
                skip(entry.name, entry.reason)
                continue
            stats["source_images"] += 1
            for c in crops:
                name = entry.name if c is None else f"{entry.name}#crop{c}"
                work.append((name, entry.label, (entry.image, c, size, channels, fmt, quality, center_crop or None,
                                                 seed, tuple(crop_scale))))
        return work

    def drain(work, result):
        for (name, label, _), res in zip(work, result.get()):
            if isinstance(res, str):
                skip(name, res)
            elif dedup and res[0] in seen:
                skip(name, "duplicate")
            else:
                if dedup:
                    seen.add(res[0])
                sample = {"__key__": f"{sink.count:08d}", fmt: res[1]}
                if label is not None:
                    _count_label(class_counts, label, found.classes)
                    sample["cls"] = label
                else:
                    unlabelled[0] += 1
                sink.write(sample)
                sink.count += 1
                bar.update()

    chunk = 256 * workers
    try:
        with Pool(workers) if workers > 1 else ThreadPool(1) as pool, \
                tqdm(desc="packing", unit="img", disable=not progress, leave=False) as bar:
            pending = None
            for entries in _batches(found.items, chunk):
                work = jobs(entries)
                # encode this chunk while the previous one is written
                result = pool.map_async(encode_image, [j for _, _, j in work],
                                        chunksize=max(1, len(work) // (4 * workers)))
                if pending:
                    drain(*pending)
                pending = (work, result)
            if pending:
                drain(*pending)
        sink.close()
    except BaseException:
        sink.abort()
        raise
    inputs = sink.count + sum(skipped.values())
    if inputs == 0:
        raise PackError(f"no images found for source {source!r}" + (f" under {src}" if src else "")
                        + f"; supported suffixes: {' '.join(sorted(IMAGE_SUFFIXES))}")
    if sink.count == 0:
        raise PackError(f"none of the {inputs} inputs could be read as an image ({_reasons(skipped)})")

    for stale in owned - {s["file"] for s in sink.shards}:  # shards of an earlier, larger pack; no other file
        (out / stale).unlink(missing_ok=True)
    manifest = {
        "version": MANIFEST_VERSION, "source": source, "src": str(src) if src else None,
        "count": sink.count, "size": size, "channels": channels, "image_format": fmt,
        "has_labels": sink.count > unlabelled[0], **_classes(found.classes, class_counts, unlabelled[0]),
        "inputs": inputs, "source_images": stats["source_images"],
        "skipped": skipped, "skipped_examples": examples,
        "options": {"size": size, "channels": channels, "format": fmt, "quality": quality if fmt == "jpg" else None,
                    "center_crop": center_crop or None, "crops_per_image": crops_per_image,
                    "crop_scale": list(crop_scale) if crops_per_image else None, "seed": seed, "dedup": dedup,
                    "shard_size": shard_size, "sha256": sha256, "version": version},
        **found.info,
        "shards": sink.shards,
    }
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    (out / PREVIOUS).unlink(missing_ok=True)
    return manifest


def _count_label(counts, label, classes):
    """Count one sample of class `label`; a source without class names numbers its classes from 0."""
    if (not isinstance(label, int) or not 0 <= label < MAX_CLASSES
            or (classes is not None and label >= len(classes))):
        raise PackError(f"a sample's label {label!r} is not one of the source's {len(classes or counts)} classes")
    if classes is None and label >= len(counts):
        counts.extend([0] * (label + 1 - len(counts)))
    counts[label] += 1


def _classes(names, counts, unlabelled):
    """The manifest's class names and per-class counts, when every sample carries a label."""
    if unlabelled or not counts:
        return {}
    names = list(names) if names is not None else [str(i) for i in range(len(counts))]
    problem = class_names_problem(names)
    if problem:
        raise PackError(f"the labels cannot be recorded: {problem}")
    return {"classes": names, "class_counts": counts}


def _reasons(skipped):
    return ", ".join(f"{n} {reason}" for reason, n in skipped.items() if n) or "none skipped"


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m gan_dist.shard", description=__doc__.split("\n")[0])
    p.add_argument("source", choices=sorted(SOURCES), help="where the images come from")
    p.add_argument("--out", required=True, help="output directory for *.tar and manifest.json")
    p.add_argument("--src", default=None,
                   help="input folder, .tgz/.tar/.zip or URL; for lfw/anime/lol it replaces the default "
                        "mirrors (lol: a Data Dragon base URL or a local copy of its layout)")
    p.add_argument("--sha256", default=None, help="expected sha256 of the download ('none': do not check)")
    p.add_argument("--cache_dir", default=None,
                   help="download cache (default $XDG_CACHE_HOME/gan-dist; hf: the datasets cache, default theirs)")
    p.add_argument("--size", type=int, default=32, help="output width and height in pixels")
    p.add_argument("--channels", type=int, default=1, choices=(1, 3), help="1 greyscale, 3 RGB")
    p.add_argument("--center_crop", type=int, default=None, help="crop the central N x N before resizing")
    p.add_argument("--crops_per_image", type=int, default=None,
                   help="random square crops per image (default 4 for lol, else 0 = whole image)")
    p.add_argument("--crop_scale", type=float, nargs=2, default=(0.5, 1.0), metavar=("LO", "HI"),
                   help="random crop side as a fraction of the shorter side")
    p.add_argument("--seed", type=int, default=0, help="seed of the random crops")
    p.add_argument("--dedup", action=argparse.BooleanOptionalAction, default=None,
                   help="drop repeated images (default on for anime and lol)")
    p.add_argument("--dataset", default=None,
                   help="hf: a Hub dataset (user/name), a parquet file or folder, an image folder or a "
                        "save_to_disk folder; needs pip install 'gan-dist[hf]'")
    p.add_argument("--split", default="train", help="hf: the split to pack")
    p.add_argument("--image_column", default=None, help="hf: the column of images (default: the only one)")
    p.add_argument("--version", default=None, help="Data Dragon version for lol ('latest' or e.g. 16.1.1)")
    p.add_argument("--format", dest="fmt", default="png", choices=sorted(FORMATS), help="storage format")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality for --format jpg")
    p.add_argument("--shard_size", type=int, default=1000, help="images per shard")
    p.add_argument("--workers", type=int, default=cores(), help="encoding processes (default: every core)")
    p.add_argument("--retries", type=int, default=5, help="download attempts per mirror")
    args = vars(p.parse_args(argv))
    source, out = args.pop("source"), args.pop("out")
    try:
        m = pack(source, out, progress=sys.stderr.isatty(), **args)
    except PackError as e:
        sys.exit(f"error: {e}")
    print(f"packed {m['count']} images ({m['size']}x{m['size']}x{m['channels']} {m['image_format']}) into "
          f"{len(m['shards'])} shards in {out}; skipped: {_reasons(m['skipped'])}"
          + (f" (e.g. {', '.join(m['skipped_examples'][:5])})" if m["skipped_examples"] else ""))
    if m.get("expected_count") and m["count"] != m["expected_count"]:
        print(f"note: expected {m['expected_count']} images from this source, got {m['count']}")
    if m.get("notice"):
        print(m["notice"])


if __name__ == "__main__":
    main()
