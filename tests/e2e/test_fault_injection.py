"""Fault injection: the platform killed with SIGKILL and started again, over and over, under a
fleet of live simulated daemons (the benchmark's load generator, which speaks the protocol with
the daemon's own registration, policy and socket options).

After every restart, every daemon must be online again within a bound, and the rows must be
exactly the rows there were: none lost, none duplicated, the same ids and first-seen times.
"""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import pytest

from agent.protocol.models import EnvironmentRow
from tests.bench.fixtures import PlatformProcess, start_platform
from tests.bench.loadgen_client import LoadGen
from tests.bench.procs import Workspace
from tests.helpers import free_port

pytestmark = pytest.mark.slow

FLEET = 500
RESTARTS = 20
BACK_WITHIN_S = 60.0
"""The bound on the fleet's return after each restart (it takes a few seconds here)."""
PERIOD_S = 0.5
"""The fleet's heartbeat period: short, so that a daemon's backoff starts over (it must have
stayed up one period) between one kill and the next, as in a fleet that ran a while."""


async def all_rows(platform: PlatformProcess, **params: str) -> list[EnvironmentRow]:
    """Every row, walking the pages, as a client would."""
    rows: list[EnvironmentRow] = []
    after: str | None = None
    async with aiohttp.ClientSession() as http:
        while True:
            page = await platform.listing(
                http, limit="100", **params, **({"after": after} if after else {})
            )
            rows += page.connections
            if not page.has_next_page:
                return rows
            after = page.connections[-1].id


async def settled(platform: PlatformProcess) -> None:
    """Wait until every daemon has stayed up one period on its socket (its first ping since
    then recorded): only then does its backoff start over, as in a fleet that ran a while.
    Killing sooner makes the last daemons back double their backoff at every restart."""
    deadline = asyncio.get_running_loop().time() + BACK_WITHIN_S
    while True:
        rows = await all_rows(platform)
        if all(
            row.connected_at is not None
            and row.last_heartbeat is not None
            and row.last_heartbeat - row.connected_at >= PERIOD_S * 1000
            for row in rows
        ):
            return
        assert asyncio.get_running_loop().time() < deadline, "the fleet did not settle"
        await asyncio.sleep(PERIOD_S / 5)


def identities(rows: list[EnvironmentRow]) -> dict[str, tuple[str, int]]:
    """deviceId -> (row id, firstSeenAt); fails on a duplicated device."""
    found = {row.device_id: (row.id, row.first_seen_at) for row in rows}
    assert len(found) == len(rows), "a device has two rows"
    return found


@pytest.mark.timeout(600)
async def test_sigkill_and_restart_twenty_times_under_five_hundred_daemons() -> None:
    async with Workspace() as workspace:
        db = workspace.path("platform") / "platform.db"
        platform = await start_platform(workspace, db, port=free_port())
        loadgen = await LoadGen.start(workspace, platform, PERIOD_S)
        try:
            await loadgen.grow(FLEET, BACK_WITHIN_S)
            before = identities(await all_rows(platform))
            assert len(before) == FLEET
            for restart in range(RESTARTS):
                await settled(platform)
                await loadgen.command({"op": "record"}, 0)
                assert await platform.child.stop(signal.SIGKILL) == -signal.SIGKILL
                platform = await start_platform(workspace, db, port=platform.port)
                back = await loadgen.command(
                    {"op": "until_back", "within_s": BACK_WITHIN_S}, BACK_WITHIN_S
                )
                assert back["complete"], f"restart {restart}: {back['back']} of {FLEET} back"
                assert identities(await all_rows(platform)) == before, f"restart {restart}"
                online = await all_rows(platform, onlineOnly="true")
                assert len(online) == FLEET, f"restart {restart}: {len(online)} online"
        finally:
            await loadgen.stop()
            await platform.child.stop()
