"""The smoke check (`python -m gan_dist.smoke`, users run it on new hardware) and the GPU script's guard."""
import json
import os
import subprocess
import sys

import torch
from conftest import ROOT
from PIL import Image

from gan_dist.smoke import BLANK_STD, sample_check


def test_gpu_script_without_cuda_exits_with_a_message():
    script = ROOT / "launch" / "gpu_bench.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2
    assert "no CUDA device" in res.stderr


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
