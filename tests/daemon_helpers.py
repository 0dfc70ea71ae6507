"""Helpers for tests that run real daemons (`python -m agent run`) against real platforms, and
the socket systemd listens on for their sd_notify messages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agent.protocol.models import LocalApiAddress
from tests.helpers import WAIT_S, wait_for

NETWORK_ENV = frozenset(
    ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
)
"""What decides how a daemon reaches its platform (agent/support/proxy.py, tls.py), either case."""


def online(status: dict[str, Any]) -> bool:
    """The daemon is connected and the platform has answered a heartbeat."""
    return status["state"] == "online" and status["heartbeats"]["answered"] >= 1


@dataclass
class DaemonProcess:
    process: asyncio.subprocess.Process
    env: dict[str, str]
    state_dir: Path
    instance: str | None = None
    stderr_lines: list[str] = field(default_factory=list)
    stdout_lines: list[str] = field(default_factory=list)
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def address_file(self) -> Path:
        name = f"local-api-{self.instance}.json" if self.instance else "local-api.json"
        return self.state_dir / "envagent" / name

    async def local_url(self) -> str:
        async def read() -> str | None:
            try:
                return LocalApiAddress.model_validate_json(self.address_file.read_bytes()).url
            except (FileNotFoundError, ValueError):
                return None

        url = await wait_for(read, lambda value: value is not None)
        assert url is not None
        return url

    async def get(self, path: str, **params: str) -> httpx.Response:
        async with httpx.AsyncClient(base_url=await self.local_url(), timeout=WAIT_S) as http:
            return await http.get(path, params=params)

    async def status(self) -> dict[str, Any]:
        reply = await self.get("/v1/status")
        assert reply.status_code == 200, reply.text
        status: dict[str, Any] = reply.json()
        return status

    async def wait_status(self, accept: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Wait until this process answers with a status `accept` likes. A file left by a
        killed daemon may name a dead address for a moment: that counts as not yet."""

        async def probe() -> dict[str, Any] | None:
            try:
                status = await self.status()
            except httpx.TransportError:
                return None
            return status if status["pid"] == self.process.pid else None

        found = await wait_for(probe, lambda status: status is not None and accept(status))
        assert found is not None
        return found

    async def wait_exit(self) -> int:
        code = await asyncio.wait_for(self.process.wait(), WAIT_S)
        await asyncio.gather(*self._readers)
        return code

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        return await self.wait_exit()

    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def log_records(self) -> list[dict[str, Any]]:
        """The daemon's log: JSON lines, since its stderr is not a terminal."""
        return [json.loads(line) for line in self.stderr_lines if line.startswith("{")]


async def collect_lines(stream: asyncio.StreamReader | None, into: list[str]) -> None:
    assert stream is not None
    async for line in stream:
        into.append(line.decode(errors="replace"))


async def start_daemon(
    state_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    instance: str | None = None,
) -> DaemonProcess:
    """Start `envagent run` with its own XDG dirs; the caller stops it (or the fixture does).

    Nor does it inherit the proxy and CA variables of the machine running the tests: a test
    that wants one sets it in `env`."""
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LETTA_", "ENVAGENT_", "XDG_")) and key.upper() not in NETWORK_ENV
    }
    environ |= {
        "XDG_STATE_HOME": str(state_dir),
        "XDG_CONFIG_HOME": str(state_dir / "config"),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    if instance is not None:
        args = (*args, "--listener-instance-id", instance)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "run", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=-1, stderr=-1, env=environ, cwd=cwd,
    )  # fmt: skip
    daemon = DaemonProcess(process, environ, state_dir, instance)
    daemon._readers = [
        asyncio.create_task(collect_lines(process.stdout, daemon.stdout_lines)),
        asyncio.create_task(collect_lines(process.stderr, daemon.stderr_lines)),
    ]
    return daemon


async def cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """Run `envagent ARGS`; give it a daemon's `env` to reach that daemon and its platform."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", *args, stdout=-1, stderr=-1, stdin=-3, env=env
    )
    out, err = await asyncio.wait_for(process.communicate(), WAIT_S)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def kill_all(daemons: list[DaemonProcess]) -> None:
    for daemon in daemons:
        if daemon.process.returncode is None:
            daemon.process.kill()
        with contextlib.suppress(TimeoutError):
            await daemon.wait_exit()


class TcpProxy:
    """Forwards 127.0.0.1 connections to a target; `freeze` stops forwarding on every open
    connection without closing it, as a dead NAT or a pulled cable would."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._frozen: list[asyncio.Event] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._stopped = asyncio.Event()
        self.connections = 0
        self.port = 0

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{self.port}"

    def freeze(self) -> None:
        for frozen in self._frozen:
            frozen.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        frozen = asyncio.Event()
        self._frozen.append(frozen)
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self._target_port
        )
        self._writers += [writer, upstream_writer]
        await asyncio.gather(
            self._pipe(reader, upstream_writer, frozen),
            self._pipe(upstream_reader, writer, frozen),
            return_exceptions=True,
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, frozen: asyncio.Event
    ) -> None:
        while not frozen.is_set():
            data = await reader.read(65536)
            if not data or frozen.is_set():
                break
            writer.write(data)
            await writer.drain()
        if not frozen.is_set():
            writer.close()
        else:
            await self._stopped.wait()  # hold the socket open, forwarding nothing

    async def stop(self) -> None:
        self._stopped.set()
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket, on a path or abstract."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind("\0" + address[1:] if address.startswith("@") else address)
        self._socket.setblocking(False)
        self.messages: list[dict[str, str]] = []

    async def receive(self) -> dict[str, str]:
        data = await asyncio.wait_for(
            asyncio.get_running_loop().sock_recv(self._socket, 4096), WAIT_S
        )
        message = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.messages.append(message)
        return message

    async def until(self, key: str) -> dict[str, str]:
        while True:
            message = await self.receive()
            if key in message:
                return message

    def close(self) -> None:
        self._socket.close()


Spawn = Callable[..., Awaitable[DaemonProcess]]


@contextlib.asynccontextmanager
async def running_daemons(folder: Path) -> AsyncIterator[Spawn]:
    """Start `envagent run` processes, state and working folders under `folder`, all killed on
    leaving if still running: the body of the `spawn` fixtures.

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
            folder / state, *period, *args, env=env, cwd=cwd or folder, instance=instance
        )
        started.append(daemon)
        return daemon

    try:
        yield start
    finally:
        await kill_all(started)
