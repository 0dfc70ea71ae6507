"""The live channel with real daemons (`python -m agent run`): a daemon going online, its mode
set through its local API and through the platform, its working directory moved by the
platform, and its stop, each reach a stream within 2 s; its heartbeats (every 200 ms) send no
row, but one `heartbeats` event a presence flush, to its organization's streams only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from agent.platform.access import ApiKey
from agent.platform.keys import create_key
from tests.conftest import on_both_backends
from tests.daemon_helpers import Spawn, online
from tests.events_helpers import (
    EventReader,
    events_before,
    flushes,
    nothing_before,
    settle,
    subscribed,
)
from tests.helpers import Platform
from tests.metrics_helpers import scrape

WITHIN_S = 2.0
"""The live channel's promise: a change reaches a stream within 2 s."""


async def _shown(events: EventReader, accept: Any, since: float) -> dict[str, Any]:
    """The row `accept` likes, which must come within `WITHIN_S` of `since`."""
    row: dict[str, Any] = await events.row_where(accept, within=WITHIN_S)
    assert time.monotonic() - since < WITHIN_S
    return row


@on_both_backends
async def test_a_daemon_s_life_reaches_a_stream_and_its_heartbeats_do_not(
    platform: Platform, spawn: Spawn, repo: Path, tmp_path: Path
) -> None:
    async with subscribed(platform) as (events, _):
        daemon = await spawn(platform.url, platform.key, cwd=tmp_path)
        status = await daemon.wait_status(online)
        connection_id = status["connectionId"]
        row = await _shown(events, lambda r: r["connectionId"] == connection_id, time.monotonic())
        assert row["deviceId"] == status["deviceId"] and row["currentMode"] == "default"

        await settle(events, platform, "marker-1")
        beats = (await daemon.status())["heartbeats"]["answered"]
        await daemon.wait_status(lambda s: s["heartbeats"]["answered"] >= beats + 5)
        await nothing_before(events, platform, "marker-2")

        token = (tmp_path / "daemon" / "envagent" / "local-api-token").read_text().strip()
        async with httpx.AsyncClient(base_url=await daemon.local_url()) as local:
            asked = time.monotonic()
            put = await local.put(
                "/v1/mode",
                json={"mode": "unrestricted"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert put.status_code == 200, put.text
        await _shown(events, lambda r: r["currentMode"] == "unrestricted", asked)

        frames = f"{platform.url}/v1/environments/{connection_id}/frames"
        change = {"type": "change_device_state", "payload": {"mode": "bypassPermissions"}}
        asked = time.monotonic()
        sent = await platform.http.post(frames, json=change, headers=platform.auth())
        assert sent.status_code == 204
        await _shown(events, lambda r: r["currentMode"] == "bypassPermissions", asked)

        move = {"type": "change_device_state", "payload": {"cwd": str(repo)}}
        asked = time.monotonic()
        sent = await platform.http.post(frames, json=move, headers=platform.auth())
        assert sent.status_code == 204
        moved = await _shown(
            events, lambda r: r["metadata"]["workingDirectory"] == str(repo), asked
        )
        assert moved["metadata"]["gitBranch"] == "main"
        assert moved["currentMode"] == "bypassPermissions"

        asked = time.monotonic()
        assert await daemon.stop() == 0
        left = await _shown(events, lambda r: r["connectionId"] is None, asked)
        assert left["deviceId"] == status["deviceId"]


@on_both_backends
async def test_a_daemon_s_heartbeats_reach_its_organization_s_streams_once_a_flush(
    platform: Platform, spawn: Spawn, tmp_path: Path
) -> None:
    other = await create_key(platform.server.store, ApiKey("org-other", "user-eve", None))
    async with subscribed(platform) as (events, _), subscribed(platform, other) as (stranger, _):
        daemon = await spawn(platform.url, platform.key, cwd=tmp_path)
        status = await daemon.wait_status(online)
        row_id = (await platform.row(status["deviceId"]))["id"]
        flushed, answered = await flushes(platform), status["heartbeats"]["answered"]
        seen = [await events.heartbeats(within=WITHIN_S) for _ in range(4)]
        flushed = await flushes(platform) - flushed
        answered = (await daemon.status())["heartbeats"]["answered"] - answered

        assert [set(beats) for beats in seen] == [{row_id}] * 4  # the one row of org-dev
        values = [beats[row_id] for beats in seen]
        assert values == sorted(set(values)), values  # each newer than the last
        # At most one a flush (the first may come from a flush before the count), however
        # many pings each flush holds: never one a heartbeat.
        assert len(seen) <= flushed + 1, (len(seen), flushed)
        assert answered >= 2 * len(seen), (answered, len(seen))
        assert (await platform.row(status["deviceId"]))["lastHeartbeat"] >= values[-1]
        # Another organization's stream had none of it, nor anything else.
        assert await events_before(stranger, platform, "marker", other) == []
        sent = await scrape(platform.http, platform.url)
        assert sent.value("envagent_platform_events_sent_total", type="heartbeats") >= 4
