"""A whole-database outage under two pod processes and real daemons: PostgreSQL itself is shut
down, then started again with its data. The server is this test's own, so that no other test's
database goes away with it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agent.support.clock import now_ms
from tests.conftest import StartPlatform, StartPod
from tests.daemon_helpers import DaemonProcess, Spawn, online
from tests.helpers import Platform, wait_for
from tests.pod_helpers import FENCE_AFTER_S, fetch, pod_client
from tests.postgres import PostgresServer

OUTAGE_S = 3 * FENCE_AFTER_S
"""Longer than --pod-fence-after-s: every pod's lease has lapsed when the database is back."""
PONGS = 3
"""Pongs each daemon gets during the outage, at least (one every 200 ms)."""


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    with PostgresServer.start() as server:
        yield server


async def _register(pod: Platform, device_id: str) -> httpx.Response:
    body = {"deviceId": device_id, "connectionName": device_id}
    return await pod.http.post(f"{pod.url}/v1/environments/register", json=body, headers=pod.auth())


async def _statuses(daemons: list[DaemonProcess]) -> list[dict[str, Any]]:
    return [await daemon.status() for daemon in daemons]


async def test_a_whole_database_outage_answers_503_keeps_pongs_and_every_daemon_comes_back(
    own_postgres: PostgresServer, start_platform: StartPlatform, start_pod: StartPod, spawn: Spawn
) -> None:
    """While the database is down: registrations and listings 503 with Retry-After, pongs on
    every socket. Once it is back: every pod renews its lease and none is fenced (each waits
    a fence-after period of reaching the database before judging the others), so every
    daemon keeps its socket; every row is online, none lost or duplicated, and frames cross
    pods again."""
    database_url = own_postgres.create_database()
    client = await pod_client(start_platform, database_url)
    processes = [await start_pod(database_url, name) for name in ("pod-a", "pod-b")]
    pods = [client.at(process.url) for process in processes]
    daemons = [
        await spawn(pods[n % 2].url, client.key, state=f"d{n}", instance=f"i{n}") for n in range(4)
    ]
    for daemon in daemons:
        await daemon.wait_status(online)
    before = await wait_for(lambda: pods[0].rows(), lambda found: all(r["podId"] for r in found))
    assert sorted(r["podId"] for r in before) == ["pod-a", "pod-a", "pod-b", "pod-b"]

    await asyncio.to_thread(own_postgres.shut_down)
    loop = asyncio.get_running_loop()
    down_at = loop.time()
    pongs_then = [s["heartbeats"]["answered"] for s in await _statuses(daemons)]
    for pod in pods:
        for refused in (await pod.list(), await _register(pod, "dev-new")):
            assert refused.status_code == 503, refused.text
            assert refused.headers["Retry-After"].isdigit()
    during = await wait_for(
        lambda: _statuses(daemons),
        lambda found: (
            loop.time() - down_at > OUTAGE_S
            and all(
                status["heartbeats"]["answered"] >= then + PONGS
                for status, then in zip(found, pongs_then, strict=True)
            )
        ),
        within=OUTAGE_S + 10.0,
    )
    assert [status["connects"] for status in during] == [1] * 4, "no socket dropped"

    await asyncio.to_thread(own_postgres.start_again)
    back_at = now_ms()
    judged_ms = int(2 * FENCE_AFTER_S * 1000)
    leases = await wait_for(
        lambda: fetch(database_url, "SELECT * FROM pods WHERE id LIKE 'pod-%' ORDER BY id"),
        # renewed, past the time at which a fence would have come
        lambda found: all(r["heartbeat_at"] > back_at + judged_ms for r in found),
    )
    assert [(r["generation"], r["fenced_at"]) for r in leases] == [(1, None)] * 2, "none fenced"
    after = await wait_for(
        lambda: pods[1].list(),
        lambda reply: (
            reply.status_code == 200
            and all(row["connectionId"] for row in reply.json()["connections"])
        ),
    )
    rows = after.json()["connections"]
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in before)
    assert sorted(r["firstSeenAt"] for r in rows) == sorted(r["firstSeenAt"] for r in before)
    for n, daemon in enumerate(daemons):
        back = await daemon.status()
        assert online(back) and (back["connects"], back["registrations"]) == (1, 1)
        asked = await pods[1 - n % 2].send_frame(
            back["connectionId"], {"type": "sync", "request_id": f"s-{n}"}
        )
        assert asked.status_code == 200, asked.text
    for n, pod in enumerate(pods):
        assert (await _register(pod, f"dev-after-{n}")).status_code == 201
    assert not [error for process in processes for error in process.errors()]
