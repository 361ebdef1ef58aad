"""Where a run stands: optimizer steps, images seen, unreadable samples skipped. Saved in each checkpoint's gan.json.

The counters live in gan.json (not in one of Accelerate's pickles) so that the resume point is known
before any process group starts, tools read it without unpickling, and older checkpoints still load.
"""
import torch


class Progress:
    """The run's counters. Each rank counts the samples it skipped; `reduce` folds them into the run's total.

    Logging and saving both call `reduce` (a collective): a checkpoint never holds a stale count.
    """

    def __init__(self, global_batch, steps_per_epoch, num_processes, step=0, skipped_samples=0):
        self.global_batch, self.steps_per_epoch, self.num_processes = global_batch, steps_per_epoch, num_processes
        self.step = step  # optimizer steps done
        self.skipped_samples = skipped_samples  # over all ranks, as of the last reduce
        self.pending = 0  # this rank's skips since the last reduce

    @property
    def num_imgs_seen(self):
        return self.step * self.global_batch

    def count_skipped(self, n):
        self.pending += n

    def reduce(self, accelerator):
        """Add every rank's pending skips to the total; returns it. Call on every rank."""
        pending = torch.tensor([float(self.pending)], device=accelerator.device)
        self.skipped_samples += int(accelerator.reduce(pending, "sum").item())
        self.pending = 0
        return self.skipped_samples

    def state_dict(self):
        """The position as gan.json stores it (call `reduce` first)."""
        return {"epoch": self.step // self.steps_per_epoch, "batch_in_epoch": self.step % self.steps_per_epoch,
                "num_imgs_seen": self.num_imgs_seen, "global_batch": self.global_batch,
                "num_processes": self.num_processes, "skipped_samples": self.skipped_samples}
