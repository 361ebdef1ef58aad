"""A pack's manifest.json, read as untrusted input: checked fields, plain shard names, verified shards.

A manifest names its shards; those names become file paths (or, with --shard_url, parts of a
URL or a shell command), so each must be a plain `*.tar` file name, named once, and a local
shard must be a regular file in the pack directory itself (not a link). Its counts must fit
the bytes there are: each sample takes at least one 512-byte tar header, and the shard's
size, when the manifest records it, is compared before any hashing. Class names (`classes`, with
`class_counts`) are bounded in number and length (gan_dist.budgets). Local shards are handed to
WebDataset as `file://` URIs, which it only ever opens as files, and their sha256 is checked
against the manifest once per pack: the result is cached by size and mtime in the pack
directory (`.verified.json`), so later runs only stat the files.
"""
import json
import re
import shlex
from pathlib import Path

from gan_dist.budgets import MAX_PACK_SIZE, TAR_BLOCK, class_names_problem
from gan_dist.names import FORMATS, MANIFEST, SHARD_NAME
from gan_dist.packing.download import sha256_file
from gan_dist.safe_io import UnsafePath, plain_file, write_atomic

VERIFIED = ".verified.json"
MAX_MANIFEST_BYTES = 64 << 20


class DataError(Exception):
    """The training data is missing, empty or does not match the requested options."""


MAX_CLASS_COUNT = 2**53  # images of one class: exact as a float64, for the class frequencies


def _plain_int(value, low):
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def check_manifest(manifest, where):
    """Raise DataError unless `manifest` has the fields and types a pack's manifest has."""
    def bad(what):
        return DataError(f"{where}: {what}; repack the directory with `python -m gan_dist.shard`")
    if not isinstance(manifest, dict):
        raise bad("not a JSON object")
    for key, low, high in (("count", 0, None), ("size", 1, MAX_PACK_SIZE), ("channels", 1, 3)):
        value = manifest.get(key)
        if not _plain_int(value, low) or high is not None and value > high:
            raise bad(f"{key!r} is {value!r}, not an integer >= {low}" + (f" and <= {high}" if high else ""))
    if not isinstance(manifest.get("image_format", "png"), str) or manifest.get("image_format", "png") not in FORMATS:
        raise bad(f"image_format {manifest['image_format']!r} is not one of {', '.join(FORMATS)}")
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise bad("no 'shards' list")
    names = set()
    for shard in shards:
        name = shard.get("file") if isinstance(shard, dict) else None
        if not isinstance(name, str) or not SHARD_NAME.fullmatch(name) or ".." in name:
            raise bad(f"shard name {name!r} is not a plain file name ending in .tar")
        if name in names:
            raise bad(f"shard {name} is listed twice (its images would count twice)")
        names.add(name)
        if not _plain_int(shard.get("count"), 0):
            raise bad(f"shard {name} has count {shard.get('count')!r}, not an integer >= 0")
        size = shard.get("bytes")
        if size is not None and not _plain_int(size, 0):
            raise bad(f"shard {name} has bytes {size!r}, not an integer >= 0")
        if size is not None and shard["count"] * TAR_BLOCK > size:
            raise bad(f"shard {name} claims {shard['count']} images in {size} bytes, more than a tar that size holds")
        digest = shard.get("sha256")
        if digest is not None and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise bad(f"shard {name} has a malformed sha256")
    if sum(s["count"] for s in shards) != manifest["count"]:
        raise bad(f"count {manifest['count']} is not the sum of the shard counts")
    if "classes" in manifest or "class_counts" in manifest:
        problem = class_names_problem(manifest.get("classes"))
        if problem:
            raise bad(problem)
        counts = manifest.get("class_counts")
        # not tied to `count`: a pack cut down by editing its manifest keeps the whole pack's class frequencies
        if (not isinstance(counts, list) or len(counts) != len(manifest["classes"])
                or not all(_plain_int(n, 0) and n <= MAX_CLASS_COUNT for n in counts) or not any(counts)):
            raise bad(f"class_counts is not one count (0 to {MAX_CLASS_COUNT:,}, not all 0) per class")


def _pack_file(root, name, data):
    """root/name, a regular file inside the pack directory (DataError for a link or a device)."""
    try:
        return plain_file(root, name, "pack file")
    except UnsafePath as e:
        raise DataError(f"--data {data}: {e}") from None


def read_manifest(root, data):
    """The checked manifest of pack directory `root` (`data` is how the user named it)."""
    path = _pack_file(root, MANIFEST, data)
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise DataError(f"--data {data}: {MANIFEST} is larger than {MAX_MANIFEST_BYTES >> 20} MiB; not a pack's "
                        "manifest")
    try:
        manifest = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"--data {data}: {MANIFEST} is not valid JSON ({e.__class__.__name__} "
                        f"at byte {getattr(e, 'pos', getattr(e, 'start', '?'))}); repack the directory") from None
    except RecursionError:
        raise DataError(f"--data {data}: {MANIFEST} is nested too deeply; repack the directory") from None
    check_manifest(manifest, f"--data {data}: {MANIFEST}")
    return manifest


def _load_verified(root):
    try:
        cached = json.loads((root / VERIFIED).read_text())
        return cached if isinstance(cached, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_verified(root, verified):
    try:
        write_atomic(root / VERIFIED, json.dumps(verified))
    except OSError:  # a read-only pack: verified again next time
        pass


def verify_shards(root, shards, data):
    """Raise DataError unless each local shard's sha256 is the manifest's (cached by size and mtime)."""
    verified = _load_verified(root)
    changed = False
    for shard in shards:
        name, expected = shard["file"], shard.get("sha256")
        if expected is None:
            raise DataError(f"--data {data}: {MANIFEST} has no sha256 for {name}; repack the directory "
                            "(or pass --skip_verify to read the shards unchecked)")
        st = _pack_file(root, name, data).stat()
        if shard.get("bytes") is not None and st.st_size != shard["bytes"]:
            raise DataError(f"--data {data}: shard {name} is {st.st_size} bytes, not the {shard['bytes']} of "
                            f"{MANIFEST} (damaged or replaced); repack the directory")
        stamp = [st.st_size, st.st_mtime_ns, expected]
        if verified.get(name) == stamp:
            continue
        actual = sha256_file(root / name)
        if actual != expected:
            raise DataError(f"--data {data}: shard {name} does not match its sha256 in {MANIFEST} (damaged or "
                            "replaced); repack the directory, or pass --skip_verify to read it anyway")
        verified[name], changed = stamp, True
    if changed:
        _save_verified(root, {s["file"]: verified[s["file"]] for s in shards})


def shard_urls(root, shards, shard_url, data):
    """URLs for the shards: `file://` URIs of files in `root`, or `shard_url` with `{file}` filled in."""
    if shard_url:
        if "{file}" not in shard_url:
            raise DataError(f"--shard_url {shard_url!r} has no {{file}} placeholder for the shard names")
        quote = shlex.quote if shard_url.startswith("pipe:") else str
        return [shard_url.replace("{file}", quote(s["file"])) for s in shards]
    paths = []
    for shard in shards:
        try:
            path = _pack_file(root, shard["file"], data).absolute()
        except FileNotFoundError:
            raise DataError(f"--data {data}: shard(s) named in {MANIFEST} are missing, e.g. {root / shard['file']}; "
                            "repack the directory, or pass --shard_url if they live elsewhere") from None
        if shard["count"] * TAR_BLOCK > path.stat().st_size:
            raise DataError(f"--data {data}: {MANIFEST} claims {shard['count']} images in {shard['file']}, more than "
                            f"its {path.stat().st_size} bytes can hold; repack the directory")
        paths.append(path)
    return [p.as_uri() for p in paths]


def load_manifest(data, shard_url=None, verify=True):
    """Read `data/manifest.json` and return (manifest, shard URLs).

    Args:
        data: a directory written by `python -m gan_dist.shard` (or holding just its manifest.json).
        shard_url: where the shards are, if not beside the manifest: a template in which `{file}`
            becomes each shard's name, e.g. "pipe:aws s3 cp s3://bucket/lfw/{file} -" or
            "https://host/lfw/{file}" (anything WebDataset opens).
        verify: check local shards against the manifest's sha256 (once per pack; cached).
    """
    root = Path(data).expanduser()
    if not root.is_dir():
        raise DataError(f"--data {data}: no such directory; pack one with "
                        f"`python -m gan_dist.shard SOURCE --out {data}` (or `make shards-demo`)")
    if not (root / MANIFEST).exists():
        raise DataError(f"--data {data}: no {MANIFEST} (not a finished pack); (re)run "
                        f"`python -m gan_dist.shard SOURCE --out {data}`")
    manifest = read_manifest(root, data)
    shards = [s for s in manifest["shards"] if s["count"] > 0]
    if manifest["count"] == 0 or not shards:
        raise DataError(f"--data {data}: the pack holds no images; repack it from a source with images")
    urls = shard_urls(root, shards, shard_url, data)
    if verify and not shard_url:
        verify_shards(root, shards, data)
    return manifest, urls


LABELLED_SOURCES = ("digits", "stacked-digits", "lol")


def pack_classes(manifest, data):
    """(class names, images per class) of a pack, for --cond; DataError when it records none."""
    if "classes" not in manifest:
        why = ("it was packed before class names were recorded" if manifest.get("has_labels")
               else "its source gives none")
        raise DataError(f"--data {data}: this pack has no class labels ({why}); repack with "
                        f"`python -m gan_dist.shard SOURCE --out {data} ...` from a source with labels "
                        f"({', '.join(LABELLED_SOURCES)}), or drop --cond")
    return manifest["classes"], manifest["class_counts"]


def check_matches(manifest, img_size, channels, data, jpeg=False):
    """Raise DataError unless the shards hold img_size x img_size x channels images (as JPEG if `jpeg`)."""
    if (manifest["size"], manifest["channels"]) != (img_size, channels):
        raise DataError(
            f"--data {data} holds {manifest['size']}x{manifest['size']}x{manifest['channels']} "
            f"images but the model was asked for --img_size {img_size} --channels {channels}; "
            f"pass --img_size {manifest['size']} --channels {manifest['channels']} "
            f"or repack with --size {img_size} --channels {channels}")
    fmt = manifest.get("image_format", "png")
    if jpeg and fmt != "jpg":
        raise DataError(f"--decode_on_device decodes JPEG, but --data {data} holds {fmt} images; "
                        "repack it with `python -m gan_dist.shard ... --format jpg`, or drop the flag")


def shard_counts(manifest, urls):
    """{url: images the manifest promises} for the URLs load_manifest returned."""
    return dict(zip(urls, (s["count"] for s in manifest["shards"] if s["count"] > 0)))


def check_batch(manifest, global_batch, data):
    """Raise DataError if one step would need more images than the pack holds."""
    if global_batch > manifest["count"]:
        raise DataError(f"--data {data} holds {manifest['count']} images, fewer than one global batch of "
                        f"{global_batch} (--batch_size x processes); lower --batch_size")
