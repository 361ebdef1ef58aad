"""The WebDataset input pipeline: shards -> uint8 image batches, the same length on every rank.

Each epoch builds a fresh stream seeded by (seed, epoch, rank, worker): shards are
resampled with replacement (so any number of ranks and workers works with any number
of shards, and no rank runs dry before another), samples pass a shuffle buffer, and
the loader stops after exactly `steps_per_epoch` batches on every rank. Restarting an
epoch with the same seed replays it batch for batch, which is what resume relies on.
Workers read the tars with gan_dist.training.tarstream and decode in the worker (PNG/JPEG with
torchvision.io, a PNG only once gan_dist.training.pngcheck has found it well-formed; .npy
without a copy); with `encoded=True` they pass JPEG bytes on for
`decode_on_device`. Batches stay uint8 until they reach the device; `to_device_float`
scales them there. With `num_classes` (--cond) each batch comes with its class ids (training/labels.py).
"""
import io
import sys
from itertools import islice, repeat
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from gan_dist.names import MANIFEST
from gan_dist.packing.images import to_8bit
from gan_dist.training.labels import label_of, labelled
from gan_dist.training.manifest import DataError
from gan_dist.training.pngcheck import plain_png
from gan_dist.training.preemption import ignore_stop_signals
from gan_dist.training.tarstream import tar_samples

_NPY_HEADERS = {}  # a .npy header -> (image shape, values); one entry per dataset layout


def _npy_array(data):
    """A uint8 .npy file's bytes -> a numpy view of them (no copy; np.load re-parses and copies every time)."""
    v1 = data[6:7] == b"\x01"
    length = 10 + int.from_bytes(data[8:10], "little") if v1 else 12 + int.from_bytes(data[8:12], "little")
    header = bytes(data[:length])
    if header not in _NPY_HEADERS:
        arr = np.load(io.BytesIO(data), allow_pickle=False)  # checks magic, dtype and order once
        if arr.dtype != np.uint8 or np.isfortran(arr):
            raise ValueError(f".npy image is {arr.dtype}{' (Fortran order)' if np.isfortran(arr) else ''}, "
                             f"not C-ordered uint8; repack with `python -m gan_dist.shard --format npy`")
        if len(_NPY_HEADERS) > 64:
            _NPY_HEADERS.clear()
        _NPY_HEADERS[header] = (arr.shape if arr.ndim == 3 else (*arr.shape, 1)), arr.size
    shape, count = _NPY_HEADERS[header]
    return np.frombuffer(data, np.uint8, count=count, offset=length).reshape(shape)


def _writable(data):
    return data if isinstance(data, bytearray) else bytearray(data)  # torch warns on read-only buffers


def _decode(sample):
    """A sample -> its image: uint8 (C, H, W) tensor for PNG/JPEG, uint8 (H, W, C) numpy view for .npy."""
    if "npy" in sample:
        return _npy_array(_writable(sample["npy"]))
    if "png" in sample:
        if not plain_png(sample["png"]):
            return _pil_decode(sample["png"])
        return decode_image(torch.frombuffer(_writable(sample["png"]), dtype=torch.uint8))
    for key in ("jpg", "jpeg"):
        if key in sample:
            return decode_image(torch.frombuffer(_writable(sample[key]), dtype=torch.uint8))
    raise ValueError(f"sample {sample.get('__key__')} has no image (keys: {sorted(sample)})")


def _pil_decode(data):
    """PNG bytes in a layout torchvision is not trusted with -> uint8 (C, H, W), greyscale or RGB."""
    with Image.open(io.BytesIO(data)) as img:
        img = to_8bit(img)  # 16-bit and float by their range: convert("L") would clip them to 0 and 255
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGB" if img.mode in ("P", "RGBA", "LA", "CMYK") else "L")
        arr = np.array(img)
    return torch.from_numpy(arr[:, :, None] if arr.ndim == 2 else arr).permute(2, 0, 1).contiguous()


def _collate(images):
    """Decoded images -> uint8 (B, C, H, W). .npy images (H, W, C) are stacked as they are and come out
    channels-last: a uint8 transpose on the CPU costs more than decoding, and the trainer makes the
    batch contiguous on the device."""
    if isinstance(images[0], np.ndarray):
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    return torch.stack(images)


def _as_chw(img):
    return torch.from_numpy(img).permute(2, 0, 1) if isinstance(img, np.ndarray) else img


def decode_sample(sample):
    """PNG/JPEG bytes or a raw uint8 .npy array -> uint8 tensor (C, H, W)."""
    return _as_chw(_decode(sample))


def _decode_or_none(sample):
    if sample is None:  # a sample a damaged shard should have held
        return None
    try:
        return _decode(sample)
    except Exception:  # a corrupt or truncated image: counted as skipped downstream
        return None


def _jpeg_or_none(sample):
    return None if sample is None else sample.get("jpg", sample.get("jpeg"))


def _concat_jpegs(jpegs):
    """JPEG bytes -> (one uint8 tensor of them all, int64 offsets (B + 1)): one tensor leaves the worker, not B."""
    offsets = torch.tensor([0] + [len(j) for j in jpegs]).cumsum(0)
    return torch.frombuffer(bytearray(b"".join(jpegs)), dtype=torch.uint8), offsets


def _batches(src, batch_size, prepare, collate):
    """Samples (None for one a damaged shard should have held) -> (collate(batch_size prepared samples), samples
    skipped since the last batch). One stage rather than wds.map + wds.batched: wds.map drops None, which we
    need to count."""
    items, skipped = [], 0
    for sample in src:
        item = prepare(sample)
        if item is None:
            skipped += 1
            continue
        items.append(item)
        if len(items) == batch_size:
            yield collate(items), skipped
            items, skipped = [], 0


def decode_on_device(encoded, device, channels, labels=None):
    """A batch from `epoch_batches(..., encoded=True)` -> (uint8 (B, C, H, W) on `device`, images that failed);
    with `labels` (B,), the batch is (images, labels).

    The JPEGs are decoded in one batched call on `device` (nvJPEG on CUDA). An image that fails
    to decode is replaced by another of the same batch (its label with it) and counted, as the workers count theirs.
    """
    data, offsets = encoded
    bounds = offsets.tolist()
    jpegs = [data[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]
    mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
    if torch.device(device).type == "cuda":
        # the CUDA decoder writes from a stream of its own into blocks the current stream may still be
        # reading (pytorch/vision#9606): let the queued work finish first
        torch.cuda.current_stream(device).synchronize()
    try:
        images = torch.stack(decode_jpeg(jpegs, mode=mode, device=device))
        return (images if labels is None else (images, labels)), 0
    except RuntimeError:  # one bad image fails the whole call: find it
        images = []
        for jpeg in jpegs:
            try:
                images.append(decode_jpeg(jpeg, mode=mode, device=device))
            except RuntimeError:
                images.append(None)
    good = [i for i, img in enumerate(images) if img is not None]
    if not good:
        raise DataError(f"none of the {len(images)} JPEGs of a batch could be decoded on {device}; repack the data")
    take = [i if img is not None else good[i % len(good)] for i, img in enumerate(images)]
    batch = torch.stack([images[i] for i in take])
    return (batch if labels is None else (batch, labels[take])), len(images) - len(good)


def device_decoded(batches, device, channels, with_labels=False):
    """(encoded batch, skipped) from `epoch_batches(..., encoded=True)` -> (uint8 batch on device, skipped);
    `with_labels`: the batches are (encoded, class ids) and stay pairs."""
    for batch, skipped in batches:
        encoded, labels = batch if with_labels else (batch, None)
        images, failed = decode_on_device(encoded, device, channels, labels)
        yield images, skipped + failed


def _skip_bad_shard(exn):
    """WebDataset handler: report an unreadable shard or truncated tar by name, go on without sleeping."""
    print(f"warning: skipping unreadable shard data: {exn!r}", file=sys.stderr)
    return True


def _checked_shard_samples(src, expected):
    """Shards -> samples; a shard that yields fewer samples than `expected` says (a tar cut short at a
    member boundary reads as a clean end) is reported, and its missing samples come out as None."""
    for shard in src:
        n = 0
        for sample in tar_samples([shard], handler=_skip_bad_shard):
            n += 1
            yield sample
        missing = (expected or {}).get(shard["url"], n) - n
        if missing > 0:
            print(f"warning: shard {shard['url']} gave {n} of {n + missing} samples (truncated or damaged)",
                  file=sys.stderr)
            yield from repeat(None, missing)  # lazily: a manifest's count is not an allocation


class _WorkerShuffle(wds.detshuffle):
    """Shuffle buffer seeded per rank and worker (wds.shuffle would use one seed for all)."""

    def run(self, src):
        self.seed = wds.utils.make_seed(self.seed, wds.utils.pytorch_worker_seed())
        return super().run(src)


def image_stream(urls, batch_size, seed, epoch, shuffle_buffer=1000, expected=None, encoded=False,
                 num_classes=None):
    """An endless, seeded WebDataset pipeline of (uint8 batch (B, C, H, W), images skipped).

    With `encoded`, batches hold the JPEGs undecoded, for `decode_on_device`; with `num_classes`, each batch is
    (images, class ids) and a sample without a valid label is skipped."""
    epoch_seed = wds.utils.make_seed(seed, epoch)
    stage = (_jpeg_or_none, _concat_jpegs) if encoded else (_decode_or_none, _collate)
    if num_classes:
        stage = labelled(*stage, num_classes)
    return wds.DataPipeline(
        # deterministic=True: the seed is (rank, worker, epoch_seed), never the clock
        wds.ResampledShards(urls, seed=epoch_seed, deterministic=True),
        wds.pipelinefilter(_checked_shard_samples)(expected),
        _WorkerShuffle(shuffle_buffer, initial=min(shuffle_buffer, 100), seed=epoch_seed),
        wds.pipelinefilter(_batches)(batch_size, *stage),
    )


def check_images(manifest, urls, data):
    """Raise DataError unless the first readable image of the first shard has the manifest's size and channels
    (a manifest from elsewhere may disagree with its images). Shards read through --shard_url are not opened here."""
    want = (manifest["channels"], manifest["size"], manifest["size"])
    for sample in islice(tar_samples([{"url": urls[0]}], handler=lambda exn: False), 16):
        try:
            got = tuple(decode_sample(sample).shape)
        except Exception:  # a damaged image: the readers count it; try the next
            continue
        if got != want:
            raise DataError(f"--data {data}: {MANIFEST} says {want[1]}x{want[2]}x{want[0]} images, but "
                            f"{Path(urls[0]).name} holds {got[1]}x{got[2]}x{got[0]}; repack the directory")
        break


def _failure(exn):
    """An exception from a loader -> one line: the worker's own last traceback line, else the exception."""
    text = str(exn).strip()
    if "Original Traceback" in text:  # re-raised from a worker: its last line names the error
        return text.splitlines()[-1][:300]
    return f"{type(exn).__name__}: {text.splitlines()[0][:300] if text else ''}"


def _loader_batches(loader):
    """Iterate a DataLoader; a failure in it or in one of its workers becomes a DataError."""
    try:
        yield from loader
    except Exception as exn:
        failure = _failure(exn)
    else:
        return
    raise DataError(f"reading the shards failed: {failure}; repack the data with `python -m gan_dist.shard`"
                    " (or, with --shard_url, check that its command or URL works)")


def epoch_batches(urls, batch_size, steps_per_epoch, seed, epoch, num_workers, skip=0,
                  pin_memory=False, expected=None, encoded=False, num_classes=None):
    """Yield exactly `steps_per_epoch - skip` (uint8 batch, images skipped) of this rank's stream for `epoch`.

    Args:
        urls: shard paths or URLs.
        batch_size: images per batch (per process).
        steps_per_epoch: batches in a full epoch; identical on every rank.
        seed: the run's data seed; with `epoch` it fixes the stream on every rank.
        epoch: epoch number; each epoch draws a different order.
        num_workers: DataLoader worker processes (0 reads in this process).
        skip: batches already consumed in this epoch (resume).
        pin_memory: pin host memory for faster, non-blocking copies to a GPU.
        expected: {url: sample count} from the manifest, to count samples of truncated shards as skipped.
        encoded: batches of undecoded JPEGs (`decode_on_device` decodes them) instead of images.
        num_classes: with it, each batch is (images, class ids); samples without a valid label are skipped.
    """
    loader = torch.utils.data.DataLoader(
        image_stream(urls, batch_size, seed, epoch, expected=expected, encoded=encoded, num_classes=num_classes),
        batch_size=None,
        num_workers=num_workers, pin_memory=pin_memory, worker_init_fn=ignore_stop_signals,
        # An explicit generator keeps the loader from drawing from the global torch RNG,
        # which would shift every later noise sample (and break exact resume).
        generator=torch.Generator().manual_seed(seed))
    yield from islice(_loader_batches(loader), skip, steps_per_epoch)


def decoded_gib(manifest):
    """Size of the whole dataset decoded to uint8, in GiB."""
    return manifest["count"] * manifest["channels"] * manifest["size"] ** 2 / 2**30


def _keyed_chunks(src, size=256, num_classes=None):
    """Samples -> ([(url, key)], their images as one uint8 tensor, their labels, samples that failed) per `size`
    samples: one tensor crosses from a worker per chunk (each tensor passed costs a file descriptor and a round
    trip). Labels are read only with `num_classes`; a sample without a valid one then fails."""
    names, images, labels, failed = [], [], [], 0
    for sample in src:
        img = _decode_or_none(sample)
        label = label_of(sample, num_classes) if num_classes else 0
        if img is None or label is None:
            failed += 1
        else:
            names.append((sample["__url__"], sample["__key__"]))
            images.append(img)
            labels.append(label)
        if len(names) + failed == size:
            yield names, _collate(images) if images else None, labels, failed
            names, images, labels, failed = [], [], [], 0
    if names or failed:
        yield names, _collate(images) if images else None, labels, failed


def load_into_memory(urls, num_workers=0, expected=None, num_classes=None):
    """Decode every image in `urls` once; return (uint8 tensor (N, C, H, W) in (shard, key) order, images skipped).
    With `num_classes` the first is (images, int64 class ids (N,)), and samples without a valid label are skipped."""
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls), wds.split_by_worker, wds.pipelinefilter(_checked_shard_samples)(expected),
        wds.pipelinefilter(_keyed_chunks)(num_classes=num_classes))
    loader = torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=min(num_workers, len(urls)),
                                         worker_init_fn=ignore_stop_signals,
                                         generator=torch.Generator())  # leave the global RNG alone
    names, chunks, labels, skipped = [], [], [], 0
    for chunk_names, chunk, chunk_labels, failed in _loader_batches(loader):
        names += chunk_names
        labels += chunk_labels
        skipped += failed
        if chunk is not None:
            chunks.append(chunk)
    if not names:
        what = "images in the shards could be decoded with a valid label" if num_classes else \
            "images in the shards could be decoded"
        raise DataError(f"none of the {skipped} {what}; repack the data")
    if len({chunk.shape[1:] for chunk in chunks}) > 1:
        raise DataError(f"the shards hold images of several shapes ({sorted({c.shape[1:] for c in chunks})}); "
                        "repack the data")
    order = torch.tensor(sorted(range(len(names)), key=names.__getitem__))  # the same whatever the worker count
    images = torch.cat(chunks)[order].contiguous()
    if num_classes:
        return (images, torch.tensor(labels, dtype=torch.int64)[order]), skipped
    return images, skipped


def memory_epoch_batches(images, batch_size, steps_per_epoch, seed, epoch, rank, world_size, skip=0, labels=None):
    """Yield this rank's (batch, 0) of `epoch` from images held in memory: a true epoch. With `labels` (N,) (on
    the images' device) each batch is (images, class ids).

    One permutation per epoch, the same on every rank, is dealt out rank by rank, so
    within an epoch no image is used twice across ranks. The permutation is drawn on the host
    (the same wherever the images are); batches are gathered where `images` lie.
    """
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(wds.utils.make_seed(seed, epoch)))
    mine = perm[rank::world_size][: steps_per_epoch * batch_size].to(images.device)
    for i in range(skip, steps_per_epoch):
        idx = mine[i * batch_size:(i + 1) * batch_size]
        yield (images[idx] if labels is None else (images[idx], labels[idx])), 0


def to_device_float(batch, device):
    """uint8 (B, C, H, W) on the host -> float in [-1, 1] on `device`."""
    batch = batch.to(device, non_blocking=True)
    return batch.float().div_(127.5).sub_(1.0)


def first_batch(urls, n, seed):
    """n images drawn from the shards with `seed`, read in this process (for a grid of reals)."""
    return next(epoch_batches(urls, n, 1, seed, epoch=0, num_workers=0))[0]


def mirror(batch, seed, step, rank):
    """Flip about half of `batch` (B, C, H, W) horizontally, chosen from (seed, step, rank) alone, so a
    resumed run flips the same images as an uninterrupted one."""
    gen = torch.Generator().manual_seed(wds.utils.make_seed(seed, step, rank, 0x6D6972))
    flip = (torch.rand(batch.size(0), generator=gen) < 0.5).to(batch.device)[:, None, None, None]
    return torch.where(flip, batch.flip(3), batch)
