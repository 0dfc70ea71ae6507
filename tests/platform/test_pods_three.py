"""Three pod processes on one PostgreSQL database: frames and replacements find the pod that
holds the socket whichever pod is asked, and pods started together on a new database migrate
it once."""

from __future__ import annotations

import asyncio

import asyncpg

from agent.platform.store.base import SCHEMA_VERSION
from agent.platform.store.postgres import MIGRATION_LOCK
from tests.conftest import StartPlatform, StartPod
from tests.helpers import Platform, wait_for
from tests.pod_helpers import PodProcess, fetch, pod_client, sync_through

REPLACED = (1000, "Replaced by new connection")


async def _three_pods(
    start_platform: StartPlatform, start_pod: StartPod, postgres_url: str
) -> tuple[Platform, list[PodProcess]]:
    """pod-a, pod-b and pod-c, each on a port of its own, and a client with a key."""
    client = await pod_client(start_platform, postgres_url)
    return client, [await start_pod(postgres_url, f"pod-{letter}") for letter in "abc"]


async def test_a_frame_asked_of_either_other_pod_reaches_the_socket_and_is_answered(
    start_platform: StartPlatform, start_pod: StartPod, postgres_url: str
) -> None:
    client, (pod_a, pod_b, pod_c) = await _three_pods(start_platform, start_pod, postgres_url)
    daemon = await client.at(pod_a.url).connect("dev-1")  # its socket is on pod-a
    for asker, request_id in ((pod_c, "s-c"), (pod_b, "s-b")):
        answered = await sync_through(client.at(asker.url), daemon, request_id)
        assert answered.status_code == 200, answered.text
        assert answered.json()["request_id"] == request_id
    await daemon.ws.close()


async def test_each_new_socket_on_another_pod_closes_the_one_before_as_replaced(
    start_platform: StartPlatform, start_pod: StartPod, postgres_url: str
) -> None:
    client, (pod_a, pod_b, pod_c) = await _three_pods(start_platform, start_pod, postgres_url)
    on_a = await client.at(pod_a.url).connect("dev-1")
    on_b = await client.at(pod_b.url).reopen(on_a)
    await on_a.wait_closed()
    assert (on_a.ws.close_code, on_a.ws.close_reason) == REPLACED
    assert (await client.at(pod_c.url).row("dev-1"))["podId"] == "pod-b"

    on_c = await client.at(pod_c.url).reopen(on_a)
    await on_b.wait_closed()
    assert (on_b.ws.close_code, on_b.ws.close_reason) == REPLACED
    assert await on_c.ping() == {"type": "pong"}
    row = await client.at(pod_a.url).row("dev-1")
    assert (row["podId"], row["connectionId"]) == ("pod-c", on_a.connection_id)
    await on_c.ws.close()


async def test_pods_started_together_on_a_new_database_all_serve_it_migrated_once(
    start_pod: StartPod, postgres_url: str
) -> None:
    """The migration lock is held until all three wait for it, so that they do race; then one
    creates the schema and the others find it made."""
    gate = await asyncpg.connect(postgres_url)
    try:
        await gate.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        starting = asyncio.gather(*(start_pod(postgres_url, f"pod-{letter}") for letter in "abc"))
        waiting = (
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        await wait_for(lambda: gate.fetchval(waiting), lambda count: count == 3)
        await gate.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
        pods = await starting
    finally:
        await gate.close()
    versions = await fetch(postgres_url, "SELECT version FROM envagent_schema")
    assert [row["version"] for row in versions] == [SCHEMA_VERSION]
    leases = await fetch(postgres_url, "SELECT id, generation, fenced_at FROM pods ORDER BY id")
    assert [tuple(row) for row in leases] == [(pod.pod_id, 1, None) for pod in pods]
    assert not [error for pod in pods for error in pod.errors()]
