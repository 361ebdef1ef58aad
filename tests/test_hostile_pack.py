"""Hostile inputs at the pack boundary: what the packer writes and removes, what the readers accept."""
import io
import json
import os
import shutil
import tarfile

import numpy as np
import pytest
from conftest import call_main
from hostile import GB, assert_one_error, run_measured
from PIL import Image

from gan_dist.names import MANIFEST
from gan_dist.packing.shard import pack
from gan_dist.train import main as train_main
from gan_dist.training.data import decode_sample, load_into_memory
from gan_dist.training.manifest import DataError, load_manifest


def copy_pack(src, dest, edit=None):
    """A copy of pack `src` at `dest`, its manifest passed through edit(manifest) first."""
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".verified.json", ".lock"))
    manifest = json.loads((dest / MANIFEST).read_text())
    if edit:
        edit(manifest)
    (dest / MANIFEST).write_text(json.dumps(manifest))
    return dest


def train_args(data, out, *extra, size=16):
    return ["--cpu", "--data", data, "--img_size", size, "--channels", 1, "--batch_size", 16, "--n_cpu", 0,
            "--output_dir", out, "--report_to", "none", "--max_train_steps", 1, *extra]


def test_a_shard_that_is_a_link_to_a_tar_elsewhere_is_refused(tmp_path, digits16):
    data = copy_pack(digits16, tmp_path / "pack")
    shutil.move(data / "train-000001.tar", tmp_path / "elsewhere.tar")
    os.symlink(tmp_path / "elsewhere.tar", data / "train-000001.tar")
    with pytest.raises(DataError, match="train-000001.tar is a symbolic link"):
        load_manifest(data)


def test_a_manifest_that_is_a_link_is_refused(tmp_path, digits16):
    data = copy_pack(digits16, tmp_path / "pack")
    shutil.move(data / MANIFEST, tmp_path / "m.json")
    os.symlink(tmp_path / "m.json", data / MANIFEST)
    with pytest.raises(DataError, match="is a symbolic link"):
        load_manifest(data)


def test_a_sparse_terabyte_shard_is_refused_by_its_size_before_hashing(tmp_path, digits16):
    data = copy_pack(digits16, tmp_path / "pack")
    manifest = json.loads((data / MANIFEST).read_text())
    assert all(s["bytes"] == (data / s["file"]).stat().st_size for s in manifest["shards"])  # recorded by the packer
    (data / "train-000002.tar").unlink()
    with open(data / "train-000002.tar", "wb") as f:
        f.truncate(1 << 40)  # 1 TB of zeros, no blocks on disk
    r, _ = run_measured("-c", f"from gan_dist.training.manifest import load_manifest; load_manifest({str(data)!r})",
                        timeout=60)  # hashing it would take about an hour
    assert r.returncode == 1 and "train-000002.tar is 1099511627776 bytes, not the" in r.stderr, r.stderr[-2000:]


def png16(arr):
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_16_bit_png_in_a_shard_written_elsewhere_keeps_its_grey_levels(tmp_path):
    ramp = np.linspace(0, 65535, 64).reshape(8, 8)
    data = png16(ramp)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # a real 16-bit greyscale PNG
    with tarfile.open(tmp_path / "train-000000.tar", "w") as tar:
        info = tarfile.TarInfo("00000000.png")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    images, skipped = load_into_memory([(tmp_path / "train-000000.tar").as_uri()])
    got = images[0, 0].numpy()
    assert skipped == 0 and len(np.unique(got)) > 32, np.unique(got)  # convert("L") left only 0 and 255
    np.testing.assert_allclose(got, np.rint(ramp * 255 / 65535), atol=1)
    assert decode_sample({"png": data}).dtype.is_floating_point is False


def test_the_packer_leaves_unrelated_tars_in_out_and_removes_only_its_own_stale_shards(tmp_path):
    out = tmp_path / "out"
    pack("digits", out, size=8, shard_size=500)  # 4 shards
    (out / "train-backup-2024.tar").write_bytes(b"the user's own file")
    (out / "train-999999.tar").write_bytes(b"also not ours")
    pack("digits", out, size=8, shard_size=1000)  # 2 shards: 2 and 3 are stale
    names = sorted(p.name for p in out.glob("*.tar"))
    assert names == ["train-000000.tar", "train-000001.tar", "train-999999.tar", "train-backup-2024.tar"], names
    assert (out / "train-backup-2024.tar").read_bytes() == b"the user's own file"


def test_links_planted_in_out_are_never_written_through(tmp_path):
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("precious")
    for name in (".train-000000.tar.partial", f".{MANIFEST}.partial", "train-000000.tar", MANIFEST):
        os.symlink(victim, out / name)
    pack("digits", out, size=8, shard_size=1000)
    assert victim.read_text() == "precious"
    assert not (out / MANIFEST).is_symlink() and json.loads((out / MANIFEST).read_text())["count"] == 1797
    os.symlink(victim, out / ".lock")
    with pytest.raises(Exception, match="symbolic link"):
        pack("digits", out, size=8, shard_size=1000)
    assert victim.read_text() == "precious"


def test_a_shard_listed_four_times_is_refused(tmp_path, digits16):
    def repeat_first(m):
        m["shards"] = [m["shards"][0]] * 4
        m["count"] = 4 * m["shards"][0]["count"]
    data = copy_pack(digits16, tmp_path / "pack", repeat_first)
    with pytest.raises(DataError, match="train-000000.tar is listed twice"):
        load_manifest(data)


def test_a_shard_name_ending_in_a_newline_is_refused(tmp_path, digits16):
    def newline(m):
        m["shards"][0]["file"] += "\n"
    data = copy_pack(digits16, tmp_path / "pack", newline)
    with pytest.raises(DataError, match="is not a plain file name"):
        load_manifest(data)


def test_a_manifest_count_of_3e8_in_a_small_pack_is_refused_without_allocating(tmp_path):
    data = tmp_path / "pack"
    pack("lfw-subset", data, size=8, shard_size=1000)  # one shard of 100 images, about 80 KB

    def inflate(m):
        m["shards"][0]["count"] = m["count"] = 300_000_000
        m["shards"][0].pop("bytes", None)  # as an older packer wrote it
    copy_pack(data, tmp_path / "bomb", inflate)
    r, peak = run_measured("-m", "gan_dist.train", *train_args(tmp_path / "bomb", tmp_path / "run", size=8))
    assert_one_error(r, "claims 300000000 images in train-000000.tar", code=1)
    assert peak < GB, f"peak RSS {peak / GB:.2f} GB"


def test_a_manifest_whose_size_disagrees_with_its_images_is_one_error(tmp_path, digits16, capsys):
    def smaller(m):
        m["size"] = 8
    data = copy_pack(digits16, tmp_path / "pack", smaller)
    code, _, err = call_main(train_main, capsys, *train_args(data, tmp_path / "run", size=8))
    assert code and err.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err
    assert "says 8x8x1 images, but train-000000.tar holds 16x16x1" in err, err


def zip_of_zeros(path, members, member_bytes):
    """A zip of `members` deflated members of `member_bytes` zeros each, written without holding one in memory."""
    import zipfile
    block = bytes(1 << 20)
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(members):
            info = zipfile.ZipInfo(f"img{i:03d}.png")
            info.compress_type, info._compresslevel = zipfile.ZIP_DEFLATED, 1
            with zf.open(info, "w") as f:
                for _ in range(member_bytes >> 20):
                    f.write(block)
    return path


def test_an_archive_of_many_members_each_under_the_cap_stays_under_a_gigabyte(tmp_path):
    bomb = zip_of_zeros(tmp_path / "bomb.zip", 16, 100 << 20)  # 7 MB on disk, 1.6 GB inflated
    assert bomb.stat().st_size < 10 << 20
    r, peak = run_measured("-m", "gan_dist.shard", "archive", "--src", bomb, "--out", tmp_path / "out", "--size", 8,
                           "--workers", 2, timeout=300)
    assert_one_error(r, "none of the 16 inputs could be read", code=1)
    assert "unsupported" in r.stderr and peak < GB, f"peak RSS {peak / GB:.2f} GB"


def test_shard_size_beyond_the_budget_is_refused_before_allocating(tmp_path):
    r, peak = run_measured("-m", "gan_dist.shard", "digits", "--out", tmp_path / "out", "--size", 100_000,
                           "--workers", 1, timeout=120)
    assert_one_error(r, "--size 100000 (1-4096)", code=1)
    assert peak < GB and not (tmp_path / "out" / MANIFEST).exists()
