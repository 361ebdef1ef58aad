"""Damaged or unusual images: skipped and counted, or converted correctly; never a crashed process."""
import io
import json
import struct
import subprocess
import sys
import tarfile
import zlib

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

from gan_dist.packing.download import sha256_file
from gan_dist.packing.shard import pack
from gan_dist.training.pngcheck import PNGError, plain_png


def png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def damaged_png(how, size=8):
    """A greyscale PNG with its image data damaged in one of the ways that crash libpng inside torchvision."""
    raw = png(np.random.default_rng(0).integers(0, 256, (size, size), np.uint8))
    out, pos = [raw[:8]], 8
    while pos < len(raw):
        n, kind = struct.unpack(">I4s", raw[pos:pos + 8])
        data = raw[pos + 8:pos + 8 + n]
        crc = zlib.crc32(kind + data)
        if kind == b"IDAT":
            rows = bytearray(zlib.decompress(data))
            if how == "filter":
                rows[0] = 0xEE  # row filter types are 0-4
                data = zlib.compress(bytes(rows))
            elif how == "short":
                data = zlib.compress(bytes(rows[:size]))
            elif how == "zlib":
                data = data[:6] + bytes([data[6] ^ 0xFF]) + data[7:]
            crc = zlib.crc32(kind + data) ^ (how == "crc")
        out.append(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc))
        pos += 12 + n
    return b"".join(out)


@pytest.mark.parametrize("how", ["filter", "short", "zlib", "crc"])
def test_png_structure_is_checked(how):
    with pytest.raises(PNGError):
        plain_png(damaged_png(how))
    assert plain_png(png(np.zeros((8, 8, 3), np.uint8)))


def pack_with(root, replacement):
    """lfw-subset at 8 px; sample 00000030's PNG replaced (and the manifest's sha256 updated to agree)."""
    m = pack("lfw-subset", root, size=8, channels=1, shard_size=25)
    shard = root / m["shards"][1]["file"]
    with tarfile.open(shard) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for info, data in members:
            if info.name == "00000030.png":
                data, info.size = replacement, len(replacement)
            tar.addfile(info, io.BytesIO(data))
    m["shards"][1]["sha256"] = sha256_file(shard)
    (root / "manifest.json").write_text(json.dumps(m))
    return root


READ = """
import sys
from gan_dist.training.data import first_batch, load_into_memory
from gan_dist.training.manifest import load_manifest, shard_counts
manifest, urls = load_manifest(sys.argv[1])
images, skipped = load_into_memory(urls, 0, shard_counts(manifest, urls))
print(len(images), skipped, tuple(first_batch(urls, 200, seed=0).shape))
"""


def test_a_png_that_crashes_libpng_is_skipped_and_counted(tmp_path):
    data = pack_with(tmp_path / "pack", damaged_png("filter"))
    r = subprocess.run([sys.executable, "-c", READ, data], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-2000:]}"  # was -11, a segfault
    assert r.stdout.split() == ["99", "1", "(200,", "1,", "8,", "8)"]


def test_the_packer_skips_a_png_libpng_cannot_read(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "bad.png").write_bytes(damaged_png("filter"))
    (tmp_path / "src" / "good.png").write_bytes(png(np.zeros((8, 8), np.uint8)))
    m = pack("folder", tmp_path / "out", src=tmp_path / "src", size=8)
    assert m["count"] == 1 and m["skipped"]["unreadable"] == 1


def packed_pixels(out):
    """The first image of a pack, as a uint8 array."""
    with tarfile.open(out / "train-000000.tar") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".png"))
        return np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())))


@pytest.mark.parametrize("name,make", [
    ("grey16.png", lambda ramp: Image.fromarray(ramp.astype(np.uint16) * 257)),  # 16-bit greyscale PNG
    ("float.tif", lambda ramp: Image.fromarray(ramp.astype(np.float32) / 255)),  # float TIFF in [0, 1]
])
def test_high_bit_depth_images_are_scaled_to_8_bits(tmp_path, name, make):
    ramp = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1))  # 0..240
    (tmp_path / "src").mkdir()
    make(ramp).save(tmp_path / "src" / name)
    pack("folder", tmp_path / "out", src=tmp_path / "src", size=16, channels=1)
    assert np.abs(packed_pixels(tmp_path / "out").astype(int) - ramp).max() <= 1  # not near white, not black


def test_images_above_the_pixel_limit_are_refused_by_name(tmp_path, monkeypatch):
    from gan_dist.packing import shard
    (tmp_path / "src").mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "src" / "huge.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "src" / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 is above it, as a 100k x 100k scan is above 2^26
    m = shard.pack("folder", tmp_path / "out", src=tmp_path / "src", size=8)
    assert m["count"] == 1 and m["skipped"]["unsupported"] == 1 and m["skipped_examples"] == ["huge.png"]
