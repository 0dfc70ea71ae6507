"""Heartbeats batched: a pod writes the latest ping of every socket in one statement per short
interval instead of one write per ping.

Only presence waits (`lastHeartbeat`, `lastSeenAt`): what changes a row's state (a socket
opening or closing, a new mode, a status report) is written at once by the relay. The interval
is far inside the online window's slack (a row stays online 120 s after its last heartbeat,
daemons ping every 30 s), so a row is never shown offline because its ping waits here; the
listing's `lastHeartbeat` is at most one interval old. What a flush wrote goes on the live
channel as it is (`Store.on_heartbeats`): one publication per flush, never one per ping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from agent.platform.store.base import Heartbeat, Lease, Store, StoreUnavailable

log = logging.getLogger("envagent.platform")

FLUSH_S = 1.0


class Presence:
    def __init__(self, store: Store, lease: Lease, flush_s: float = FLUSH_S) -> None:
        self._store = store
        self.lease = lease
        """The pod's lease, renewed by the server when the pod joins again."""
        self._flush_s = flush_s
        self._pending: dict[str, Heartbeat] = {}
        self.statements = 0
        """Batches written since the start."""

    def heartbeat(self, row_id: str, connection_id: str, at: int) -> None:
        """A ping: kept until the next flush, the newest of each row only."""
        self._pending[row_id] = Heartbeat(row_id, connection_id, at)

    def forget(self, row_id: str) -> None:
        """The row's state was just written: a waiting ping would only be a wasted write."""
        self._pending.pop(row_id, None)

    async def run(self) -> None:
        """Flush every interval until cancelled (the owner flushes once more after that)."""
        while True:
            await asyncio.sleep(self._flush_s)
            await self.flush()

    async def flush(self) -> None:
        """Write what waits. A database that cannot take it loses these pings (logged by the
        store, once an outage): the next ones, a few seconds later, carry the same news."""
        if not self._pending:
            return
        beats, self._pending = list(self._pending.values()), {}
        with contextlib.suppress(StoreUnavailable):
            await self._store.record_heartbeats(beats, self.lease)
            self.statements += 1
