"""The speed benchmarks (benchmarks/) end to end at a tiny size: every case measured from the runs it made,
ratios that are the quotients of its figures. Speed itself is only measured by `make bench`, never asserted here.
Marked `benchmarks` (slow): `make test-benchmarks` runs them.
"""
import json
import math

import pytest
import torch

from benchmarks import speed as bench
from benchmarks import step as bench_step
from benchmarks import vanilla_loop
from gan_dist.benchkit import make_source_images, pack_sizes

pytestmark = pytest.mark.benchmarks

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
    return json.loads((tmp / "bench.json").read_text()), tmp / "work"


def test_step_measures_every_case(bench_step_doc):
    doc, work = bench_step_doc
    assert set(doc["cases"]) == {f"step/{c}" for c in ("bare", "trainer", "trainer_streamed", "vanilla")}
    # each trainer figure is what its run's metrics.jsonl says of the 2 timed steps after the 2 warm-up steps
    streamed = doc["cases"]["step/trainer_streamed"]
    assert streamed == {**bench_step.read_metrics(work / "run_stream", warmup=2), "what": streamed["what"],
                        "load_avg_1m": streamed["load_avg_1m"]}
    assert streamed["steps"] == 2 and doc["cases"]["step/vanilla"]["steps"] == 2
    runs = [bench_step.read_metrics(work / f"run_memory{i}", warmup=2)["images_per_s"] for i in range(2)]
    assert doc["cases"]["step/trainer"]["runs"] == runs
    for name, case in doc["cases"].items():
        assert math.isfinite(case["images_per_s"]), name
    for name in ("step/bare", "step/trainer"):  # the fastest of the repeats
        case = doc["cases"][name]
        assert len(case["runs"]) == 2 and case["images_per_s"] == max(case["runs"])
    assert set(doc["ratios"]) == {"step/trainer_vs_vanilla", "step/trainer_vs_bare", "step/trainer_streamed_vs_bare"}
    check_ratios(doc)
    m = doc["machine"]
    assert m["cores"] >= 1 and m["cpu"] and m["torch"] == torch.__version__ and m["device"]
    assert doc["config"]["img_size"] == 16 and doc["config"]["batch_size"] == 64


def test_tables_show_every_case_and_ratio(bench_step_doc):
    doc, _ = bench_step_doc
    text = bench.format_tables(doc)
    for name in [*doc["cases"], *doc["ratios"]]:
        assert f"| {name} |" in text
    target = bench.TARGETS["step/trainer_vs_bare"]
    assert f"| step/trainer_vs_bare | {doc['ratios']['step/trainer_vs_bare']['value']:.2f}× | ≥ {target:g}× |" in text


def test_data_case_on_given_shards(digits16, tmp_path):
    """--data: our shards (16x16 greyscale) against the vanilla pipeline on the same images written out."""
    out = tmp_path / "data.json"
    bench.main(["data", "--data", str(digits16), "--seconds", "0.2", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert set(doc["cases"]) == {"data/vanilla_16", "data/stream_png_16", "data/memory_16", "data/tar_ours_16",
                                 "data/tar_webdataset_16"}
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
    streams = [f"stream_{f}" for f in ("png", "jpg", "npy")]
    per_path = {f"data/{p}_vs_vanilla_16{c}" for p in [*streams, "memory"] for c in ("", "/per_core")}
    assert set(doc["ratios"]) == {*per_path, "data/tar_ours_vs_webdataset_16"}
    check_ratios(doc)


def test_data_case_on_a_device_decodes_jpeg_there(tmp_path):
    """With a device (a GPU in `bench gpu`; here the CPU stands in), every batch ends as float there and
    JPEG shards are also streamed undecoded and decoded on it."""
    src = make_source_images(tmp_path / "src", 128, size=40)
    shards = pack_sizes(src, tmp_path, [16], 1, formats=("jpg",))
    cases = bench.bench_data.data_cases(shards, {16: src}, 0.2, device="cpu")
    assert set(cases) == {"data/vanilla_16", "data/stream_jpg_16", "data/stream_jpg_on_device_16", "data/memory_16",
                          "data/tar_ours_16", "data/tar_webdataset_16"}
    assert "float on cpu" in cases["data/stream_jpg_16"]["what"]


def test_vanilla_loop_trains_on_an_image_folder(tmp_path, capsys):
    folder = make_source_images(tmp_path / "images", 130, size=24)
    vanilla_loop.main(["--data", str(folder), "--img_size", "8", "--max-batches", "3", "--warmup-batches", "1",
                      "--n_cpu", "0", "--out", str(tmp_path / "out")])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["batches"] == 3 and result["device"] in ("cpu", "cuda")
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


def test_gpu_plan_runs_every_precision_and_compiles_only_where_the_trainer_can():
    for has_compile in (True, False):
        cases = dict(bench.gpu_cases(has_compile))
        tags = ("fp32", "bf16", "fp16")
        assert set(cases) == {f"gpu/trainer_{t}{c}" for t in tags for c in (("", "_compile") if has_compile else ("",))}
        for name, flags in cases.items():
            assert flags[:2] == ("--mixed_precision", {"fp32": "no"}.get(name.split("_")[1], name.split("_")[1]))
            assert ("--compile" in flags) == name.endswith("_compile")


def test_gpu_without_cuda_says_so(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # this machine may have one
    with pytest.raises(SystemExit) as e:
        bench.main(["gpu"])
    assert "needs a CUDA device" in str(e.value.code)


