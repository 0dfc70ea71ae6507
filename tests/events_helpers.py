"""Reading the live channel (`GET /v1/environments/events`) as the dashboard does: a plain HTTP
stream read line by line (httpx), parsed as server-sent events. Every wait is bounded.

A `heartbeats` event comes once a presence flush while a daemon pings: the readers of rows
(`next_event`, `row_where`) pass them by, `heartbeats` reads them."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from agent.protocol.models import EnvironmentRow, EventsHeartbeats, EventsReady
from tests.helpers import WAIT_S, Platform
from tests.metrics_helpers import Scrape, scrape

EVENTS_PATH = "/v1/environments/events"


@dataclass(frozen=True)
class Event:
    """One event (`name` and its `data`), or a comment line (`name` is None, `data` its text)."""

    name: str | None
    data: str

    def row(self) -> dict[str, Any]:
        """An `environment` event's row, which must be exactly what the listing's model
        writes (the same keys, none left out or added)."""
        assert self.name == "environment", self
        row: dict[str, Any] = json.loads(self.data)
        assert EnvironmentRow.model_validate(row).to_wire() == row
        return row

    def heartbeats(self) -> dict[str, int]:
        """A `heartbeats` event's values, by row id, exactly as the model writes them."""
        assert self.name == "heartbeats", self
        values: dict[str, Any] = json.loads(self.data)
        assert EventsHeartbeats.model_validate(values).to_wire() == values
        beats: dict[str, int] = values["lastHeartbeat"]
        return beats


class EventReader:
    """The events of one open stream, in order."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, within: float = WAIT_S) -> Event:
        """The next event or comment; AssertionError after `within` seconds, or if the stream
        ends first."""
        async with asyncio.timeout(within):
            name, data = None, []
            async for line in self._lines:
                if line.startswith(":"):
                    return Event(None, line[1:].strip())
                if line.startswith("event:"):
                    name = line.removeprefix("event:").strip()
                elif line.startswith("data:"):
                    data.append(line.removeprefix("data:").removeprefix(" "))
                elif not line and (name or data):
                    return Event(name, "\n".join(data))
        raise AssertionError("the stream ended")

    async def next_event(self, within: float = WAIT_S) -> Event:
        """The next event, past any keep-alive comment and `heartbeats` event."""
        async with asyncio.timeout(within):
            while (event := await self.next()).name in (None, "heartbeats"):
                pass
        return event

    async def heartbeats(self, within: float = WAIT_S) -> dict[str, int]:
        """The next `heartbeats` event's values, past any other event or comment."""
        async with asyncio.timeout(within):
            while (event := await self.next()).name != "heartbeats":
                pass
        return event.heartbeats()

    async def row_where(
        self, accept: Callable[[dict[str, Any]], bool], within: float = WAIT_S
    ) -> dict[str, Any]:
        """The first `environment` row that `accept` likes, past any other."""
        async with asyncio.timeout(within):
            while not accept(row := (await self.next_event()).row()):
                pass
        return row

    async def ended(self, within: float = WAIT_S) -> list[Event]:
        """What came until the stream ended (it must end within `within` seconds)."""
        seen = []
        async with asyncio.timeout(within):
            with contextlib.suppress(AssertionError):
                while True:
                    seen.append(await self.next(within))
        return seen


async def settle(events: EventReader, platform: Platform, marker: str) -> None:
    """Every change made so far has reached the stream: a stream gets its changes in the order
    they were heard, so a change of another row, made now, comes after them. (Changes of one
    row that come together may show as one event, or as the same row twice.)"""
    await platform.register(marker)
    await events.row_where(lambda row: row["deviceId"] == marker)


async def nothing_before(events: EventReader, platform: Platform, marker: str) -> None:
    """No change is waiting, nor on its way: a change of another row, made now, is the next
    (past `heartbeats` events)."""
    await platform.register(marker)
    assert (await events.next_event()).row()["deviceId"] == marker


async def events_before(
    events: EventReader, platform: Platform, marker: str, key: str | None = None
) -> list[Event]:
    """Every event that came, or was on its way, before a change of another row made now (with
    `key`, in its organization); comments left out."""
    await platform.register(marker, key)
    seen = []
    async with asyncio.timeout(WAIT_S):
        while (event := await events.next()).name != "environment" or (
            event.row()["deviceId"] != marker
        ):
            if event.name is not None:
                seen.append(event)
    return seen


def store_calls(found: Scrape, operation: str) -> float:
    """How many times a pod ran a store operation (`rows`, `announce`, ...), as scraped."""
    return sum(
        sample.value
        for sample in found.samples
        if sample.name == "envagent_platform_store_seconds_count"
        and sample.labels["operation"] == operation
    )


async def flushes(platform: Platform) -> float:
    """The presence flushes (`record_heartbeats`) the platform's pod has written so far."""
    return store_calls(await scrape(platform.http, platform.url), "record_heartbeats")


@contextlib.asynccontextmanager
async def subscribed(
    platform: Platform, key: str | None = None
) -> AsyncIterator[tuple[EventReader, EventsReady]]:
    """An open stream, past its `ready` event (returned too): every change after this shows."""
    async with platform.http.stream(
        "GET",
        f"{platform.url}{EVENTS_PATH}",
        headers=platform.auth(key),
        timeout=httpx.Timeout(WAIT_S, read=None),  # an idle stream is quiet: waits are ours
    ) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"] == "text/event-stream"
        reader = EventReader(response)
        ready = await reader.next_event()
        assert ready.name == "ready", ready
        yield reader, EventsReady.model_validate_json(ready.data)
