"""The instance lock: one live daemon per identity (platform, device, listener instance), a
holder file that names it, and a lock no dead process keeps. Real files in the test's state
folder and real processes holding the lock."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from agent.daemon.lock import AlreadyRunning, InstanceLock, LockHolder, lock_path, read_holder
from agent.support.files import UnusableFile
from agent.support.paths import state_dir
from tests.helpers import AS_ROOT, NOBODY, WAIT_S, mode_of, wait_for

LOCAL_API = "http://127.0.0.1:4321"

HOLD = """
import os, sys
from agent.daemon.lock import InstanceLock, LockHolder
lock = InstanceLock(LockHolder(pid=os.getpid(), platform=sys.argv[1], device_id="d",
                               instance_id=None))
lock.acquire()
lock.set_local_api(sys.argv[2])
sys.stdin.read()  # hold the lock until stdin closes, or until killed
"""
"""A daemon reduced to its lock: takes it, records its local API, holds it."""


HoldInChild = Callable[[str], Awaitable[asyncio.subprocess.Process]]


def holder(
    pid: int | None = None,
    platform: str = "http://p",
    device_id: str = "d",
    instance_id: str | None = None,
    local_api: str | None = None,
) -> LockHolder:
    """This process's holder unless `pid` says otherwise."""
    return LockHolder(
        pid=pid or os.getpid(),
        platform=platform,
        device_id=device_id,
        instance_id=instance_id,
        local_api=local_api,
    )


@pytest.fixture
async def hold_in_child() -> AsyncIterator[HoldInChild]:
    """Start a process holding the lock of `platform`; killed after the test if still alive."""
    children: list[asyncio.subprocess.Process] = []

    async def start(platform: str) -> asyncio.subprocess.Process:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HOLD, platform, LOCAL_API, stdin=subprocess.PIPE
        )
        children.append(child)

        async def held() -> LockHolder | None:
            return read_holder(lock_path(platform, "d", None))

        await wait_for(held, lambda found: found is not None and found.pid == child.pid)
        return child

    yield start
    for child in children:
        if child.returncode is None:
            child.kill()
        await asyncio.wait_for(child.wait(), WAIT_S)


def test_the_lock_is_a_private_file_naming_its_holder_and_emptied_on_release() -> None:
    lock = InstanceLock(holder())
    lock.acquire()
    assert lock.path.parent == state_dir() / "locks"
    assert mode_of(lock.path.parent) == 0o700 and mode_of(lock.path) == 0o600
    assert read_holder(lock.path) == holder()
    lock.set_local_api(LOCAL_API)
    assert read_holder(lock.path) == holder(local_api=LOCAL_API)
    lock.release()
    # The file stays (a new one would be a second lock) but names no one.
    assert lock.path.read_bytes() == b"" and read_holder(lock.path) is None
    lock.release()  # twice: nothing more to do


def test_a_second_lock_on_the_identity_is_refused_naming_the_holder_and_its_api() -> None:
    first = InstanceLock(holder())
    first.acquire()
    first.set_local_api(LOCAL_API)
    second = InstanceLock(holder(pid=1))
    # flock is per open file: a second open in the same process is refused like another process
    with pytest.raises(AlreadyRunning) as raised:
        second.acquire()
    assert raised.value.holder == holder(local_api=LOCAL_API)
    assert str(raised.value) == (
        f"another envagent (pid {os.getpid()}, local API {LOCAL_API}) already serves this "
        f"identity; lock {first.path}"
    )
    assert read_holder(first.path) == holder(local_api=LOCAL_API)  # the refused one wrote nothing
    first.release()
    second.acquire()
    assert read_holder(second.path) == holder(pid=1)
    second.release()


def test_a_holder_that_has_not_written_yet_is_another_process() -> None:
    """Between taking the lock and writing the file, or when the file was damaged: the
    refusal still says why, without a pid."""
    first = InstanceLock(holder())
    first.acquire()
    first.path.write_bytes(b"")
    with pytest.raises(AlreadyRunning) as raised:
        InstanceLock(holder()).acquire()
    assert raised.value.holder is None
    assert str(raised.value) == (
        f"another envagent (another process) already serves this identity; lock {first.path}"
    )
    first.path.write_bytes(holder().model_dump_json().encode())
    with pytest.raises(AlreadyRunning, match=rf"^another envagent \(pid {os.getpid()}\) already"):
        InstanceLock(holder()).acquire()
    first.release()


@pytest.mark.parametrize(
    "other",
    [
        holder(platform="http://other"),
        holder(device_id="other"),
        holder(instance_id="second"),
    ],
    ids=["platform", "device", "instance"],
)
def test_each_part_of_the_identity_is_a_lock_of_its_own(other: LockHolder) -> None:
    first, second = InstanceLock(holder()), InstanceLock(other)
    assert second.path != first.path
    first.acquire()
    second.acquire()  # not refused
    assert read_holder(second.path) == other
    first.release()
    second.release()


async def test_a_live_holder_in_another_process_is_named_and_kill_9_frees_its_lock(
    hold_in_child: HoldInChild,
) -> None:
    child = await hold_in_child("http://p")
    lock = InstanceLock(holder())
    with pytest.raises(AlreadyRunning) as raised:
        lock.acquire()
    assert raised.value.holder == holder(pid=child.pid, local_api=LOCAL_API)
    assert f"(pid {child.pid}, local API {LOCAL_API})" in str(raised.value)

    child.send_signal(signal.SIGKILL)
    assert await asyncio.wait_for(child.wait(), WAIT_S) == -signal.SIGKILL
    # The dead holder's file still names it: only the flock says who is alive.
    assert read_holder(lock.path) == holder(pid=child.pid, local_api=LOCAL_API)
    lock.acquire()
    assert read_holder(lock.path) == holder()
    lock.release()


def test_a_planted_holder_file_with_no_live_holder_is_taken_over() -> None:
    path = lock_path("http://p", "d", None)
    path.parent.mkdir(parents=True)
    planted = holder(pid=1, local_api="http://127.0.0.1:1").model_dump_json()
    path.write_text(planted + " " * 500 + "trailing junk")
    path.chmod(0o644)
    lock = InstanceLock(holder())
    lock.acquire()
    assert read_holder(path) == holder()  # rewritten whole: nothing of the old file is left
    assert path.read_bytes() == holder().model_dump_json().encode()
    assert mode_of(path) == 0o600
    lock.release()


async def test_the_lock_is_not_inherited_by_a_child_that_outlives_the_daemon() -> None:
    """A command the daemon runs (git, an upgrade) may outlive it; the lock must not."""
    lock = InstanceLock(holder())
    lock.acquire()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; print('running', flush=True); sys.stdin.read()",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        close_fds=False,  # every inheritable descriptor goes along
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    try:
        # Running: its exec is complete, and with it the closing of close-on-exec descriptors.
        assert await asyncio.wait_for(child.stdout.readline(), WAIT_S) == b"running\n"
        lock.release()
        again = InstanceLock(holder())
        again.acquire()  # refused if the child had a copy of the locked descriptor
        again.release()
    finally:
        child.stdin.close()
        assert await asyncio.wait_for(child.wait(), WAIT_S) == 0


def make_fifo(path: Path) -> str:
    os.mkfifo(path, 0o600)
    return "cannot use it as a lock file: not a regular file"


def make_folder(path: Path) -> str:
    path.mkdir()
    return "cannot open a lock file: Is a directory"


def make_symlink(path: Path) -> str:
    target = path.parent / "precious"
    target.write_text("keep me")
    target.chmod(0o644)
    path.symlink_to(target)
    return "cannot use it as a lock file: a symlink, which is never followed"


def give_to_nobody(path: Path) -> str:
    path.write_text(holder(pid=1).model_dump_json())
    os.chown(path, NOBODY, NOBODY)
    return f"cannot use it as a lock file: owned by uid {NOBODY}, not by this user"


@pytest.mark.parametrize(
    "damage",
    [make_fifo, make_folder, make_symlink, pytest.param(give_to_nobody, marks=AS_ROOT)],
    ids=lambda damage: damage.__name__,
)
def test_a_lock_path_that_is_not_our_private_file_is_one_line_and_left_alone(
    damage: Callable[[Path], str],
) -> None:
    path = lock_path("http://p", "d", None)
    path.parent.mkdir(parents=True)
    cause = damage(path)
    before = {p: p.lstat() for p in path.parent.iterdir()}
    with pytest.raises(UnusableFile) as raised:
        InstanceLock(holder()).acquire()
    assert str(raised.value) == f"{path}: {cause}"
    assert {p: p.lstat() for p in path.parent.iterdir()} == before  # not replaced nor chmod'ed
    assert read_holder(path) is None  # nor trusted to say who holds it


@pytest.mark.parametrize(
    "content",
    [b'{"pid": "one", "platform": "http://p", "device_id": "d", "instance_id": null}', b"{}"],
    ids=["wrong-type", "missing-fields"],
)
def test_a_holder_file_of_the_wrong_shape_names_no_one(content: bytes) -> None:
    path = lock_path("http://p", "d", None)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert read_holder(path) is None


@pytest.mark.parametrize(
    "content", [b"[" * 3000 + b"]" * 3000, b'{"pid": ' * 3000, b"\xff\xfe"], ids=str
)
def test_a_damaged_lock_holder_reads_as_unknown(content: bytes) -> None:
    path = lock_path("http://p", "d", None)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert read_holder(path) is None
