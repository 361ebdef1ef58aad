"""Hostile inputs at the mirror/download boundary: names from a mirror stay in the cache; --src is a file."""
import json
import os

import pytest
from conftest import call_main
from http_fixtures import FileServer, ddragon_files

from gan_dist.packing import download
from gan_dist.packing.items import PackError
from gan_dist.packing.shard import main, pack

ESCAPE = "../" * 7 + "escaped"  # from cache/ddragon-xxxx/cdn/16.1.1/data/en_US/champion/ up to tmp_path


def files_under(root):
    return {os.path.relpath(os.path.join(d, f), root) for d, _, names in os.walk(root) for f in names}


def test_a_mirrors_champion_id_with_dotdot_writes_nothing_outside_the_cache(tmp_path):
    files = ddragon_files()
    summary = json.loads(files["/cdn/16.1.1/data/en_US/champion.json"])
    summary["data"]["Evil"] = {"id": ESCAPE, "key": "99", "name": "Evil"}
    files["/cdn/16.1.1/data/en_US/champion.json"] = json.dumps(summary).encode()
    files[f"/cdn/16.1.1/data/en_US/champion/{ESCAPE}.json"] = b'{"data": {}}'  # the mirror's chosen bytes
    with FileServer(files) as server, pytest.raises(PackError, match="not a plain relative path"):
        pack("lol", tmp_path / "out", src=server.url(""), cache_dir=tmp_path / "cache", size=8, channels=3)
    assert not (tmp_path / "escaped.json").exists()
    assert all(p.startswith(("cache/", "out/")) for p in files_under(tmp_path)), files_under(tmp_path)


def test_a_splash_name_with_dotdot_is_skipped_not_written(tmp_path):
    files = ddragon_files()
    teemo = json.loads(files["/cdn/16.1.1/data/en_US/champion/Teemo.json"])
    teemo["data"]["Teemo"]["skins"].append({"id": "x", "num": "0/" + ESCAPE, "name": "evil"})
    files["/cdn/16.1.1/data/en_US/champion/Teemo.json"] = json.dumps(teemo).encode()
    files[f"/cdn/img/champion/splash/Teemo_0/{ESCAPE}.jpg"] = files["/cdn/img/champion/splash/Teemo_0.jpg"]
    with FileServer(files) as server:
        m = pack("lol", tmp_path / "out", src=server.url(""), cache_dir=tmp_path / "cache", size=8, channels=3,
                 crops_per_image=1)
    assert m["skipped"]["download_failed"] == 1 and not (tmp_path / "escaped.jpg").exists()
    assert all(p.startswith(("cache/", "out/")) for p in files_under(tmp_path))


def test_fetch_confines_its_cache_name(tmp_path):
    with pytest.raises(download.DownloadError, match="not a plain relative path"):
        download.fetch(["http://127.0.0.1:9/x"], "../x", cache_dir=tmp_path / "cache", retries=1)


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_src_that_is_a_fifo_or_a_device_is_named_not_a_network_problem(tmp_path, capsys, kind):
    src = tmp_path / "faces.zip"
    if kind == "fifo":
        os.mkfifo(src)
    else:
        src = kind
    code, _, err = call_main(main, capsys, "archive", "--src", src, "--out", tmp_path / "out", "--size", 8)
    assert code and err.strip().startswith("error: ") and "not a regular file" in err, err
    assert "no network" not in err
