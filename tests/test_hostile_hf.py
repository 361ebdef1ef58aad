"""Hostile inputs at the Hub-dataset boundary: a dataset's rows and state.json name only files inside it."""
import io
import json
import os
import shutil

import numpy as np
import pytest
from hostile import assert_one_error, run_measured
from PIL import Image

datasets = pytest.importorskip("datasets", reason="the hf extra is not installed: pip install '.[hf]'")

from test_hf_source import OFFLINE, offline  # noqa: E402, F401 (offline: an autouse fixture)

from gan_dist.packing.items import PackError  # noqa: E402
from gan_dist.packing.shard import pack  # noqa: E402


def png(seed):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def rows_parquet(path, rows):
    """A parquet file of an Image column holding `rows` as they are ({"bytes", "path"}), nothing read or embedded."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    features = datasets.Features({"image": datasets.Image()})
    table = pa.table({"image": pa.array(rows, type=features.arrow_schema.field("image").type)})
    table = table.replace_schema_metadata(features.arrow_schema.metadata)
    pq.write_table(table, path)
    return path


def test_a_row_naming_a_file_outside_the_dataset_is_skipped_not_packed(tmp_path):
    private = tmp_path / "home" / "private.png"
    private.parent.mkdir()
    private.write_bytes(png(1))
    (tmp_path / "ds").mkdir()
    data = rows_parquet(tmp_path / "ds" / "rows.parquet", [{"bytes": png(0), "path": None},
                                                           {"bytes": None, "path": str(private)}])
    m = pack("hf", tmp_path / "out", dataset=data, size=8, cache_dir=tmp_path / "cache")
    assert m["count"] == 1 and m["skipped"]["unsafe_path"] == 1


def test_a_row_naming_a_fifo_does_not_hang(tmp_path):
    (tmp_path / "ds").mkdir()
    os.mkfifo(tmp_path / "ds" / "pipe.png")  # inside the dataset's folder, but reading it never ends
    data = rows_parquet(tmp_path / "ds" / "rows.parquet", [{"bytes": None, "path": str(tmp_path / "ds" / "pipe.png")}])
    r, _ = run_measured("-m", "gan_dist.shard", "hf", "--dataset", data, "--out", tmp_path / "out", "--size", 8,
                        "--cache_dir", tmp_path / "cache", "--workers", 1, timeout=90, env=OFFLINE)
    assert_one_error(r, "1 unsafe_path", code=1)


def test_a_save_to_disk_state_naming_a_file_outside_is_refused(tmp_path):
    ds = datasets.Dataset.from_dict({"img": [Image.open(io.BytesIO(png(i))) for i in range(3)]},
                                    features=datasets.Features({"img": datasets.Image()}))
    ds.save_to_disk(tmp_path / "saved")
    state = json.loads((tmp_path / "saved" / "state.json").read_text())
    arrow = state["_data_files"][0]["filename"]
    (tmp_path / "outside").mkdir()
    shutil.move(tmp_path / "saved" / arrow, tmp_path / "outside" / arrow)
    state["_data_files"][0]["filename"] = f"../outside/{arrow}"
    (tmp_path / "saved" / "state.json").write_text(json.dumps(state))
    with pytest.raises(PackError, match="not a plain relative path"):
        pack("hf", tmp_path / "out", dataset=tmp_path / "saved", size=8)
    assert not (tmp_path / "out" / "manifest.json").exists()
