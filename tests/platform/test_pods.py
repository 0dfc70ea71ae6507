"""Pods sharing one PostgreSQL database: a pod that falls silent is fenced by another, which marks
its connections lost; when it wakes it can write nothing for them, joins again and closes its
sockets so that their daemons come back under its new lease. Frames and replacements reach the
pod that holds the socket; a killed pod's daemons come back through the others."""

from __future__ import annotations

import signal
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.conftest import StartPlatform, StartPod
from tests.daemon_helpers import Spawn, online
from tests.helpers import Platform, free_port, wait_for
from tests.pod_helpers import (
    FENCE_AFTER_S,
    HEARTBEAT_S,
    PodProcess,
    fetch,
    pod_client,
    sync_through,
)
from tests.postgres import PostgresServer

LISTENERS = (
    "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%' ORDER BY pid"
)
"""The pods' listening connections to a database."""
FENCE_SLACK_MS = 500
"""What a survivor's lease round may lag behind its period on a busy machine."""


async def _two_pods(
    start_platform: StartPlatform, start_pod: StartPod, postgres_url: str
) -> tuple[Platform, PodProcess]:
    """pod-b in the test's process, pod-a a process of its own."""
    pod_b = await start_platform(
        database_url=postgres_url,
        pod_id="pod-b",
        pod_heartbeat_s=HEARTBEAT_S,
        pod_fence_after_s=FENCE_AFTER_S,
    )
    return pod_b, await start_pod(postgres_url, "pod-a")


async def test_a_frozen_pod_is_fenced_its_rows_lost_and_on_waking_it_lets_go(
    start_platform: StartPlatform, start_pod: StartPod, postgres_url: str
) -> None:
    survivor, pod_a = await _two_pods(start_platform, start_pod, postgres_url)
    # The same key, the same database, another pod.
    daemon = await survivor.at(pod_a.url).connect("dev-1")
    assert await daemon.ping() == {"type": "pong"}
    row = await survivor.row("dev-1")
    assert (row["podId"], row["connectionId"]) == ("pod-a", daemon.connection_id)

    pod_a.signal(signal.SIGSTOP)  # a pod that stops answering, its sockets open
    lost = await wait_for(
        lambda: survivor.row("dev-1"),
        lambda r: r["connectionId"] is None,
        within=FENCE_AFTER_S + 5.0,
    )
    assert lost["podId"] is None
    assert not [r for r in await survivor.rows(onlineOnly="true")]

    pod_a.signal(signal.SIGCONT)  # it wakes: fenced, it rejoins and lets go
    await daemon.wait_closed()
    assert daemon.ws.close_code == 1012
    row = await survivor.row("dev-1")
    assert row["connectionId"] is None, "a fenced pod wrote nothing for the row"
    # The daemon comes back through the survivor with the connection id it was given.
    back = await survivor.reopen(daemon)
    assert await back.ping() == {"type": "pong"}
    row = await survivor.row("dev-1")
    assert (row["podId"], row["connectionId"]) == ("pod-b", daemon.connection_id)
    await back.ws.close()


async def test_a_frame_sent_to_another_pod_reaches_the_socket_and_its_answer_comes_back(
    start_platform: StartPlatform, start_pod: StartPod, postgres_url: str
) -> None:
    pod_b, pod_a = await _two_pods(start_platform, start_pod, postgres_url)
    daemon = await pod_b.at(pod_a.url).connect("dev-1")  # its socket is on pod-a

    answered = await sync_through(pod_b, daemon, "s-1")  # asked of pod-b
    assert answered.status_code == 200, answered.text
    assert answered.json() == {"type": "sync_response", "request_id": "s-1", "success": True}

    change = {"type": "change_device_state", "payload": {"mode": "acceptEdits"}}
    told = await pod_b.send_frame(daemon.connection_id, change)
    assert told.status_code == 204
    assert (await daemon.receive())["payload"] == {"mode": "acceptEdits"}

    other = await pod_b.send_frame("conn-unknown", change)
    assert other.status_code == 404
    await daemon.ws.close()


async def test_a_new_socket_on_another_pod_closes_the_old_one_as_replaced(
    start_platform: StartPlatform, start_pod: StartPod, postgres_url: str
) -> None:
    pod_b, pod_a = await _two_pods(start_platform, start_pod, postgres_url)
    old = await pod_b.at(pod_a.url).connect("dev-1")
    assert await old.ping() == {"type": "pong"}
    new = await pod_b.reopen(old)
    await old.wait_closed()
    assert (old.ws.close_code, old.ws.close_reason) == (1000, "Replaced by new connection")
    assert await new.ping() == {"type": "pong"}
    row = await pod_b.row("dev-1")
    assert (row["podId"], row["connectionId"]) == ("pod-b", new.connection_id)
    await new.ws.close()


async def test_a_message_whose_signal_was_lost_is_read_at_the_next_renewal(
    start_platform: StartPlatform, start_pod: StartPod, postgres_url: str
) -> None:
    """Left in the table with no NOTIFY, as if the listening connection had been down."""
    pod_b, pod_a = await _two_pods(start_platform, start_pod, postgres_url)
    daemon = await pod_b.at(pod_a.url).connect("dev-1")
    row = await pod_b.row("dev-1")
    await fetch(
        postgres_url,
        "INSERT INTO pod_messages (pod_id, kind, row_id, connection_id, body) "
        "VALUES ('pod-a', 'replace', $1, $2, '')",
        row["id"],
        daemon.connection_id,
    )
    await daemon.wait_closed()
    assert daemon.ws.close_code == 1000


async def test_a_dropped_listening_connection_is_replaced(
    start_platform: StartPlatform, start_pod: StartPod, postgres_url: str
) -> None:
    pod_b, pod_a = await _two_pods(start_platform, start_pod, postgres_url)
    database = urlsplit(postgres_url).path.lstrip("/")
    daemon = await pod_b.at(pod_a.url).connect("dev-1")
    connection = await asyncpg.connect(postgres_url)
    try:
        before = [row["pid"] for row in await connection.fetch(LISTENERS, database)]
        assert len(before) == 2, "one listening connection a pod"
        await connection.execute(
            "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", before
        )

        async def current() -> list[int]:
            return [row["pid"] for row in await connection.fetch(LISTENERS, database)]

        after = await wait_for(current, lambda pids: len(pids) == 2 and not set(pids) & set(before))
    finally:
        await connection.close()
    assert len(after) == 2
    assert (await sync_through(pod_b, daemon, "s-2")).status_code == 200
    await daemon.ws.close()


async def test_a_listening_connection_refused_at_first_is_replaced_once_it_can_be(
    start_platform: StartPlatform,
    start_pod: StartPod,
    postgres_server: PostgresServer,
    postgres_url: str,
) -> None:
    """The database drops the listening connections and refuses new ones for a while, the
    pooled ones still working (as when it comes back in stages): a pod listens again later."""
    _, pod_a = await _two_pods(start_platform, start_pod, postgres_url)
    database = urlsplit(postgres_url).path.lstrip("/")
    admin = await asyncpg.connect(postgres_server.dsn)  # the `postgres` database, still open

    async def listeners() -> list[int]:
        return [row["pid"] for row in await admin.fetch(LISTENERS, database)]

    async def refused() -> bool:
        return any("cannot listen" in record["message"] for record in pod_a.records())

    try:
        before = await listeners()
        await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", before
        )
        await wait_for(refused, bool)
        await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
        after = await wait_for(listeners, lambda pids: len(pids) == 2)
    finally:
        await admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
        await admin.close()
    assert not set(after) & set(before)


@pytest.mark.parametrize("pod_count", [2, 3])
async def test_real_daemons_of_a_pod_killed_with_sigkill_come_back_through_the_others(
    start_platform: StartPlatform,
    start_pod: StartPod,
    postgres_url: str,
    spawn: Spawn,
    pod_count: int,
) -> None:
    """Pod processes on one port, as behind a load balancer: the survivors fence the killed
    one within --pod-fence-after-s + --pod-heartbeat-s of its last renewal, its daemons come
    back through them, no row lost or duplicated."""
    client = await pod_client(start_platform, postgres_url)
    port = free_port()
    names = [f"pod-{letter}" for letter in "abc"[:pod_count]]
    pods = {name: await start_pod(postgres_url, name, port) for name in names}
    fleet = client.at(pods[names[0]].url)  # any pod: the kernel picks one a connection
    daemons = [
        await spawn(fleet.url, client.key, state=f"d{n}", instance=f"i{n}") for n in range(9)
    ]
    statuses = [await daemon.wait_status(online) for daemon in daemons]

    before = await wait_for(
        lambda: fleet.rows(limit="100"), lambda found: all(r["podId"] for r in found)
    )
    assert len(before) == 9
    victim = min(row["podId"] for row in before)  # a pod that holds daemons
    await pods[victim].kill()
    moved = {row["deviceId"] for row in before if row["podId"] == victim}
    for daemon, status in zip(daemons, statuses, strict=True):
        if status["deviceId"] in moved:  # back with the connection id it had
            back = await daemon.wait_status(lambda s: online(s) and s["connects"] >= 2)
            assert back["registrations"] == 1
    after = await wait_for(
        lambda: fleet.rows(limit="100"),
        lambda found: all(r["connectionId"] and r["podId"] != victim for r in found),
    )
    assert sorted(r["id"] for r in after) == sorted(r["id"] for r in before)
    assert sorted(r["firstSeenAt"] for r in after) == sorted(r["firstSeenAt"] for r in before)

    [fenced] = await wait_for(
        lambda: fetch(postgres_url, "SELECT * FROM pods WHERE id = $1", victim),
        lambda found: found[0]["fenced_at"] is not None,
    )
    silent_ms = fenced["fenced_at"] - fenced["heartbeat_at"]
    bound_ms = (FENCE_AFTER_S + HEARTBEAT_S) * 1000 + FENCE_SLACK_MS
    assert FENCE_AFTER_S * 1000 < silent_ms <= bound_ms
    assert not [error for name in names if name != victim for error in pods[name].errors()]
