"""--profile_steps N: a torch.profiler trace of N training steps, taken after --profile_warmup steps.

    profiler = StepProfiler(output_dir, steps=10, warmup=5, device=accelerator.device, rank=0)
    with profiler.phase("D_phase"): ...      # a labelled range in the trace
    profiler.step()                          # once at the end of every training step

It writes OUTPUT_DIR/profile/trace.json (open it in https://ui.perfetto.dev or chrome://tracing)
and key_averages.txt (the ops by total time, CPU and, on a GPU, CUDA); rank R > 0 writes
trace_rankR.json and key_averages_rankR.txt. The steps counted are this process's, from its
start (a resumed run profiles the steps after its resume). The trainer labels its phases "data",
"D_phase", "regularisation", "G_phase" and "ema". Off (N = 0), `phase` hands out a null context
and `step` returns at once: nothing is recorded.
"""
import contextlib
from pathlib import Path

import torch

PHASES = ("data", "D_phase", "regularisation", "G_phase", "ema")


def _off(name):
    return contextlib.nullcontext()


class StepProfiler:
    """torch.profiler over steps warmup + 1 ... warmup + steps of this process; a no-op when `steps` is 0."""

    def __init__(self, output_dir, steps, warmup=5, device="cpu", rank=0):
        self.steps, self.folder = steps, Path(output_dir) / "profile" if steps else None
        self.suffix = "" if rank == 0 else f"_rank{rank}"
        self.phase = _off
        self._prof = None
        if not steps:
            return
        self.phase = torch.profiler.record_function
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.device(device).type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        # the profiler's own warm-up step (its start-up costs stay out of the trace) is the last of ours
        schedule = torch.profiler.schedule(wait=max(warmup - 1, 0), warmup=min(warmup, 1), active=steps, repeat=1)
        self._prof = torch.profiler.profile(activities=activities, schedule=schedule, on_trace_ready=self._write)
        self._prof.start()

    @property
    def trace_path(self):
        return self.folder / f"trace{self.suffix}.json"

    @property
    def table_path(self):
        return self.folder / f"key_averages{self.suffix}.txt"

    def step(self):
        """Mark the end of a training step."""
        if self._prof is not None:
            self._prof.step()

    def labelled(self, batches, name="data"):
        """`batches` with the wait for each item labelled `name` (unchanged when off)."""
        if self._prof is None:
            return batches
        return self._labelled(batches, name)

    def _labelled(self, batches, name):
        it = iter(batches)
        while True:
            with self.phase(name):
                item = next(it, None)
            if item is None:
                return
            yield item

    def close(self):
        """Stop the profiler (a run shorter than warmup + steps writes what it recorded, if anything)."""
        if self._prof is not None:
            prof, self._prof = self._prof, None
            prof.stop()

    def _write(self, prof):
        self.folder.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(self.trace_path))
        averages = prof.key_averages()
        on_gpu = any(getattr(e, "device_time_total", 0) for e in averages)
        table = averages.table(sort_by="device_time_total" if on_gpu else "cpu_time_total", row_limit=60)
        self.table_path.write_text(table + "\n")
