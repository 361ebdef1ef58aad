"""The smoke check (`python -m gan_dist.smoke`, users run it on new hardware) and the GPU script's guard."""
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from PIL import Image

from benchmarks import gpu_session
from gan_dist.smoke import BLANK_STD, sample_check


def test_gpu_script_without_cuda_exits_with_a_message():
    script = ROOT / "launch" / "gpu_bench.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2
    assert "no CUDA device" in res.stderr and "--cpu" in res.stderr


def test_gpu_session_interleaves_the_speed_cases_and_records_a_failed_case(tmp_path, monkeypatch):
    calls = []

    def case(kind):
        def run(*args, **kwargs):
            mp = kwargs.get("mixed_precision") or kwargs["extra"][1]
            calls.append(f"{kind}_{mp}")
            if kind == "bare" and mp == "bf16" and len(calls) > 4:
                raise RuntimeError("out of memory")
            return {"images_per_s": float(len(calls)), "sec_per_step": 1.0, "gpu_sec_per_step": 0.5}
        return run
    monkeypatch.setattr(gpu_session.bench_step, "bare_case", case("bare"))
    monkeypatch.setattr(gpu_session.bench_step, "trainer_case", case("trainer"))
    monkeypatch.setattr(gpu_session, "environment", lambda: {"stub": True})
    args = gpu_session.parse_args(["--cpu", "--out", str(tmp_path / "s.json"), "--repeats", "2"])
    session = gpu_session.Session(args.out, {})
    gpu_session.speed(session, "shards", 16, args, tmp_path)
    assert calls == ["trainer_no", "bare_no", "trainer_bf16", "bare_bf16"] * 2  # A B C D A B C D
    doc = json.loads((tmp_path / "s.json").read_text())  # written after every case
    assert [r["order"] for r in doc["speed"]["trainer_fp32"]["runs"]] == [0, 1]
    assert doc["speed"]["trainer_fp32"]["runs"][1] == {"images_per_s": 5.0, "sec_per_step": 1.0,
                                                       "gpu_sec_per_step": 0.5, "order": 1}
    assert len(doc["speed"]["bare_bf16"]["runs"]) == 1 and "out of memory" in doc["errors"]["speed/bare_bf16#1"]
    assert "skipped" in doc["sizes"]


@pytest.mark.benchmarks
def test_gpu_script_dry_run_on_the_cpu(tmp_path):
    """`launch/gpu_bench.sh --cpu`: every part of the GPU session, tiny, on the CPU, its JSON read back."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable, "OUT": str(tmp_path)}
    res = subprocess.run(["bash", str(ROOT / "launch" / "gpu_bench.sh"), "--cpu"], capture_output=True, text=True,
                         env=env, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads((tmp_path / "gpu_session.json").read_text())
    assert {"torch", "accelerate", "cudnn", "nvidia_smi", "load_average"} <= doc["environment"].keys()
    assert set(doc["speed"]) == {"trainer_fp32", "bare_fp32", "trainer_bf16", "bare_bf16"} and not doc["errors"]
    assert all([r["order"] for r in case["runs"]] == [0, 1] for case in doc["speed"].values())
    for name in ("trainer_fp32", "trainer_bf16", "bare_bf16"):
        names = {e.get("name") for e in json.loads((tmp_path / "profiles" / name / "trace.json").read_text())
                 ["traceEvents"]}
        assert {"D_phase", "G_phase"} <= names
    assert doc["resume"]["ok"] and all(doc["resume"]["weights_equal"].values())
    assert json.loads((tmp_path / "smoke.json").read_text())["cases"]["vanilla_fp32"]["ok"]


def test_smoke_trains_resumes_samples_and_runs_two_nodes_of_one_process(tmp_path):
    """`gan_dist.smoke` on the CPU: a recipe trained, resumed and sampled, and 2 torchrun nodes of one process
    each (what shares one GPU) with --ddp_backend gloo; every check it reports is read off real files."""
    out = tmp_path / "smoke.json"
    r = subprocess.run([sys.executable, "-m", "gan_dist.smoke", "--cpu", "--img_size", "32", "--steps", "2",
                        "--n_images", "64", "--recipes", "vanilla", "--precisions", "no", "--ddp_precision", "no",
                        "--work", tmp_path / "work", "--out", out], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "WANDB_MODE": "disabled"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    cases = json.loads(out.read_text())["cases"]
    assert set(cases) == {"vanilla_fp32", "modern_ddp2_gloo"}
    one, two = cases["vanilla_fp32"], cases["modern_ddp2_gloo"]
    assert one["ok"] and one["resumed"] and one["exit_codes"] == [0, 0, 0]
    assert one["samples"]["images"] == 16 and one["samples"]["pixel_std"] > 0
    assert (tmp_path / "work" / "vanilla_fp32" / "run" / "checkpoints" / "checkpoint-2").is_dir()
    assert two["ok"] and two["exit_codes"] == [0, 0]
    assert "processes 2 (DistributedType.MULTI_CPU, gloo" in two["banner"]
    assert "| modern_ddp2_gloo | yes |" in r.stdout


def test_smoke_tells_blank_samples_from_varied_ones(tmp_path):
    rng = torch.Generator().manual_seed(0)
    for name, make in (("flat", lambda i: torch.full((8, 8, 3), 40 + i % 2, dtype=torch.uint8)),
                       ("varied", lambda i: torch.randint(0, 256, (8, 8, 3), generator=rng, dtype=torch.uint8))):
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.fromarray(make(i).numpy()).save(tmp_path / name / f"{i}.png")
    flat, varied = sample_check(tmp_path / "flat"), sample_check(tmp_path / "varied")
    assert flat["images"] == varied["images"] == 4
    assert flat["pixel_std"] < 1e-6 and flat["across_images_std"] < BLANK_STD / 4
    assert varied["pixel_std"] > 0.2 and varied["across_images_std"] > 0.2
