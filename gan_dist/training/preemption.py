"""Clean stops on SIGTERM / SIGINT: finish the step, checkpoint on every rank at the same step, exit 143.

Schedulers (SLURM, Kubernetes, torchrun's agent) send SIGTERM before killing a job. The
handler only sets a flag; the training loop asks `should_stop(step)` after each step.
With several processes the ranks agree with one all-reduce every `check_every` steps, so
they stop at the same step even if the signal reached them at different moments.
A signal always ends the run: if no step finishes within `grace_s` of it (the run is stuck
in data loading or waiting on another rank), the process exits at once, keeping the last
checkpoint; a second SIGTERM (more than REPEAT_S after the first) or Ctrl-C exits at once too.
"""
import os
import signal
import socket
import sys
import threading
import time

import psutil
import torch

EXIT_PREEMPTED = 143  # 128 + SIGTERM: "stopped on request", what schedulers expect; resume with 'latest'
EXIT_INTERRUPTED = 130  # 128 + SIGINT: a second Ctrl-C
REPEAT_S = 2.0  # a SIGTERM this long after the first means "now"
WATCHDOG = "gan_dist stop-signal watchdog"  # its thread's name


class Preempted(Exception):
    """A stop signal ended training at a checkpointed step; the process should exit with EXIT_PREEMPTED."""


class StopSignal:
    """Catches SIGTERM and SIGINT in this process and turns them into a stop at a common step."""

    def __init__(self, accelerator, check_every=10, grace_s=60.0):
        self.accelerator, self.check_every, self.grace_s = accelerator, check_every, grace_s
        self.received, self.stopping, self.last_poll = None, False, time.monotonic()
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        # The signal module writes each signal's number to this socket even while the main thread is
        # blocked in C (a collective, a read): the watchdog thread sees signals the handler cannot.
        receive, send = socket.socketpair()
        send.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(send.fileno(), warn_on_full_buffer=False)
        self._sockets = (receive, send)
        threading.Thread(target=self._watchdog, args=(receive,), name=WATCHDOG, daemon=True).start()

    def _handle(self, signum, frame):
        if self.received == "SIGINT" and signum == signal.SIGINT:
            exit_now("a second Ctrl-C", EXIT_INTERRUPTED)  # the user wants out now, even mid-checkpoint
        self.received = signal.Signals(signum).name

    def _watchdog(self, receive):
        receive.settimeout(1.0)
        first = None
        while True:
            try:
                got = receive.recv(64)
            except TimeoutError:
                got = b""
            except OSError:  # closed: the run is over
                return
            now = time.monotonic()
            # a SIGTERM that comes with the first (a scheduler signalling the group, and torchrun forwarding it)
            # is the same request; one that comes later is a second
            if signal.SIGTERM in got and first is not None and now - first > REPEAT_S:
                exit_now("a second SIGTERM")
            if first is None and (signal.SIGTERM in got or signal.SIGINT in got):
                first = now
            if first is not None and not self.stopping and time.monotonic() - max(first, self.last_poll) > self.grace_s:
                exit_now(f"a stop signal, and no training step finished in the {self.grace_s:.0f} s after it")

    def close(self):
        """Give SIGTERM and SIGINT back to their handlers before and end the watchdog, so that a process that goes
        on after training (a notebook, a test, a second run) is not stopped by a signal meant for this run."""
        signal.set_wakeup_fd(self._previous_fd)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        for sock in self._sockets:
            sock.close()

    def should_stop(self, step):
        """True on every rank at the same step once any rank has received a signal (a collective if multi-process)."""
        self.last_poll = time.monotonic()
        if self.accelerator.num_processes == 1:
            stop = self.received is not None
        elif step % self.check_every:
            return False
        else:
            flag = torch.tensor([float(self.received is not None)], device=self.accelerator.device)
            stop = bool(self.accelerator.reduce(flag, "sum").item() > 0)
        self.stopping = stop
        return stop


def exit_now(why, code=EXIT_PREEMPTED):
    """Leave at once with `code` (no checkpoint; the last one is kept, a half-written one is removed on the next
    start), ending this process's loader workers and the commands they run (`pipe:` shards) first."""
    print(f"stopping now on {why}; the last checkpoint is kept: continue with --resume_from_checkpoint latest",
          file=sys.stderr, flush=True)
    for child in psutil.Process().children(recursive=True):
        try:
            child.kill()
        except psutil.Error:  # already gone
            pass
    os._exit(code)


def ignore_stop_signals(_worker_id=None):
    """DataLoader worker_init_fn: leave SIGTERM/SIGINT to the training process, which stops cleanly.

    A scheduler or a terminal often signals the whole process group; a worker that died of
    it would break the loader before the final checkpoint is written. A SIGTERM from the
    training process itself (the loader shutting down, or Python exiting) still ends the
    worker: one that ignored it would be joined forever.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # taken by the thread below, which sees the sender
    threading.Thread(target=_exit_on_parents_sigterm, args=(os.getppid(),), daemon=True).start()


def _exit_on_parents_sigterm(parent):
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)
