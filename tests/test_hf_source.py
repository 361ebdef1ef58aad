import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, run_module
from PIL import Image
from test_sources import images

datasets = pytest.importorskip("datasets", reason="the hf extra is not installed: pip install '.[hf]'")

from gan_dist.packing.items import PackError  # noqa: E402
from gan_dist.packing.shard import pack  # noqa: E402

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)


def arrays(n, size, channels, seed):
    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if channels == 3 else (size, size)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]


def image_dataset(arrs, **extra):
    features = datasets.Features({"img": datasets.Image(), "label": datasets.Value("int64"),
                                  **{k: datasets.Value("string") for k in extra}})
    return datasets.Dataset.from_dict({"img": [Image.fromarray(a) for a in arrs], "label": list(range(len(arrs))),
                                       **extra}, features=features)


def test_save_to_disk_split_packs_pixel_exactly(tmp_path):
    train, test = arrays(7, 16, 1, seed=0), arrays(3, 16, 1, seed=1)
    datasets.DatasetDict({"train": image_dataset(train), "test": image_dataset(test)}).save_to_disk(tmp_path / "dd")
    m = pack("hf", tmp_path / "out", dataset=tmp_path / "dd", split="test", size=16, channels=1, shard_size=2)
    assert m["count"] == 3 and len(m["shards"]) == 2 and m["source"] == "hf"
    assert m["hf_dataset"] == "dd" and m["hf_origin"] == "disk" and m["hf_split"] == "test"
    assert m["hf_image_column"] == "img"  # found: the only Image column
    got = images(tmp_path / "out")
    assert all(np.array_equal(g[:, :, 0], w) for g, w in zip(got, test, strict=True))


def test_parquet_file_through_the_cli(tmp_path):
    want = arrays(5, 16, 3, seed=2)
    image_dataset(want, caption=[f"c{i}" for i in range(5)]).to_parquet(tmp_path / "faces.parquet")
    r = run_module("gan_dist.shard", "hf", "--dataset", tmp_path / "faces.parquet", "--image_column", "img",
                   "--out", tmp_path / "out", "--size", 16, "--channels", 3, "--workers", 2,
                   "--cache_dir", tmp_path / "cache", env=OFFLINE, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "packed 5 images" in r.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["hf_origin"] == "files" and manifest["hf_dataset"] == "faces.parquet"
    assert all(np.array_equal(g, w) for g, w in zip(images(tmp_path / "out"), want, strict=True))


def test_image_folder_is_resized_like_any_source(tmp_path):
    (tmp_path / "imgs").mkdir()
    for i, a in enumerate(arrays(4, 32, 3, seed=3)):
        Image.fromarray(a).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    m = pack("hf", tmp_path / "out", dataset=tmp_path / "imgs", size=8, channels=1, cache_dir=tmp_path / "cache")
    assert m["count"] == 4 and m["hf_origin"] == "files"
    assert all(g.shape == (8, 8, 1) for g in images(tmp_path / "out"))


def test_wrong_column_split_or_name_say_what_to_pass(tmp_path):
    image_dataset(arrays(2, 8, 1, seed=4), caption=["a", "b"]).save_to_disk(tmp_path / "ds")
    with pytest.raises(PackError, match="has no such column; its columns: img, label, caption"):
        pack("hf", tmp_path / "out", dataset=tmp_path / "ds", image_column="image")
    with pytest.raises(PackError, match="holds Value.*not images; image columns: img"):
        pack("hf", tmp_path / "out", dataset=tmp_path / "ds", image_column="caption")
    datasets.DatasetDict({"train": image_dataset(arrays(1, 8, 1, seed=5))}).save_to_disk(tmp_path / "dd")
    with pytest.raises(PackError, match="--split validation: .* has the splits train"):
        pack("hf", tmp_path / "out", dataset=tmp_path / "dd", split="validation")
    with pytest.raises(PackError, match="needs --dataset"):
        pack("hf", tmp_path / "out")
    with pytest.raises(PackError, match="are for source hf"):
        pack("digits", tmp_path / "out", dataset="user/name")
    assert not (tmp_path / "out").exists()


def test_offline_hub_name_is_a_one_line_error(tmp_path):
    r = run_module("gan_dist.shard", "hf", "--dataset", "nobody/no-such-dataset", "--out", tmp_path / "out",
                   "--cache_dir", tmp_path / "cache", env=OFFLINE, timeout=120)
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith("error: --dataset nobody/no-such")
    assert not (tmp_path / "out").exists()


def test_missing_datasets_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # what `import datasets` sees when absent
    with pytest.raises(PackError, match=r"pip install 'gan-dist\[hf\]'"):
        pack("hf", tmp_path / "out", dataset="user/name")


def test_packing_a_dataset_imports_no_torch(tmp_path):
    image_dataset(arrays(2, 8, 1, seed=6)).save_to_disk(tmp_path / "ds")
    code = ("import sys; from gan_dist.packing.shard import pack; "
            f"pack('hf', {str(tmp_path / 'out')!r}, dataset={str(tmp_path / 'ds')!r}, size=8); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**os.environ, **OFFLINE})
    assert r.returncode == 0, r.stderr
