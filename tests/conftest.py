"""Fixtures: reference platforms on ephemeral 127.0.0.1 ports, platform pod processes and
daemons, stopped after each test; a socket standing for systemd's sd_notify one; folders made
unwritable, made writable again; a throwaway PostgreSQL and a database per test
(tests/postgres.py, a plugin)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.platform.server import PlatformServer
from agent.platform.settings import PlatformSettings
from tests.daemon_helpers import DaemonProcess, NotifySocket, Spawn, kill_all, start_daemon
from tests.helpers import Platform
from tests.pod_helpers import PodProcess, spawn_pod

# A plugin rather than an import, so that pytest rewrites its asserts and ruff sees no unused
# names: `postgres_server` (session) and `postgres_url` (a fresh database per test).
pytest_plugins = ["tests.postgres"]

StartPlatform = Callable[..., Awaitable[Platform]]
StartPod = Callable[..., Awaitable[PodProcess]]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing a test runs may touch the real XDG folders."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture
async def start_platform(tmp_path: Path) -> AsyncIterator[StartPlatform]:
    """Start a platform with settings overridden by keyword; `db` may be reused to restart."""
    servers: list[PlatformServer] = []
    async with httpx.AsyncClient(timeout=10) as http:

        async def start(**overrides: Any) -> Platform:
            settings = replace(PlatformSettings(db=tmp_path / "platform.db", port=0), **overrides)
            server = PlatformServer(settings)
            await server.start()
            servers.append(server)
            key_file = settings.dev_key_file
            key = key_file.read_text().strip() if key_file.exists() else ""
            return Platform(server, key, http)

        yield start
        for server in servers:
            await server.stop()


@pytest.fixture
async def start_pod(tmp_path: Path) -> AsyncIterator[StartPod]:
    """Start `envagent platform serve` processes on PostgreSQL (`tests.pod_helpers.spawn_pod`),
    each returned once it listens; killed with their process groups after the test."""
    started: list[PodProcess] = []

    async def start(database_url: str, pod_id: str, port: int | None = None) -> PodProcess:
        pod = await spawn_pod(database_url, pod_id, tmp_path / f"{pod_id}.log", port)
        started.append(pod)
        await pod.listening()
        return pod

    yield start
    for pod in started:
        await pod.kill()


BACKENDS = ("sqlite", "postgres")
on_both_backends = pytest.mark.parametrize("platform", BACKENDS, indirect=True)
"""Runs a test against a platform on SQLite and one on PostgreSQL: the rules must not differ."""


@pytest.fixture
async def platform(request: pytest.FixtureRequest, start_platform: StartPlatform) -> Platform:
    """A platform on SQLite, or on the backend a test asks for with `on_both_backends`."""
    if getattr(request, "param", "sqlite") == "postgres":
        return await start_platform(database_url=request.getfixturevalue("postgres_url"))
    return await start_platform()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository on branch `main` for a daemon to serve."""
    path = tmp_path / "repo"
    path.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    return path


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    """Start `envagent run` processes (killed after the test if still running).

    With a platform URL and key they go in LETTA_BASE_URL and LETTA_API_KEY; without, the
    daemon starts its embedded platform. Heartbeats are 200 ms unless `--heartbeat-ms` is given
    or `heartbeat_ms=None` leaves the platform's period.
    """
    started: list[DaemonProcess] = []

    async def start(
        platform_url: str | None,
        key: str | None,
        *args: str,
        state: str = "daemon",
        cwd: Path | None = None,
        heartbeat_ms: str | None = "200",
        instance: str | None = None,
    ) -> DaemonProcess:
        env = {"LETTA_BASE_URL": platform_url or "", "LETTA_API_KEY": key or ""}
        period = ["--heartbeat-ms", heartbeat_ms] if heartbeat_ms else []
        daemon = await start_daemon(
            tmp_path / state, *period, *args, env=env, cwd=cwd or tmp_path, instance=instance
        )
        started.append(daemon)
        return daemon

    yield start
    await kill_all(started)


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest) -> Iterator[NotifySocket]:
    """What systemd listens on for sd_notify: a socket on a path, or a name in the abstract
    namespace (each test using it runs with both)."""
    # A short folder: socket paths are limited to 108 bytes, pytest's tmp paths can be longer.
    with tempfile.TemporaryDirectory(prefix="ea-") as folder:
        if request.param == "path":
            address = f"{folder}/notify"
        else:
            address = f"@envagent-test-{os.getpid()}-{Path(folder).name}"
        sink = NotifySocket(address)
        yield sink
        sink.close()


@pytest.fixture
def make_unwritable() -> Iterator[Callable[[Path], None]]:
    """Make a folder unwritable for this process: root ignores permission bits, so as root the
    folder is made immutable (`chattr +i`), which binds root too; undone after the test."""
    undo: list[Callable[[], object]] = []

    def apply(path: Path) -> None:
        if os.geteuid() != 0:
            path.chmod(0o555)
            undo.append(lambda: path.chmod(0o755))
            return
        if shutil.which("chattr") is None:
            pytest.skip("running as root, and there is no chattr to make a folder immutable")
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"running as root, and chattr +i failed here: {done.stderr.strip()}")
        undo.append(lambda: subprocess.run(["chattr", "-i", str(path)], check=True))

    yield apply
    for step in reversed(undo):
        step()
