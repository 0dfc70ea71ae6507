"""Starting again: which service manager runs the daemon, the exit code it is told, and the
daemon replacing itself in place (a real `exec` in a child process)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from agent import __version__
from agent.daemon.lock import InstanceLock, LockHolder
from agent.daemon.restart import service_exit_code, under_launchd, under_service_manager
from agent.support import exitcodes
from tests.helpers import WAIT_S

MANAGERS = {
    "by-hand": {},
    "systemd": {"INVOCATION_ID": "0123456789abcdef"},
    "launchd": {"XPC_SERVICE_NAME": "org.envagent"},
    "empty-values": {"INVOCATION_ID": "", "XPC_SERVICE_NAME": ""},
}

RESTART = """
import logging, os, sys
from agent.daemon.lock import InstanceLock, LockHolder
from agent.daemon.restart import restart_in_place
logging.basicConfig(level=logging.INFO, format="%(message)s")
if sys.argv[1] != "--version":  # hold a lock, as the daemon would until it re-executes
    InstanceLock(LockHolder(pid=os.getpid(), platform="http://old", device_id="d",
                            instance_id=None)).acquire()
restart_in_place()
"""
"""An old image: re-executes itself with its own arguments (`python -P -c RESTART ARGS`)."""


@pytest.fixture(params=list(MANAGERS))
def manager(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The environment a service manager (or none) gives the daemon."""
    for variable in ("INVOCATION_ID", "XPC_SERVICE_NAME"):
        monkeypatch.delenv(variable, raising=False)  # pytest itself may run under one
    name: str = request.param
    for variable, value in MANAGERS[name].items():
        monkeypatch.setenv(variable, value)
    return name


def test_the_service_manager_is_told_apart_by_its_environment(manager: str) -> None:
    assert under_launchd() is (manager == "launchd")
    assert under_service_manager() is (manager in ("systemd", "launchd"))


# Under launchd, which restarts on any code but 0, a code after which starting again cannot
# help is reported as 0; the rest (an upgrade's RESTART first of all) keep theirs.
UNDER_LAUNCHD = {
    exitcodes.OK: 0,
    exitcodes.ERROR: exitcodes.ERROR,
    exitcodes.CONFIG: 0,
    exitcodes.CREDENTIALS: 0,
    exitcodes.REPLACED: 0,
    exitcodes.ALREADY_RUNNING: 0,
    exitcodes.UPGRADE_REFUSED: exitcodes.UPGRADE_REFUSED,
    exitcodes.FILES: 0,
    exitcodes.RESTART: exitcodes.RESTART,
    exitcodes.UNAVAILABLE: exitcodes.UNAVAILABLE,
}


def test_final_codes_are_0_under_launchd_alone_and_the_log_says_so(
    manager: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "envagent")
    reported = {code: service_exit_code(code) for code in UNDER_LAUNCHD}
    if manager != "launchd":
        assert reported == {code: code for code in UNDER_LAUNCHD}
        assert caplog.records == []
        return
    assert reported == UNDER_LAUNCHD
    changed = [code for code, as_reported in UNDER_LAUNCHD.items() if as_reported != code]
    assert [record.getMessage() for record in caplog.records] == [
        f"exit code {code} reported as 0 to launchd, which would restart on it" for code in changed
    ]


async def test_restart_in_place_keeps_the_pid_and_arguments_and_no_old_lock(
    tmp_path: Path,
) -> None:
    db = tmp_path / "platform.db"
    args = ["platform", "serve", "--port", "0", "--db", str(db)]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-P", "-c", RESTART, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), WAIT_S)
        assert line.startswith(b"envagent platform listening on http://127.0.0.1:"), line
        # The same process now runs the new image: the interpreter, -P, -m agent, the arguments.
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")[:-1]
        assert [part.decode() for part in cmdline] == [sys.executable, "-P", "-m", "agent", *args]
        # The old image's lock went with it (close-on-exec): the identity is free.
        lock = InstanceLock(
            LockHolder(pid=1, platform="http://old", device_id="d", instance_id=None)
        )
        lock.acquire()
        lock.release()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    log = (await asyncio.wait_for(process.stderr.read(), WAIT_S)).decode()
    assert f"restarting in place: {sys.executable} -P -m agent {' '.join(args)}" in log


async def test_restart_in_place_never_runs_an_agent_package_of_the_current_folder(
    tmp_path: Path,
) -> None:
    """A folder holding its own `agent` (a checkout, a planted one) must not replace the
    installed daemon when it re-executes from there."""
    planted = tmp_path / "agent"
    planted.mkdir()
    (planted / "__init__.py").write_text("")
    (planted / "__main__.py").write_text("print('planted')\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-P", "-c", RESTART, "--version",
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), WAIT_S)
    assert (process.returncode, out.decode()) == (0, f"envagent {__version__}\n")
