"""One platform process per SQLite database (agent/platform/dblock.py): an exclusive `flock` on
`<db>.lock`, naming its holder, dropped by the kernel however the holder dies, and never taken
through a file someone else planted."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.platform.dblock import DatabaseInUse, DatabaseLock, lock_path
from agent.platform.server import PlatformServer
from agent.platform.settings import PlatformSettings
from agent.platform.store.base import StoreError
from tests.helpers import WAIT_S

HOLD = (
    "import sys; from pathlib import Path; from agent.platform.dblock import DatabaseLock; "
    "DatabaseLock(Path(sys.argv[1])).acquire(); print('held', flush=True); sys.stdin.read()"
)
"""A process that takes the lock and keeps it until it is killed."""


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "platform.db"


@pytest.fixture
async def holder(db: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLD, str(db), stdin=-1, stdout=-1
    )
    try:
        assert process.stdout is not None
        assert await asyncio.wait_for(process.stdout.readline(), WAIT_S) == b"held\n"
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await asyncio.wait_for(process.wait(), WAIT_S)


def refusal(db: Path, who: str) -> str:
    return (
        f"the platform database {db} is in use by {who} (lock {lock_path(db)}); "
        "SQLite serves one platform process"
    )


async def test_a_live_holder_is_named_and_its_lock_outlives_no_kill_9(
    db: Path, holder: asyncio.subprocess.Process
) -> None:
    lock = lock_path(db)
    assert lock == db.with_name("platform.db.lock")
    assert lock.read_text() == f"{holder.pid}\n"
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    with pytest.raises(DatabaseInUse) as refused:
        DatabaseLock(db).acquire()
    assert str(refused.value) == refusal(db, f"pid {holder.pid}")
    assert lock.read_text() == f"{holder.pid}\n"  # the refused one wrote nothing

    holder.send_signal(signal.SIGKILL)
    await asyncio.wait_for(holder.wait(), WAIT_S)
    taken = DatabaseLock(db)
    taken.acquire()  # no stale lock: the kernel dropped it with the process
    assert lock.read_text() == f"{os.getpid()}\n"
    taken.release()
    assert lock.exists() and lock.read_text() == ""  # kept: a new file would be a second lock


def test_the_lock_is_one_holder_s_even_within_a_process(db: Path) -> None:
    first, second = DatabaseLock(db), DatabaseLock(db)
    first.acquire()
    with pytest.raises(DatabaseInUse, match=f"in use by pid {os.getpid()} "):
        second.acquire()
    first.release()
    first.release()  # twice is harmless
    second.acquire()
    second.release()


@pytest.mark.parametrize("content", [b"", b"not a pid\n", b"-12\n", b"\xff\xfe", b"0\n"])
def test_a_holder_whose_file_names_no_pid_is_another_process(db: Path, content: bytes) -> None:
    """Between taking the lock and writing its pid, a holder's file says nothing yet."""
    held = DatabaseLock(db)
    held.acquire()
    try:
        lock_path(db).write_bytes(content)
        with pytest.raises(DatabaseInUse) as refused:
            DatabaseLock(db).acquire()
        assert str(refused.value) == refusal(db, "another process")
    finally:
        held.release()


async def test_a_lock_file_that_is_a_symlink_is_refused_before_the_database_is_touched(
    db: Path, tmp_path: Path
) -> None:
    """The lock is taken first: a refused one leaves no database behind."""
    target = tmp_path / "elsewhere"
    target.write_text("keep me")
    lock_path(db).symlink_to(target)
    server = PlatformServer(PlatformSettings(db=db, port=0))
    with pytest.raises(StoreError) as refused:
        await server.start()
    assert str(refused.value) == (
        f"cannot lock the platform database {db}: {lock_path(db)}: cannot use it as the "
        "platform database's lock: a symlink, which is never followed"
    )
    assert not db.exists()
    assert target.read_text() == "keep me"


def test_a_folder_in_place_of_the_lock_is_one_line(db: Path) -> None:
    lock_path(db).mkdir(parents=True)
    with pytest.raises(StoreError) as refused:
        DatabaseLock(db).acquire()
    assert str(refused.value) == (
        f"cannot lock the platform database {db}: {lock_path(db)}: cannot open the platform "
        "database's lock: Is a directory"
    )
