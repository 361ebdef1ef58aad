import hashlib
import io
import json
import subprocess

import numpy as np
import pytest
import webdataset as wds
from conftest import ROOT, free_port
from http_fixtures import (
    FileServer,
    ddragon_files,
    lfw_members,
    picture,
    tar_bytes,
    zip_bytes,
)
from PIL import Image

from gan_dist.names import MANIFEST
from gan_dist.packing.items import PackError
from gan_dist.packing.shard import main, pack
from gan_dist.packing.sources import SOURCES, read_folder
from gan_dist.training.data import decode_sample

LFW_PATH = "/files/5976018"  # figshare's path for lfw.tgz


def sha(data):
    return hashlib.sha256(data).hexdigest()


def images(out):
    manifest = json.loads((out / MANIFEST).read_text())
    return [decode_sample(s).permute(1, 2, 0).numpy() for shard in manifest["shards"]
            for s in wds.WebDataset(str(out / shard["file"]), shardshuffle=False)]


def lfw_archive():
    members = lfw_members()  # 3 people x 3 images
    members["lfw/Zico/Zico_0004.jpg"] = picture(99)[:600]  # truncated JPEG
    members["../escape/Evil_0001.jpg"] = picture(7)
    members["/abs/Evil_0002.jpg"] = picture(8)
    members["lfw/README.txt"] = b"not an image"
    return tar_bytes(members)


@pytest.fixture
def lfw_server():
    tgz = lfw_archive()
    with FileServer({LFW_PATH: tgz}) as s:
        yield s, tgz


def test_lfw_end_to_end_after_a_dropped_connection(tmp_path, lfw_server):
    server, tgz = lfw_server
    server.drop[LFW_PATH] = len(tgz) // 3
    m = pack("lfw", tmp_path / "out", src=server.url(LFW_PATH), sha256=sha(tgz), cache_dir=tmp_path / "cache",
             size=16, channels=3, center_crop=150)
    assert m["count"] == 9 and m["source"] == "lfw" and m["image_format"] == "png"
    assert m["skipped"] == {"unreadable": 1, "unsupported": 0, "duplicate": 0, "unsafe_path": 2, "download_failed": 0}
    assert set(m["skipped_examples"]) == {"lfw/Zico/Zico_0004.jpg", "../escape/Evil_0001.jpg", "/abs/Evil_0002.jpg"}
    assert m["source_files"] == [{"file": m["source_files"][0]["file"], "url": server.url(LFW_PATH),
                                  "sha256": sha(tgz), "bytes": len(tgz), "verified": True}]
    assert m["options"]["center_crop"] == 150 and "expected_count" not in m  # not the published file
    assert server.requests[1][1]["Range"] == f"bytes={len(tgz) // 3}-"
    assert not list((tmp_path / "cache").glob("*.part"))


def test_center_crop_keeps_the_middle(tmp_path):
    arr = np.zeros((250, 250, 3), np.uint8)
    arr[50:200, 50:200] = (0, 200, 0)  # a green 150x150 centre in a black frame
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    (tmp_path / "lfw.tgz").write_bytes(tar_bytes({"lfw/A/A_0001.png": buf.getvalue()}))
    pack("lfw", tmp_path / "out", src=tmp_path / "lfw.tgz", sha256="none", size=10, channels=3, center_crop=150)
    assert np.all(images(tmp_path / "out")[0] == (0, 200, 0))


def test_wrong_checksum_is_a_clear_error_and_leaves_no_pack(tmp_path, lfw_server, capsys):
    server, tgz = lfw_server
    wrong = "ab" * 32
    with pytest.raises(SystemExit) as exc:
        main(["lfw", "--src", server.url(LFW_PATH), "--sha256", wrong, "--cache_dir", str(tmp_path / "cache"),
              "--out", str(tmp_path / "out")])
    msg = str(exc.value)
    assert "sha256 mismatch" in msg and f"expected {wrong}" in msg and f"got {sha(tgz)}" in msg
    assert list((tmp_path / "cache").iterdir()) == [] and not (tmp_path / "out").exists()


def test_no_network_error_mentions_src(tmp_path):
    with pytest.raises(PackError, match="--src /path/to/lfw.tgz"):
        pack("lfw", tmp_path / "out", src=f"http://127.0.0.1:{free_port()}{LFW_PATH}", cache_dir=tmp_path)


def test_lfw_local_copy_and_determinism_across_worker_counts(tmp_path):
    (tmp_path / "lfw.tgz").write_bytes(lfw_archive())
    kw = dict(src=tmp_path / "lfw.tgz", sha256="none", size=12, channels=3, shard_size=4)
    one = pack("lfw", tmp_path / "one", workers=1, **kw)
    two = pack("lfw", tmp_path / "two", workers=2, **kw)
    assert one["count"] == 9 and one["shards"] == two["shards"]
    assert one["source_files"][0]["verified"] is False


def test_anime_zip_duplicates_are_removed(tmp_path):
    faces = {f"{i:05d}.png": picture(i, (64, 64), "PNG") for i in range(12)}
    members = {f"data/{k}": v for k, v in faces.items()}
    members.update({f"images/{k}": v for k, v in faces.items()})  # every face twice, as in data.zip
    members["__MACOSX/data/._00000.png"] = b"resource fork"
    members["data/broken.png"] = b"\x89PNG\r\n\x1a\n garbage"
    members["data/../../etc/face.png"] = faces["00001.png"]
    archive = zip_bytes(members)
    with FileServer({"/datasets/huggan/anime-faces/resolve/main/data.zip": archive}) as server:
        m = pack("anime", tmp_path / "out", src=server.url("/datasets/huggan/anime-faces/resolve/main/data.zip"),
                 sha256=sha(archive), cache_dir=tmp_path / "cache", size=64, channels=3)
    assert m["count"] == 12 and m["options"]["dedup"] is True
    assert m["skipped"] == {"unreadable": 1, "unsupported": 0, "duplicate": 12, "unsafe_path": 1, "download_failed": 0}
    got = images(tmp_path / "out")
    want = [np.asarray(Image.open(io.BytesIO(faces[k])).convert("RGB")) for k in sorted(faces)]
    assert all(np.array_equal(g, w) for g, w in zip(got, want))  # 64x64 PNG in, same pixels out


@pytest.fixture
def dragon():
    files = ddragon_files()
    files["/cdn/img/champion/splash/Teemo_4.jpg"] = files["/cdn/img/champion/splash/Teemo_0.jpg"]  # reused art
    del files["/cdn/img/champion/splash/Garen_22.jpg"]  # a splash that fails to download
    with FileServer(files) as server:
        yield server, files


def test_lol_splash_crops_end_to_end(tmp_path, dragon):
    server, files = dragon
    kw = dict(src=server.url(""), cache_dir=tmp_path / "cache", size=32, channels=3, seed=3)
    m = pack("lol", tmp_path / "out", workers=2, **kw)
    # 7 skins, 1 missing, 1 a copy of another: 5 distinct splashes x 4 crops
    assert m["count"] == 20 and m["source_images"] == 6 and m["ddragon_version"] == "16.1.1"
    assert m["skipped"] == {"unreadable": 0, "unsupported": 0, "duplicate": 4, "unsafe_path": 0, "download_failed": 1}
    assert m["options"]["crops_per_image"] == 4 and "non-commercial" in m["notice"]
    # the label is the champion, by Data Dragon id: Garen 0 and 1 (22 failed), MonkeyKing 0 and 5, Teemo 0
    assert m["classes"] == ["Garen", "MonkeyKing", "Teemo"] and m["class_counts"] == [8, 8, 4]
    recorded = {f["file"]: f["sha256"] for f in m["source_files"]}
    path = "cdn/img/champion/splash/MonkeyKing_5.jpg"  # by champion id, not display name
    assert recorded[path] == sha(files["/" + path]) and "cdn/16.1.1/data/en_US/champion/Garen.json" in recorded
    assert not any(p.startswith("/cdn/16.2.1") for p in server.paths())  # the pinned version, not the newest
    # cached: a second pack makes no requests and gives the same bytes; another seed, other crops
    before = len(server.requests)
    again = pack("lol", tmp_path / "again", workers=1, **kw)
    assert server.paths()[before:] == ["/cdn/img/champion/splash/Garen_22.jpg"]  # only the failed one again
    assert again["shards"] == m["shards"]
    other = pack("lol", tmp_path / "other", **{**kw, "seed": 4})
    assert other["shards"][0]["sha256"] != m["shards"][0]["sha256"]


def test_lol_from_a_local_data_dragon_copy(tmp_path):
    for path, data in ddragon_files().items():
        (tmp_path / "dd" / path[1:]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "dd" / path[1:]).write_bytes(data)
    m = pack("lol", tmp_path / "out", src=tmp_path / "dd", cache_dir=tmp_path / "cache", size=8, channels=3,
             crops_per_image=2)
    assert m["count"] == 14 and m["skins"] == 7 and not (tmp_path / "cache").exists()


def test_lol_unknown_version_lists_the_available_ones(tmp_path, dragon):
    server, _ = dragon
    with pytest.raises(PackError, match="no version '9.9.9'; the newest are 16.2.1, 16.1.1"):
        pack("lol", tmp_path / "out", src=server.url(""), cache_dir=tmp_path, version="9.9.9")


def test_archive_source_refuses_path_traversal(tmp_path):
    members = {"ok/a.png": picture(1, (20, 20), "PNG"), "../../a.png": picture(2, (20, 20), "PNG"),
               "C:/windows/b.png": picture(3, (20, 20), "PNG"), "ok/../../c.png": picture(4, (20, 20), "PNG")}
    for name, data in [("x.zip", zip_bytes(members)), ("x.tgz", tar_bytes(members))]:
        (tmp_path / name).write_bytes(data)
        m = pack("archive", tmp_path / name.replace(".", "_"), src=tmp_path / name, size=8, channels=3)
        assert m["count"] == 1 and m["skipped"]["unsafe_path"] == 3
    assert not (tmp_path / "a.png").exists() and not (tmp_path.parent / "a.png").exists()


def test_interrupted_pack_leaves_no_manifest_and_a_rerun_finishes(tmp_path, monkeypatch):
    from conftest import write_images
    write_images(tmp_path / "src", 30, size=8)

    def interrupted(opts):  # the folder reader, cut off by Ctrl-C after 17 images
        items = read_folder(opts).items
        for i, item in enumerate(items):
            if i == 17:
                raise KeyboardInterrupt
            yield item
    monkeypatch.setitem(SOURCES, "cut", lambda opts: type(read_folder(opts))(interrupted(opts), {}))
    kw = dict(src=tmp_path / "src", size=8, channels=3, shard_size=5)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".train-000009.tar.partial").write_bytes(b"left by a killed run")
    with pytest.raises(KeyboardInterrupt):
        pack("cut", tmp_path / "out", **kw)
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert MANIFEST not in names and not any(n.endswith(".partial") for n in names)
    m = pack("folder", tmp_path / "out", **kw)
    clean = pack("folder", tmp_path / "clean", **kw)
    assert m["count"] == 30 and m["shards"] == clean["shards"]
    listing = [sorted(p.name for p in (tmp_path / d).iterdir()) for d in ("out", "clean")]
    assert listing[0] == listing[1]


def test_make_shards_on_a_folder_of_jpegs_counts_the_readable_ones(tmp_path):
    src = tmp_path / "jpegs"
    rng = np.random.default_rng(0)
    for i in range(2000):
        sub = src / f"d{i % 10}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(sub / f"{i:04d}.jpg", quality=90)
    for i in range(5):
        (src / f"bad{i}.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    # the real make target, with `install` taken as done
    run = subprocess.run(["make", "-s", "-o", "install", "-o", ".venv/.installed-stamp", "shards", f"SRC={src}",
                          "NAME=x", f"SHARDS={tmp_path / 'shards'}", "SIZE=16", "CHANNELS=3"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    m = json.loads((tmp_path / "shards" / "x" / MANIFEST).read_text())
    assert m["count"] == 2000 and m["skipped"]["unreadable"] == 5 and m["source"] == "archive"
    assert sum(s["count"] for s in m["shards"]) == 2000


@pytest.mark.parametrize("kind", ["zip", "tgz"])
def test_archive_members_above_the_size_cap_are_skipped_unread(tmp_path, monkeypatch, kind):
    from gan_dist.packing import sources
    monkeypatch.setattr(sources, "MAX_MEMBER_BYTES", 10_000)  # stands in for 256 MiB: a zip bomb's member
    small = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(small, "PNG")
    members = {"a/small.png": small.getvalue(), "a/bomb.png": bytes(50_000)}
    path = tmp_path / f"src.{kind}"
    path.write_bytes(zip_bytes(members) if kind == "zip" else tar_bytes(members))
    m = pack("archive", tmp_path / "out", src=path, size=8, sha256="none")
    assert m["count"] == 1 and m["skipped"]["unsupported"] == 1 and m["skipped_examples"] == ["a/bomb.png"]
