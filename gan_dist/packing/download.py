"""Verified, resumable downloads into a cache directory (standard library + tqdm, no torch).

    from gan_dist.packing.download import fetch
    got = fetch(["https://mirror-a/lfw.tgz", "https://mirror-b/lfw.tgz"], "lfw.tgz", sha256="055f...")
    got.path, got.sha256

Mirrors are tried in order, each with retries and exponential back-off. Bytes go to
`<cache>/<name>.part`; a retry asks for the rest with an HTTP Range request, and the
file is renamed to `<cache>/<name>` only once it is complete and its sha256 matches.
A local path in place of a URL is used where it lies (after the same check).
"""
import hashlib
import os
import socket
import time
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

from tqdm import tqdm

from gan_dist.safe_io import UnsafePath, confined, regular_file

USER_AGENT = "gan-dist/0.1 (dataset packer; Python urllib)"
CHUNK = 1 << 16
# statuses worth asking again: rate limits, figshare's intermittent 403, server trouble
RETRY_STATUS = {403, 408, 425, 429, 500, 502, 503, 504}


class DownloadError(Exception):
    """A file could not be fetched or did not match its published digest."""


class Fetched(NamedTuple):
    path: Path
    url: str
    sha256: str
    bytes: int


def default_cache_dir():
    """$XDG_CACHE_HOME/gan-dist, or ~/.cache/gan-dist."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gan-dist"


def is_url(src):
    return urlparse(str(src)).scheme in ("http", "https", "ftp")


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _mismatch(name, expected, actual, where):
    return DownloadError(f"{name}: sha256 mismatch: expected {expected}, got {actual} ({where}); "
                         f"pass --sha256 {actual} if you trust this copy")


def fetch(urls, name, sha256=None, cache_dir=None, retries=5, backoff=1.0, timeout=60, progress=True, label=None):
    """Return the verified local copy of a file, downloading it if needed.

    Args:
        urls: mirrors (URLs or local paths), tried in order.
        name: the file's name in the cache (may contain '/').
        sha256: expected hex digest; None accepts any content (its digest is still returned).
        cache_dir: where downloads go; default `default_cache_dir()`.
        retries: attempts per mirror for transient failures (dropped connections, 5xx, 403, 429).
        backoff: seconds before the first retry; doubles each time.
        timeout: seconds a connection may stall.
        progress: show a progress bar.
        label: the file's name in messages (default: the last part of `name`).
    """
    sha256 = sha256.lower() if sha256 else None
    label = label or Path(name).name
    try:  # `name` may come from a mirror's own files (Data Dragon's champion ids)
        target = confined(cache_dir or default_cache_dir(), name, "download name")
    except UnsafePath as e:
        raise DownloadError(str(e)) from None
    failures = []
    for url in urls:
        if not is_url(url):
            path = Path(str(url).removeprefix("file://")).expanduser()
            if not path.exists():
                failures.append(f"{url}: no such file")
                continue
            try:
                regular_file(path, what="--src")  # a FIFO or /dev/zero would be read for ever
            except UnsafePath as e:
                raise DownloadError(f"{e}; pass an archive file") from None
            actual = sha256_file(path)
            if sha256 and actual != sha256:
                raise _mismatch(path.name, sha256, actual, f"local file {path}")
            return Fetched(path, str(url), actual, path.stat().st_size)
        if target.is_file():
            actual = sha256_file(target)
            if sha256 is None or actual == sha256:
                return Fetched(target, url, actual, target.stat().st_size)
            target.unlink()  # a stale copy from another mirror or digest
        try:
            _download(url, target, retries, backoff, timeout, progress)
        except DownloadError as e:
            failures.append(f"{url}: {e}")
            continue
        part = _part(target)
        actual = sha256_file(part)
        if sha256 and actual != sha256:
            part.unlink()
            err = _mismatch(label, sha256, actual, f"from {url}; the partial file {part} was removed")
            failures.append(str(err))
            if len(urls) == 1:
                raise err
            continue
        os.replace(part, target)
        return Fetched(target, url, actual, target.stat().st_size)
    hint = f"if you have a copy of {label}, pass it with --src /path/to/{label} (or --src URL for another mirror)"
    raise DownloadError(f"could not get {label} (no network?): " + "; ".join(failures) + f". {hint}")


def _part(target):
    return target.with_name(target.name + ".part")


def _download(url, target, retries, backoff, timeout, progress):
    """Fill `<target>.part` from url, resuming what is there; raise DownloadError when it gives up."""
    part = _part(target)
    part.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(retries):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as resp:
                if have and resp.status != 206:
                    have = 0  # the server ignored Range: start over
                length = resp.headers.get("Content-Length")
                total = have + int(length) if length else None
                with open(part, "ab" if have else "wb") as f, tqdm(
                        total=total, initial=have, unit="B", unit_scale=True, desc=target.name,
                        disable=not progress, leave=False) as bar:
                    while block := resp.read(CHUNK):
                        f.write(block)
                        bar.update(len(block))
                if total is not None and part.stat().st_size < total:
                    raise ConnectionError(f"connection closed at {part.stat().st_size} of {total} bytes")
                return
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # nothing left to send: the part is complete
                return
            if e.code not in RETRY_STATUS:
                raise DownloadError(f"HTTP {e.code} {e.reason}") from None
            last = f"HTTP {e.code} {e.reason}"
        except urllib.error.URLError as e:
            if isinstance(e.reason, (ConnectionRefusedError, socket.gaierror)):
                raise DownloadError(f"cannot connect ({e.reason})") from None  # no point retrying
            last = str(e.reason)
        except (HTTPException, OSError) as e:  # dropped connection, reset, timeout
            last = f"{type(e).__name__}: {e}"
    raise DownloadError(f"gave up after {retries} attempts ({last}); {part} is kept to resume")
