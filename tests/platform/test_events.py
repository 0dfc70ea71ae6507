"""The live channel (`GET /v1/environments/events`), read as the dashboard reads it: `ready`
first, then one `environment` event, the row exactly as the listing shows it, for each change
a person sees and none for a heartbeat (which comes as `heartbeats`: test_events_daemon); one
organization's stream never shows another's rows; the key is checked as the listing checks it;
streams are capped, kept alive, cut when their reader falls behind, ended when the platform
stops; a changed row is read once however many streams show it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest

from agent.platform.access import ApiKey
from agent.platform.keys import create_key
from agent.protocol.constants import ONLINE_WINDOW_MS
from agent.protocol.models import EventsReady
from tests.conftest import StartPlatform, on_both_backends
from tests.events_helpers import EVENTS_PATH, nothing_before, settle, store_calls, subscribed
from tests.helpers import WAIT_S, Platform, wait_for
from tests.metrics_helpers import scrape

PRESENCE = ("lastHeartbeat", "lastSeenAt")
"""What batched heartbeats may move between an event and a read of the listing."""


def _without_presence(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if key not in PRESENCE}


@on_both_backends
async def test_ready_then_every_change_a_person_sees_and_no_heartbeat(platform: Platform) -> None:
    async with subscribed(platform) as (events, ready):
        assert ready == EventsReady(online_window_ms=ONLINE_WINDOW_MS, heartbeat_interval_ms=30_000)
        await platform.register("dev-1", currentMode="default")
        registered = (await events.next_event()).row()
        assert registered["connectionId"] is None and registered["deviceId"] == "dev-1"
        assert registered == await platform.row("dev-1")  # exactly the listing's row
        daemon = await platform.connect("dev-1", currentMode="default")  # registers again
        opened = await events.row_where(lambda row: row["connectionId"] == daemon.connection_id)
        assert _without_presence(opened) == _without_presence(await platform.row("dev-1"))
        await settle(events, platform, "marker-1")

        for _ in range(3):  # heartbeats alone: no row to show
            assert await daemon.ping() == {"type": "pong"}
        await nothing_before(events, platform, "marker-2")
        assert await daemon.ping(mode="acceptEdits") == {"type": "pong"}
        moded = (await events.next_event()).row()
        assert moded["currentMode"] == "acceptEdits"
        assert moded["lastHeartbeat"] >= opened["lastHeartbeat"]  # the ping's, with the mode

        assert await daemon.ping(mode="acceptEdits") == {"type": "pong"}  # the same mode
        same = {"current_permission_mode": "acceptEdits"}
        await daemon.send({"type": "update_device_status", "device_status": same})
        await nothing_before(events, platform, "marker-3")
        status = {
            "current_working_directory": "/srv/app",
            "git_context": {"branch": "feature"},
            "connection_name": "renamed",
        }
        await daemon.send({"type": "update_device_status", "device_status": status})
        moved = (await events.next_event()).row()
        assert moved["metadata"]["workingDirectory"] == "/srv/app"
        assert moved["metadata"]["gitBranch"] == "feature"
        assert moved["connectionName"] == "renamed"
        assert _without_presence(moved) == _without_presence(await platform.row("dev-1"))

        await daemon.send({"type": "disconnect", "reason": "bye"})
        left = (await events.next_event()).row()
        assert (left["connectionId"], left["connectedAt"], left["podId"]) == (None, None, None)
        await daemon.ws.close()

        again = await platform.connect("dev-1")  # registering again: a new connection id
        back = await events.row_where(lambda row: row["connectionId"] is not None)
        assert back["connectionId"] == again.connection_id != daemon.connection_id
        await again.ws.close()  # a socket's end: the row left
        assert (await events.next_event()).row()["connectionId"] is None


@on_both_backends
async def test_a_stream_shows_its_own_organization_only(platform: Platform) -> None:
    store = platform.server.store
    key_a = await create_key(store, ApiKey("org-a", "user-a", None))
    key_b = await create_key(store, ApiKey("org-b", "user-b", None))
    async with subscribed(platform, key_a) as (ours, _), subscribed(platform, key_b) as (theirs, _):
        daemon = await platform.connect("shared-device", key_a)
        online = await ours.row_where(lambda row: row["connectionId"] == daemon.connection_id)
        assert online["organizationId"] == "org-a"
        await daemon.ws.close()
        await ours.row_where(lambda row: row["connectionId"] is None)

        await platform.register("shared-device", key_b)  # the same device id, the other org
        first = (await theirs.next_event()).row()  # the first `theirs` saw: none of org-a's
        assert (first["deviceId"], first["organizationId"]) == ("shared-device", "org-b")
    async with subscribed(platform) as (dev, _):  # the development key's org-dev: neither
        await platform.register("dev-own")
        assert (await dev.next_event()).row()["deviceId"] == "dev-own"


@on_both_backends
async def test_the_key_is_checked_as_the_listing_checks_it(platform: Platform) -> None:
    for headers in ({}, platform.auth("envk_unknown"), {"Authorization": platform.key}):
        stream = await platform.http.get(f"{platform.url}{EVENTS_PATH}", headers=headers)
        listing = await platform.http.get(f"{platform.url}/v1/environments", headers=headers)
        assert stream.status_code == listing.status_code == 401
        assert stream.json() == listing.json()
    head = await platform.http.head(f"{platform.url}{EVENTS_PATH}", headers=platform.auth())
    assert head.status_code == 200 and head.content == b""  # the headers, and no stream
    assert head.headers["content-type"] == "text/event-stream"


async def test_an_idle_stream_carries_a_keep_alive_comment(
    start_platform: StartPlatform,
) -> None:
    platform = await start_platform(events_keepalive_s=0.05)
    async with subscribed(platform) as (events, _):
        for _ in range(2):
            comment = await events.next()
            assert (comment.name, comment.data) == (None, "keep-alive")
        await platform.register("dev-1")
        assert (await events.next_event()).row()["deviceId"] == "dev-1"


async def test_streams_beyond_the_pod_s_limit_are_refused_503(
    start_platform: StartPlatform,
) -> None:
    # A short keep-alive: a reader that left is noticed at the next write.
    platform = await start_platform(max_event_streams=2, events_keepalive_s=0.05)
    url = f"{platform.url}{EVENTS_PATH}"
    async with subscribed(platform), subscribed(platform):
        refused = await platform.http.get(url, headers=platform.auth())
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "5"
        assert refused.json()["error"] == "unavailable"
        assert "2 event streams" in refused.json()["message"]

    await wait_for(  # the readers left: noticed at the next keep-alive
        lambda: scrape(platform.http, platform.url),
        lambda found: found.value("envagent_platform_event_streams_open") == 0,
    )
    async with subscribed(platform), subscribed(platform):
        pass


@on_both_backends
async def test_a_changed_row_is_read_once_for_every_stream_and_counted(
    platform: Platform,
) -> None:
    async def reads() -> float:
        """The store's reads of changed rows (`Store.rows`) so far."""
        return store_calls(await scrape(platform.http, platform.url), "rows")

    async with (
        subscribed(platform) as (first, _),
        subscribed(platform) as (second, _),
        subscribed(platform) as (third, _),
    ):
        before = await scrape(platform.http, platform.url)
        assert before.value("envagent_platform_event_streams_open") == 3
        read_before = await reads()
        await platform.register("dev-1")
        rows = [(await events.next_event()).row() for events in (first, second, third)]
        assert rows[0] == rows[1] == rows[2]
        assert await reads() == read_before + 1
        after = await scrape(platform.http, platform.url)
        sent = "envagent_platform_events_sent_total"
        assert after.value(sent, type="environment") == before.value(sent, type="environment") + 3


@on_both_backends
async def test_a_reader_that_falls_behind_is_cut_and_the_others_go_on(
    platform: Platform,
) -> None:
    """A stream whose reader stops reading fills the sockets' buffers, then its own bounded
    buffer, and is cut; a reader that keeps up sees every change."""
    notes = "x" * 48_000  # near the 64 KiB body limit: few changes fill the buffers
    async with subscribed(platform) as (stuck, _), subscribed(platform) as (reading, _):

        async def last_seen() -> int:
            """The last change of `big` the reading stream saw, once `last` shows."""
            seen = 0
            while (row := (await reading.next_event()).row())["deviceId"] == "big":
                seen = row["metadata"]["change"]
            return seen

        reading_all = asyncio.create_task(last_seen())
        change = 0
        for change in range(1, 2_000):
            await platform.register("big", metadata={"notes": notes, "change": change})
            found = await scrape(platform.http, platform.url)
            if found.value("envagent_platform_event_streams_cut_total") == 1:
                break
        else:
            pytest.fail("the stuck stream was never cut")
        assert found.value("envagent_platform_event_streams_open") == 1
        await platform.register("last")
        # Changes of one row that come together may be shown once: the last always shows.
        assert await asyncio.wait_for(reading_all, WAIT_S) == change
        with pytest.raises(httpx.HTTPError):  # cut: the body ends before its end
            await stuck.ended()


@on_both_backends
async def test_streams_end_cleanly_when_the_platform_stops(
    platform: Platform, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with subscribed(platform) as (events, _):
        daemon = await platform.connect("dev-1")
        await events.row_where(lambda row: row["connectionId"] == daemon.connection_id)
        await platform.server.stop()
        assert [event.name for event in await events.ended()] in ([], ["environment"])
    tasks = [task for task in asyncio.all_tasks() if "Events" in repr(task.get_coro())]
    assert tasks == []
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]
