import io
import tarfile
import threading
import tracemalloc

import pytest
import webdataset as wds

from gan_dist.training.tarstream import TarFormatError, tar_members, tar_samples


def write_tar(path, members, fmt=tarfile.PAX_FORMAT):
    """members: [(name, bytes or None for a directory, or ("symlink", target))]."""
    with tarfile.open(path, "w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(data, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, data[1]
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)


def reference_samples(url):
    return [{k: bytes(v) if isinstance(v, (bytes, bytearray)) else v for k, v in s.items()}
            for s in wds.DataPipeline(wds.SimpleShardList([url]), wds.tarfile_to_samples())]


def our_samples(url, errors=None):
    def handler(exn):
        errors.append(exn) if errors is not None else None
        return True
    return [{k: bytes(v) if isinstance(v, (bytes, bytearray)) else v for k, v in s.items()}
            for s in tar_samples([{"url": url}], handler)]


LONG = "sub/" + "x" * 120  # beyond ustar's 100-character name field


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_samples_match_webdatasets_tarfile_reader(tmp_path, fmt):
    members = [("dir", None), ("dir/000.png", b"\x89PNG" + bytes(600)), ("dir/000.cls", b"3"),
               ("dir/001.png", b"p" * 512), ("dir/001.cls", b"7"), ("__meta__", b"skipped"),
               ("dir/link.png", ("symlink", "000.png")), ("dir/002.JPG", b"j" * 1),
               ("dir/" + "n" * 95 + ".npy", b"\x93NUMPY" + bytes(100))]
    if fmt != tarfile.USTAR_FORMAT:
        members.append((LONG + ".png", b"long name"))
    url = write_tar(tmp_path / "a.tar", members, fmt)
    ours = our_samples(url)
    assert ours == reference_samples(url)
    assert [s["__key__"] for s in ours][:3] == ["dir/000", "dir/001", "dir/002"]
    assert ours[2]["jpg"] == b"j"  # suffixes lower-cased, as WebDataset does
    if fmt != tarfile.USTAR_FORMAT:
        assert ours[-1] == {"__key__": LONG, "__url__": url, "png": b"long name"}


def test_packed_shards_and_a_pipe_read_the_same(digits16):
    """Our own packer's shards, read from the file and through `pipe:cat` (a pipe returns short reads)."""
    shard = str(digits16 / "train-000000.tar")
    direct = our_samples(shard)
    assert len(direct) == 500 and direct == reference_samples(shard)
    piped = our_samples(f"pipe:cat {shard}")
    assert [s["png"] for s in piped] == [s["png"] for s in direct]


def test_damaged_header_and_truncated_member_are_errors(tmp_path):
    url = write_tar(tmp_path / "a.tar", [(f"{i:03d}.png", bytes([i]) * 700) for i in range(4)])
    raw = open(url, "rb").read()

    corrupt = bytearray(raw)
    corrupt[2 * 1536 + 10] ^= 0xFF  # the third header (each member: a 512-byte header, 2 blocks of data)
    with pytest.raises(TarFormatError, match="checksum"):
        list(tar_members(io.BytesIO(bytes(corrupt))))

    errors = []
    (tmp_path / "cut.tar").write_bytes(raw[:1536 * 2 + 512 + 300])  # inside the third member's data
    samples = our_samples(str(tmp_path / "cut.tar"), errors)
    assert [s["png"] for s in samples] == [bytes([0]) * 700, bytes([1]) * 700]  # the good prefix, nothing torn
    assert len(errors) == 1 and "cut short" in str(errors[0]) and "cut.tar" in str(errors[0].args)

    (tmp_path / "not.tar").write_bytes(b"this is not a tar archive" * 40)
    errors = []
    assert our_samples(str(tmp_path / "not.tar"), errors) == [] and isinstance(errors[0], TarFormatError)


def test_base256_size_field():
    """GNU tar writes sizes of 8 GiB and more as base-256 numbers; small ones decode the same way."""
    info = tarfile.TarInfo("000.png")
    info.size = 5
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[124:136] = b"\x80" + (5).to_bytes(11, "big")
    header[148:156] = b" " * 8
    header[148:155] = f"{sum(header):06o}\0".encode()
    stream = io.BytesIO(bytes(header) + b"hello" + bytes(507) + bytes(1024))
    assert [(n, bytes(d)) for n, d in tar_members(stream)] == [("000.png", b"hello")]


def pax_tar(path, record):
    """A one-member pax tar whose extended header holds `record` (19 bytes) in place of a comment."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("000.png")
        info.size, info.pax_headers = 4, {"comment": "c" * 7}
        tar.addfile(info, io.BytesIO(b"data"))
    raw = buf.getvalue()
    assert raw.count(b"19 comment=ccccccc\n") == 1
    path.write_bytes(raw.replace(b"19 comment=ccccccc\n", record))
    return path


@pytest.mark.parametrize("record", [b"00 comment=ccccccc\n", b"-1 comment=ccccccc\n", b"99 comment=ccccccc\n",
                                    b"19 comment-ccccccc\n", b"19 size=-000000001\n"])
def test_malformed_pax_records_are_errors_not_hangs(tmp_path, record):
    path = pax_tar(tmp_path / "a.tar", record)
    result = []

    def read():
        try:
            with open(path, "rb") as f:
                result.append(list(tar_members(f)))
        except TarFormatError as e:
            result.append(e)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=5)
    assert not reader.is_alive(), "tar_members loops forever on a malformed pax record"
    assert isinstance(result[0], TarFormatError) and "pax" in str(result[0])


@pytest.mark.parametrize("piped", [False, True])
def test_a_huge_pax_size_fails_without_allocating_it(tmp_path, piped):
    path = pax_tar(tmp_path / "a.tar", b"19 size=2000000000\n")
    tracemalloc.start()
    try:
        with pytest.raises(TarFormatError, match="2000000000 bytes"):
            with open(path, "rb") as f:
                list(tar_members(io.BufferedReader(io.BytesIO(f.read())) if piped else f))
        assert tracemalloc.get_traced_memory()[1] < 64 << 20
    finally:
        tracemalloc.stop()
