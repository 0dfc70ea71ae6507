"""The live channel's bus on one pod (`platform.stream` serves it): which rows changed, each read
once, pushed to every stream of its organization here; and the heartbeats each presence flush
wrote, pushed as they are, one event per flush and organization.

The store says which rows a write changed (`Store.on_change`) and which heartbeats a flush wrote
(`Store.on_heartbeats`). Pods sharing PostgreSQL announce both through the database
(`Store.announce`: NOTIFYs every pod listens to), so that a stream on any pod hears of a change
made on any other; on SQLite the one process tells itself. A pod reads a changed row only when
it serves a stream of the row's organization, and once however many of its streams show it; a
heartbeat carries its value, so it is never read. Bursts coalesce without a timer: what changes
while an announcement or a read is under way goes in the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, NamedTuple

from agent.platform.metrics import PlatformMetrics
from agent.platform.settings import PlatformSettings
from agent.platform.store.base import Beat, RowRef, Store, StoreUnavailable
from agent.protocol.models import EventsHeartbeats, WireModel

log = logging.getLogger("envagent.platform")

READY_EVENT = "ready"
ENVIRONMENT_EVENT = "environment"
HEARTBEATS_EVENT = "heartbeats"
KEEPALIVE = b": keep-alive\n\n"
ROWS_PER_READ = 100
"""Changed rows read in one statement: a fenced pod's thousands of rows reach the streams in
steps, each well inside a stream's buffer."""
RETRY_S = 1.0
"""How long an announcement the database refused waits before it is tried again."""
FLUSH_S = 2.0
"""What the last announcements may take when the platform stops, before they are given up."""


class ServerSentEvent(NamedTuple):
    name: str
    """What it is, as the metrics count it."""
    body: bytes
    """As written on the stream."""


def server_sent_event(name: str, data: WireModel) -> ServerSentEvent:
    """One event of a `text/event-stream`: compact JSON holds no newline, so one data line."""
    return ServerSentEvent(name, f"event: {name}\ndata: {data.to_json()}\n\n".encode())


class TooManyStreams(Exception):
    """This pod serves `max_event_streams` already."""


class Stream:
    """One subscriber's waiting events. `push` never blocks and never keeps more than
    `limit_bytes`: a stream whose reader is that far behind is ended and `cut` (its connection
    dropped, since a reader that does not read would not take a clean end either)."""

    def __init__(self, organization_id: str, limit_bytes: int, cut: Callable[[], None]) -> None:
        self.organization_id = organization_id
        self._limit = limit_bytes
        self._cut = cut
        self._waiting: list[ServerSentEvent] = []
        self._size = 0
        self._wake = asyncio.Event()
        self.ended = False
        self.overflowed = False

    def push(self, event: ServerSentEvent) -> None:
        if self.ended:
            return
        if self._size + len(event.body) > self._limit:
            self.overflowed = True
            self.end()
            self._cut()
            return
        self._waiting.append(event)
        self._size += len(event.body)
        self._wake.set()

    def end(self) -> None:
        """No more events: what waits is dropped, and `next` says the stream is over."""
        self.ended = True
        self._waiting, self._size = [], 0
        self._wake.set()

    async def next(self, wait_s: float) -> list[ServerSentEvent] | None:
        """The waiting events, as soon as there are any; [] after `wait_s` without one (a
        keep-alive is due); None once the stream has ended."""
        if not self._waiting and not self.ended:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()
        self._wake.clear()
        if self.ended:
            return None
        events, self._waiting, self._size = self._waiting, [], 0
        return events


class Events:
    """The streams this pod serves, and the changes on their way to them. `shared`: other pods
    use the database too, so changes go through it."""

    def __init__(
        self, store: Store, settings: PlatformSettings, metrics: PlatformMetrics, shared: bool
    ) -> None:
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._shared = shared
        self._streams: dict[str, set[Stream]] = {}
        """The open streams, by organization."""
        self._outgoing: dict[RowRef, None] = {}
        """Changes to announce, in order, each once."""
        self._outgoing_beats: dict[RowRef, Beat] = {}
        """Heartbeats to announce, the newest of each row."""
        self._incoming: dict[str, str] = {}
        """Changed rows to read, by id, with their organization."""
        self._announcing: asyncio.Task[None] | None = None
        self._reading: asyncio.Task[None] | None = None
        self._stopped = False
        store.on_change = self.changed
        store.on_heartbeats = self.beaten

    def open(self, organization_id: str, cut: Callable[[], None]) -> Stream:
        """A new stream of `organization_id`'s changes; TooManyStreams at the pod's limit."""
        if self._metrics.event_streams_open >= self._settings.max_event_streams:
            raise TooManyStreams(self._settings.max_event_streams)
        stream = Stream(organization_id, self._settings.event_buffer_bytes, cut)
        self._streams.setdefault(organization_id, set()).add(stream)
        self._metrics.event_streams_open += 1
        return stream

    def close(self, stream: Stream) -> None:
        streams = self._streams.get(stream.organization_id, set())
        if stream not in streams:
            return
        streams.discard(stream)
        if not streams:
            del self._streams[stream.organization_id]
        self._metrics.event_streams_open -= 1
        self._metrics.event_streams_cut += stream.overflowed

    def changed(self, changes: list[RowRef]) -> None:
        """The store wrote these rows: announced to every pod, or heard here when this is the
        database's only process."""
        if self._stopped:
            return
        if not self._shared:
            self.heard(changes)
            return
        self._outgoing.update(dict.fromkeys(changes))
        self._announce_soon()

    def beaten(self, beats: list[Beat]) -> None:
        """A presence flush wrote these heartbeats: announced to every pod in one statement
        (with changes waiting, if any), or heard here when this is the database's only
        process."""
        if self._stopped:
            return
        if not self._shared:
            self.heard_beats(beats)
            return
        for beat in beats:  # flushes that wait on a slow announcement merge: newest wins
            held = self._outgoing_beats.get(ref := RowRef(beat.organization_id, beat.row_id))
            if held is None or held.at < beat.at:
                self._outgoing_beats[ref] = beat
        self._announce_soon()

    def _announce_soon(self) -> None:
        if self._announcing is None or self._announcing.done():
            self._announcing = self._start(self._announce())

    async def _announce(self) -> None:
        while self._outgoing or self._outgoing_beats:
            batch, beats = list(self._outgoing), list(self._outgoing_beats.values())
            self._outgoing.clear()
            self._outgoing_beats.clear()
            try:
                await self._store.announce(batch, beats)
            except StoreUnavailable:  # logged by the store, once an outage: tried again
                # Heartbeats are not: the next flush, a second later, carries newer ones.
                self._outgoing = dict.fromkeys(batch) | self._outgoing
                await asyncio.sleep(RETRY_S)

    def heard(self, changes: Iterable[RowRef]) -> None:
        """Rows changed, here or on another pod: those a stream here shows are read."""
        if self._stopped:
            return
        for change in changes:
            if change.organization_id in self._streams:
                self._incoming[change.row_id] = change.organization_id
        if self._incoming and (self._reading is None or self._reading.done()):
            self._reading = self._start(self._read())

    def heard_beats(self, beats: Iterable[Beat]) -> None:
        """Heartbeats one flush wrote, here or on another pod: one event for each organization
        a stream here shows, to its streams."""
        if self._stopped:
            return
        by_organization: dict[str, dict[str, int]] = {}
        for beat in beats:
            if beat.organization_id in self._streams:
                by_organization.setdefault(beat.organization_id, {})[beat.row_id] = beat.at
        for organization_id, values in by_organization.items():
            event = server_sent_event(HEARTBEATS_EVENT, EventsHeartbeats(last_heartbeat=values))
            for stream in list(self._streams[organization_id]):
                stream.push(event)

    async def _read(self) -> None:
        while self._incoming:
            batch = dict(itertools.islice(self._incoming.items(), ROWS_PER_READ))
            for row_id in batch:
                del self._incoming[row_id]
            try:
                rows = await self._store.rows(list(batch))
            except StoreUnavailable:  # logged by the store: these streams would miss a change
                for organization_id in set(batch.values()):
                    self._end(self._streams.get(organization_id, set()))
                continue
            for row in rows:
                streams = self._streams.get(row.organization_id)
                if streams:
                    event = server_sent_event(ENVIRONMENT_EVENT, row)
                    for stream in list(streams):
                        stream.push(event)

    async def end_all(self) -> None:
        """Every stream ends cleanly, and its page reconnects and reads the listing again: the
        platform is stopping, or this pod may have missed changes (it could not listen)."""
        for streams in self._streams.values():
            self._end(streams)

    @staticmethod
    def _end(streams: Iterable[Stream]) -> None:
        for stream in streams:
            stream.end()

    async def quiesce(self) -> None:
        """Once every stream has ended and before the store closes: the last changes are
        announced (for a while), and nothing is read or announced after."""
        self._stopped = True
        pending = [task for task in (self._announcing, self._reading) if task is not None]
        if self._announcing is not None:
            await asyncio.wait([self._announcing], timeout=FLUSH_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def _start(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        task.add_done_callback(_said_if_failed)
        return task


def _said_if_failed(task: asyncio.Task[None]) -> None:
    failure = None if task.cancelled() else task.exception()
    if failure is not None:
        log.error("the live channel failed: %r", failure, exc_info=failure)
