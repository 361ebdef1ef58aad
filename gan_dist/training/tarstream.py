"""Shards -> samples, reading the tar stream's 512-byte headers directly.

Python's tarfile builds a TarInfo object per member, about 50 µs; a shard member is one
small image, so that cost was a large share of the streamed input path. This reader
parses each header itself (checksum checked), reads the member into a writable buffer
(decoders then wrap it without a copy), and knows what tar writers put in a shard:
regular files, directories, links, pax headers ('x', 'g') and GNU long names ('L').
WebDataset still opens the URLs (local paths, `pipe:`, http) and groups members into
samples by key; only the member loop is ours.
"""
import os
import re

import webdataset as wds

BLOCK = 512
MAX_MEMBER = 256 << 20  # a shard member is one image; larger is damage, and would be allocated whole
_EMPTY = bytes(BLOCK)
_META = re.compile(r"__[^/]*__($|/)")  # WebDataset's metadata members, skipped as it skips them
_REGULAR = (b"0", b"\0", b"7")
_PAX_LENGTH = re.compile(rb"(\d{1,9}) ")
_DIGITS = re.compile(r"\d{1,12}")


class TarFormatError(ValueError):
    """The stream is not a readable tar archive (bad header, checksum or truncated member)."""


def _read_into(stream, buf):
    """Fill buf from stream; returns the bytes read (fewer only at the end of the stream). Pipes and
    sockets return short reads, and WebDataset's pipe wrapper has `read` but no `readinto`."""
    view, got = memoryview(buf), 0
    readinto = getattr(stream, "readinto", None)
    while got < len(buf):
        if readinto is not None:
            n = readinto(view[got:])
        else:
            chunk = stream.read(len(buf) - got)
            n = len(chunk)
            view[got:got + n] = chunk
        if not n:
            break
        got += n
    return got


def _number(field):
    """A header's numeric field: octal digits, or base-256 when the top bit is set (GNU, large sizes)."""
    if field[0] & 0x80:
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise TarFormatError("bad numeric field in a tar header (damaged or not a tar archive)") from None


def _pax_records(data):
    """A pax extended header's 'LENGTH key=value\\n' records as a dict (TarFormatError if malformed)."""
    records, pos = {}, 0
    while pos < len(data) and data[pos] != 0:
        match = _PAX_LENGTH.match(data, pos)
        end = pos + int(match.group(1)) if match else 0
        # each record must move on and end inside the header, in a newline, with a key=value between
        if not match or end <= match.end() or end > len(data) or data[end - 1] != 0x0A:
            raise TarFormatError("malformed pax header record (damaged or not a tar archive)")
        key, eq, value = bytes(data[match.end():end - 1]).partition(b"=")
        if not eq:
            raise TarFormatError("malformed pax header record (damaged or not a tar archive)")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos = end
    return records


def _member_size(header, pax, remaining):
    """A member's size from its pax record or header, checked against MAX_MEMBER and what the file has left."""
    if "size" in pax:
        if not _DIGITS.fullmatch(pax["size"]):
            raise TarFormatError("malformed pax size (damaged or not a tar archive)")
        size = int(pax["size"])
    else:
        size = _number(header[124:136])
    if size > MAX_MEMBER:
        raise TarFormatError(f"tar member of {size} bytes, above the {MAX_MEMBER >> 20} MiB a shard member may hold")
    if remaining is not None and size > remaining:
        raise TarFormatError(f"tar member cut short (expected {size} bytes, {remaining} left in the file)")
    return size


def _remaining(stream):
    """Bytes left in a regular file, or None for pipes and sockets (whose length is unknown)."""
    try:
        return os.fstat(stream.fileno()).st_size - stream.tell()
    except (AttributeError, OSError, ValueError):
        return None


def tar_members(stream):
    """Yield (name, data) for each regular file of a tar stream, in order; data is a bytearray.

    Raises TarFormatError on a damaged header or a member cut short.
    """
    long_name, pax = None, {}
    header = bytearray(BLOCK)
    while True:
        got = _read_into(stream, header)
        if got == 0 or (got == BLOCK and header == _EMPTY):
            return  # end of archive (the zero blocks, or a stream that simply ends between members)
        if got < BLOCK:
            raise TarFormatError(f"tar stream ends inside a header ({got} of {BLOCK} bytes)")
        expected = _number(header[148:156])
        if expected != sum(header) - sum(header[148:156]) + 8 * 32:
            raise TarFormatError("tar header checksum mismatch (damaged or not a tar archive)")
        kind = bytes(header[156:157])
        size = _member_size(header, pax, _remaining(stream))
        data = bytearray(size)
        if _read_into(stream, data) < size:
            raise TarFormatError(f"tar member cut short (expected {size} bytes)")
        padding = -size % BLOCK
        if padding and _read_into(stream, bytearray(padding)) < padding:
            raise TarFormatError("tar stream ends inside a member's padding")
        if kind == b"L":
            long_name = bytes(data).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif kind == b"x":
            pax = _pax_records(data)
        elif kind == b"g":
            pass  # global pax defaults carry nothing a sample needs
        else:
            if kind in _REGULAR:
                name = pax.get("path") or long_name
                if name is None:
                    name = header[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                    prefix = header[345:500].split(b"\0", 1)[0]
                    if header[257:262] == b"ustar" and prefix:
                        name = prefix.decode("utf-8", "surrogateescape") + "/" + name
                yield name, data
            long_name, pax = None, {}


def _close_quietly(stream):
    try:
        stream.close()
    except Exception:  # a pipe killed mid-stream reports it here; the shard is already being given up
        pass


def _expand_shards(sources, handler):
    """Opened shards -> {"fname", "data", "__url__"} per member, then {} at each shard's end (as WebDataset's
    own expander, which group_by_keys expects)."""
    for source in sources:
        stream = source["stream"]
        try:
            for name, data in tar_members(stream):
                if not _META.match(name):
                    yield {"fname": name, "data": data, "__url__": source["url"]}
            stream.close()  # a `pipe:` command's exit status is checked here
        except Exception as exn:
            _close_quietly(stream)
            exn.args = exn.args + (source["url"],)
            if not handler(exn):
                break
        except BaseException:  # GeneratorExit: the consumer stopped reading
            _close_quietly(stream)
            raise
        yield {}  # also after a damaged shard: its last member never joins the next shard's first sample


def tar_samples(shards, handler):
    """{"url": ...} dicts -> WebDataset samples ({"__key__", "__url__", ext: bytes}), one per key.

    handler(exception) is called for a shard that fails to open or read; it returns True to go on
    with the next shard.
    """
    streams = wds.tariterators.url_opener(shards, handler=handler)
    return wds.tariterators.group_by_keys(_expand_shards(streams, handler), handler=handler)
