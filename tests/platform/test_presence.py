"""Heartbeats batched: many pings cost a few statements, a change of mode is written at once,
and a socket's close supersedes a ping that waits."""

from __future__ import annotations

import asyncio

from agent.platform.store.opening import open_store
from agent.support.clock import now_ms
from tests.conftest import StartPlatform, on_both_backends
from tests.helpers import Platform, wait_for


async def _clock() -> int:
    return now_ms()


@on_both_backends
async def test_many_pings_cost_a_few_statements_and_all_are_recorded(platform: Platform) -> None:
    daemons = [await platform.connect(f"dev-{n}") for n in range(20)]
    before = platform.server.relay.presence.statements
    for _ in range(5):
        assert await asyncio.gather(*(d.ping() for d in daemons)) == [{"type": "pong"}] * 20
    pinged = await platform.rows()
    await wait_for(
        platform.rows,
        lambda rows: all(row["lastHeartbeat"] > row["connectedAt"] for row in rows),
    )
    statements = platform.server.relay.presence.statements - before
    assert 1 <= statements < 10, f"{statements} statements for 100 pings"
    assert len(pinged) == 20
    for daemon in daemons:
        await daemon.ws.close()


@on_both_backends
async def test_a_new_mode_in_a_ping_is_written_at_once(platform: Platform) -> None:
    daemon = await platform.connect("dev-1")
    assert await daemon.ping(mode="acceptEdits") == {"type": "pong"}
    assert (await platform.row("dev-1"))["currentMode"] == "acceptEdits"  # no wait
    assert await daemon.ping(mode="bypassPermissions") == {"type": "pong"}
    assert (await platform.row("dev-1"))["currentMode"] == "bypassPermissions"
    await daemon.ws.close()


async def test_stopping_the_platform_leaves_no_ping_behind_its_rows_offline(
    start_platform: StartPlatform,
) -> None:
    """A ping that waits is superseded by the socket's close, which is written at once."""
    platform = await start_platform(presence_flush_s=3600.0)
    daemon = await platform.connect("dev-1")
    connected_at = (await platform.row("dev-1"))["connectedAt"]
    await wait_for(_clock, lambda now: now > connected_at)  # a later millisecond than it
    assert await daemon.ping() == {"type": "pong"}
    assert (await platform.row("dev-1"))["lastHeartbeat"] == connected_at, "it waits"
    settings = platform.server.settings
    await platform.server.stop()
    store = await open_store(settings.database)
    try:
        row = await store.get_by_name("org-dev", "dev-1")
    finally:
        await store.close()
    assert row is not None and row.connection_id is None
    assert row.last_seen_at > connected_at
