"""Test helpers: a platform running in the test's event loop, a plain `websockets` client
acting as a daemon, and git repositories made with the git binary. Every wait is bounded."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from agent.platform.server import PlatformServer
from agent.platform.settings import PlatformSettings

WAIT_S = 10.0

AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
NOBODY = 65534
"""The uid of `nobody`: a user other than the one running the tests."""


def mode_of(path: Path) -> int:
    """The permission bits of `path` itself (a symlink's own, not its target's)."""
    return stat.S_IMODE(path.lstat().st_mode)


def daemon_folder(root: Path) -> Path:
    """An envagent state folder under `root` (a daemon's state home), made as envagent makes it."""
    folder = root / "envagent"
    folder.mkdir(parents=True, mode=0o700)
    return folder


T = TypeVar("T")


async def wait_for(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], within: float = WAIT_S
) -> T:
    """Call `probe` until `accept` holds for its result; fail after `within` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await probe()
        if accept(value):
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {within} s; last value: {value!r}")
        await asyncio.sleep(0.02)


@contextmanager
def refusing_port() -> Iterator[int]:
    """An ephemeral port held, bound but not listening, for the block: a connection to it is
    refused at once, and nothing else can start listening there meanwhile."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port: int = held.getsockname()[1]
        yield port


def free_port() -> int:
    """A port nothing listens on now (the kernel's pick), for a server to be started later."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Platform:
    server: PlatformServer
    key: str
    http: httpx.AsyncClient
    base_url: str | None = None
    """Where requests go when not to `server`: another platform process of the database."""

    @property
    def url(self) -> str:
        return self.base_url or self.server.url

    def at(self, url: str) -> Platform:
        """The same key and HTTP client, speaking to the platform process at `url` (a pod)."""
        return replace(self, base_url=url)

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    async def register(
        self, device_id: str, key: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        body = {"deviceId": device_id, "connectionName": f"{device_id}-name", **fields}
        reply = await self.http.post(
            f"{self.url}/v1/environments/register", json=body, headers=self.auth(key)
        )
        assert reply.status_code == 201, reply.text
        result: dict[str, Any] = reply.json()
        return result

    async def list(self, key: str | None = None, **params: str) -> httpx.Response:
        return await self.http.get(
            f"{self.url}/v1/environments", params=params, headers=self.auth(key)
        )

    async def rows(self, key: str | None = None, **params: str) -> list[dict[str, Any]]:
        reply = await self.list(key, **params)
        assert reply.status_code == 200, reply.text
        rows: list[dict[str, Any]] = reply.json()["connections"]
        return rows

    async def row(self, device_id: str, key: str | None = None) -> dict[str, Any]:
        reply = await self.http.get(
            f"{self.url}/v1/environments/{device_id}", headers=self.auth(key)
        )
        assert reply.status_code == 200, reply.text
        row: dict[str, Any] = reply.json()
        return row

    async def send_frame(self, connection_id: str, frame: dict[str, Any]) -> httpx.Response:
        """`POST …/frames`: 200 with the daemon's answer to a frame with a request id, else 204."""
        return await self.http.post(
            f"{self.url}/v1/environments/{connection_id}/frames", json=frame, headers=self.auth()
        )

    async def connect(self, device_id: str, key: str | None = None, **fields: Any) -> FakeDaemon:
        """Register and open the socket, as a daemon does."""
        reply = await self.register(device_id, key, **fields)
        ws = await open_socket(reply["wsUrl"], device_id, key or self.key)
        return FakeDaemon(ws, reply)

    async def reopen(self, daemon: FakeDaemon) -> FakeDaemon:
        """Another socket for `daemon`'s registration, opened here (on another pod, say)."""
        here = urlsplit(self.url).netloc
        ws_url = urlsplit(daemon.registration["wsUrl"])._replace(netloc=here).geturl()
        ws = await open_socket(ws_url, daemon.device_id, self.key)
        return FakeDaemon(ws, daemon.registration)


async def open_socket(ws_url: str, device_id: str, key: str) -> ClientConnection:
    return await websockets.connect(
        f"{ws_url}&deviceId={device_id}",
        additional_headers={"Authorization": f"Bearer {key}"},
        open_timeout=WAIT_S,
    )


@dataclass
class FakeDaemon:
    ws: ClientConnection
    registration: dict[str, Any]

    @property
    def connection_id(self) -> str:
        value: str = self.registration["connectionId"]
        return value

    @property
    def device_id(self) -> str:
        value: str = self.registration["environment"]["deviceId"]
        return value

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def receive(self) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), WAIT_S))
        return frame

    async def ping(self, mode: str | None = None) -> dict[str, Any]:
        await self.send({"type": "ping", **({"current_mode": mode} if mode else {})})
        return await self.receive()

    async def wait_closed(self) -> None:
        await asyncio.wait_for(self.ws.wait_closed(), WAIT_S)


@pytest.fixture(autouse=True)
def git_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commits need an author; no user or system git config may change what a test builds.

    Autouse in the modules that import it (the git and metadata tests), and only there."""
    for variable in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(variable, "Test")
    for variable in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(variable, "test@example.invalid")
    global_config = tmp_path / "gitconfig"
    global_config.touch()
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(global_config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def make_repo(path: Path, branch: str = "main", commit: bool = True) -> Path:
    """A repository at `path` on `branch`, with one empty commit unless `commit` is false."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "--quiet", "--initial-branch", branch)
    if commit:
        git(path, "commit", "--quiet", "--allow-empty", "--message", "first")
    return path


StartPlatform = Callable[..., Awaitable[Platform]]


@asynccontextmanager
async def running_platforms(folder: Path) -> AsyncIterator[StartPlatform]:
    """Start platforms with settings overridden by keyword (`db` may be reused to restart),
    on ephemeral ports, all stopped on leaving: the body of the `start_platform` fixtures."""
    servers: list[PlatformServer] = []
    async with httpx.AsyncClient(timeout=10) as http:

        async def start(**overrides: Any) -> Platform:
            settings = replace(PlatformSettings(db=folder / "platform.db", port=0), **overrides)
            server = PlatformServer(settings)
            await server.start()
            servers.append(server)
            key_file = settings.dev_key_file
            key = key_file.read_text().strip() if key_file.exists() else ""
            return Platform(server, key, http)

        try:
            yield start
        finally:
            for server in servers:
                await server.stop()
