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
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.conftest import StartPlatform
from tests.daemon_helpers import Spawn, online
from tests.helpers import WAIT_S, FakeDaemon, Platform, free_port, open_socket, wait_for

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


async def _two_pods(
    start_platform: StartPlatform, postgres_url: str, pod_a: asyncio.subprocess.Process
) -> tuple[Platform, str]:
    survivor = await start_platform(
        database_url=postgres_url,
        pod_id="pod-b",
        pod_heartbeat_s=HEARTBEAT_S,
        pod_fence_after_s=FENCE_AFTER_S,
    )
    return survivor, await _url_of(pod_a)


async def _connect_on(pod_url: str, platform: Platform, device: str) -> FakeDaemon:
    reply = await platform.http.post(
        f"{pod_url}/v1/environments/register",
        json={"deviceId": device, "connectionName": device},
        headers=platform.auth(),
    )
    assert reply.status_code == 201, reply.text
    registration = reply.json()
    return FakeDaemon(await open_socket(registration["wsUrl"], device, platform.key), registration)


async def test_a_frame_sent_to_another_pod_reaches_the_socket_and_its_answer_comes_back(
    start_platform: StartPlatform, postgres_url: str, serve_pod: asyncio.subprocess.Process
) -> None:
    pod_b, pod_a_url = await _two_pods(start_platform, postgres_url, serve_pod)
    daemon = await _connect_on(pod_a_url, pod_b, "dev-1")  # its socket is on pod-a
    frames = f"{pod_b.url}/v1/environments/{daemon.connection_id}/frames"  # asked of pod-b

    asked = asyncio.create_task(
        pod_b.http.post(frames, json={"type": "sync", "request_id": "s-1"}, headers=pod_b.auth())
    )
    assert await daemon.receive() == {"type": "sync", "request_id": "s-1"}
    await daemon.send({"type": "sync_response", "request_id": "s-1", "success": True})
    answered = await asyncio.wait_for(asked, WAIT_S)
    assert answered.status_code == 200, answered.text
    assert answered.json() == {"type": "sync_response", "request_id": "s-1", "success": True}

    change = {"type": "change_device_state", "payload": {"mode": "acceptEdits"}}
    told = await pod_b.http.post(frames, json=change, headers=pod_b.auth())
    assert told.status_code == 204
    assert (await daemon.receive())["payload"] == {"mode": "acceptEdits"}

    other = await pod_b.http.post(
        f"{pod_b.url}/v1/environments/conn-unknown/frames", json=change, headers=pod_b.auth()
    )
    assert other.status_code == 404
    await daemon.ws.close()


async def test_a_new_socket_on_another_pod_closes_the_old_one_as_replaced(
    start_platform: StartPlatform, postgres_url: str, serve_pod: asyncio.subprocess.Process
) -> None:
    pod_b, pod_a_url = await _two_pods(start_platform, postgres_url, serve_pod)
    old = await _connect_on(pod_a_url, pod_b, "dev-1")
    assert await old.ping() == {"type": "pong"}
    on_b = urlsplit(old.registration["wsUrl"])._replace(netloc=f"127.0.0.1:{pod_b.server.port}")
    new = FakeDaemon(await open_socket(on_b.geturl(), "dev-1", pod_b.key), old.registration)
    await old.wait_closed()
    assert (old.ws.close_code, old.ws.close_reason) == (1000, "Replaced by new connection")
    assert await new.ping() == {"type": "pong"}
    row = await pod_b.row("dev-1")
    assert (row["podId"], row["connectionId"]) == ("pod-b", new.connection_id)
    await new.ws.close()


async def test_a_message_whose_signal_was_lost_is_read_at_the_next_renewal(
    start_platform: StartPlatform, postgres_url: str, serve_pod: asyncio.subprocess.Process
) -> None:
    """Left in the table with no NOTIFY, as if the listening connection had been down."""
    pod_b, pod_a_url = await _two_pods(start_platform, postgres_url, serve_pod)
    daemon = await _connect_on(pod_a_url, pod_b, "dev-1")
    row = await pod_b.row("dev-1")
    connection = await asyncpg.connect(postgres_url)
    try:
        await connection.execute(
            "INSERT INTO pod_messages (pod_id, kind, row_id, connection_id, body) "
            "VALUES ('pod-a', 'replace', $1, $2, '')",
            row["id"],
            daemon.connection_id,
        )
    finally:
        await connection.close()
    await daemon.wait_closed()
    assert daemon.ws.close_code == 1000


async def test_a_dropped_listening_connection_is_replaced(
    start_platform: StartPlatform, postgres_url: str, serve_pod: asyncio.subprocess.Process
) -> None:
    pod_b, pod_a_url = await _two_pods(start_platform, postgres_url, serve_pod)
    daemon = await _connect_on(pod_a_url, pod_b, "dev-1")
    connection = await asyncpg.connect(postgres_url)
    listeners = (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND query LIKE 'LISTEN%' ORDER BY pid"
    )
    try:
        before = [row["pid"] for row in await connection.fetch(listeners)]
        assert len(before) == 2, "one listening connection a pod"
        await connection.execute(
            "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", before
        )

        async def current() -> list[int]:
            return [row["pid"] for row in await connection.fetch(listeners)]

        after = await wait_for(current, lambda pids: len(pids) == 2 and not set(pids) & set(before))
    finally:
        await connection.close()
    assert len(after) == 2
    frames = f"{pod_b.url}/v1/environments/{daemon.connection_id}/frames"
    asked = asyncio.create_task(
        pod_b.http.post(frames, json={"type": "sync", "request_id": "s-2"}, headers=pod_b.auth())
    )
    assert await daemon.receive() == {"type": "sync", "request_id": "s-2"}
    await daemon.send({"type": "sync_response", "request_id": "s-2", "success": True})
    assert (await asyncio.wait_for(asked, WAIT_S)).status_code == 200
    await daemon.ws.close()


async def _pod_process(postgres_url: str, port: int, pod_id: str) -> asyncio.subprocess.Process:
    pod = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "platform", "serve", "--database", postgres_url,
        "--port", str(port), "--reuse-port", "--pod-id", pod_id,
        "--pod-heartbeat-s", str(HEARTBEAT_S), "--pod-fence-after-s", str(FENCE_AFTER_S),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await _url_of(pod)
    return pod


async def test_real_daemons_of_a_pod_killed_with_sigkill_come_back_through_the_other(
    start_platform: StartPlatform, postgres_url: str, spawn: Spawn
) -> None:
    """Two pod processes on one port, as behind a load balancer; no row lost or duplicated."""
    keys = await start_platform(database_url=postgres_url, pod_id="keys")  # makes the key
    await keys.server.stop()
    port = free_port()
    pods = {name: await _pod_process(postgres_url, port, name) for name in ("pod-a", "pod-b")}
    try:
        url = f"http://127.0.0.1:{port}"
        daemons = [await spawn(url, keys.key, state=f"d{n}", instance=f"i{n}") for n in range(8)]
        statuses = [await daemon.wait_status(online) for daemon in daemons]

        async def rows() -> list[dict[str, Any]]:
            reply = await keys.http.get(
                f"{url}/v1/environments", params={"limit": "100"}, headers=keys.auth()
            )
            found: list[dict[str, Any]] = reply.json()["connections"]
            return found

        before = await wait_for(rows, lambda found: all(r["podId"] for r in found))
        assert len(before) == 8
        held = {row["podId"] for row in before}
        victim = "pod-a" if "pod-a" in held else "pod-b"
        pods[victim].kill()
        await pods[victim].wait()
        moved = {row["deviceId"] for row in before if row["podId"] == victim}
        for daemon, status in zip(daemons, statuses, strict=True):
            if status["deviceId"] in moved:  # back with the connection id it had
                back = await daemon.wait_status(lambda s: online(s) and s["connects"] >= 2)
                assert back["registrations"] == 1
        after = await wait_for(
            rows, lambda found: all(r["connectionId"] and r["podId"] != victim for r in found)
        )
        assert sorted(r["id"] for r in after) == sorted(r["id"] for r in before)
        assert sorted(r["firstSeenAt"] for r in after) == sorted(r["firstSeenAt"] for r in before)
    finally:
        for pod in pods.values():
            if pod.returncode is None:
                pod.kill()
                await pod.wait()
