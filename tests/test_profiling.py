"""--profile_steps: a torch.profiler trace of a few steps with the trainer's phases labelled, on the CPU."""
import contextlib
import json

from conftest import run_here

from gan_dist.training.profiling import PHASES, StepProfiler


def test_a_run_writes_a_trace_and_a_table_of_the_profiled_steps(tmp_path, digits16):
    out = tmp_path / "run"
    r = run_here("gan_dist.train", "--cpu", "--data", digits16, "--img_size", 16, "--channels", 1,
                 "--batch_size", 32, "--n_cpu", 0, "--output_dir", out, "--report_to", "none",
                 "--max_train_steps", 7, "--log_steps", 7, "--checkpointing_steps", 7, "--sample_interval", 7,
                 "--r1_gamma", 1, "--ema_kimg", 1, "--profile_steps", 3, "--profile_warmup", 2)
    assert r.returncode == 0, r.stderr
    trace = json.loads((out / "profile" / "trace.json").read_text())
    names = [e.get("name", "") for e in trace["traceEvents"]]
    # steps 3, 4 and 5: after 2 warm-up steps, and not the run's last two
    assert sorted(n for n in names if n.startswith("ProfilerStep#")) == ["ProfilerStep#2", "ProfilerStep#3",
                                                                         "ProfilerStep#4"]
    for phase in PHASES:
        assert names.count(phase) >= 3, phase  # each phase once (data: twice) in each profiled step
    assert "aten::addmm" in names  # the MLP's layers: the ops themselves are in the trace
    table = (out / "profile" / "key_averages.txt").read_text()
    assert "aten::addmm" in table and "D_phase" in table and "G_phase" in table


def test_off_it_records_nothing(tmp_path):
    profiler = StepProfiler(tmp_path, steps=0)
    assert isinstance(profiler.phase("D_phase"), contextlib.nullcontext)
    batches = [1, 2]
    assert profiler.labelled(batches) is batches
    profiler.step()
    profiler.close()
    assert not (tmp_path / "profile").exists()
