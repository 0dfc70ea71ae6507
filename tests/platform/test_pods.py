"""Pods sharing one PostgreSQL database: a pod that falls silent is fenced by another, which marks
its connections lost; when it wakes it can write nothing for them, joins again and closes its
sockets so that their daemons come back under its new lease."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from tests.conftest import StartPlatform
from tests.helpers import WAIT_S, FakeDaemon, open_socket, wait_for

HEARTBEAT_S = 0.1
FENCE_AFTER_S = 1.0


@pytest.fixture
async def serve_pod(postgres_url: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """`envagent platform serve` as a process of its own (pod-a), on the test's database."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "platform", "serve", "--database", postgres_url,
        "--port", "0", "--pod-id", "pod-a", "--pod-heartbeat-s", str(HEARTBEAT_S),
        "--pod-fence-after-s", str(FENCE_AFTER_S),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    yield process
    if process.returncode is None:
        os.kill(process.pid, signal.SIGCONT)
        process.kill()
        await process.wait()


async def _url_of(pod: asyncio.subprocess.Process) -> str:
    assert pod.stdout is not None
    while True:
        line = (await asyncio.wait_for(pod.stdout.readline(), WAIT_S)).decode()
        assert line, "the pod exited before it listened"
        found = re.search(r"listening on (\S+)", line)
        if found:
            return found.group(1)


async def test_a_frozen_pod_is_fenced_its_rows_lost_and_on_waking_it_lets_go(
    start_platform: StartPlatform, postgres_url: str, serve_pod: asyncio.subprocess.Process
) -> None:
    survivor = await start_platform(
        database_url=postgres_url,
        pod_id="pod-b",
        pod_heartbeat_s=HEARTBEAT_S,
        pod_fence_after_s=FENCE_AFTER_S,
    )
    pod_a_url = await _url_of(serve_pod)
    reply = await survivor.http.post(  # the same key, the same database, another pod
        f"{pod_a_url}/v1/environments/register",
        json={"deviceId": "dev-1", "connectionName": "box"},
        headers=survivor.auth(),
    )
    assert reply.status_code == 201, reply.text
    registration = reply.json()
    daemon = FakeDaemon(
        await open_socket(registration["wsUrl"], "dev-1", survivor.key), registration
    )
    assert await daemon.ping() == {"type": "pong"}
    row = await survivor.row("dev-1")
    assert (row["podId"], row["connectionId"]) == ("pod-a", daemon.connection_id)

    os.kill(serve_pod.pid, signal.SIGSTOP)  # a pod that stops answering, its sockets open
    lost = await wait_for(
        lambda: survivor.row("dev-1"),
        lambda r: r["connectionId"] is None,
        within=FENCE_AFTER_S + 5.0,
    )
    assert lost["podId"] is None
    assert not [r for r in await survivor.rows(onlineOnly="true")]

    os.kill(serve_pod.pid, signal.SIGCONT)  # it wakes: fenced, it rejoins and lets go
    await daemon.wait_closed()
    assert daemon.ws.close_code == 1012
    row = await survivor.row("dev-1")
    assert row["connectionId"] is None, "a fenced pod wrote nothing for the row"
    # The daemon comes back through the survivor with the connection id it was given.
    to_survivor = urlsplit(registration["wsUrl"])._replace(
        netloc=f"127.0.0.1:{survivor.server.port}"
    )
    back = FakeDaemon(await open_socket(to_survivor.geturl(), "dev-1", survivor.key), registration)
    assert await back.ping() == {"type": "pong"}
    row = await survivor.row("dev-1")
    assert (row["podId"], row["connectionId"]) == ("pod-b", daemon.connection_id)
    await back.ws.close()
