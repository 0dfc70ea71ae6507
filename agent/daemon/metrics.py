"""The daemon's `/metrics` (docs/operations.md, "Metrics"): what `Progress` recorded as it
happened and what the process costs now, as Prometheus families built at each scrape.

prometheus_client and psutil are imported by the first scrape, not before: a daemon that is
never scraped never loads them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, get_args

from agent import __version__
from agent.daemon.progress import STATES, Progress, RegistrationOutcome
from agent.daemon.session.policy import EndCause
from agent.support.clock import now_ms
from agent.support.metrics import histogram_family
from agent.support.process import process_figures

if TYPE_CHECKING:
    from prometheus_client.core import Metric

RECONNECT_CAUSES = tuple(cause for cause in get_args(EndCause) if cause != "stopped")
"""Every cause a reconnect is counted by, shown at 0 until it happens."""


def daemon_families(progress: Progress) -> Iterator[Metric]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

    yield InfoMetricFamily("envagent", "This envagent daemon", value={"version": __version__})
    state = GaugeMetricFamily(
        "envagent_state", "1 for the daemon's current state, 0 for the others", labels=["state"]
    )
    for name in STATES:
        state.add_metric([name], 1.0 if name == progress.state else 0.0)
    yield state
    watchdog = progress.watchdog
    yield GaugeMetricFamily(
        "envagent_heartbeat_period_seconds", "Seconds between pings", value=progress.heartbeat_s
    )
    yield CounterMetricFamily("envagent_pings", "Pings sent", value=watchdog.sent)
    yield CounterMetricFamily("envagent_pongs", "Pongs received", value=watchdog.answered)
    yield GaugeMetricFamily(
        "envagent_pings_unanswered", "Pings sent since the last pong", value=watchdog.unanswered
    )
    yield histogram_family(
        "envagent_heartbeat_rtt_seconds",
        "Seconds from a ping to its pong",
        [((), watchdog.rtt)],
    )
    if progress.last_pong_at is not None:
        age_s = max(0, now_ms() - progress.last_pong_at) / 1000
        yield GaugeMetricFamily(
            "envagent_last_pong_age_seconds",
            "Seconds since the last pong, or since the socket opened if none came since",
            value=age_s,
        )
    yield CounterMetricFamily("envagent_connects", "Sockets opened", value=progress.connects)
    reconnects = CounterMetricFamily(
        "envagent_reconnects", "Sockets lost and tried again, by cause", labels=["cause"]
    )
    for cause in RECONNECT_CAUSES:
        reconnects.add_metric([cause], progress.reconnects[cause])
    yield reconnects
    registrations = CounterMetricFamily(
        "envagent_registration_attempts", "Registration attempts, by outcome", labels=["outcome"]
    )
    for outcome in get_args(RegistrationOutcome):
        registrations.add_metric([outcome], progress.registration_attempts[outcome])
    yield registrations
    yield from _process_families()


def _process_families() -> Iterator[Metric]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    process = process_figures()
    yield GaugeMetricFamily(
        "envagent_process_resident_memory_bytes", "Resident memory", value=process.rss_bytes
    )
    yield CounterMetricFamily(
        "envagent_process_cpu_seconds", "User and system CPU time", value=process.cpu_seconds
    )
    yield GaugeMetricFamily(
        "envagent_process_open_fds", "Open file descriptors", value=process.open_files
    )
    yield GaugeMetricFamily("envagent_process_threads", "Threads", value=process.threads)
