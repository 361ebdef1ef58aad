"""Paths from outside, and files we write. Standard library only (the packer uses it too).

Paths that come from files we did not write (a manifest's shard names, a mirror's champion
ids, a dataset's row paths, a save_to_disk state.json) go through `confined`: relative, no
`..`, no link leading out of their root, and a regular file when read (a FIFO or a device
would hang the reader). Files we write are created without following links: a temporary
file beside the target renamed over it (`write_atomic`), or an O_NOFOLLOW open
(`append_line`, `open_new`), so a link planted in a run or pack directory is never written
through.
"""
import errno
import json
import os
import re
import stat
import tempfile
from pathlib import Path, PurePosixPath

_UMASK = os.umask(0o022)
os.umask(_UMASK)


class UnsafePath(ValueError):
    """A path that leads out of its place, through a link, or to something other than a regular file."""


def check_relative(rel, what="path"):
    """Raise UnsafePath unless `rel` is a relative POSIX path that does not climb (no `..`, no drive, no NUL)."""
    text = str(rel)
    if (not text or "\0" in text or "\\" in text or text.startswith("/") or re.match(r"[A-Za-z]:", text)
            or ".." in PurePosixPath(text).parts):
        raise UnsafePath(f"{what} {text!r} is not a plain relative path (absolute, or climbing with '..')")
    return text


def confined(root, rel, what="path"):
    """root/rel, refused (UnsafePath) if rel is absolute, climbs, or resolves outside root through a link."""
    path = Path(root) / check_relative(rel, what)
    if not path.resolve().is_relative_to(Path(root).resolve()):
        raise UnsafePath(f"{what} {rel!r} leads out of {root} through a symbolic link")
    return path


def regular_file(path, roots=None, what="file"):
    """`path` if it is a regular file (after links) inside one of `roots` (after links), else UnsafePath.
    A FIFO, a socket or a device is refused before it is opened: reading one may never end."""
    path = Path(path)
    real = path.resolve()
    if roots is not None and not any(real.is_relative_to(Path(r).resolve()) for r in roots):
        raise UnsafePath(f"{what} {path} lies outside {', '.join(map(str, roots))}")
    try:
        mode = os.stat(real).st_mode
    except OSError as e:
        raise UnsafePath(f"{what} {path}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise UnsafePath(f"{what} {path} is not a regular file (a directory, FIFO, socket or device)")
    return path


def plain_file(root, name, what="file"):
    """root/name for a plain file name from outside: a regular file itself, never a link (UnsafePath)."""
    if "/" in str(name):
        raise UnsafePath(f"{what} {name!r} is not a plain file name")
    path = Path(root) / check_relative(name, what)
    mode = os.lstat(path).st_mode  # FileNotFoundError for a missing file
    if stat.S_ISLNK(mode):
        raise UnsafePath(f"{what} {path} is a symbolic link; a pack is only read inside its directory: "
                         "copy the file there instead")
    if not stat.S_ISREG(mode):
        raise UnsafePath(f"{what} {path} is not a regular file")
    return path


def refuse_links(root, names):
    """Raise UnsafePath if any root/NAME we are about to write is a symbolic link (it would be written through)."""
    for name in names:
        if os.path.islink(Path(root) / name):
            raise UnsafePath(f"{Path(root) / name} is a symbolic link; gan-dist never writes through links in "
                             "a directory it writes: remove it (link the whole directory instead)")


def write_atomic(path, data):
    """Write `data` (bytes or str) to `path` through a new temporary file beside it, renamed over it.

    A link at `path` is replaced, never followed; a failed write (a full disk) leaves the old
    file or none, never a half-written one, and raises the OSError."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")  # O_EXCL
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _open_nofollow(path, flags):
    """os.open with O_NOFOLLOW and O_NONBLOCK (a FIFO never blocks the open); UnsafePath for a link or non-file."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO):  # a link; a FIFO without a reader
            raise UnsafePath(f"{path} is a symbolic link or a FIFO; gan-dist never writes through one: "
                             "remove it") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePath(f"{path} is not a regular file; remove it")
    os.set_blocking(fd, True)
    return fd


def append_line(path, line):
    """Append one line to `path` (created if missing), never through a link."""
    fd = _open_nofollow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with os.fdopen(fd, "a") as f:
        f.write(line if line.endswith("\n") else line + "\n")


def open_new(path, mode="wb"):
    """A new file at `path` opened for writing; refused if anything (a link, an old file) is already there."""
    return os.fdopen(_open_nofollow(path, os.O_RDWR | os.O_CREAT | os.O_EXCL), mode)


def open_lock(path):
    """`path` opened read-write and created if missing, never through a link (for a lock file)."""
    return os.fdopen(_open_nofollow(path, os.O_RDWR | os.O_CREAT), "r+")


def read_jsonl(path):
    """The JSON objects of a .jsonl file, one per line; a line cut short or damaged is left out."""
    rows = []
    with open(path, errors="replace") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows
