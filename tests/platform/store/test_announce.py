"""PostgreSQL carries the live channel's changes between pods: every change announced reaches
every listening pod, in order, however many fill one NOTIFY; a payload no pod wrote is ignored."""

from __future__ import annotations

import asyncpg

from agent.platform.store.base import RowRef
from agent.platform.store.opening import open_store
from agent.platform.store.postgres import CHANGES_CHANNEL
from tests.helpers import wait_for


async def test_every_change_reaches_every_listener_in_order(postgres_url: str) -> None:
    announcer, listener = await open_store(postgres_url), await open_store(postgres_url)
    heard: dict[str, list[RowRef]] = {"pod-1": [], "pod-2": []}
    listening = [
        await listener.listen(pod, lambda: None, heard[pod].extend) for pod in ("pod-1", "pod-2")
    ]
    try:
        outsider = await asyncpg.connect(postgres_url)
        try:
            await outsider.execute(f"NOTIFY {CHANGES_CHANNEL}, 'not ours'")
        finally:
            await outsider.close()
        # Well past one NOTIFY's 8,000 bytes: several payloads, one statement.
        changes = [RowRef(f"org-{n % 7}", f"env-{n:05}-{'x' * 36}") for n in range(1_000)]
        await announcer.announce(changes)

        async def counts() -> list[int]:
            return [len(found) for found in heard.values()]

        await wait_for(counts, lambda found: found == [1_000, 1_000])
        assert heard["pod-1"] == heard["pod-2"] == changes
    finally:
        for each in listening:
            await each.stop()
        await announcer.close()
        await listener.close()
