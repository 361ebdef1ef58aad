"""Real multi-process runs: 2 gloo ranks on the CPU."""
import json
import sys

import pytest
import torch
from conftest import ROOT, finish, free_port, launch, run_torchrun, torchrun_cmd
from conftest import train_rows as rows


def test_two_ranks_train_in_sync(tmp_path, digits16):
    out = tmp_path / "run"
    r = run_torchrun(["--cpu", "--data", digits16, "--img_size", 16, "--channels", 1, "--batch_size", 16,
                      "--n_cpu", 1, "--max_train_steps", 6, "--log_steps", 3, "--checkpointing_steps", 3,
                      "--output_dir", out, "--report_to", "none"], timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    # the consistency check compared G and D across ranks at steps 3 and 6 (it raises on any difference)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-3", "checkpoint-6"]
    assert (out / "checkpoints" / "checkpoint-6" / "random_states_1.pkl").exists()  # rank 1 saved its RNG
    logged = rows(out)
    assert [row["step"] for row in logged] == [3, 6]  # one writer: rank 0
    assert logged[0]["global_batch"] == 32
    assert "processes 2 (DistributedType.MULTI_CPU" in r.stdout


def test_two_ranks_train_the_modern_recipe_with_a_minibatch_std_in_sync(tmp_path, digits32):
    """D's minibatch std groups each rank's own batch; the penalised D still ends identical on both ranks."""
    out = tmp_path / "run"
    r = run_torchrun(["--cpu", "--data", digits32, "--img_size", 32, "--channels", 1, "--batch_size", 8,
                      "--n_cpu", 0, "--preset", "modern", "--widths", "32,32,16,8", "--group_size", 8,
                      "--latent_dim", 32, "--mbstd_group", 4, "--r1_gamma", 1, "--reg_every", 2,
                      "--max_train_steps", 4, "--log_steps", 2, "--checkpointing_steps", 2, "--output_dir", out,
                      "--report_to", "none"], env={"OMP_NUM_THREADS": "1"}, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    # the consistency check compared G and D across ranks at steps 2 and 4 (it raises on any difference)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert "r1" in rows(out)[0]  # the penalised steps ran
    meta = json.loads((out / "checkpoints" / "checkpoint-4" / "gan.json").read_text())
    assert meta["gan_config"]["mbstd_group"] == 4


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


def test_consistency_check_catches_a_desynchronised_rank():
    # a fresh interpreter per rank: forking this test process after torch has run can deadlock
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           ROOT / "tests" / "ddp_desync_check.py"]
    r = finish(*launch(cmd, timeout=120))
    assert "desync not detected" not in r.stderr, r.stderr[-3000:]
    assert r.stdout.count("drift caught") == 2, r.stderr[-3000:]  # both ranks raised DistributedError




def test_uneven_shards_ranks_and_workers_finish_without_hang(tmp_path):
    """3 shards (34/34/32 images) streamed by 2 ranks x 2 workers: equal step counts, no hang."""
    from gan_dist.packing.shard import pack
    m = pack("lfw-subset", tmp_path / "faces", size=8, channels=1, shard_size=34)
    assert [s["count"] for s in m["shards"]] == [34, 34, 32]
    out = tmp_path / "run"
    r = run_torchrun(["--cpu", "--data", tmp_path / "faces", "--img_size", 8, "--channels", 1,
                      "--batch_size", 8, "--n_cpu", 2, "--cache_gb", 0, "--n_epochs", 2, "--log_steps", 3,
                      "--checkpointing_steps", 100, "--output_dir", out, "--report_to", "none"], timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "streamed from 3 shards" in r.stdout
    last = rows(out)[-1]
    # --n_epochs counts passes at the global batch: 100 images // (8 x 2 ranks) = 6 steps per epoch
    assert last["step"] == 12 and last["epoch"] == 2.0 and last["global_batch"] == 16


def test_two_nodes_on_loopback_train_together(tmp_path, digits16):
    """Two torchrun "nodes" (node ranks 0 and 1, one process each) form one group of 2."""
    port, out = free_port(), tmp_path / "run"
    args = ["--cpu", "--data", digits16, "--img_size", 16, "--channels", 1, "--batch_size", 16, "--n_cpu", 0,
            "--max_train_steps", 4, "--log_steps", 2, "--checkpointing_steps", 2, "--output_dir", out,
            "--report_to", "none", "--ddp_comm_hook", "bf16"]
    nodes = [launch(torchrun_cmd(args, nproc=1, rdzv=("--nnodes=2", f"--node_rank={rank}", "--master_addr=127.0.0.1",
                                                       f"--master_port={port}")), timeout=180)
             for rank in (0, 1)]
    results = [finish(*node) for node in nodes]
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]
    assert "processes 2 (DistributedType.MULTI_CPU" in results[0].stdout
    assert [row["step"] for row in rows(out)] == [2, 4] and rows(out)[0]["global_batch"] == 32
    # both nodes' processes saved their RNG state into the same checkpoint
    assert {p.name for p in (out / "checkpoints" / "checkpoint-4").glob("random_states_*.pkl")} == {
        "random_states_0.pkl", "random_states_1.pkl"}


def test_sync_bn_on_cpu_is_refused_with_the_reason(tmp_path, digits16):
    r = run_torchrun(["--cpu", "--sync_bn", "--data", digits16, "--img_size", 16, "--channels", 1,
                      "--max_train_steps", 2, "--output_dir", tmp_path / "run", "--report_to", "none"], timeout=180)
    assert r.returncode != 0 and "SyncBatchNorm has no CPU kernel" in r.stderr


def test_launch_recipes_run_and_resume(tmp_path, digits16):
    """launch/cpu_2proc.sh trains; launch/torchrun_elastic.sh (c10d rendezvous) resumes from its checkpoint."""
    out = tmp_path / "run"
    common = ["--cpu", "--data", digits16, "--img_size", 16, "--channels", 1, "--batch_size", 16, "--n_cpu", 0,
              "--log_steps", 2, "--checkpointing_steps", 2, "--output_dir", out, "--report_to", "none"]
    r = finish(*launch(["bash", ROOT / "launch" / "cpu_2proc.sh", *common, "--max_train_steps", 2], timeout=180))
    assert r.returncode == 0, r.stderr[-3000:]
    env = {"NPROC_PER_NODE": "2", "RDZV_HOST": "127.0.0.1", "RDZV_PORT": str(free_port()), "MAX_RESTARTS": "1"}
    r = finish(*launch(["bash", ROOT / "launch" / "torchrun_elastic.sh", *common, "--max_train_steps", 4],
                       env=env, timeout=180))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout and "at step 2" in r.stdout
    assert [row["step"] for row in rows(out)] == [2, 4]
