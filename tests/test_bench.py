"""The bench end to end at a tiny size: every case measured, ratios that are the quotients of its figures.

Speed itself is only measured by `make bench`, never asserted here.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

from gan_dist.bench import step as bench_step
from gan_dist.bench import suite as bench
from gan_dist.bench import vanilla_loop

TINY = ["--img_size", "16", "--n_images", "128", "--src_size", "40", "--steps", "2", "--warmup", "2", "--repeats", "2"]


def check_ratios(doc):
    for name, r in doc["ratios"].items():
        num, den = doc["cases"][r["num"]][r["key"]], doc["cases"][r["den"]][r["key"]]
        assert r["value"] == pytest.approx(num / den, rel=1e-12), name


@pytest.fixture(scope="module")
def bench_step_doc(tmp_path_factory):
    """The step case on the bench's own images (written and packed at 16 px)."""
    tmp = tmp_path_factory.mktemp("bench")
    bench.main(["step", *TINY, "--out", str(tmp / "bench.json"), "--work", str(tmp / "work")])
    return json.loads((tmp / "bench.json").read_text())


def test_step_measures_every_case(bench_step_doc):
    doc = bench_step_doc
    assert set(doc["cases"]) == {f"step/{c}" for c in ("bare", "trainer", "trainer_streamed", "vanilla")}
    for name, case in doc["cases"].items():
        assert case["images_per_s"] > 0, name
    for name in ("step/trainer", "step/trainer_streamed"):
        assert 0 <= doc["cases"][name]["data_wait"] < 1
    for name in ("step/bare", "step/trainer"):  # the fastest of the repeats
        case = doc["cases"][name]
        assert len(case["runs"]) == 2 and case["images_per_s"] == max(case["runs"])
    assert set(doc["ratios"]) == {"step/trainer_vs_vanilla", "step/trainer_vs_bare", "step/trainer_streamed_vs_bare"}
    check_ratios(doc)
    assert doc["ratios"]["step/trainer_vs_bare"]["target"] == 0.95
    m = doc["machine"]
    assert m["cores"] >= 1 and m["cpu"] and m["torch"] == torch.__version__ and m["device"]
    assert doc["config"]["img_size"] == 16 and doc["config"]["batch_size"] == 64


def test_tables_show_every_case_and_ratio(bench_step_doc):
    text = bench.format_tables(bench_step_doc)
    for name in [*bench_step_doc["cases"], *bench_step_doc["ratios"]]:
        assert f"| {name} |" in text
    assert "≥ 0.95×" in text


def test_data_case_on_given_shards(digits16, tmp_path):
    """--data: our shards (16x16 greyscale) against the vanilla pipeline on the same images written out."""
    out = tmp_path / "data.json"
    bench.main(["data", "--data", str(digits16), "--seconds", "0.2", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert set(doc["cases"]) == {"data/vanilla_16", "data/stream_png_16", "data/memory_16", "data/tar_ours_16",
                                 "data/tar_webdataset_16"}
    assert all(c["images_per_s"] > 0 for c in doc["cases"].values())
    assert set(doc["ratios"]) == {"data/stream_png_vs_vanilla_16", "data/stream_png_vs_vanilla_16/per_core",
                                  "data/memory_vs_vanilla_16", "data/memory_vs_vanilla_16/per_core",
                                  "data/tar_ours_vs_webdataset_16"}
    assert doc["config"]["channels"] == 1
    check_ratios(doc)


def test_data_case_streams_every_storage_format(tmp_path):
    """The bench's own images packed as png, jpg and npy at 16 px; the 128 px targets are printed by name."""
    out = tmp_path / "data.json"
    bench.main(["data", "--sizes", "16", "--n_images", "128", "--src_size", "40", "--seconds", "0.2",
                "--out", str(out)])
    doc = json.loads(out.read_text())
    assert set(doc["cases"]) == {"data/vanilla_16", "data/memory_16", "data/tar_ours_16", "data/tar_webdataset_16",
                                 *(f"data/stream_{f}_16" for f in ("png", "jpg", "npy"))}
    assert doc["cases"]["data/stream_npy_16"]["cores"] == 2 and doc["cases"]["data/memory_16"]["cores"] == 1
    assert len(doc["ratios"]) == 9
    check_ratios(doc)
    assert bench.TARGETS["data/stream_npy_vs_vanilla_128/per_core"] == 10.0


def test_data_case_on_a_device_decodes_jpeg_there(tmp_path):
    """With a device (a GPU in `bench gpu`; here the CPU stands in), every batch ends as float there and
    JPEG shards are also streamed undecoded and decoded on it."""
    src = bench.bench_data.make_source_images(tmp_path / "src", 128, size=40)
    shards = bench.bench_data.pack_sizes(src, tmp_path, [16], 1, formats=("jpg",))
    cases = bench.bench_data.data_cases(shards, {16: src}, 0.2, device="cpu")
    assert set(cases) == {"data/vanilla_16", "data/stream_jpg_16", "data/stream_jpg_on_device_16", "data/memory_16",
                          "data/tar_ours_16", "data/tar_webdataset_16"}
    assert all(c["images_per_s"] > 0 for c in cases.values())
    assert "float on cpu" in cases["data/stream_jpg_16"]["what"]


def test_vanilla_loop_trains_on_an_image_folder(tmp_path, capsys):
    folder = bench.bench_data.make_source_images(tmp_path / "images", 130, size=24)
    vanilla_loop.main(["--data", str(folder), "--img_size", "8", "--max-batches", "3", "--warmup-batches", "1",
                      "--n_cpu", "0", "--out", str(tmp_path / "out")])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["batches"] == 3 and result["images_per_s"] > 0 and result["device"] in ("cpu", "cuda")
    assert (tmp_path / "out" / "generator.pth").is_file() and (tmp_path / "out" / "0.png").is_file()


def test_read_metrics_skips_warmup_and_weights_intervals(tmp_path):
    rows = [{"step": 10, "sec_per_step": 9.0, "data_wait": 0.9, "global_batch": 64, "gpu_mem_gb": 1.0},
            {"step": 20, "sec_per_step": 0.1, "data_wait": 0.1, "global_batch": 64, "gpu_mem_gb": 2.0},
            {"step": 25, "sec_per_step": 0.2, "data_wait": 0.4, "global_batch": 64, "gpu_mem_gb": 1.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval.jsonl").write_text(json.dumps({"step": 20, "fid10k": 99.0}) + "\n")  # not read
    got = bench_step.read_metrics(tmp_path, warmup=10)
    assert got["steps"] == 15
    assert got["images_per_s"] == pytest.approx(15 * 64 / (10 * 0.1 + 5 * 0.2))
    assert got["data_wait"] == pytest.approx((0.1 * 1.0 + 0.4 * 1.0) / 2.0)
    assert got["gpu_mem_gb"] == 2.0


@pytest.mark.parametrize("has_compile", [True, False])
def test_gpu_cases_and_ratios(monkeypatch, tmp_path, capsys, has_compile):
    """The GPU run's plan without a GPU: the subprocess cases replaced by fixed figures."""
    flags = {"--mixed_precision", "--data"} | ({"--compile"} if has_compile else set())
    monkeypatch.setattr(bench_step, "trainer_flags", lambda: flags)
    monkeypatch.setattr(bench_step, "vanilla_case", lambda *a, **k: {"images_per_s": 1000.0})
    def bare_case(*a, mixed_precision="no", compile_mode=None, **k):
        if compile_mode and not has_compile:  # the CUDA-graph case failing must not end the run
            raise RuntimeError("cudagraphs failed")
        return {"images_per_s": (4e4 if mixed_precision == "bf16" else 2e4) * (1.5 if compile_mode else 1)}
    monkeypatch.setattr(bench_step, "bare_case", bare_case)
    seen = []

    def trainer_case(*a, extra=(), **k):
        seen.append(tuple(extra))
        return {"images_per_s": 3e4 if "bf16" in extra else 1.5e4, "data_wait": 0.01, "gpu_mem_gb": 1.2}
    monkeypatch.setattr(bench_step, "trainer_case", trainer_case)

    res = bench.Results(tmp_path / "gpu.json", {})
    bench.run_gpu(res, tmp_path, "shards", "images", 128, 3, 10, 5, 10, streamed={"png": "p", "npy": "n", "jpg": "j"})
    names = [n for n, _ in bench.gpu_cases(has_compile)]
    streamed = list(bench.STREAMED_GPU_CASES)
    graphs = ["gpu/bare_bf16_cudagraphs"] if has_compile else []
    assert set(res.cases) == {"gpu/vanilla", "gpu/bare_fp32", "gpu/bare_bf16", *names, *streamed, *graphs}
    assert len(names) == (6 if has_compile else 3)
    ran = [name for name in res.cases if name.startswith("gpu/trainer")]
    assert ran == [n for n in names if "compile" not in n] + streamed + [n for n in names if "compile" in n]
    assert all(("--compile" in extra) == name.endswith("_compile") for name, extra in zip(ran, seen))
    assert seen[ran.index("gpu/trainer_bf16_streamed_jpg_on_device")][-1] == "--decode_on_device"
    doc = json.loads((tmp_path / "gpu.json").read_text())
    check_ratios(doc)
    assert doc["ratios"]["gpu/trainer_bf16_vs_vanilla"]["value"] == 30.0
    assert ("gpu/trainer_bf16_compile_vs_bf16" in doc["ratios"]) == has_compile
    if has_compile:
        assert doc["ratios"]["gpu/bare_bf16_cudagraphs_vs_bare_bf16"]["value"] == 1.5
    else:
        assert "cudagraphs failed" in doc["errors"]["gpu/bare_bf16_cudagraphs"]
    assert ("skipping the compile cases" in capsys.readouterr().err) == (not has_compile)


def test_gpu_without_cuda_says_so(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        bench.main(["gpu"])
    assert "needs a CUDA device" in str(e.value.code)


def test_gpu_script_without_cuda_exits_with_a_message():
    script = ROOT / "launch" / "gpu_bench.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2
    assert "no CUDA device" in res.stderr


def test_smoke_trains_resumes_samples_and_runs_two_nodes_of_one_process(tmp_path):
    """`bench smoke` on the CPU: a recipe trained, resumed and sampled, and 2 torchrun nodes of one process
    each (what shares one GPU) with --ddp_backend gloo; every check it reports is read off real files."""
    out = tmp_path / "smoke.json"
    r = subprocess.run([sys.executable, "-m", "gan_dist.bench", "smoke", "--cpu", "--img_size", "32", "--steps", "2",
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
    from PIL import Image

    from gan_dist.bench.smoke import BLANK_STD, sample_check
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
