"""systemd's readiness protocol (sd_notify), read from a real AF_UNIX datagram socket standing
for systemd's, on a path and in the abstract namespace."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.daemon.notify import Notifier
from tests.daemon_helpers import NotifySocket


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_notifier_speaks_the_sd_notify_protocol(notify_socket: NotifySocket) -> None:
    notifier = Notifier(notify_socket.address)
    notifier.ready("started")
    assert await notify_socket.receive() == {
        "READY": "1",
        "STATUS": "started",
        "MAINPID": str(os.getpid()),
    }
    notifier.status("online")
    notifier.status("online")  # unchanged: not sent again
    notifier.watchdog()
    notifier.stopping()
    assert await notify_socket.receive() == {"STATUS": "online"}
    assert await notify_socket.receive() == {"WATCHDOG": "1"}
    assert await notify_socket.receive() == {"STOPPING": "1", "STATUS": "stopping"}
    notifier.close()


@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_notifier_without_systemd_does_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    before = sorted(os.listdir("/proc/self/fd"))
    notifier = Notifier()
    assert sorted(os.listdir("/proc/self/fd")) == before  # no socket opened
    notifier.ready("x")
    notifier.watchdog()  # nothing to send to, and no error
    notifier.close()
    assert warnings(caplog) == []


async def test_the_socket_is_the_one_notify_socket_names(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.address)
    notifier = Notifier()
    notifier.watchdog()
    assert await notify_socket.receive() == {"WATCHDOG": "1"}
    notifier.close()


async def test_a_status_sent_with_ready_is_not_sent_again(notify_socket: NotifySocket) -> None:
    notifier = Notifier(notify_socket.address)
    notifier.ready("started")
    notifier.status("started")
    notifier.status("online")
    notifier.status("started")  # a change back is a change
    assert await notify_socket.receive() == {
        "READY": "1",
        "STATUS": "started",
        "MAINPID": str(os.getpid()),
    }
    assert await notify_socket.receive() == {"STATUS": "online"}
    assert await notify_socket.receive() == {"STATUS": "started"}
    notifier.close()


async def test_a_status_cannot_add_lines_of_its_own(notify_socket: NotifySocket) -> None:
    """A status carries text from the platform (its error message): systemd splits a message
    at \\n and \\r, so a status with either must stay one line, or a platform could tell
    systemd that the daemon is ready, or that its main pid is another's."""
    notifier = Notifier(notify_socket.address)
    notifier.status("registering: HTTP 500: oops\nMAINPID=1\rREADY=1")
    assert await notify_socket.receive() == {
        "STATUS": "registering: HTTP 500: oops MAINPID=1 READY=1"
    }
    notifier.ready("started\nSTOPPING=1")
    assert await notify_socket.receive() == {
        "READY": "1",
        "STATUS": "started STOPPING=1",
        "MAINPID": str(os.getpid()),
    }
    notifier.close()


async def test_nothing_is_sent_after_close(notify_socket: NotifySocket) -> None:
    closed = Notifier(notify_socket.address)
    closed.close()
    closed.watchdog()
    closed.stopping()
    closed.close()  # twice: nothing more to do
    fence = Notifier(notify_socket.address)
    fence.status("fence")
    assert await notify_socket.receive() == {"STATUS": "fence"}  # the first datagram
    fence.close()


def nothing(folder: Path) -> str:
    return str(folder / "missing")


def a_regular_file(folder: Path) -> str:
    (folder / "file").write_text("")
    return str(folder / "file")


def an_abstract_name_nobody_bound(folder: Path) -> str:
    return f"@envagent-test-nobody-{os.getpid()}-{folder.name}"


@pytest.mark.parametrize(
    ("target", "code"),
    [
        (nothing, errno.ENOENT),
        (a_regular_file, errno.ECONNREFUSED),
        (an_abstract_name_nobody_bound, errno.ECONNREFUSED),
    ],
    ids=["nothing", "a-regular-file", "an-abstract-name-nobody-bound"],
)
def test_a_notify_socket_pointing_at_nothing_is_one_warning_naming_it_never_an_error(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    target: Callable[[Path], str],
    code: int,
) -> None:
    address = target(tmp_path)
    notifier = Notifier(address)
    notifier.ready("started")
    notifier.watchdog()
    notifier.watchdog()
    cause = f"[Errno {code}] {os.strerror(code)}"
    assert warnings(caplog) == [f"cannot notify systemd at {address}: {cause}"], (
        "once for a run of failures, not at every heartbeat"
    )
    notifier.close()


async def test_a_socket_that_appears_later_gets_what_is_sent_from_then(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """systemd's socket may be re-created (a daemon-reexec): the notifier does not give up,
    and a failure after a success is worth a warning again."""
    address = str(tmp_path / "notify")
    notifier = Notifier(address)
    notifier.status("before")  # lost, with a warning
    sink = NotifySocket(address)
    try:
        notifier.status("after")
        assert await sink.receive() == {"STATUS": "after"}
    finally:
        sink.close()
    notifier.status("gone again")
    notifier.close()
    assert len(warnings(caplog)) == 2
