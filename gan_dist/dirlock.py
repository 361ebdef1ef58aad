"""One writer per directory: an exclusive flock on DIR/.lock, held while a trainer or the packer writes there.

The kernel drops the lock when its process ends, however it ends, so a lock file left by a
killed run never blocks the next one. The file holds a line naming the holder, for the
message the second writer gets, and is removed on release. A `.lock` that is a symbolic link
is refused (UnsafePath), never followed. No torch here.
"""
import atexit
import fcntl
import os
import socket
from pathlib import Path

from gan_dist.safe_io import open_lock

LOCK_FILE = ".lock"


class DirectoryBusy(Exception):
    """Another process is writing to the directory."""


class DirectoryLock:
    """Holds DIR/.lock for this process until `release()`, the end of a `with` block, or the process's exit."""

    def __init__(self, directory, holder):
        """Take the lock on the existing `directory`; `holder` (e.g. "gan_dist.train") names this process in
        another's error. Raises DirectoryBusy naming the holder if another process has it."""
        self.path = Path(directory) / LOCK_FILE
        while True:
            self.file = open_lock(self.path)  # held open while the lock is
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.file.seek(0)
                other = self.file.read(200).strip() or "another process"
                self.file.close()
                raise DirectoryBusy(f"{directory} is in use by {other}; wait for it to finish, or pick another "
                                    "directory") from None
            if self._still_linked():
                break
            self.file.close()  # the holder released and removed it between our open and our flock: again
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{holder} (pid {os.getpid()} on {socket.gethostname()})\n")
        self.file.flush()
        atexit.register(self.release)  # also keeps the lock alive when the caller holds no reference

    def _still_linked(self):
        try:
            return os.stat(self.path).st_ino == os.fstat(self.file.fileno()).st_ino
        except FileNotFoundError:
            return False

    def release(self):
        atexit.unregister(self.release)
        if not self.file.closed:
            self.path.unlink(missing_ok=True)  # while still held: a waiter then sees it unlinked and retries
            self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
