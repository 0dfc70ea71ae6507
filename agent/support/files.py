"""Private files: written whole, readable by this user only, never reached through a symlink.

The state folder is what makes its files trustworthy: only this user can change it (ssh checks
~/.ssh the same way), so nothing in it can have been planted by another. Within it, a file that
is not what envagent writes (a symlink, a fifo, another user's) is replaced or refused, never
followed, read as ours or chmod'ed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from dataclasses import dataclass
from pathlib import Path

_NO_FOLLOW = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
"""Open flags for a private file: a symlink fails (ELOOP) and a fifo does not block the open."""


class UnusableFile(Exception):
    """A file or folder envagent needs cannot be used as it is. The message is the one line to
    print: the path, the cause and, where there is one, the fix."""


class Untrusted(Exception):
    """A private file is not one envagent wrote (a symlink, a fifo, another user's): it is
    replaced, never read. The message says what it is."""


@dataclass(frozen=True)
class PrivateFile:
    data: bytes
    mode: int
    """The mode it had; it is 0600 now."""


def unusable(path: Path, action: str, exc: OSError) -> UnusableFile:
    """The one line for an OSError on `path`: what was being done and why it failed."""
    return UnusableFile(f"{path}: {action}: {exc.strerror or exc}")


def private_dir(path: Path, *, create: bool = True) -> None:
    """Check that only this user can change the folder `path`, creating it 0700 if `create`.

    A folder others may read is tightened to 0700; one that others may write, or that another
    user owns, is refused (UnusableFile), since any file in it may have been planted. A missing
    folder that is not to be created passes: there is nothing in it to trust.
    """
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise unusable(path, "cannot create the folder", exc) from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENOENT and not create:
            return
        raise unusable(path, "cannot open the folder", exc) from None
    try:
        _check_private_dir(path, fd)
    finally:
        os.close(fd)


def _check_private_dir(path: Path, fd: int) -> None:
    """The checks of `private_dir`, on the open folder so that a swapped path changes nothing."""
    info = os.fstat(fd)
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid != os.geteuid():
        raise UnusableFile(
            f"{path} is owned by uid {info.st_uid}, not by this user (uid {os.geteuid()}): "
            f"run `sudo chown {os.geteuid()} {_quoted(path)}` or use another XDG_STATE_HOME; "
            "refusing to trust files in it"
        )
    if mode & 0o022:
        who = "others" if mode & 0o002 else "its group"
        raise UnusableFile(
            f"{path} is writable by {who} (mode {mode:04o}): run `chmod 700 {_quoted(path)}`; "
            "refusing to trust files in it"
        )
    if mode & 0o077:
        os.fchmod(fd, 0o700)
        import logging  # the commands that only read files load no logging

        logging.getLogger("envagent").info("%s was mode %04o; made it 0700", path, mode)


def _quoted(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


def _open_checked(path: Path, flags: int) -> tuple[int, int]:
    """`path` opened with `flags` without following a symlink, checked to be a file envagent
    could have written, and made 0600 through the descriptor (so that a path swapped after the
    check changes nothing). Returns the descriptor and the mode the file had.

    Raises Untrusted for a symlink, a fifo or another user's file, UnusableFile for a folder
    (which no file can replace), OSError for the rest (FileNotFoundError included).
    """
    try:
        fd = os.open(path, flags | _NO_FOLLOW, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Untrusted("a symlink, which is never followed") from None
        raise
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise UnusableFile(f"{path} is a folder, not a file: remove it")
        if not stat.S_ISREG(info.st_mode):
            raise Untrusted("not a regular file")
        if info.st_uid != os.geteuid():
            raise Untrusted(f"owned by uid {info.st_uid}, not by this user")
        mode = stat.S_IMODE(info.st_mode)
        if mode != 0o600:
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd, mode


def read_private(path: Path) -> PrivateFile:
    """Read a private file (see `_open_checked` for what it raises), leaving it 0600."""
    fd, mode = _open_checked(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as handle:
        return PrivateFile(handle.read(), mode)


def open_private(path: Path, flags: int, what: str) -> int:
    """A descriptor on `path` opened with `flags`, created 0600 if missing, made 0600 if not.

    Anything but a private file is refused (UnusableFile): a log or lock file is for a person to
    look at, not for the daemon to replace.
    """
    try:
        fd, _ = _open_checked(path, flags | os.O_CREAT)
    except Untrusted as exc:
        raise UnusableFile(f"{path}: cannot use it as {what}: {exc}") from None
    except OSError as exc:
        raise unusable(path, f"cannot open {what}", exc) from None
    return fd


def hold_flock(path: Path, what: str) -> int | None:
    """An exclusive `flock` on the private file `path`: its descriptor (keep it open to hold the
    lock), or None while another process holds it. The kernel drops the lock however its holder
    dies, so no stale lock outlives a `kill -9`. UnusableFile when the file cannot be used.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise unusable(path.parent, "cannot create the folder", exc) from None
    fd = open_private(path, os.O_RDWR, what)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically with mode 0600, creating the folder (0700) if needed.

    The new file is renamed over the old name, so a symlink there is replaced, not followed."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    import tempfile  # writers only: the commands that read files do without it

    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def save_private(path: Path, data: bytes, what: str) -> None:
    """`write_private` for the daemon's own files: a failure is the one-line UnusableFile."""
    try:
        write_private(path, data)
    except OSError as exc:
        raise unusable(path, f"cannot write {what}", exc) from None
