"""`GET /v1/environments/events` (ext, docs/protocol.md, "The live channel"): the listing's
changes as server-sent events, for the dashboard.

Authorized as the listing is and scoped to the key's organization. The first event, `ready`,
says the subscription is live; after it every change of a row that a person sees arrives as
`environment`, the row exactly as the listing shows it, and the heartbeats of each presence
flush as one `heartbeats` event; an idle stream carries a comment every `events_keepalive_s`,
so that proxies keep it open. A reader that falls behind is cut
(`events.Stream`), and every stream ends cleanly when the platform stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web

from agent.platform.access import ApiKey
from agent.platform.events import (
    KEEPALIVE,
    READY_EVENT,
    Events,
    TooManyStreams,
    server_sent_event,
)
from agent.platform.metrics import PlatformMetrics
from agent.platform.settings import PlatformSettings
from agent.platform.web_errors import error_response
from agent.protocol.models import EventsReady

END_S = 2.0
"""How long a stream's end may take to be sent before its connection is dropped instead."""
RETRY_AFTER_S = 5
"""What a refused stream (the pod's limit) is asked to wait."""
HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: pass each event on at once
    "X-Content-Type-Options": "nosniff",
}


def event_stream(
    authenticate: Callable[[web.Request], Awaitable[ApiKey]],
    events: Events,
    settings: PlatformSettings,
    metrics: PlatformMetrics,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The handler, given the listing's own `authenticate`."""
    ready = server_sent_event(
        READY_EVENT,
        EventsReady(
            online_window_ms=settings.online_window_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
        ),
    )

    async def stream_events(request: web.Request) -> web.StreamResponse:
        key = await authenticate(request)
        if request.method == "HEAD":  # the headers alone: no stream to hold open for nothing
            return web.Response(headers=HEADERS)
        try:
            stream = events.open(key.organization_id, lambda: _drop(request))
        except TooManyStreams:
            return error_response(
                503,
                "unavailable",
                f"this platform pod serves {settings.max_event_streams} event streams already; "
                f"retry in {RETRY_AFTER_S} s",
                {"Retry-After": str(RETRY_AFTER_S)},
            )
        response = web.StreamResponse(headers=HEADERS)
        try:
            await response.prepare(request)
            await response.write(ready.body)
            while (waiting := await stream.next(settings.events_keepalive_s)) is not None:
                await response.write(b"".join(event.body for event in waiting) or KEEPALIVE)
                for event in waiting:
                    metrics.events_sent[event.name] += 1
            async with asyncio.timeout(END_S):
                await response.write_eof()
        except ConnectionResetError:  # the reader went away, or was cut for falling behind
            pass
        except TimeoutError:  # a reader that does not take the end either
            _drop(request)
        finally:
            events.close(stream)
        return response

    return stream_events


def _drop(request: web.Request) -> None:
    """Close the connection at once, whatever waits to be sent on it."""
    if request.transport is not None:
        request.transport.abort()
