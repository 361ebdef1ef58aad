"""The size/speed bench: its table cells, and a tiny end-to-end run of the plain modern recipe."""
import json

import pytest
from conftest import run_module

from benchmarks.sizes import MACHINE_MIB, row_cells
from benchmarks.step import read_metrics
from gan_dist.networks.sizes import TABLE

ROW = {"size": "base", "img_size": 128, "G_params": 22_940_000, "D_params": 22_860_000, "G_gflops": 40.1,
       "D_gflops": 40.1, "peak_rss_mib": None, "cpu_img_per_s_1p": None, "cpu_img_per_s_2p": None}


def test_a_run_killed_for_memory_is_marked_and_never_a_figure():
    assert row_cells({**ROW, "peak_rss_mib": 812.4, "out_of_memory": False})[6] == "812"
    assert row_cells({**ROW, "out_of_memory": True})[6] == f"> {MACHINE_MIB:.0f} (killed)"
    assert row_cells({**ROW, "out_of_memory": "not run: a smaller image of this size ran out of memory"})[6] == \
        "not run"
    assert row_cells(ROW)[6] == ""  # a size whose memory was not measured
    assert MACHINE_MIB > 0


@pytest.mark.benchmarks
def test_sizes_bench_end_to_end_tiny(tmp_path):
    out = tmp_path / "sizes.json"
    r = run_module("benchmarks", "sizes", "--sizes", "small", "--resolutions", "32", "--steps", 4, "--warmup", 2,
                   "--batch_size", 8, "--mem_sizes", "small", "--mem_steps", 1, "--mem_batch", 4, "--out", out,
                   "--work", tmp_path / "work", env={"OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["size"], row["img_size"], row["out_of_memory"]) == ("small", 32, False)
    # the plain preset's small nets at 32 px, counted as the networks table gives them
    assert TABLE["small"][32].widths == (256, 128, 32, 16) and 2e5 < row["G_params"] < 5e5
    assert row["peak_rss_mib"] > 100
    for nproc in (1, 2):  # each speed figure is its run's own rows after the warm-up
        run_dir = tmp_path / "work" / f"speed-small-32-{nproc}p"
        assert row[f"cpu_img_per_s_{nproc}p"] == read_metrics(run_dir, 2)["images_per_s"]
        assert json.loads((run_dir / "args.json").read_text())["size"] == "small"
    assert out.with_suffix(".md").read_text().startswith("| size |")
