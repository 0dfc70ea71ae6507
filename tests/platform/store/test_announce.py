"""PostgreSQL carries the live channel's changes and heartbeats between pods: every change
announced reaches every listening pod, in order, however many fill one NOTIFY; the heartbeats of
one announcement reach each listener whole, however many NOTIFYs they fill; a payload no pod
wrote is ignored."""

from __future__ import annotations

import asyncpg

from agent.platform.store.base import Beat, RowRef
from agent.platform.store.opening import open_store
from agent.platform.store.postgres import CHANGES_CHANNEL, HEARTBEATS_CHANNEL
from tests.helpers import wait_for

PODS = ("pod-1", "pod-2")


async def test_every_change_and_heartbeat_reaches_every_listener_in_order(
    postgres_url: str,
) -> None:
    announcer, listener = await open_store(postgres_url), await open_store(postgres_url)
    heard: dict[str, list[RowRef]] = {pod: [] for pod in PODS}
    beaten: dict[str, list[list[Beat]]] = {pod: [] for pod in PODS}
    listening = [
        await listener.listen(pod, lambda: None, heard[pod].extend, beaten[pod].append)
        for pod in PODS
    ]
    try:
        outsider = await asyncpg.connect(postgres_url)
        try:
            for channel in (CHANGES_CHANNEL, HEARTBEATS_CHANNEL):
                await outsider.execute(f"NOTIFY {channel}, 'not ours'")
        finally:
            await outsider.close()
        # Well past one NOTIFY's 8,000 bytes: several payloads, one statement.
        changes = [RowRef(f"org-{n % 7}", f"env-{n:05}-{'x' * 36}") for n in range(1_000)]
        await announcer.announce(changes)
        beats = [
            Beat(f"org-{n % 7}", f"env-{n:05}-{'x' * 36}", 1_700_000_000_000 + n)
            for n in range(1_000)
        ]
        await announcer.announce([], beats)  # a pod's flush of 1,000 heartbeats
        await announcer.announce(changes[:1], beats[:2])  # a change and a flush, together

        async def counts() -> list[tuple[int, int]]:
            return [(len(heard[pod]), len(beaten[pod])) for pod in PODS]

        await wait_for(counts, lambda found: found == [(1_001, 2)] * 2)
        for pod in PODS:
            assert heard[pod] == [*changes, changes[0]]
            assert beaten[pod] == [beats, beats[:2]]  # each announcement whole, once
    finally:
        for each in listening:
            await each.stop()
        await announcer.close()
        await listener.close()
