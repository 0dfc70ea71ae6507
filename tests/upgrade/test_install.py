"""`envagent upgrade` and the platform's `upgrade` command, for real: throwaway venvs holding this
project's wheel are upgraded to a bumped build of it from a local wheel folder, by the venv's own
pip, and the daemon restarts into it.

The venvs are made by uv (with pip seeded, so that they are plain pip venvs) and take their
dependencies from uv's cache or index, which is what keeps this file fast. Every upgrade runs
with `--no-index --find-links`, and the bumped version carries a local label (`+…`), which PyPI
refuses: nothing of this project is looked up anywhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import shlex
import shutil
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from uv import find_uv_bin

from agent import __version__
from agent.daemon.commands import Commands
from agent.daemon.config import Settings
from agent.machine.selfupdate import detect_self_update
from agent.protocol.models import DaemonStatus, ExecuteCommandFrame, Metadata
from agent.support import exitcodes
from agent.upgrade.install import LOCK_FILE, Outcome, Result
from tests.conftest import StartPlatform
from tests.daemon_helpers import DaemonProcess, Spawn, collect_lines, kill_all, online
from tests.helpers import WAIT_S, Platform, wait_for
from tests.install_helpers import ENVIRON, INSTALL_TIMEOUT_S, PROJECT, run

NEW_VERSION = "99.0.0+upgrade.test"
BROKEN_VERSION = "99.0.1+broken.test"
UV = [sys.executable, "-m", "uv"]
UV_ENV = {"UV_PYTHON_DOWNLOADS": "never"}
CLI_TIMEOUT_S = 120.0

# The wheels are built when the first test needs them, within its timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(INSTALL_TIMEOUT_S)]


@dataclass(frozen=True)
class Wheels:
    old: Path
    """This project's wheel as it is."""
    good: Path
    """A folder with the old wheel and a bumped one."""
    broken: Path
    """A folder with the old wheel and a bumped one that fails to start."""


def build(source: Path, out: Path, version: str | None, broken: bool = False) -> None:
    """Build the wheel of a copy of `source`, with `__version__` changed when `version` is set."""
    if version is not None:
        init = source / "agent" / "__init__.py"
        text = init.read_text().replace(f'"{__version__}"', f'"{version}"')
        if broken:
            text += 'raise RuntimeError("this build is broken on purpose")\n'
        init.write_text(text)
    uv_env = UV_ENV | {"TMPDIR": str(source.parent)}  # uv leaves a lock file in TMPDIR
    run(
        [*UV, "build", "--quiet", "--wheel", "--out-dir", out, source],
        uv_env,
        out,
        INSTALL_TIMEOUT_S,
    )


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Wheels:
    """Three builds from copies of this project's files (git's tracked and untracked ones, less
    the ignored), so that no build/ or egg-info is left in the project."""
    listed = run(
        ["git", "-C", PROJECT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    )
    names = [name for name in listed.stdout.split("\0") if name and (PROJECT / name).is_file()]
    builds = {"old": None, "new": NEW_VERSION, "broken": BROKEN_VERSION}
    root = tmp_path_factory.mktemp("wheels")
    for build_name in builds:
        for name in names:
            (root / build_name / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT / name, root / build_name / "src" / name)
        (root / build_name / "dist").mkdir()
    with ThreadPoolExecutor(len(builds)) as pool:
        done = [
            pool.submit(build, root / name / "src", root / name / "dist", version, name == "broken")
            for name, version in builds.items()
        ]
        for future in done:
            future.result()
    (old,) = (root / "old" / "dist").glob("envagent-*.whl")
    (new,) = (root / "new" / "dist").glob("envagent-*.whl")
    (broken,) = (root / "broken" / "dist").glob("envagent-*.whl")
    for folder, bumped in ((root / "good", new), (root / "bad", broken)):
        folder.mkdir()
        shutil.copy2(old, folder)
        shutil.copy2(bumped, folder)
    return Wheels(old, root / "good", root / "bad")


def make_venv(wheel: Path, root: Path) -> Path:
    """A plain venv with pip, holding `wheel` and its dependencies."""
    venv = root / "venv"
    run([*UV, "venv", "--quiet", "--seed", "--python", sys.executable, venv], UV_ENV, root)
    python = venv / "bin" / "python"
    run(
        [*UV, "pip", "install", "--quiet", "--python", python, wheel],
        UV_ENV,
        root,
        INSTALL_TIMEOUT_S,
    )
    return venv.resolve()


def cli_env(tmp_path: Path) -> dict[str, str]:
    """This machine's environment (pip's configuration included), with the test's own XDG
    folders and no envagent or Letta settings."""
    environ = {
        name: value
        for name, value in ENVIRON.items()
        if not name.startswith(("ENVAGENT_", "LETTA_", "XDG_"))
    }
    return environ | {
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
    }


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str


async def envagent(command: list[str | Path], env: dict[str, str], cwd: Path) -> Ran:
    """Run an envagent command line to its end (bounded), without blocking the event loop."""
    process = await asyncio.create_subprocess_exec(
        *map(str, command), stdin=-3, stdout=-1, stderr=-1, env=env, cwd=cwd
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


async def installed_version(venv: Path, env: dict[str, str]) -> str:
    ran = await envagent([venv / "bin" / "envagent", "--version"], env, venv)
    assert ran.code == 0, ran.err
    return ran.out.removeprefix("envagent ").strip()


@contextlib.contextmanager
def lock_held(venv: Path) -> Iterator[None]:
    """Stand for an upgrade already running in `venv`."""
    with (venv / LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


StartVenvDaemon = Callable[..., Awaitable[DaemonProcess]]


@pytest.fixture
async def venv_daemons() -> AsyncIterator[StartVenvDaemon]:
    """Start `<venv>/bin/envagent run` with `env`, as tests/daemon_helpers.start_daemon starts
    this interpreter's; every one is killed after the test."""
    started: list[DaemonProcess] = []

    async def start(venv: Path, env: dict[str, str], cwd: Path, *args: str) -> DaemonProcess:
        process = await asyncio.create_subprocess_exec(
            str(venv / "bin" / "envagent"), "run", *args,
            stdin=-3, stdout=-1, stderr=-1, env=env | {"PYTHONUNBUFFERED": "1"}, cwd=cwd,
        )  # fmt: skip
        daemon = DaemonProcess(process, env, Path(env["XDG_STATE_HOME"]))
        daemon._readers = [
            asyncio.create_task(collect_lines(process.stdout, daemon.stdout_lines)),
            asyncio.create_task(collect_lines(process.stderr, daemon.stderr_lines)),
        ]
        started.append(daemon)
        return daemon

    yield start
    await kill_all(started)


# --- envagent upgrade ------------------------------------------------------------------------


async def test_cli_upgrades_its_own_venv(
    wheels: Wheels,
    tmp_path: Path,
    venv_daemons: StartVenvDaemon,
    make_unwritable: Callable[[Path], None],
) -> None:
    venv = await asyncio.to_thread(make_venv, wheels.old, tmp_path)
    env = cli_env(tmp_path)
    upgrade = [venv / "bin" / "envagent", "upgrade", "--find-links", wheels.good]

    dry = await envagent([*upgrade, "--dry-run"], env, tmp_path)
    python = venv / "bin" / "python"
    assert (dry.code, dry.err) == (0, "")
    assert dry.out.splitlines() == [
        f"would run:  {python} -m pip install --no-index --find-links {wheels.good} "
        "--upgrade envagent",
        f"then check: {python} -m agent --version",
    ]
    with lock_held(venv):
        busy = await envagent(upgrade, env, tmp_path)
    assert (busy.code, busy.out) == (exitcodes.UPGRADE_REFUSED, "")
    assert busy.err == f"envagent: another upgrade of {venv} is running\n"

    # A daemon started from this venv (with its embedded platform) runs the old code after.
    daemon = await venv_daemons(venv, env, tmp_path)
    await daemon.wait_status(lambda status: status["state"] == "online")
    done = await envagent(upgrade, env, tmp_path)
    assert (done.code, done.err) == (0, "")
    assert done.out.splitlines() == [
        f"upgraded envagent {__version__} → {NEW_VERSION}",
        f"the running daemon (pid {daemon.process.pid}) still runs {__version__} from this "
        "install: restart it to run the new version (restart its service, or stop it and start "
        "`envagent run`)",
    ]
    assert await installed_version(venv, env) == NEW_VERSION

    again = await envagent(upgrade, env, tmp_path)
    assert (again.code, again.out, again.err) == (
        0,
        f"envagent {NEW_VERSION} is already up to date\n",
        "",
    )

    make_unwritable(venv)
    locked = await envagent(upgrade, env, tmp_path)
    assert (locked.code, locked.out) == (exitcodes.UPGRADE_REFUSED, "")
    assert locked.err == (
        f"envagent: this install does not upgrade itself. {venv} is not writable by this user. "
        f"Upgrade it with: {python} -m pip install -U envagent\n"
    )


async def test_a_new_version_that_does_not_start_is_not_kept_running(
    wheels: Wheels, tmp_path: Path
) -> None:
    """The new files are in place but fail at import: the message says so and how to go back,
    and that command does put the old version back."""
    venv = await asyncio.to_thread(make_venv, wheels.old, tmp_path)
    env = cli_env(tmp_path)
    failed = await envagent(
        [venv / "bin" / "envagent", "upgrade", "--find-links", wheels.broken], env, tmp_path
    )
    python = venv / "bin" / "python"
    rollback = (
        f"{python} -m pip install --no-index --find-links {wheels.broken} envagent=={__version__}"
    )
    assert (failed.code, failed.out) == (exitcodes.ERROR, "")
    assert failed.err.startswith(
        f"envagent: {venv} now holds the new release, but it does not start: "
        f"`{python} -m agent --version` exited 1: "
    )
    assert "RuntimeError: this build is broken on purpose" in failed.err
    assert failed.err.endswith(
        f"This process keeps running {__version__} and does not restart; to go back: `{rollback}`\n"
    )
    assert len(failed.err.splitlines()) == 1
    await asyncio.to_thread(run, shlex.split(rollback), None, tmp_path)
    assert await installed_version(venv, env) == __version__


async def test_a_uv_tool_upgrades_with_uv(wheels: Wheels, tmp_path: Path) -> None:
    """A uv tool's venv has no pip: uv, when it is on PATH, installs instead."""
    env = cli_env(tmp_path)
    tools, bin_dir = tmp_path / "tools", tmp_path / "bin"
    install = [*UV, "tool", "install", "--quiet", "--python", sys.executable, wheels.old]
    where = {"UV_TOOL_DIR": str(tools), "UV_TOOL_BIN_DIR": str(bin_dir)}
    await asyncio.to_thread(run, install, env | UV_ENV | where, tmp_path, INSTALL_TIMEOUT_S)
    tool = (tools / "envagent").resolve()
    upgrade = [bin_dir / "envagent", "upgrade", "--find-links", wheels.good]

    without_uv = await envagent(upgrade, env | {"PATH": str(bin_dir)}, tmp_path)
    assert (without_uv.code, without_uv.out) == (exitcodes.UPGRADE_REFUSED, "")
    assert without_uv.err == (
        f"envagent: {tool} has no pip and there is no uv on PATH to install with. "
        "Upgrade it with: uv tool upgrade envagent\n"
    )
    with_uv = await envagent(upgrade, env | {"PATH": str(Path(find_uv_bin()).parent)}, tmp_path)
    assert (with_uv.code, with_uv.out, with_uv.err) == (
        0,
        f"upgraded envagent {__version__} → {NEW_VERSION}\n",
        "",
    )
    assert await installed_version(tool, env) == NEW_VERSION


async def test_an_editable_install_refuses_and_changes_nothing(tmp_path: Path) -> None:
    """The project's own venv: an editable install is its owner's, updated with git."""
    if detect_self_update().supported:
        pytest.skip("the tests do not run from an editable install of this project")
    dist_info = next(Path(sys.prefix).glob("lib/python3*/site-packages/envagent-*.dist-info"))
    before = sorted((path.name, path.stat().st_mtime_ns) for path in dist_info.iterdir())
    empty = tmp_path / "wheels"
    empty.mkdir()  # even a broken refusal could install nothing from here
    for extra in ([], ["--dry-run"]):
        refused = await envagent(
            [sys.executable, "-m", "agent", "upgrade", "--find-links", empty, *extra],
            cli_env(tmp_path),
            tmp_path,
        )
        assert (refused.code, refused.out) == (exitcodes.UPGRADE_REFUSED, "")
        assert refused.err.startswith(
            "envagent: this install does not upgrade itself. It runs from a source checkout "
            "(an editable install), which is updated with git, not replaced. Upgrade it with: git "
        )
        assert len(refused.err.splitlines()) == 1
    assert sorted((path.name, path.stat().st_mtime_ns) for path in dist_info.iterdir()) == before


# --- the platform's `upgrade` command --------------------------------------------------------


async def ask(platform: Platform, connection_id: str, frame: dict[str, Any]) -> dict[str, Any]:
    reply = await platform.http.post(
        f"{platform.url}/v1/environments/{connection_id}/frames",
        json=frame,
        headers=platform.auth(),
    )
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


UPGRADE = {"type": "execute_command", "command_id": "upgrade", "request_id": "u-1"}


async def test_platform_upgrade_restarts_the_daemon_into_the_new_version(
    wheels: Wheels, tmp_path: Path, start_platform: StartPlatform, venv_daemons: StartVenvDaemon
) -> None:
    platform = await start_platform()
    venv = await asyncio.to_thread(make_venv, wheels.old, tmp_path)
    env = cli_env(tmp_path) | {
        "LETTA_BASE_URL": platform.url,
        "LETTA_API_KEY": platform.key,
        "ENVAGENT_UPGRADE_FIND_LINKS": str(wheels.good),
    }
    # The platform's 30 s heartbeat: the session reads no frame while a command runs, so pongs
    # wait, and at 200 ms the daemon would give the socket up as dead during the upgrade (it
    # would still restart into the new version, but the answer would be lost).
    daemon = await venv_daemons(venv, env, tmp_path)
    before = await daemon.wait_status(lambda status: status["state"] == "online")
    row = await platform.row(before["deviceId"])
    assert row["metadata"]["lettaCodeVersion"] == __version__
    assert "upgrade" in row["metadata"]["supported_commands"]

    # The frame's args are not read: had this folder been used, the broken build would be in.
    bait = {"args": {"find_links": str(wheels.broken), "upgrade_find_links": str(wheels.broken)}}
    answer = await ask(platform, before["connectionId"], UPGRADE | bait)
    assert answer == {
        "type": "execute_command_response",
        "request_id": "u-1",
        "success": True,
        "output": f"upgraded envagent {__version__} → {NEW_VERSION}",
    }

    # The same process (re-executed in place, not under a service manager) comes back new.
    async def platform_row() -> dict[str, Any]:
        return await platform.row(before["deviceId"])

    row = await wait_for(
        platform_row,
        lambda row: row["metadata"]["lettaCodeVersion"] == NEW_VERSION and row["connectionId"],
    )
    after = await daemon.wait_status(lambda status: status["startedAt"] > before["startedAt"])
    assert daemon.process.returncode is None
    assert (after["pid"], after["deviceId"]) == (before["pid"], before["deviceId"])
    local = (await daemon.get("/v1/environments")).json()["connections"][0]
    assert local["metadata"]["lettaCodeVersion"] == NEW_VERSION
    assert row["id"] == local["id"]
    assert await installed_version(venv, env) == NEW_VERSION


async def test_platform_upgrade_of_an_editable_install_is_refused(
    platform: Platform, spawn: Spawn
) -> None:
    if detect_self_update().supported:
        pytest.skip("the tests do not run from an editable install of this project")
    daemon = await spawn(platform.url, platform.key)
    status = await daemon.wait_status(online)
    answer = await ask(platform, status["connectionId"], UPGRADE)
    assert answer["success"] is False
    assert answer["output"].startswith(
        "this install does not upgrade itself. It runs from a source checkout"
    )
    later = await daemon.wait_status(lambda s: s["heartbeats"]["answered"] > 1)
    assert (later["startedAt"], later["connects"]) == (status["startedAt"], 1)


# --- the command's end when its session ends first -------------------------------------------


class Host:
    """Just enough of a daemon for Commands."""

    def __init__(self) -> None:
        self.metadata = Metadata()
        self.settings = Settings(workdir=Path.cwd())
        self.restarts: list[str] = []
        self.restarted = asyncio.Event()

    async def refresh(self) -> bool:
        return False

    def status(self) -> DaemonStatus:
        raise NotImplementedError

    def request_restart(self, why: str) -> None:
        self.restarts.append(why)
        self.restarted.set()


async def test_an_upgrade_outlives_its_session_and_still_restarts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The installer cannot be stopped halfway: when the session (and the command with it) is
    cancelled, the upgrade finishes in its thread and the daemon restarts into it."""
    started, release = threading.Event(), threading.Event()

    def slow_upgrade(find_links: Path | None) -> Result:
        started.set()
        assert release.wait(WAIT_S)
        return Result(Outcome.UPGRADED, "1", "2", "upgraded envagent 1 → 2")

    monkeypatch.setattr("agent.upgrade.install.upgrade", slow_upgrade)  # imported when run
    host = Host()
    command = asyncio.create_task(
        Commands(host).run(ExecuteCommandFrame(command_id="upgrade", request_id="u-1"))
    )
    assert await asyncio.to_thread(started.wait, WAIT_S)
    command.cancel()
    with pytest.raises(asyncio.CancelledError):
        await command
    assert host.restarts == []
    release.set()
    await asyncio.wait_for(host.restarted.wait(), WAIT_S)
    assert host.restarts == ["upgraded envagent 1 → 2"]
