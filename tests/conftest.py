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
from pathlib import Path

import pytest

from tests.daemon_helpers import NotifySocket, Spawn, running_daemons
from tests.helpers import Platform, StartPlatform, running_platforms
from tests.pod_helpers import PodProcess, spawn_pod

# A plugin rather than an import, so that pytest rewrites its asserts and ruff sees no unused
# names: `postgres_server` (session) and `postgres_url` (a fresh database per test).
pytest_plugins = ["tests.postgres"]

StartPod = Callable[..., Awaitable[PodProcess]]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing a test runs may touch the real XDG folders."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture
async def start_platform(tmp_path: Path) -> AsyncIterator[StartPlatform]:
    """Start a platform with settings overridden by keyword; `db` may be reused to restart."""
    async with running_platforms(tmp_path) as start:
        yield start


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
    """Start `envagent run` processes (`running_daemons`), killed after the test."""
    async with running_daemons(tmp_path) as start:
        yield start


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
