"""Helpers for tests of platform pods: `envagent platform serve` processes sharing one
PostgreSQL database, each in a process group of its own with its log in a file, and a client
that speaks to them with a key of that database."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.helpers import WAIT_S, FakeDaemon, Platform

HEARTBEAT_S = 0.1
FENCE_AFTER_S = 1.0
"""Short `--pod-heartbeat-s` and `--pod-fence-after-s`, so that fencing takes a second."""


@dataclass
class PodProcess:
    pod_id: str
    process: asyncio.subprocess.Process
    log_file: Path
    url: str = ""

    async def listening(self) -> str:
        """The pod's URL, once it says it listens."""
        assert self.process.stdout is not None
        while not self.url:
            line = (await asyncio.wait_for(self.process.stdout.readline(), WAIT_S)).decode()
            assert line, f"{self.pod_id} exited before it listened: {self.log_file.read_text()}"
            found = re.search(r"listening on (\S+)", line)
            self.url = found.group(1) if found else ""
        return self.url

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    async def kill(self) -> None:
        """SIGKILL to the pod's process group (a stopped pod too), and wait for its end."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()

    def records(self) -> list[dict[str, Any]]:
        """The pod's log so far; a line that is not a log record (what the interpreter printed
        as it failed) as an error."""
        return [
            json.loads(line) if line.startswith("{") else {"level": "error", "message": line}
            for line in self.log_file.read_text().splitlines()
        ]

    def errors(self) -> list[dict[str, Any]]:
        """What the pod logged at level error or above."""
        return [record for record in self.records() if record["level"] in ("error", "critical")]


async def spawn_pod(
    database_url: str, pod_id: str, log_file: Path, port: int | None = None
) -> PodProcess:
    """Start `envagent platform serve` as `pod_id`, on a port of its own, or sharing `port`
    with the other pods there (SO_REUSEPORT), as behind a load balancer."""
    where = ["--port", "0"] if port is None else ["--port", str(port), "--reuse-port"]
    with log_file.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "platform", "serve", "--database", database_url,
            *where, "--pod-id", pod_id, "--pod-heartbeat-s", str(HEARTBEAT_S),
            "--pod-fence-after-s", str(FENCE_AFTER_S),
            stdout=asyncio.subprocess.PIPE, stderr=log, start_new_session=True,
        )  # fmt: skip
    return PodProcess(pod_id, process, log_file)


async def pod_client(
    start_platform: Callable[..., Awaitable[Platform]], database_url: str
) -> Platform:
    """A key of the database and an HTTP client for pod processes (`Platform.at`). The key is
    made by a platform in the test's process, stopped at once: the pods fence its lease."""
    client = await start_platform(database_url=database_url, pod_id="keys")
    await client.server.stop()
    return client


async def fetch(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """The rows of one statement, on a connection of its own."""
    connection = await asyncpg.connect(database_url)
    try:
        rows: list[asyncpg.Record] = await connection.fetch(sql, *args)
        return rows
    finally:
        await connection.close()


async def sync_through(asker: Platform, daemon: FakeDaemon, request_id: str) -> httpx.Response:
    """Ask `daemon` for a sync through `asker` and answer as a daemon does: `asker`'s reply."""
    sync = {"type": "sync", "request_id": request_id}
    asked = asyncio.create_task(asker.send_frame(daemon.connection_id, sync))
    assert await daemon.receive() == sync
    await daemon.send({"type": "sync_response", "request_id": request_id, "success": True})
    return await asyncio.wait_for(asked, WAIT_S)
