"""Check a PNG's structure before torchvision decodes it.

torchvision's PNG decoder crashes the whole process (a segfault, not an exception) when
libpng reports an error while reading rows: a bad chunk CRC, a damaged zlib stream, too
little image data, or an invalid row filter byte. A 1 KB file in a shard is enough. So
every chunk's CRC, the zlib stream and every row's filter byte are checked here first.
That inflates the data twice: the check costs up to two thirds of a decode (on noise; less
on photos), still less than decoding with PIL. PNGs outside the plain layout the packer
writes (8 bits per sample, no palette, not interlaced) are left to PIL, which raises instead.
"""
import struct
import zlib

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PIXELS = 1 << 26  # a shard holds training images; a header claiming more is damage or a bomb
_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


class PNGError(ValueError):
    """The bytes are not a well-formed PNG."""


def plain_png(data):
    """True if torchvision may decode `data`, False if it is a valid-looking PNG to decode with PIL instead.

    Raises PNGError if the file is damaged.
    """
    view = memoryview(data)
    if bytes(view[:8]) != SIGNATURE:
        raise PNGError("not a PNG (bad signature)")
    pos, header, idat = 8, None, []
    while True:
        if pos + 12 > len(view):
            raise PNGError("PNG cut short (no IEND chunk)")
        length, kind = struct.unpack(">I4s", view[pos:pos + 8])
        end = pos + 12 + length
        if end > len(view):
            raise PNGError(f"PNG chunk {kind!r} cut short")
        body = view[pos + 8:end - 4]
        if zlib.crc32(body, zlib.crc32(kind)) != struct.unpack(">I", view[end - 4:end])[0]:
            raise PNGError(f"PNG chunk {kind!r} fails its CRC")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body) if length == 13 else None
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos = end
    if header is None or not idat:
        raise PNGError("PNG without a valid IHDR or IDAT chunk")
    width, height, depth, colour, _, _, interlace = header
    if colour not in _SAMPLES or width * height > MAX_PIXELS or not width or not height:
        raise PNGError(f"PNG of {width}x{height} pixels, colour type {colour}: not an image a shard holds")
    if depth != 8 or interlace or colour == 3:  # palettes too: PIL expands them
        return False
    stride = 1 + width * _SAMPLES[colour]
    inflater = zlib.decompressobj()
    try:
        rows = b"".join(inflater.decompress(part, stride * height + 1) for part in idat)
    except zlib.error:
        raise PNGError("PNG image data is damaged (zlib)") from None
    if len(rows) != stride * height or not inflater.eof:
        raise PNGError("PNG image data has the wrong length")
    if np.frombuffer(rows, np.uint8)[::stride].max() > 4:
        raise PNGError("PNG row with an invalid filter type")
    return True
