"""One source image -> one encoded training image: load, convert to 8 bits, crop, resize, encode.

Runs in the packer's worker processes. Images above MAX_PIXELS are refused without being
decoded (PIL checks the header), and 16-bit, 32-bit and float images are scaled to 8 bits
by their range rather than clipped. No torch here.
"""
import hashlib
import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 1 << 26  # per source image (PIL's own guard is 89M); larger ones are refused by name
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class Unsupported(ValueError):
    """An image that could be read but not packed faithfully (too many pixels, an unusual sample range)."""


def _open(image):
    if isinstance(image, np.ndarray):
        return to_8bit(Image.fromarray(image))
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)  # above MAX_PIXELS: refused, not decoded
        try:
            with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as img:
                img.load()  # truncated files fail here, not later
                return to_8bit(img.copy())
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise Unsupported(str(e)) from None


def to_8bit(img):
    """16-bit and 32-bit integer and float greyscale images scaled to 8 bits (PIL's convert clips them:
    16-bit comes out near white, floats in [0, 1] black); other modes pass as they are."""
    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return img
    arr = np.asarray(img, dtype=np.float64)
    top = arr.max() if arr.size else 0
    if arr.size and arr.min() < 0 or not np.isfinite(top):
        raise Unsupported(f"{img.mode} image with negative or non-finite values")
    if img.mode == "F" and top <= 1:
        scale = 255  # floats in [0, 1]
    elif img.mode.startswith("I;16") or 255 < top <= 65535:
        scale = 255 / 65535
    elif top <= 255:
        scale = 1
    else:
        raise Unsupported(f"{img.mode} image with values up to {top:g}: no known range to scale from")
    return Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8))


def _random_square(img, content, crop, seed, scale):
    # seeded by content, not by name: identical images get identical crops (and are deduplicated)
    words = np.frombuffer(content[:16], dtype=np.uint32).tolist()
    rng = np.random.default_rng([seed, crop, *words])
    w, h = img.size
    side = min(max(1, round(rng.uniform(*scale) * min(w, h))), w, h)
    x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    return img.crop((x, y, x + side, y + side))


def _encode(img, fmt, quality):
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=6)
    elif fmt == "jpg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        np.save(buf, np.asarray(img), allow_pickle=False)
    return buf.getvalue()


def encode_image(job):
    """Return (content hash, encoded bytes) for one image job, or the reason it is skipped
    ("unreadable", or "unsupported": too many pixels, or a sample range it cannot scale to 8 bits).

    job = (image, crop, size, channels, fmt, quality, center_crop, seed, crop_scale); `crop` is
    None for the whole image or the index of a random square crop.
    """
    image, crop, size, channels, fmt, quality, center_crop, seed, crop_scale = job
    try:
        img = _open(image).convert("L" if channels == 1 else "RGB")
        h = hashlib.sha256(f"{img.size}".encode())
        h.update(img.tobytes())
        content = h.digest()
        if center_crop:
            w, h = img.size
            side = min(center_crop, w, h)
            left, top = (w - side) // 2, (h - side) // 2
            img = img.crop((left, top, left + side, top + side))
        if crop is not None:
            img = _random_square(img, content, crop, seed, crop_scale)
            content += crop.to_bytes(4, "little")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BICUBIC)
        return content, _encode(img, fmt, quality)
    except Unsupported:
        return "unsupported"
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return "unreadable"
