"""What stops the daemon at start-up, each one line on stderr and a documented exit code, never
a traceback: a file or folder it needs and cannot use (naming the path and the cause; exit
FILES, which systemd does not restart, as starting again cannot help), and a local API port in
use (exit ERROR, which it does restart: the port may come free). Every case is a real
`envagent run`."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.support import exitcodes
from tests.daemon_helpers import DaemonProcess, Spawn, cli, kill_all, start_daemon
from tests.helpers import AS_ROOT, Platform

Setup = Callable[[Path], tuple[list[str], Path]]
"""Given the test's folder, prepares the damage; returns the daemon's arguments and the path
its one line must name."""


def state_folder(tmp_path: Path, mode: int = 0o700) -> Path:
    """The folder of the daemon `spawn` starts, made beforehand with `mode`."""
    folder = tmp_path / "daemon" / "envagent"
    folder.mkdir(parents=True)
    folder.chmod(mode)
    return folder


def log_file_in_a_missing_proc_folder(tmp_path: Path) -> tuple[list[str], Path]:
    path = Path("/proc/nope/x.log")
    return ["--log-file", str(path)], path


def log_file_symlink_in_a_shared_folder(tmp_path: Path) -> tuple[list[str], Path]:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    shared.chmod(0o1777)
    victim = tmp_path / "victim"
    victim.write_text("")
    (shared / "envagent.log").symlink_to(victim)
    return ["--log-file", str(shared / "envagent.log")], shared / "envagent.log"


def socket_in_a_missing_folder(tmp_path: Path) -> tuple[list[str], Path]:
    path = tmp_path / "missing" / "api.sock"
    return ["--local-api-socket", str(path)], path


def socket_path_taken_by_a_file(tmp_path: Path) -> tuple[list[str], Path]:
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    return ["--local-api-socket", str(path)], path


def state_file_that_is_a_folder(tmp_path: Path) -> tuple[list[str], Path]:
    path = state_folder(tmp_path) / "state.json"
    path.mkdir()
    return [], path


def token_file_that_is_a_folder(tmp_path: Path) -> tuple[list[str], Path]:
    path = state_folder(tmp_path) / "local-api-token"
    path.mkdir()
    return [], path


def state_folder_writable_by_all(tmp_path: Path) -> tuple[list[str], Path]:
    return [], state_folder(tmp_path, 0o777)


def state_folder_writable_by_its_group(tmp_path: Path) -> tuple[list[str], Path]:
    return [], state_folder(tmp_path, 0o770)


def state_folder_of_another_user(tmp_path: Path) -> tuple[list[str], Path]:
    folder = state_folder(tmp_path)
    os.chown(folder, 65534, 65534)
    return [], folder


def assert_one_line(daemon: DaemonProcess, path: Path) -> str:
    """The daemon's stderr is exactly one line, naming `path`; returns it."""
    stderr = daemon.stderr()
    assert "Traceback" not in stderr
    [line] = stderr.splitlines()
    assert line.startswith("envagent: ") and str(path) in line, line
    return line


@pytest.mark.parametrize(
    ("setup", "cause"),
    [
        (log_file_in_a_missing_proc_folder, "cannot create its folder: No such file"),
        (log_file_symlink_in_a_shared_folder, "a symlink, which is never followed"),
        (socket_in_a_missing_folder, "cannot serve the local API there: No such file"),
        (socket_path_taken_by_a_file, "it exists and is not a socket"),
        (state_file_that_is_a_folder, "is a folder, not a file: remove it"),
        (token_file_that_is_a_folder, "is a folder, not a file: remove it"),
        (state_folder_writable_by_all, "writable by others (mode 0777): run `chmod 700 "),
        (state_folder_writable_by_its_group, "writable by its group (mode 0770)"),
        pytest.param(state_folder_of_another_user, "owned by uid 65534", marks=AS_ROOT),
    ],
    ids=lambda value: value.__name__ if callable(value) else None,
)
async def test_an_unusable_file_is_one_line_and_the_files_exit_code(
    platform: Platform, spawn: Spawn, tmp_path: Path, setup: Setup, cause: str
) -> None:
    args, path = setup(tmp_path)
    before = {p: p.lstat() for p in tmp_path.rglob("*") if "daemon" not in p.parts}

    daemon = await spawn(platform.url, platform.key, *args)

    assert await daemon.wait_exit() == exitcodes.FILES
    assert cause in assert_one_line(daemon, path)
    after = {p: p.lstat() for p in tmp_path.rglob("*") if "daemon" not in p.parts}
    assert after == before  # nothing of the person's was touched, followed or chmod'ed


async def test_a_local_api_port_in_use_is_one_line_and_a_code_a_restart_may_heal(
    platform: Platform, spawn: Spawn
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = await spawn(platform.url, platform.key, "--local-api-port", str(port))
        assert await daemon.wait_exit() == exitcodes.ERROR
    stderr = daemon.stderr()
    assert "Traceback" not in stderr
    [line] = stderr.splitlines()
    assert line.startswith(f"envagent: cannot serve the local API on 127.0.0.1:{port}: ")
    assert "in use" in line and "--local-api-port" in line


async def test_an_unwritable_state_home_is_one_line(
    platform: Platform,
    spawn: Spawn,
    tmp_path: Path,
    make_unwritable: Callable[[Path], None],
) -> None:
    home = tmp_path / "daemon"
    home.mkdir()
    make_unwritable(home)
    daemon = await spawn(platform.url, platform.key)
    assert await daemon.wait_exit() == exitcodes.FILES
    assert "cannot create the folder" in assert_one_line(daemon, home / "envagent")


async def test_the_files_exit_is_0_under_launchd_which_would_restart_on_anything_else(
    platform: Platform, tmp_path: Path
) -> None:
    folder = state_folder(tmp_path, 0o777)
    env = {"LETTA_BASE_URL": platform.url, "LETTA_API_KEY": platform.key}
    started = [await start_daemon(tmp_path / "daemon", env=env | {"XPC_SERVICE_NAME": "x"})]
    try:
        assert await started[0].wait_exit() == exitcodes.OK
        first = started[0].stderr().splitlines()[0]
        assert first.startswith(f"envagent: {folder} is writable by others")
        assert [record["message"] for record in started[0].log_records()] == [
            "exit code 7 reported as 0 to launchd, which would restart on it"
        ]
    finally:
        await kill_all(started)


@pytest.mark.parametrize("command", [["status"], ["mode", "set", "standard"], ["list", "--local"]])
async def test_commands_refuse_a_state_folder_others_may_write(
    tmp_path: Path, command: list[str]
) -> None:
    folder = state_folder(tmp_path, 0o777)
    (folder / "local-api.json").write_text('{"url": "http://127.0.0.1:9", "pid": 1}')
    env = dict(os.environ) | {
        "XDG_STATE_HOME": str(folder.parent),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    code, _, err = await cli(env, *command)
    assert code == exitcodes.FILES
    assert err == (
        f"envagent: {folder} is writable by others (mode 0777): run `chmod 700 {folder}`; "
        "refusing to trust files in it\n"
    )
