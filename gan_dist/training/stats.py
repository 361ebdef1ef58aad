"""Training statistics summed on the device each step and reduced across ranks once per log interval; checks on them."""
import math
import time

import torch

from gan_dist.training.manifest import DataError
from gan_dist.training.runlog import TRAIN_KEYS


class IntervalStats:
    """Accumulates TRAIN_KEYS without a host sync per step; `collect` is a collective (call on every rank)."""

    def __init__(self, device):
        self.sums = torch.zeros(len(TRAIN_KEYS), device=device)
        self.device = device
        self.reset()

    def reset(self):
        self.sums.zero_()
        self.steps, self.data_wait, self.start = 0, 0.0, time.perf_counter()
        self.skipped_updates = torch.zeros((), device=self.device)  # the fp16 scaler's skips (same on every rank)
        self.latest = {}
        if self.device.type == "cuda":  # the device's own time for the interval, beside the wall clock's
            self.gpu_start = torch.cuda.Event(enable_timing=True)
            self.gpu_start.record()

    def add(self, d, g, lr_D=None, lr_G=None):
        """One step's records (training.step's DRecord, GRecord); D(x) and D(G(z)) are kept as mean
        probabilities. Gradient norms, penalties and rates are kept from the last step that measured them."""
        values = (d.loss, g.loss, torch.sigmoid(d.real_logits).mean(), torch.sigmoid(d.fake_logits).mean())
        self.sums += torch.stack([v.detach().float() for v in values])
        self.skipped_updates += d.skipped + g.skipped
        self.steps += 1
        if d.grad_norm is not None:
            self.latest.update(grad_norm_D=d.grad_norm, lr_D=lr_D, **d.penalties)
        if g.grad_norm is not None:
            self.latest.update(grad_norm_G=g.grad_norm, lr_G=lr_G)

    def collect(self, accelerator, global_batch):
        """Means over the interval and over ranks, throughput, timing and the last measured values; then reset.
        A collective (one all-reduce): call it on every rank."""
        if self.device.type == "cuda":
            gpu_end = torch.cuda.Event(enable_timing=True)
            gpu_end.record()
        means = (accelerator.reduce(self.sums, "sum") / accelerator.num_processes / self.steps).tolist()
        seconds = time.perf_counter() - self.start
        row = dict(zip(TRAIN_KEYS, means), img_per_s=self.steps * global_batch / seconds,
                   sec_per_step=seconds / self.steps, data_wait=self.data_wait / seconds)
        row.update({k: float(v) for k, v in self.latest.items()})
        row["step_skipped"] = int(self.skipped_updates.item())
        if self.device.type == "cuda":
            gpu_end.synchronize()
            row["gpu_sec_per_step"] = self.gpu_start.elapsed_time(gpu_end) / 1000 / self.steps
            row["gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.reset()
        return row


def check_row(row, step, skipped_total, images_seen, max_skip_fraction):
    """Stop on a non-finite loss (naming the network) or too many unreadable samples."""
    for key, net in (("loss_D", "D"), ("loss_G", "G")):
        if not math.isfinite(row[key]):
            raise FloatingPointError(f"{net}'s loss is {row[key]} at step {step} (averaged since the last log); "
                                     "the last checkpoint holds finite weights: resume from it with a lower --lr")
    fraction = skipped_total / (skipped_total + images_seen)
    if fraction > max_skip_fraction:
        raise DataError(f"{skipped_total} unreadable samples by step {step} ({fraction:.1%} of those read), above "
                        f"--max_skip_fraction {max_skip_fraction}; repack the shards (see warnings for shard names)")
