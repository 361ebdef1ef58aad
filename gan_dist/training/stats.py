"""Training statistics summed on the device each step and reduced across ranks once per log interval; checks on them."""
import math
import time

import torch

from gan_dist.training.data import DataError

TRAIN_KEYS = ("loss_D", "loss_G", "D_real", "D_fake")


def grad_norm(module, scaler=None):
    """L2 norm of all gradients of `module` (unscaled when an fp16 GradScaler is in use)."""
    grads = [p.grad.detach().float().norm() for p in module.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack(grads)) if grads else torch.zeros(())
    return norm / scaler.get_scale() if scaler is not None else norm


class IntervalStats:
    """Accumulates TRAIN_KEYS without a host sync per step; `collect` is a collective (call on every rank)."""

    def __init__(self, device):
        self.sums = torch.zeros(len(TRAIN_KEYS), device=device)
        self.device = device
        self.reset()

    def reset(self):
        self.sums.zero_()
        self.steps, self.data_wait, self.skipped, self.start = 0, 0.0, 0, time.perf_counter()
        self.skipped_updates = 0  # optimizer steps the fp16 GradScaler skipped (same on every rank)
        self.latest = {}

    def add(self, loss_D, loss_G, real_logits, fake_logits):
        """One step's losses and D's logits; D(x) and D(G(z)) are kept as mean probabilities."""
        values = (loss_D, loss_G, torch.sigmoid(real_logits).mean(), torch.sigmoid(fake_logits).mean())
        self.sums += torch.stack([v.detach().float() for v in values])
        self.steps += 1

    def note(self, **values):
        """Values measured on the last step of the interval only (gradient norms, learning rates)."""
        self.latest.update(values)

    def collect(self, accelerator, global_batch):
        """Means over the interval and over ranks, throughput, timing, skipped samples (all ranks) and notes;
        then reset."""
        # one all-reduce for everything: the sums and this rank's skipped samples
        totals = accelerator.reduce(torch.cat([self.sums, self.sums.new_tensor([float(self.skipped)])]), "sum")
        means = (totals[:-1] / accelerator.num_processes / self.steps).tolist()
        skipped = int(totals[-1].item())
        seconds = time.perf_counter() - self.start
        row = dict(zip(TRAIN_KEYS, means), img_per_s=self.steps * global_batch / seconds,
                   sec_per_step=seconds / self.steps, data_wait=self.data_wait / seconds, skipped_samples=skipped)
        row.update({k: float(v) for k, v in self.latest.items()})
        row["step_skipped"] = self.skipped_updates
        if self.device.type == "cuda":
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
