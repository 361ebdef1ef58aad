import hashlib

import pytest
from conftest import free_port
from http_fixtures import FileServer

from gan_dist.packing.download import (
    USER_AGENT,
    DownloadError,
    default_cache_dir,
    fetch,
)

BLOB = bytes(range(256)) * 400  # 102,400 bytes
DIGEST = hashlib.sha256(BLOB).hexdigest()


@pytest.fixture
def server():
    with FileServer({"/files/blob.tgz": BLOB, "/other/blob.tgz": BLOB}) as s:
        yield s


def test_download_is_verified_cached_and_sends_a_user_agent(tmp_path, server):
    got = fetch([server.url("/files/blob.tgz")], "blob.tgz", sha256=DIGEST, cache_dir=tmp_path, progress=False)
    assert got.path == tmp_path / "blob.tgz" and got.path.read_bytes() == BLOB
    assert got.sha256 == DIGEST and got.bytes == len(BLOB)
    assert server.requests[0][1]["User-Agent"] == USER_AGENT
    again = fetch([server.url("/files/blob.tgz")], "blob.tgz", sha256=DIGEST, cache_dir=tmp_path, progress=False)
    assert again.path == got.path and len(server.requests) == 1  # served from the cache
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.tgz"]


def test_wrong_checksum_names_file_and_digests_and_removes_the_partial(tmp_path, server):
    wrong = "0" * 64
    with pytest.raises(DownloadError) as exc:
        fetch([server.url("/files/blob.tgz")], "blob.tgz", sha256=wrong, cache_dir=tmp_path, progress=False)
    msg = str(exc.value)
    assert "blob.tgz" in msg and f"expected {wrong}" in msg and f"got {DIGEST}" in msg
    assert list(tmp_path.iterdir()) == []


def test_dropped_connection_resumes_with_a_range_request(tmp_path, server):
    server.drop["/files/blob.tgz"] = 30_000
    got = fetch([server.url("/files/blob.tgz")], "blob.tgz", sha256=DIGEST, cache_dir=tmp_path, backoff=0,
                progress=False)
    assert got.path.read_bytes() == BLOB
    (_, first), (_, second) = server.requests
    assert "Range" not in first and second["Range"] == "bytes=30000-"


def test_partial_file_from_an_earlier_run_is_resumed(tmp_path, server):
    (tmp_path / "blob.tgz.part").write_bytes(BLOB[:70_000])
    got = fetch([server.url("/files/blob.tgz")], "blob.tgz", sha256=DIGEST, cache_dir=tmp_path, progress=False)
    assert got.path.read_bytes() == BLOB and server.requests[0][1]["Range"] == "bytes=70000-"
    assert not (tmp_path / "blob.tgz.part").exists()


def test_server_that_ignores_range_restarts_from_zero(tmp_path, server):
    server.ranges = False
    (tmp_path / "blob.tgz.part").write_bytes(b"junk" * 100)
    got = fetch([server.url("/files/blob.tgz")], "blob.tgz", sha256=DIGEST, cache_dir=tmp_path, progress=False)
    assert got.path.read_bytes() == BLOB


def test_mirrors_are_tried_in_order(tmp_path, server):
    dead = f"http://127.0.0.1:{free_port()}/blob.tgz"
    urls = [dead, server.url("/missing.tgz"), server.url("/other/blob.tgz")]
    got = fetch(urls, "blob.tgz", sha256=DIGEST, cache_dir=tmp_path, progress=False)
    assert got.url == urls[2] and server.paths() == ["/missing.tgz", "/other/blob.tgz"]


def test_no_network_says_how_to_pass_a_local_copy(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/lfw.tgz"  # nothing listens there: connection refused
    with pytest.raises(DownloadError, match=r"--src /path/to/lfw\.tgz") as exc:
        fetch([url], "lfw.tgz", sha256=DIGEST, cache_dir=tmp_path, progress=False)
    assert "cannot connect" in str(exc.value) and url in str(exc.value)


def test_local_copy_is_used_in_place_and_checked(tmp_path):
    local = tmp_path / "mine.tgz"
    local.write_bytes(BLOB)
    got = fetch([str(local)], "blob.tgz", sha256=DIGEST, cache_dir=tmp_path / "cache")
    assert got.path == local and not (tmp_path / "cache").exists()
    with pytest.raises(DownloadError, match="mine.tgz: sha256 mismatch: expected 1+, got " + DIGEST):
        fetch([str(local)], "blob.tgz", sha256="1" * 64)
    assert local.exists()  # the user's own file is never deleted


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "gan-dist"
