"""One platform process per SQLite database.

SQLite serves one process well, and a platform's start-up marks every row offline: a second
platform on the same file would take the first one's live sockets offline. So a platform holds
an exclusive `flock` on `<db>.lock` for its whole life, taken before any row is touched. The
kernel drops it however the holder dies (`kill -9` included), so no stale lock is ever left;
the file holds the holder's pid, for the refusal to name it. Short writers such as
`envagent platform keys create` do not take it: SQLite's own locking covers them.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.platform.store.base import StoreError
from agent.support.files import Untrusted, UnusableFile, hold_flock, read_private


class DatabaseInUse(StoreError):
    """Another live process serves this database."""

    def __init__(self, db: Path, lock: Path, pid: int | None) -> None:
        who = f"pid {pid}" if pid else "another process"
        super().__init__(
            f"the platform database {db} is in use by {who} (lock {lock}); "
            "SQLite serves one platform process"
        )


def lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


class DatabaseLock:
    def __init__(self, db: Path) -> None:
        self.db = db
        self.path = lock_path(db)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise DatabaseInUse naming the holder (StoreError when the lock
        file cannot be used at all, a symlink included)."""
        try:
            fd = hold_flock(self.path, "the platform database's lock")
        except UnusableFile as exc:
            raise StoreError(f"cannot lock the platform database {self.db}: {exc}") from None
        if fd is None:
            raise DatabaseInUse(self.db, self.path, _holder_pid(self.path))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock. The file stays: removing it would let two processes lock two files."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def _holder_pid(path: Path) -> int | None:
    """The holder's pid, None while it has not written it yet (or the file says nothing)."""
    try:
        text = read_private(path).data[:32].decode("ascii", errors="replace").strip()
    except (OSError, Untrusted, UnusableFile):
        return None
    return int(text) if text.isascii() and text.isdigit() else None
