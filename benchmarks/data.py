"""The `data` case: our loader versus the vanilla ImageFolder pipeline.

Both read the same source images on the same cores: the vanilla pipeline decodes each
source JPEG and resizes it per sample (ImageFolder + Resize + ToTensor + Normalize, 2
workers, batch 64); ours reads pre-resized shards (PNG, JPEG or raw .npy), either streamed
by 2 workers or decoded once into memory, where a step's cost is an index into a tensor.
On a GPU, JPEG shards are also streamed undecoded and decoded batch by batch on the device.
"""
import time
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image

from benchmarks.step import BATCH
from gan_dist.training.data import (
    device_decoded,
    epoch_batches,
    load_into_memory,
    memory_epoch_batches,
    to_device_float,
)
from gan_dist.training.manifest import load_manifest, shard_counts
from gan_dist.training.tarstream import tar_samples

VANILLA_WORKERS = 2  # the vanilla recipe's --n_cpu 2


def unpack_to_folder(shard_dir, folder):
    """Write a shard directory's images out as files under folder/all/ (for ImageFolder); returns folder."""
    manifest, urls = load_manifest(shard_dir)
    images, _ = load_into_memory(urls, 0, shard_counts(manifest, urls))
    out = Path(folder) / "all"
    out.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img.permute(1, 2, 0).squeeze(2).numpy()).save(out / f"{i:06d}.png")
    return Path(folder)


def _rate(batches, seconds, warmup, finish=None, device=None):
    """Images/s over batches after the first `warmup`, running for at least `seconds` (batches is a
    function of the pass number, so short datasets are read again). `finish` takes each batch to
    where it is used (e.g. to float on the GPU); the clock waits for `device`'s queued work."""
    n_imgs, t0, seen, epoch = 0, None, 0, 0
    sync = torch.cuda.synchronize if _is_cuda(device) else (lambda: None)
    while True:
        for batch in batches(epoch):
            batch = batch[0] if isinstance(batch, (tuple, list)) else batch
            if finish is not None:
                batch = finish(batch)
            seen += 1
            if seen == warmup:
                sync()
                t0 = time.perf_counter()
            elif t0 is not None:
                n_imgs += batch.size(0)
                if time.perf_counter() - t0 >= seconds:
                    sync()
                    return n_imgs / (time.perf_counter() - t0)
        epoch += 1


def _is_cuda(device):
    return device is not None and torch.device(device).type == "cuda"


def _to_device(device):
    """Our uint8 batches' last stage: float in [-1, 1] on `device`; none on the host (that is device work)."""
    return None if device is None else (lambda batch: to_device_float(batch, device))


def tar_rate(shard_dir, seconds, reader):
    """Samples/s of reading shards into samples, nothing decoded, in this process: `reader` is "ours"
    (gan_dist.training.tarstream) or "webdataset" (its tarfile-based reader)."""
    _, urls = load_manifest(shard_dir)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        shards = wds.SimpleShardList(urls)
        samples = tar_samples(shards, wds.reraise_exception) if reader == "ours" else wds.tarfile_to_samples()(shards)
        for _ in samples:
            n += 1
    return n / (time.perf_counter() - t0)


def vanilla_pipeline_rate(folder, size, seconds, warmup=3, workers=VANILLA_WORKERS, channels=3, device=None):
    """Images/s of the vanilla loader (ImageFolder, Resize, ToTensor, Normalize) at size x size; its batches
    are float already, and with `device` they are copied there."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(),
                             transforms.Normalize([0.5] * channels, [0.5] * channels)])
    if channels == 1:
        tf = transforms.Compose([transforms.Grayscale(), tf])
    loader = torch.utils.data.DataLoader(datasets.ImageFolder(str(folder), transform=tf), batch_size=BATCH,
                                         shuffle=True, num_workers=workers, drop_last=True,
                                         pin_memory=_is_cuda(device),
                                         persistent_workers=workers > 0)  # steady state, as ours below
    finish = None if device is None else (lambda batch: batch.to(device, non_blocking=True))
    return _rate(lambda epoch: loader, seconds, warmup, finish, device)


def stream_rate(shard_dir, seconds, warmup=3, workers=VANILLA_WORKERS, device=None, decode_on_device=False):
    """Images/s of our streamed path: shards decoded to uint8 by `workers` (with `decode_on_device`, JPEGs
    passed undecoded and each batch decoded on `device`), then scaled to float on `device` if one is given."""
    manifest, urls = load_manifest(shard_dir)
    # One long epoch: the streamed path serves datasets too large for memory, whose epochs run to
    # thousands of steps; restarting the workers every 32 batches of the bench's images would measure that.
    steps = 10**9

    def batches(epoch):
        stream = epoch_batches(urls, BATCH, steps, 0, epoch, workers, expected=shard_counts(manifest, urls),
                               pin_memory=_is_cuda(device), encoded=decode_on_device)
        return device_decoded(stream, device, manifest["channels"]) if decode_on_device else stream
    return _rate(batches, seconds, warmup, _to_device(device), device)


def memory_rate(shard_dir, seconds, warmup=3, device=None):
    """(images/s, load seconds) of our in-memory path: decode once, then index a uint8 tensor per step."""
    manifest, urls = load_manifest(shard_dir)
    t = time.perf_counter()
    images, _ = load_into_memory(urls, VANILLA_WORKERS, shard_counts(manifest, urls))
    load_s = time.perf_counter() - t
    steps = max(1, len(images) // BATCH)
    return _rate(lambda epoch: memory_epoch_batches(images, BATCH, steps, 0, epoch, 0, 1), seconds, warmup,
                 _to_device(device), device), load_s


def data_cases(shard_dirs, vanilla_folders, seconds, channels=3, device=None):
    """Measure every data case at each size; returns {name: {"images_per_s", "cores", ...}}.

    shard_dirs maps a size to {format: shard dir}; vanilla_folders maps it to the image folder the
    vanilla pipeline reads. Without `device`, a case ends when its batch is in the main process,
    ready to go to the device: the vanilla loader's as float (its workers convert), ours as uint8 (the
    trainer converts on the device). With `device` (a GPU), every batch ends as float there, and
    JPEG shards are also streamed undecoded and decoded on it.

    `cores` is what each path keeps busy: its worker processes, or the main process alone.
    """
    cases, ends = {}, f"float on {device}" if device else "uint8 in the main process"
    for size, by_format in sorted(shard_dirs.items()):
        cases[f"data/vanilla_{size}"] = {
            "images_per_s": vanilla_pipeline_rate(vanilla_folders[size], size, seconds, channels=channels,
                                                 device=device),
            "cores": VANILLA_WORKERS,
            "what": "ImageFolder+Resize+ToTensor+Normalize, " + (f"float on {device}" if device else "float")}
        for fmt, shard_dir in by_format.items():
            cases[f"data/stream_{fmt}_{size}"] = {"images_per_s": stream_rate(shard_dir, seconds, device=device),
                                                  "cores": VANILLA_WORKERS,
                                                  "what": f"{fmt} shards streamed, decoded by the workers, {ends}"}
        if device is not None and "jpg" in by_format:
            cases[f"data/stream_jpg_on_device_{size}"] = {
                "images_per_s": stream_rate(by_format["jpg"], seconds, device=device, decode_on_device=True),
                "cores": VANILLA_WORKERS, "what": f"jpg shards streamed undecoded, each batch decoded on {device}"}
        first = next(iter(by_format.values()))
        for reader in ("webdataset", "ours"):
            cases[f"data/tar_{reader}_{size}"] = {
                "images_per_s": tar_rate(first, seconds, reader), "cores": 1,
                "what": "tar -> samples, no decoding "
                        f"({'gan_dist.training.tarstream' if reader == 'ours' else 'tarfile'})"}
        rate, load_s = memory_rate(first, seconds, device=device)
        cases[f"data/memory_{size}"] = {"images_per_s": rate, "cores": 1, "load_s": load_s,
                                        "what": f"in memory, an index per batch, {ends}"}
    for case in cases.values():
        case["images_per_s_per_core"] = case["images_per_s"] / case["cores"]
    return cases
