"""One daemon per identity (platform URL, deviceId, listener instance id).

The lock is an `flock` on a file in the state dir: the kernel drops it when the process dies,
however it dies, so a lock left by `kill -9` is simply taken by the next start. The file says
who holds it, so that a second start can name the pid and (for `--attach`) the local API.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ValidationError

from agent.support.files import Untrusted, UnusableFile, hold_flock, read_private
from agent.support.paths import state_dir

EMBEDDED = "embedded"
"""The platform identity of the embedded reference platform, whose port changes every run."""


class LockHolder(BaseModel):
    pid: int
    platform: str
    device_id: str
    instance_id: str | None
    local_api: str | None = None


@dataclass
class AlreadyRunning(Exception):
    """Another live process holds this identity."""

    path: Path
    holder: LockHolder | None

    def __str__(self) -> str:
        who = f"pid {self.holder.pid}" if self.holder else "another process"
        api = self.holder.local_api if self.holder else None
        where = f", local API {api}" if api else ""
        return f"another envagent ({who}{where}) already serves this identity; lock {self.path}"


def lock_path(platform: str, device_id: str, instance_id: str | None) -> Path:
    identity = "\0".join((platform, device_id, instance_id or ""))
    return state_dir() / "locks" / f"{hashlib.sha256(identity.encode()).hexdigest()[:24]}.lock"


def read_holder(path: Path) -> LockHolder | None:
    """Who holds the lock, as its file says; None when it says nothing usable."""
    try:
        return LockHolder.model_validate_json(read_private(path).data)
    except (OSError, Untrusted, UnusableFile, ValidationError):
        return None


class InstanceLock:
    def __init__(self, holder: LockHolder) -> None:
        self.holder = holder
        self.path = lock_path(holder.platform, holder.device_id, holder.instance_id)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise AlreadyRunning naming who has it; UnusableFile when the lock
        file is not a private file (a symlink, say)."""
        fd = hold_flock(self.path, "a lock file")
        if fd is None:
            raise AlreadyRunning(self.path, read_holder(self.path))
        self._fd = fd
        self._write()

    def set_local_api(self, url: str) -> None:
        self.holder = self.holder.model_copy(update={"local_api": url})
        self._write()

    def _write(self) -> None:
        assert self._fd is not None, "write only while holding the lock"
        data = self.holder.model_dump_json().encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None
