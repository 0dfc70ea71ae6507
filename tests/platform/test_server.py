"""The platform as a user runs it: `envagent platform …` in its own process, killed, restarted."""

from __future__ import annotations

import asyncio
import signal
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers import WAIT_S, FakeDaemon, open_socket

LISTENING = "envagent platform listening on "


@dataclass
class PlatformProcess:
    process: asyncio.subprocess.Process
    url: str

    async def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        return await asyncio.wait_for(self.process.wait(), WAIT_S)

    async def stderr(self) -> str:
        assert self.process.stderr is not None
        return (await asyncio.wait_for(self.process.stderr.read(), WAIT_S)).decode()


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[PlatformProcess]]]:
    started: list[asyncio.subprocess.Process] = []

    async def start(*extra: str) -> PlatformProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "platform", "serve", "--port", "0",
            "--db", str(tmp_path / "platform.db"), *extra,
            stdout=-1, stderr=-1, stdin=-3,
        )  # fmt: skip
        started.append(process)
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), WAIT_S)).decode()
        assert line.startswith(LISTENING), line
        return PlatformProcess(process, line.removeprefix(LISTENING).strip())

    yield start
    for process in started:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def register(http: httpx.AsyncClient, url: str, key: str, device: str) -> FakeDaemon:
    reply = await http.post(
        f"{url}/v1/environments/register",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "deviceId": device,
            "connectionName": "workstation",
            "currentMode": "default",
            "metadata": {"os": "linux", "nodeVersion": "v22.1.0", "gitBranch": "main"},
        },
    )
    assert reply.status_code == 201, reply.text
    registration = reply.json()
    return FakeDaemon(await open_socket(registration["wsUrl"], device, key), registration)


async def get_row(http: httpx.AsyncClient, url: str, key: str, device: str) -> dict[str, object]:
    reply = await http.get(
        f"{url}/v1/environments/{device}", headers={"Authorization": f"Bearer {key}"}
    )
    assert reply.status_code == 200, reply.text
    row: dict[str, object] = reply.json()
    return row


async def test_rows_survive_a_kill_and_restart(
    spawn: Callable[..., Awaitable[PlatformProcess]], tmp_path: Path
) -> None:
    first = await spawn()
    key_file = tmp_path / "platform.db.dev-api-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        daemon = await register(http, first.url, key, "dev-1")
        assert await daemon.ping(mode="bypassPermissions") == {"type": "pong"}
        before = await get_row(http, first.url, key, "dev-1")
        assert before["connectionId"] == daemon.connection_id

        assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
        await daemon.wait_closed()  # the kernel closed the socket, not the platform

        second = await spawn()
        assert key_file.read_text().strip() == key  # the development key is not remade
        after = await get_row(http, second.url, key, "dev-1")
        for field in ("id", "firstSeenAt", "metadata", "currentMode", "connectionName"):
            assert after[field] == before[field], field
        assert after["currentMode"] == "bypassPermissions"
        assert after["connectionId"] is None and after["podId"] is None
        assert after["connectedAt"] is None

        # The issued connection id survived too: the daemon comes back without registering.
        ws_url = str(daemon.registration["wsUrl"]).replace(first.url[7:], second.url[7:])
        back = FakeDaemon(await open_socket(ws_url, "dev-1", key), daemon.registration)
        assert await back.ping() == {"type": "pong"}
        online = await get_row(http, second.url, key, "dev-1")
        assert online["connectionId"] == daemon.connection_id

        assert await second.stop(signal.SIGTERM) == 0
        await back.wait_closed()
        assert back.ws.close_code == 1001
    log = await second.stderr() + await first.stderr()
    assert key not in log
    assert str(key_file) in log
