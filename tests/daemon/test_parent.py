"""The parent watch (`--parent-pid`): a real child process stands for the parent and is killed.

Both ways of watching run: a pidfd (Linux), and the polling used where there is none, made to
run here by taking `os.pidfd_open` away, as such a system lacks it (and with a short period).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.daemon import parent
from agent.daemon.parent import ParentWatch
from tests.helpers import WAIT_S, wait_for

StartParent = Callable[[], "subprocess.Popen[bytes]"]

FOREIGN = """
import asyncio, os, sys
from agent.daemon.parent import ParentWatch
way, target = sys.argv[1], int(sys.argv[2])
if way == "poll":
    del os.pidfd_open
if os.geteuid() == 0:  # become another user than the target's
    os.setgid(65534)
    os.setuid(65534)

async def main() -> None:
    fired = []
    watch = ParentWatch(target, lambda: fired.append(target))
    for _ in range(3):
        await asyncio.sleep(0)  # loop turns: the poller has looked at the pid once
    watch.cancel()
    print("fired" if fired else "alive")

asyncio.run(main())
"""
"""Watch `target` as another user than its owner; print whether the watch fired."""


@pytest.fixture(params=["pidfd", "poll"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "poll":
        monkeypatch.delattr(os, "pidfd_open")
        monkeypatch.setattr(parent, "POLL_S", 0.01)
    way: str = request.param
    return way


@pytest.fixture
def start_parent() -> Iterator[StartParent]:
    """Start a process that runs until killed; reaped after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
        )
        started.append(child)
        return child

    yield start
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait(WAIT_S)
        assert child.stdin is not None
        child.stdin.close()


def kill(child: subprocess.Popen[bytes]) -> None:
    """Kill and reap, as a real parent is reaped by its own parent."""
    child.kill()
    child.wait(WAIT_S)


def process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (`Z`: exited, not reaped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def loop_turns(count: int = 3) -> None:
    """Let the loop run what is ready: a reader whose descriptor is readable, a poller's step."""
    for _ in range(count):
        await asyncio.sleep(0)


def pidfds() -> set[int]:
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[pidfd]":
                found.add(int(name))
        except FileNotFoundError:  # the listing's own descriptor, closed since
            pass
    return found


async def until_called(calls: list[int]) -> None:
    async def seen() -> int:
        return len(calls)

    await wait_for(seen, bool)


async def test_the_watch_fires_once_when_the_parent_is_killed(
    way: str, start_parent: StartParent
) -> None:
    child = start_parent()
    exits: list[int] = []
    before = pidfds()
    watch = ParentWatch(child.pid, lambda: exits.append(child.pid))
    assert len(pidfds() - before) == (1 if way == "pidfd" else 0)
    await loop_turns()
    assert exits == []  # alive

    kill(child)
    await until_called(exits)
    await loop_turns()  # a pidfd left watched would be readable, and fire, at every turn
    assert exits == [child.pid]
    assert pidfds() == before  # closed once it fired
    watch.cancel()  # after firing: nothing left to undo
    assert exits == [child.pid]


async def test_a_parent_that_exited_but_is_not_reaped_is_gone(
    way: str, start_parent: StartParent
) -> None:
    """A zombie still has its pid (`kill(pid, 0)` finds it), but the parent is gone: its own
    parent may take its time to reap it, and the daemon must not wait for that."""
    child = start_parent()
    child.kill()  # and not reaped until the fixture's end

    async def state() -> str:
        return process_state(child.pid)

    await wait_for(state, lambda letter: letter == "Z")
    exits: list[int] = []
    ParentWatch(child.pid, lambda: exits.append(child.pid))
    await until_called(exits)
    assert exits == [child.pid]


async def test_a_parent_gone_before_the_watch_is_reported_at_once(
    way: str, start_parent: StartParent
) -> None:
    child = start_parent()
    kill(child)
    exits: list[int] = []
    before = pidfds()
    ParentWatch(child.pid, lambda: exits.append(child.pid))
    await until_called(exits)
    await loop_turns()
    assert exits == [child.pid]
    assert pidfds() == before


async def test_a_cancelled_watch_never_fires(way: str, start_parent: StartParent) -> None:
    child = start_parent()
    cancelled: list[int] = []
    witness: list[int] = []
    before = pidfds()
    watch = ParentWatch(child.pid, lambda: cancelled.append(child.pid))
    ParentWatch(child.pid, lambda: witness.append(child.pid))
    watch.cancel()
    assert len(pidfds() - before) == (1 if way == "pidfd" else 0)  # the witness's alone
    watch.cancel()  # twice: nothing more to do
    kill(child)
    await until_called(witness)
    await loop_turns()
    assert cancelled == []


async def test_a_watch_cancelled_before_a_gone_parent_is_reported_never_fires(
    way: str, start_parent: StartParent
) -> None:
    """A watch of a pid already gone reports it on the next loop turn; cancelled before that
    turn, it reports nothing, as a cancelled watch of a live parent."""
    child = start_parent()
    kill(child)
    cancelled: list[int] = []
    witness: list[int] = []
    ParentWatch(child.pid, lambda: cancelled.append(child.pid)).cancel()
    ParentWatch(child.pid, lambda: witness.append(child.pid))
    await until_called(witness)  # the cancelled one would have been called first
    await loop_turns()
    assert cancelled == []


async def test_a_live_process_of_another_user_counts_as_alive(way: str) -> None:
    """Checking a pid of another user's is refused (EPERM): that process is alive."""
    if os.geteuid() == 0:
        target = os.getpid()  # ours, root's; the watcher becomes nobody
    elif os.stat("/proc/1").st_uid != os.geteuid():
        target = 1
    else:
        pytest.skip("not root, and no process of another user to watch")
    watcher = await asyncio.create_subprocess_exec(
        sys.executable, "-c", FOREIGN, way, str(target), stdout=subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(watcher.communicate(), WAIT_S)
    assert (watcher.returncode, out) == (0, b"alive\n")
