"""A shard directory is untrusted input: its manifest cannot run commands, reach outside it, or swap shards."""
import io
import json
import shutil

import pytest

from gan_dist.names import MANIFEST
from gan_dist.training.data import first_batch
from gan_dist.training.manifest import DataError, load_manifest
from gan_dist.training.options import parse_args
from gan_dist.training.tarstream import TarFormatError, tar_members


def one_shard_pack(digits16, dest, name="train-000000.tar"):
    """digits16's first shard alone, stored as `name` (a file of that name, if it can be one) under a manifest."""
    dest.mkdir(parents=True)
    manifest = json.loads((digits16 / MANIFEST).read_text())
    shard = manifest["shards"][0]
    manifest["shards"], manifest["count"] = [{**shard, "file": name}], shard["count"]
    if "/" not in name:
        shutil.copy(digits16 / shard["file"], dest / name)
    (dest / MANIFEST).write_text(json.dumps(manifest))
    return dest


def test_a_shard_name_cannot_inject_a_command_into_shard_url(tmp_path, digits16):
    marker = tmp_path / "pwned"
    data = one_shard_pack(digits16, tmp_path / "pack", f"train-000000.tar; touch {marker}; echo")
    with pytest.raises(DataError, match="touch .* is not a plain file name"):
        _, urls = load_manifest(data, shard_url=f"pipe:cat {digits16}/{{file}}")
        first_batch(urls, 4, seed=0)
    assert not marker.exists()


def test_a_shard_name_cannot_become_a_pipe_url(tmp_path, digits16, monkeypatch):
    data = one_shard_pack(digits16, tmp_path / "pack", "pipe:touch pwned; cat train-000000.tar")
    monkeypatch.chdir(data)
    with pytest.raises(DataError, match="pipe:touch pwned.* is not a plain file name"):
        _, urls = load_manifest(".")
        first_batch(urls, 4, seed=0)
    assert not (data / "pwned").exists()


def test_local_shards_are_opened_as_files(digits16, monkeypatch):
    monkeypatch.chdir(digits16)
    _, urls = load_manifest(".")
    assert all(u.startswith(f"file://{digits16}/train-") for u in urls)
    assert first_batch(urls, 4, seed=0).shape == (4, 1, 16, 16)


@pytest.mark.parametrize("name", ["/etc/passwd", "../other/train-000000.tar", "ABSOLUTE", ".hidden.tar",
                                  "train-000000.tar/..", "https://host/x.tar"])
def test_shard_names_outside_the_pack_are_refused(tmp_path, digits16, name):
    name = str(digits16 / "train-000001.tar") if name == "ABSOLUTE" else name
    data = one_shard_pack(digits16, tmp_path / "pack", name)
    with pytest.raises(DataError, match="is not a plain file name"):
        load_manifest(data)


def test_a_replaced_shard_fails_its_sha256_unless_verification_is_skipped(tmp_path, digits16):
    data = one_shard_pack(digits16, tmp_path / "pack")
    load_manifest(data)
    assert (data / ".verified.json").is_file()  # the next run only stats the shard
    shutil.copy(digits16 / "train-000001.tar", data / "train-000000.tar")  # a valid tar, other images
    with pytest.raises(DataError, match="train-000000.tar does not match its sha256 .* --skip_verify"):
        load_manifest(data)
    _, urls = load_manifest(data, verify=False)
    assert first_batch(urls, 4, seed=0).shape == (4, 1, 16, 16)
    assert parse_args(["--data", str(data), "--skip_verify"]).skip_verify


@pytest.mark.parametrize("field,value,message", [
    ("count", -5, "'count' is -5"), ("size", "16", "'size' is '16'"), ("shards", {}, "no 'shards' list"),
    ("shard_count", -1, "count -1"), ("sha256", "zz", "malformed sha256")])
def test_malformed_manifest_fields_are_named(tmp_path, digits16, field, value, message):
    data = one_shard_pack(digits16, tmp_path / "pack")
    manifest = json.loads((data / MANIFEST).read_text())
    if field in ("shard_count", "sha256"):
        manifest["shards"][0]["count" if field == "shard_count" else field] = value
    else:
        manifest[field] = value
    (data / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=message):
        load_manifest(data)
    (data / MANIFEST).write_text('{"count": 1, "shards": [')
    with pytest.raises(DataError, match="not valid JSON"):
        load_manifest(data)


def test_tar_errors_never_echo_the_files_bytes():
    with pytest.raises(TarFormatError) as info:
        list(tar_members(io.BytesIO(b"S" * 2048)))  # e.g. a password file named as a shard
    assert "SS" not in str(info.value)
