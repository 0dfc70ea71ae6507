"""The platform's `/metrics` (docs/operations.md, "Metrics"): figures of this pod, counted as
things happen and exposed as Prometheus families at each scrape.

Aggregates only: no organization, key, device or user is ever a label, so that a scrape tells
nothing about any tenant and the number of series stays fixed however many daemons connect.
Counting on the hot paths is an integer's increment; what depends on the open sockets is
computed at the scrape. prometheus_client is imported by the first scrape, so that a platform
embedded in a daemon that nobody scrapes never loads it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

from agent import __version__
from agent.platform.settings import PlatformSettings
from agent.platform.store.base import Store
from agent.support.clock import now_ms
from agent.support.metrics import Histogram, histogram_family

if TYPE_CHECKING:
    from prometheus_client.core import Metric

LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""A listing or a statement: under a millisecond on SQLite, seconds from a database in trouble
(PostgreSQL's statement timeout is 10 s)."""
LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LAG_PROBE_S = 1.0
SILENT_AFTER_PERIODS = 3
"""A socket whose last ping is older than this many heartbeat periods is silent: the daemon
itself gives its socket up after as many unanswered pings."""

EventType = Literal["environment", "heartbeats"]
"""What the live channel sends after `ready` (docs/protocol.md, "The live channel")."""

RegistrationOutcome = Literal[
    "created", "reused", "refused_key", "forbidden", "invalid", "unavailable", "error"
]
"""A registration made a new row or reused one; or it was refused: no key or an unknown one
(401), a key that may not steer the row (403), a malformed or oversized body (400, 413, 422),
the database unable to take it (503), or a failure of ours (500)."""


class Sockets(Protocol):
    """What the scrape reads from the relay."""

    @property
    def sockets_open(self) -> int: ...

    sockets_closed: int

    def silent(self, since_ms: int) -> int:
        """Open sockets whose last ping (or whose opening) is older than `since_ms`."""
        ...


@dataclass
class PlatformMetrics:
    """What this pod counts as it goes, and its families at a scrape."""

    registrations: Counter[RegistrationOutcome] = field(default_factory=Counter)
    pings: int = 0
    pongs: int = 0
    bad_frames: int = 0
    """Frames from daemons that were ignored (docs/protocol.md, "Bad frames and size limits")."""
    frames_sent: Counter[str] = field(default_factory=Counter)
    """Frames sent to daemons on this pod's sockets, by type."""
    answers: Counter[str] = field(default_factory=Counter)
    """Daemons' answers to frames with a request id, by type."""
    event_streams_open: int = 0
    """Live channel streams this pod serves now (`platform.events`)."""
    events_sent: Counter[str] = field(default_factory=Counter)
    """Events written to live channel streams, by type (`EventType`)."""
    event_streams_cut: int = 0
    """Streams ended because their reader fell behind (their buffer overflowed)."""
    listing: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS_S))
    store: dict[str, Histogram] = field(default_factory=dict)
    """Seconds of each store operation, by its name (`time_store`)."""
    loop_lag: Histogram = field(default_factory=lambda: Histogram(LAG_BUCKETS_S))

    def time_store(self, store: Store) -> None:
        """Time every public operation of `store` from now on, by its method's name. The
        instance's bound methods are wrapped, not the class's: a backend's override that calls
        the base's is timed once, and no other store changes."""
        for name, _ in inspect.getmembers(type(store), inspect.iscoroutinefunction):
            if not name.startswith("_") and name not in ("open", "close"):
                setattr(store, name, self._timed(getattr(store, name), name))

    def _timed(
        self, operation: Callable[..., Awaitable[Any]], name: str
    ) -> Callable[..., Awaitable[Any]]:
        histogram = self.store[name] = Histogram(LATENCY_BUCKETS_S)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            with histogram.timing():
                return await operation(*args, **kwargs)

        return timed

    async def probe_loop_lag(self) -> None:
        """Until cancelled, once a second: how late a timer fires is how long the event loop
        was held by other work (a long callback, a garbage collection, a blocking call)."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_PROBE_S
            await asyncio.sleep(LAG_PROBE_S)
            self.loop_lag.observe(max(0.0, loop.time() - due))

    def families(self, sockets: Sockets, settings: PlatformSettings) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        info = {"pod": settings.pod_id, "version": __version__}
        yield InfoMetricFamily("envagent_platform", "This platform pod", value=info)
        yield GaugeMetricFamily(
            "envagent_platform_sockets_open", "Daemon sockets open", value=sockets.sockets_open
        )
        yield CounterMetricFamily(
            "envagent_platform_sockets_closed",
            "Daemon sockets that were open and have ended",
            value=sockets.sockets_closed,
        )
        period_ms = settings.heartbeat_interval_ms
        yield GaugeMetricFamily(
            "envagent_platform_heartbeat_period_seconds",
            "The heartbeat period assigned at registration",
            value=period_ms / 1000,
        )
        silent = sockets.silent(now_ms() - SILENT_AFTER_PERIODS * period_ms)
        yield GaugeMetricFamily(
            "envagent_platform_sockets_silent",
            f"Open sockets with no ping for {SILENT_AFTER_PERIODS} heartbeat periods",
            value=silent,
        )
        registrations = CounterMetricFamily(
            "envagent_platform_registrations", "Registrations, by outcome", labels=["outcome"]
        )
        for outcome in get_args(RegistrationOutcome):
            registrations.add_metric([outcome], self.registrations[outcome])
        yield registrations
        yield CounterMetricFamily("envagent_platform_pings", "Pings received", value=self.pings)
        yield CounterMetricFamily("envagent_platform_pongs", "Pongs sent", value=self.pongs)
        yield CounterMetricFamily(
            "envagent_platform_bad_frames", "Frames ignored as bad", value=self.bad_frames
        )
        yield GaugeMetricFamily(
            "envagent_platform_event_streams_open",
            "Live channel streams open",
            value=self.event_streams_open,
        )
        sent = CounterMetricFamily(
            "envagent_platform_events_sent",
            "Events written to live channel streams, by type",
            labels=["type"],
        )
        for event_type in get_args(EventType):
            sent.add_metric([event_type], self.events_sent[event_type])
        yield sent
        yield CounterMetricFamily(
            "envagent_platform_event_streams_cut",
            "Live channel streams cut because their reader fell behind",
            value=self.event_streams_cut,
        )
        yield _by_type("envagent_platform_frames_sent", "Frames sent to daemons", self.frames_sent)
        yield _by_type("envagent_platform_answers", "Answers from daemons", self.answers)
        yield histogram_family(
            "envagent_platform_listing_seconds",
            "Seconds to answer GET /v1/environments",
            [((), self.listing)],
        )
        yield histogram_family(
            "envagent_platform_store_seconds",
            "Seconds of a store operation, by operation",
            [((name,), seen) for name, seen in sorted(self.store.items()) if seen.count],
            labels=["operation"],
        )
        yield histogram_family(
            "envagent_platform_event_loop_lag_seconds",
            f"How late a {LAG_PROBE_S:g} s timer fired",
            [((), self.loop_lag)],
        )


def _by_type(name: str, documentation: str, counts: Counter[str]) -> Metric:
    from prometheus_client.core import CounterMetricFamily

    family = CounterMetricFamily(name, f"{documentation}, by type", labels=["type"])
    for frame_type, count in sorted(counts.items()):
        family.add_metric([frame_type], count)
    return family
