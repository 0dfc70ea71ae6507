"""The platform's `/metrics`, scraped over HTTP from a real platform that plain WebSocket
clients register with, heartbeat on and answer frames from: every figure reflects what
happened, and no tenant's name is in it."""

from __future__ import annotations

import asyncio

from agent.platform.metrics import LAG_PROBE_S
from tests.conftest import StartPlatform, on_both_backends
from tests.helpers import WAIT_S, Platform, wait_for
from tests.metrics_helpers import Scrape, scrape


async def _scrape(platform: Platform) -> Scrape:
    return await scrape(platform.http, platform.url)


@on_both_backends
async def test_registrations_heartbeats_frames_and_listings_are_counted(
    platform: Platform,
) -> None:
    first = await platform.connect("dev-1")
    await platform.connect("dev-2")
    await platform.register("dev-2")  # the same row again: reused
    bad_key = await platform.http.post(
        f"{platform.url}/v1/environments/register",
        json={"deviceId": "dev-3", "connectionName": "x"},
        headers=platform.auth("envk_unknown"),
    )
    assert bad_key.status_code == 401
    malformed = await platform.http.post(
        f"{platform.url}/v1/environments/register", content=b"{", headers=platform.auth()
    )
    assert malformed.status_code == 400
    for _ in range(3):
        assert await first.ping() == {"type": "pong"}
    await first.ws.send("not json")
    sending = asyncio.create_task(
        platform.send_frame(first.connection_id, {"type": "sync", "request_id": "r-1"})
    )
    assert (await first.receive())["type"] == "sync"
    await first.send({"type": "sync_response", "request_id": "r-1", "success": True})
    assert (await asyncio.wait_for(sending, WAIT_S)).status_code == 200

    before = await _scrape(platform)
    assert before.value("envagent_platform_sockets_open") == 2
    outcomes = {
        outcome: before.value("envagent_platform_registrations_total", outcome=outcome)
        for outcome in before.labels("envagent_platform_registrations_total", "outcome")
    }
    assert outcomes == {
        "created": 2, "reused": 1, "refused_key": 1, "invalid": 1, "forbidden": 0,
        "unavailable": 0, "error": 0,
    }  # fmt: skip
    assert before.value("envagent_platform_pings_total") == 3
    assert before.value("envagent_platform_pongs_total") == 3
    assert before.value("envagent_platform_bad_frames_total") == 1
    assert before.value("envagent_platform_frames_sent_total", type="sync") == 1
    assert before.value("envagent_platform_answers_total", type="sync_response") == 1
    assert before.types["envagent_platform_listing_seconds"] == "histogram"
    operations = before.labels("envagent_platform_store_seconds_count", "operation")
    assert {"find_key", "find_owner", "register", "mark_connected"} <= operations
    registered = before.value("envagent_platform_store_seconds_count", operation="register")
    assert registered == 3  # two rows created, one reused; the refused ones never reached it
    info = before.value("envagent_platform_info", pod=platform.server.settings.pod_id)
    assert info == 1

    listed = before.value("envagent_platform_listing_seconds_count")
    for _ in range(2):
        assert (await platform.list()).status_code == 200
    after = await _scrape(platform)
    assert after.value("envagent_platform_listing_seconds_count") == listed + 2
    bucket = after.value("envagent_platform_listing_seconds_bucket", le="+Inf")
    assert bucket == listed + 2
    assert after.value("envagent_platform_store_seconds_count", operation="list") == listed + 2

    await first.ws.close()
    closed = await wait_for(
        lambda: _scrape(platform),
        lambda now: now.value("envagent_platform_sockets_closed_total") == 1,
    )
    assert closed.value("envagent_platform_sockets_open") == 1


async def test_no_organization_key_device_or_user_is_in_the_scrape(platform: Platform) -> None:
    daemon = await platform.connect("dev-secret-name")
    await daemon.ping()
    text = (await platform.http.get(f"{platform.url}/metrics")).text
    row = daemon.registration["environment"]
    for private in (platform.key, row["organizationId"], row["userId"], row["deviceId"]):
        assert private not in text
    assert daemon.connection_id not in text


async def test_a_socket_without_pings_for_three_periods_is_counted_silent(
    start_platform: StartPlatform,
) -> None:
    """Online in the listing (its socket is open) but dead: what an alert must see."""
    platform = await start_platform(heartbeat_interval_ms=100)
    daemon = await platform.connect("dev-quiet")

    async def silent() -> float:
        return (await _scrape(platform)).value("envagent_platform_sockets_silent")

    assert await wait_for(silent, lambda count: count == 1) == 1
    await daemon.ping()
    assert await silent() == 0, "a ping just now: not silent"
    assert (await _scrape(platform)).value("envagent_platform_heartbeat_period_seconds") == 0.1


async def test_the_event_loop_lag_is_probed_every_second(platform: Platform) -> None:
    probed = await wait_for(
        lambda: _scrape(platform),
        lambda now: now.value("envagent_platform_event_loop_lag_seconds_count") >= 1,
        within=WAIT_S + LAG_PROBE_S,
    )
    assert 0 <= probed.value("envagent_platform_event_loop_lag_seconds_sum") < 1


async def test_two_platforms_in_one_process_count_apart(start_platform: StartPlatform) -> None:
    one = await start_platform(pod_id="pod-one")
    two = await start_platform(db=one.server.settings.db.with_name("two.db"), pod_id="pod-two")
    await one.register("dev-1")
    first, second = await _scrape(one), await _scrape(two)
    assert first.value("envagent_platform_registrations_total", outcome="created") == 1
    assert second.value("envagent_platform_registrations_total", outcome="created") == 0
    assert second.value("envagent_platform_info", pod="pod-two") == 1
