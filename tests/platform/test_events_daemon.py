"""The live channel with real daemons (`python -m agent run`): a daemon going online, its mode
set through its local API and through the platform, its working directory moved by the
platform, and its stop, each reach a stream within 2 s; its heartbeats (every 200 ms) do not."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import on_both_backends
from tests.daemon_helpers import Spawn, online
from tests.events_helpers import EventReader, nothing_before, settle, subscribed
from tests.helpers import Platform

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
