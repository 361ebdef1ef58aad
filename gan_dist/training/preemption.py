"""Clean stops on SIGTERM / SIGINT: finish the step, checkpoint on every rank at the same step, exit 143.

Schedulers (SLURM, Kubernetes, torchrun's agent) send SIGTERM before killing a job. The
handler only sets a flag; the training loop asks `should_stop(step)` after each step.
With several processes the ranks agree with one all-reduce every `check_every` steps, so
they stop at the same step even if the signal reached them at different moments.
A second SIGINT (Ctrl-C twice) stops at once.
"""
import signal

import torch

EXIT_PREEMPTED = 143  # 128 + SIGTERM: "stopped on request", what schedulers expect; resume with 'latest'


class StopSignal:
    """Catches SIGTERM and SIGINT in this process and turns them into a stop at a common step."""

    def __init__(self, accelerator, check_every=10):
        self.accelerator, self.check_every = accelerator, check_every
        self.received = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.received == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user wants out now
        self.received = signal.Signals(signum).name

    def should_stop(self, step):
        """True on every rank at the same step once any rank has received a signal (a collective if multi-process)."""
        if self.accelerator.num_processes == 1:
            return self.received is not None
        if step % self.check_every:
            return False
        flag = torch.tensor([float(self.received is not None)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, "sum").item() > 0)


def ignore_stop_signals(_worker_id=None):
    """DataLoader worker_init_fn: leave SIGTERM/SIGINT to the training process, which stops cleanly.

    A scheduler or a terminal often signals the whole process group; a worker that died of
    it would break the loader before the final checkpoint is written.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
