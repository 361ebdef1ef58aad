import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import webdataset as wds
from conftest import ROOT, run_module, write_images
from PIL import Image

from gan_dist.dirlock import DirectoryLock
from gan_dist.names import MANIFEST
from gan_dist.packing.items import PackError
from gan_dist.packing.shard import main, pack
from gan_dist.training.data import decode_sample


def read_back(out):
    """All images in shard order, decoded to HWC uint8 arrays."""
    manifest = json.loads((out / MANIFEST).read_text())
    images, keys = [], []
    for shard in manifest["shards"]:
        for sample in wds.WebDataset(str(out / shard["file"]), shardshuffle=False):
            keys.append(sample["__key__"])
            images.append(decode_sample(sample).permute(1, 2, 0).numpy())
    return manifest, keys, images


@pytest.mark.parametrize("channels,mode", [(3, "RGB"), (1, "L")])
def test_folder_round_trip_is_pixel_exact(tmp_path, channels, mode):
    originals = write_images(tmp_path / "src", 23, size=16, mode=mode)
    manifest = pack("folder", tmp_path / "out", src=tmp_path / "src", size=16, channels=channels, shard_size=10)
    assert manifest["count"] == 23 and manifest["size"] == 16 and manifest["channels"] == channels
    assert [s["count"] for s in manifest["shards"]] == [10, 10, 3]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        MANIFEST, "train-000000.tar", "train-000001.tar", "train-000002.tar"]
    _, keys, images = read_back(tmp_path / "out")
    assert keys == [f"{i:08d}" for i in range(23)]
    for got, want in zip(images, originals):
        np.testing.assert_array_equal(got.reshape(want.shape), want)


def test_manifest_checksums_match_and_packing_is_deterministic(tmp_path):
    write_images(tmp_path / "src", 12)
    first = pack("folder", tmp_path / "one", src=tmp_path / "src", size=8, channels=3, shard_size=5, workers=2)
    second = pack("folder", tmp_path / "two", src=tmp_path / "src", size=8, channels=3, shard_size=5)
    assert [s["sha256"] for s in first["shards"]] == [s["sha256"] for s in second["shards"]]
    from gan_dist.packing.download import sha256_file
    for s in first["shards"]:
        assert sha256_file(tmp_path / "one" / s["file"]) == s["sha256"]
        with tarfile.open(tmp_path / "one" / s["file"]) as tar:
            assert len(tar.getnames()) == s["count"]  # one png member per sample


def test_unreadable_files_are_skipped_and_counted(tmp_path):
    write_images(tmp_path / "src", 5)
    (tmp_path / "src" / "broken.jpg").write_bytes(b"not an image at all")
    (tmp_path / "src" / "notes.txt").write_text("ignored: not an image suffix")
    m = pack("folder", tmp_path / "out", src=tmp_path / "src", size=8, channels=3)
    assert m["count"] == 5 and m["inputs"] == 6
    assert m["skipped"] == {"unreadable": 1, "unsupported": 0, "duplicate": 0, "unsafe_path": 0, "download_failed": 0}
    assert m["skipped_examples"] == ["broken.jpg"]


def test_resize_and_grey_conversion(tmp_path):
    (tmp_path / "src").mkdir()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(tmp_path / "src" / "red.png")
    pack("folder", tmp_path / "out", src=tmp_path / "src", size=12, channels=1)
    _, _, images = read_back(tmp_path / "out")
    assert images[0].shape == (12, 12, 1)
    assert np.all(images[0] == 76)  # ITU-R 601 luma of pure red


def test_embedded_digits_keep_labels(tmp_path):
    m = pack("digits", tmp_path / "d", size=8, channels=1, shard_size=1000)
    assert m["count"] == 1797 and m["has_labels"] and len(m["shards"]) == 2
    sample = next(iter(wds.WebDataset(str(tmp_path / "d" / "train-000000.tar"), shardshuffle=False)))
    assert int(sample["cls"]) == 0  # load_digits starts with a zero


def test_embedded_lfw_subset_faces(tmp_path):
    m = pack("lfw-subset", tmp_path / "f", size=25, channels=1)
    assert m["count"] == 100 and not m["has_labels"]


def test_repack_replaces_stale_shards_and_leaves_no_partials(tmp_path):
    write_images(tmp_path / "src", 9)
    pack("folder", tmp_path / "out", src=tmp_path / "src", size=8, channels=3, shard_size=2)
    pack("folder", tmp_path / "out", src=tmp_path / "src", size=8, channels=3, shard_size=5)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [MANIFEST, "train-000000.tar", "train-000001.tar"]


@pytest.mark.parametrize("setup,args,message", [
    (lambda p: None, ["folder", "--src", "{tmp}/nope"], "not a directory"),
    (lambda p: (p / "empty").mkdir(), ["folder", "--src", "{tmp}/empty"], "no images found"),
    (lambda p: None, ["folder"], "needs --src"),
    (lambda p: (p / "empty").mkdir(), ["folder", "--src", "{tmp}/empty", "--retries", "0"], "--retries 0 (>=1)"),
])
def test_cli_errors_name_the_problem(tmp_path, capsys, setup, args, message):
    setup(tmp_path)
    argv = [a.format(tmp=tmp_path) for a in args] + ["--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert message in str(exc.value)
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_all_unreadable_raises(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.png").write_bytes(b"garbage")
    with pytest.raises(PackError, match="none of the 1 inputs"):
        pack("folder", tmp_path / "out", src=tmp_path / "src")
    assert not (tmp_path / "out" / MANIFEST).exists()


@pytest.mark.parametrize("fmt,key,tolerance", [("npy", "npy", 0), ("jpg", "jpg", 3)])
def test_other_storage_formats_decode(tmp_path, fmt, key, tolerance):
    ramp = np.linspace(0, 255, 16, dtype=np.uint8)
    originals = [np.stack([ramp[None, :].repeat(16, 0), ramp[:, None].repeat(16, 1), np.full((16, 16), 30 * i)],
                          -1).astype(np.uint8) for i in range(4)]  # smooth, as photos are
    for i, arr in enumerate(originals):
        (tmp_path / "src").mkdir(exist_ok=True)
        Image.fromarray(arr).save(tmp_path / "src" / f"{i}.png")
    m = pack("folder", tmp_path / "out", src=tmp_path / "src", size=16, channels=3, fmt=fmt, quality=95)
    assert m["image_format"] == fmt
    sample = next(iter(wds.WebDataset(str(tmp_path / "out" / "train-000000.tar"), shardshuffle=False)))
    assert key in sample
    _, _, images = read_back(tmp_path / "out")
    for got, want in zip(images, originals):
        assert got.shape == want.shape
        assert np.abs(got.astype(int) - want).mean() <= tolerance


def test_a_second_packer_into_the_same_out_is_refused_by_name(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with DirectoryLock(out, "the first packer"):  # a real flock, as another process's pack holds it
        r = run_module("gan_dist.shard", "digits", "--out", out, "--size", 8, "--workers", 1, timeout=120)
        assert r.returncode != 0 and "is in use by the first packer" in r.stderr
        assert not (out / MANIFEST).exists()
    (out / ".lock").write_text("gan_dist.shard (pid 1 on a host whose run was killed)\n")  # stale: nobody holds it
    r = run_module("gan_dist.shard", "digits", "--out", out, "--size", 8, "--workers", 1, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / MANIFEST).read_text())["count"] == 1797 and not (out / ".lock").exists()


def test_out_that_is_a_file_is_an_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(PackError, match="is a file, not a directory"):
        pack("digits", tmp_path / "file", size=8)
    with pytest.raises(PackError, match="cannot write there"):
        pack("digits", tmp_path / "file" / "sub", size=8)


def test_a_full_disk_is_a_one_line_error_and_leaves_no_partial_shard(tmp_path):
    out = tmp_path / "out"
    # a 100 kB file size limit: writes beyond it fail as they would on a full disk
    r = subprocess.run(["prlimit", "--fsize=100000", sys.executable, "-m", "gan_dist.shard", "digits", "--out", out,
                        "--size", "16", "--workers", "1"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error: writing to --out") and "Traceback" not in r.stderr
    assert not list(out.glob(".*.partial")) and not (out / MANIFEST).exists()
