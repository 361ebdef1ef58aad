"""Where a run's real images come from: held in memory when the decoded set fits in --cache_gb, else streamed.
With --cond each batch is (images, class ids) (training/labels.py)."""
from typing import Callable, NamedTuple, Optional

import torch

from gan_dist.training.data import (
    decoded_gib,
    device_decoded,
    epoch_batches,
    first_batch,
    load_into_memory,
    memory_epoch_batches,
)
from gan_dist.training.manifest import DataError, shard_counts


class RealData(NamedTuple):
    """Where a run's real images come from."""
    batches: Callable  # (epoch, skip) -> iterator of (uint8 batch, or (batch, class ids) with --cond; samples skipped)
    description: str
    skipped_at_load: int  # images that could not be decoded when loading into memory
    in_memory: Optional[torch.Tensor]  # every decoded image, when they are held in memory
    urls: list

    def for_metrics(self, count, seed):
        """Real images for FID/KID: those held in memory, else `count` drawn from the stream with `seed`
        (never the whole streamed set, which was too large for --cache_gb)."""
        if self.in_memory is not None:
            return self.in_memory
        return first_batch(self.urls, count, seed)


DEVICE_SHARE = 0.5  # the most of a GPU's free memory the decoded set may take (the rest: networks, activations)


def resident(images, device, enabled=True, free_bytes=None):
    """(images, where they are held): moved to `device` once when `enabled` and they fit in DEVICE_SHARE of its
    free memory (`free_bytes`, default: what the device reports), so each batch is gathered there, not
    gathered on the host and copied. On the CPU the device is the host: the same code path, no copy."""
    device = torch.device(device)
    if not enabled:
        return images, "in host memory (--no-data_on_device)"
    if device.type == "cuda" and free_bytes is None:
        free_bytes = torch.cuda.mem_get_info(device)[0]
    if free_bytes is not None and images.nbytes > DEVICE_SHARE * free_bytes:
        return images, (f"in host memory: {images.nbytes / 2**30:.2f} GiB is over {DEVICE_SHARE:.0%} of "
                        f"{device}'s {free_bytes / 2**30:.2f} GiB free")
    return images.to(device), f"on {device}"


def real_data(args, manifest, urls, accelerator, steps_per_epoch, num_classes=None):
    """Hold the decoded dataset in memory when it fits in --cache_gb (true epochs), else stream the shards.
    With `num_classes` every batch comes with its class ids, and a sample without a valid label is skipped."""
    if decoded_gib(manifest) <= args.cache_gb and not args.decode_on_device:
        images, skipped = load_into_memory(urls, args.n_cpu, shard_counts(manifest, urls), num_classes)
        images, labels = images if num_classes else (images, None)
        if skipped / (skipped + len(images)) > args.max_skip_fraction:
            damaged = "could not be decoded" + (" or had no valid class label" if num_classes else "")
            raise DataError(f"{skipped} of {skipped + len(images)} images in {args.data} {damaged}, "
                            f"above --max_skip_fraction {args.max_skip_fraction}; repack the shards")

        images, where = resident(images, accelerator.device, args.data_on_device)
        labels = labels.to(images.device) if labels is not None else None

        def from_memory(epoch, skip):
            return memory_epoch_batches(images, args.batch_size, steps_per_epoch, args.seed, epoch,
                                        accelerator.process_index, accelerator.num_processes, skip, labels)
        return RealData(from_memory, f"in memory ({decoded_gib(manifest):.2f} GiB decoded, {where})", skipped,
                        images, urls)

    def streamed(epoch, skip):
        batches = epoch_batches(urls, args.batch_size, steps_per_epoch, args.seed, epoch, args.n_cpu, skip=skip,
                                pin_memory=accelerator.device.type == "cuda", expected=shard_counts(manifest, urls),
                                encoded=args.decode_on_device, num_classes=num_classes)
        if args.decode_on_device:
            return device_decoded(batches, accelerator.device, args.channels, with_labels=bool(num_classes))
        return batches
    where = f", JPEG decoded on {accelerator.device}" if args.decode_on_device else ""
    return RealData(streamed, f"streamed from {len(urls)} shards by {args.n_cpu} workers{where}", 0, None, urls)
