"""The live channel across pods sharing PostgreSQL: a stream on one pod shows, within 2 s, what
a daemon does on another, and gets its heartbeats, one event a flush of that pod; a fenced
pod's rows show as left; a pod whose listening connection
was dropped (so it may have missed changes) ends its streams cleanly, and the next ones work."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx

from tests.conftest import StartPlatform, StartPod
from tests.daemon_helpers import Spawn, online
from tests.events_helpers import EventReader, store_calls, subscribed
from tests.helpers import wait_for
from tests.metrics_helpers import scrape
from tests.pod_helpers import FENCE_AFTER_S, HEARTBEAT_S, pod_client

WITHIN_S = 2.0
"""The live channel's promise: a change reaches a stream on any pod within 2 s."""
LISTENERS = (
    "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN%' ORDER BY pid"
)


async def _shown(events: EventReader, accept: Any, since: float) -> None:
    """The row `accept` likes reaches the stream within `WITHIN_S` of `since`."""
    await events.row_where(accept, within=WITHIN_S)
    assert time.monotonic() - since < WITHIN_S


async def test_a_daemon_on_one_pod_shows_on_a_stream_of_another_within_two_seconds(
    start_platform: StartPlatform,
    start_pod: StartPod,
    postgres_url: str,
    spawn: Spawn,
    tmp_path: Path,
) -> None:
    client = await pod_client(start_platform, postgres_url)
    pod_a, pod_b = await start_pod(postgres_url, "pod-a"), await start_pod(postgres_url, "pod-b")
    async with subscribed(client.at(pod_a.url)) as (events, _):  # the stream on pod-a
        daemon = await spawn(pod_b.url, client.key)  # the daemon on pod-b
        status = await daemon.wait_status(online)
        connection_id = status["connectionId"]
        await events.row_where(lambda r: r["connectionId"] == connection_id, within=WITHIN_S)
        row = await client.at(pod_a.url).row(status["deviceId"])
        assert row["podId"] == "pod-b"

        token = (tmp_path / "daemon" / "envagent" / "local-api-token").read_text().strip()
        async with httpx.AsyncClient(base_url=await daemon.local_url()) as local:
            asked = time.monotonic()
            put = await local.put(
                "/v1/mode",
                json={"mode": "acceptEdits"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert put.status_code == 200, put.text
        await _shown(events, lambda r: r["currentMode"] == "acceptEdits", asked)

        # Asked of pod-a, whose socket pod-b holds: the frame and the change both cross pods.
        change = {"type": "change_device_state", "payload": {"mode": "unrestricted"}}
        asked = time.monotonic()
        sent = await client.at(pod_a.url).send_frame(connection_id, change)
        assert sent.status_code == 204
        await _shown(events, lambda r: r["currentMode"] == "unrestricted", asked)

        asked = time.monotonic()
        assert await daemon.stop() == 0
        await _shown(events, lambda r: r["connectionId"] is None, asked)
    assert pod_a.errors() == [] and pod_b.errors() == []


async def test_a_stream_on_one_pod_gets_the_heartbeats_of_a_daemon_on_another(
    start_platform: StartPlatform, start_pod: StartPod, postgres_url: str, spawn: Spawn
) -> None:
    client = await pod_client(start_platform, postgres_url)
    pod_a, pod_b = await start_pod(postgres_url, "pod-a"), await start_pod(postgres_url, "pod-b")
    async with subscribed(client.at(pod_a.url)) as (events, _):  # the stream on pod-a
        daemon = await spawn(pod_b.url, client.key)  # the daemon on pod-b, pinging every 200 ms
        status = await daemon.wait_status(online)
        row = await client.at(pod_a.url).row(status["deviceId"])
        assert row["podId"] == "pod-b"
        before = await scrape(client.http, pod_b.url)
        seen = [await events.heartbeats(within=WITHIN_S) for _ in range(4)]
        after = await scrape(client.http, pod_b.url)
        values = [beats[row["id"]] for beats in seen]
        assert values == sorted(set(values)), values
        flushed = store_calls(after, "record_heartbeats") - store_calls(before, "record_heartbeats")
        assert len(seen) <= flushed + 1, (len(seen), flushed)
        # One announcement a flush at most (a slow one merges the next), none a heartbeat.
        assert store_calls(after, "announce") - store_calls(before, "announce") <= flushed + 1
    assert pod_a.errors() == [] and pod_b.errors() == []


async def test_a_fenced_pod_s_rows_show_as_left(
    start_platform: StartPlatform, start_pod: StartPod, postgres_url: str
) -> None:
    survivor = await start_platform(
        database_url=postgres_url,
        pod_id="pod-b",
        pod_heartbeat_s=HEARTBEAT_S,
        pod_fence_after_s=FENCE_AFTER_S,
    )
    pod_a = await start_pod(postgres_url, "pod-a")
    async with subscribed(survivor) as (events, _):
        daemon = await survivor.at(pod_a.url).connect("dev-1")
        await events.row_where(lambda r: r["connectionId"] == daemon.connection_id)
        pod_a.signal(signal.SIGSTOP)  # silent, its socket open: fenced by pod-b
        try:
            left = await events.row_where(
                lambda r: r["connectionId"] is None, within=FENCE_AFTER_S + 5.0
            )
        finally:
            pod_a.signal(signal.SIGCONT)
        assert (left["deviceId"], left["podId"]) == ("dev-1", None)
    await daemon.wait_closed()  # woken, pod-a lets its socket go (1012)


async def test_a_pod_restarted_under_its_id_shows_its_earlier_rows_as_left(
    start_platform: StartPlatform, start_pod: StartPod, postgres_url: str
) -> None:
    """Joining again frees the rows of the pod's earlier life at once, long before another
    pod would fence it: the streams of the others show them left."""
    survivor = await start_platform(
        database_url=postgres_url,
        pod_id="pod-a",
        pod_heartbeat_s=HEARTBEAT_S,
        pod_fence_after_s=60.0,  # no fencing here: the restart alone frees the row
    )
    pod_b = await start_pod(postgres_url, "pod-b")
    async with subscribed(survivor) as (events, _):
        daemon = await survivor.at(pod_b.url).connect("dev-1")
        await events.row_where(lambda r: r["connectionId"] == daemon.connection_id)
        await pod_b.kill()  # SIGKILL: nothing said
        await start_pod(postgres_url, "pod-b")
        left = await events.row_where(lambda r: r["connectionId"] is None)
        assert (left["deviceId"], left["podId"]) == ("dev-1", None)


async def test_streams_of_a_pod_that_could_not_listen_end_and_new_ones_work(
    start_platform: StartPlatform, postgres_url: str
) -> None:
    platform = await start_platform(database_url=postgres_url, pod_heartbeat_s=HEARTBEAT_S)
    database = urlsplit(postgres_url).path.lstrip("/")
    async with subscribed(platform) as (events, _):
        connection = await asyncpg.connect(postgres_url)
        try:
            before = [row["pid"] for row in await connection.fetch(LISTENERS, database)]
            assert len(before) == 1
            await connection.execute(
                "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", before
            )
            assert await events.ended() == []  # cleanly: its page reads the listing again

            async def listening() -> list[int]:
                return [row["pid"] for row in await connection.fetch(LISTENERS, database)]

            await wait_for(listening, lambda pids: len(pids) == 1 and pids != before)
        finally:
            await connection.close()
    async with subscribed(platform) as (events, _):
        await platform.register("dev-1")
        assert (await events.next_event()).row()["deviceId"] == "dev-1"
