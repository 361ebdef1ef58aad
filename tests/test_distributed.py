"""Real multi-process runs: 2 gloo ranks on the CPU."""
import json

import pytest
import torch
from accelerate import debug_launcher

from conftest import run_torchrun


def test_two_ranks_train_in_sync(tmp_path, digits16):
    out = tmp_path / "run"
    r = run_torchrun(["--cpu", "--data", digits16, "--img_size", 16, "--channels", 1, "--batch_size", 16,
                      "--n_cpu", 1, "--max_train_steps", 6, "--log_steps", 3, "--checkpointing_steps", 3,
                      "--output_dir", out, "--report_to", "none"], timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    # the consistency check compared G and D across ranks at steps 3 and 6 (it raises on any difference)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-6"]
    assert (out / "checkpoints" / "checkpoint-6" / "random_states_1.pkl").exists()  # rank 1 saved its RNG
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == [3, 6]  # one writer: rank 0
    assert logged[0]["global_batch"] == 32
    assert "processes 2 (DistributedType.MULTI_CPU" in r.stdout


def test_multi_process_launch_without_cpu_backend_fails_fast(tmp_path, digits16):
    """torchrun on a GPU-less box without --cpu would give two duplicated trainings; refuse."""
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    r = run_torchrun(["--data", digits16, "--img_size", 16, "--channels", 1, "--max_train_steps", 2,
                      "--output_dir", tmp_path / "run", "--report_to", "none"],
                     env={"ACCELERATE_USE_CPU": "false"}, timeout=240)
    assert r.returncode != 0
    assert "WORLD_SIZE=2" in r.stderr and "pass --cpu" in r.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def _desync_is_caught():
    from accelerate import Accelerator

    from gan_dist.ddp import DistributedError, check_consistency

    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    net = accelerator.prepare(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)))
    check_consistency(accelerator, {"G": net})  # identical after prepare: passes
    if accelerator.process_index == 1:
        with torch.no_grad():
            accelerator.unwrap_model(net)[1].running_mean[2] += 1e-6  # a drifted buffer on one rank
    try:
        check_consistency(accelerator, {"G": net})
    except DistributedError as e:
        assert "G.1.running_mean" in str(e)
    else:
        raise AssertionError(f"rank {accelerator.process_index}: desync not detected")


def test_consistency_check_catches_a_desynchronised_rank():
    debug_launcher(_desync_is_caught, num_processes=2)
