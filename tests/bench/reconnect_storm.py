"""Reconnect storm: the platform is killed (SIGKILL) under a connected fleet and started again
on the same port and database; how long until every daemon is online again, and how hard they
knock meanwhile.

The simulated daemons wait as the daemon does (`ReconnectPolicy`, `backoff_delay`: 1 s doubling
to 30 s, plus up to 50 % jitter), so the figures are those of a real fleet. An attempt "reached"
the platform when something accepted its TCP connection; those made while nothing listened were
refused by the kernel and the platform never saw them.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.bench.fixtures import PlatformProcess, start_platform
from tests.bench.gc_probe import pauses
from tests.bench.loadgen_client import LoadGen
from tests.bench.plan import Plan
from tests.bench.procs import BenchError, Workspace, cpu_seconds
from tests.bench.report import Figure, Section

STABLE_MARGIN_S = 1.0


def free_port() -> int:
    """A port nothing listens on now: the platform must come back on the port it had."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def busiest(times: list[float], width_s: float) -> int:
    """The most attempts in any window of `width_s` (sliding, not aligned to bins)."""
    ordered = sorted(times)
    most, start = 0, 0
    for end, at in enumerate(ordered):
        while at - ordered[start] >= width_s:
            start += 1
        most = max(most, end - start + 1)
    return most


async def _online_rows(platform: PlatformProcess) -> int:
    """Every online row: the platform's own word that all are back."""
    async with aiohttp.ClientSession() as http:
        return len(await platform.walk(http, onlineOnly="true"))


def listen_overflows() -> int:
    """The kernel's count of connections dropped because an accept queue was full
    (TcpExt ListenOverflows, for the whole machine: only the platform listens here)."""
    names: list[str] = []
    for line in Path("/proc/net/netstat").read_text().splitlines():
        if line.startswith("TcpExt:"):
            if not names:
                names = line.split()
            else:
                return int(dict(zip(names, line.split(), strict=True))["ListenOverflows"])
    return 0


async def _storm(
    workspace: Workspace, platform: PlatformProcess, loadgen: LoadGen, plan: Plan
) -> tuple[PlatformProcess, dict[str, Any]]:
    overflows = listen_overflows()
    await loadgen.command({"op": "record"}, 0)
    killed = time.monotonic()
    await platform.child.stop(signal.SIGKILL)
    assert isinstance(platform.database, Path)
    gc_log = platform.database.with_name("gc.log")
    platform = await start_platform(workspace, platform.database, port=platform.port, gc_log=gc_log)
    ready = time.monotonic()
    cpu_at_ready = cpu_seconds(platform.child.pid)
    back = await loadgen.command(
        {"op": "until_back", "within_s": plan.storm_timeout_s}, plan.storm_timeout_s
    )
    # Read at once: the listing walked below costs the platform CPU of its own.
    platform_cpu = (cpu_seconds(platform.child.pid) - cpu_at_ready) / (time.monotonic() - ready)
    if not back["complete"]:
        raise BenchError(f"only {back['back']} of {plan.storm_size} daemons came back")
    online = await _online_rows(platform)
    if online != plan.storm_size:
        raise BenchError(f"the platform lists {online} rows online, not {plan.storm_size}")
    attempts = back["attempts"]
    reached = [attempt["at"] for attempt in attempts if attempt["reached"]]
    refused = len(attempts) - len(reached)
    opens = [attempt["seconds"] for attempt in attempts if attempt["opened"]]
    due = [at for at in back["due"] if at >= ready]
    recovery = back["last_back"] - ready
    result = {
        "restart_s": ready - killed,
        "all_back_after_kill_s": back["last_back"] - killed,
        "all_back_after_ready_s": recovery,
        "attempts_reached": len(reached),
        "attempts_refused": refused,
        "attempts_failed": len(reached) - len(opens),
        "listen_overflows": listen_overflows() - overflows,
        "opens_over_1s": sum(1 for seconds in opens if seconds >= 1.0),
        "slowest_open_s": max(opens, default=0.0),
        "peak_per_s": busiest(reached, 1.0),
        "peak_per_100ms": busiest(reached, 0.1),
        "due_peak_per_s": busiest(due, 1.0),
        "due_peak_per_100ms": busiest(due, 0.1),
        "loadgen_cpu_pct": back["loadgen_cpu_pct"],
        "platform_cpu_pct": platform_cpu * 100,
        "gc_longest_ms": max(pauses(gc_log, ready, back["last_back"]), default=0.0) * 1000,
        "mean_per_s": len(reached) / recovery if recovery > 0 else float("nan"),
        "reached_after_ready_ms": sorted(round((at - ready) * 1000) for at in reached),
    }
    return platform, result


async def run(workspace: Workspace, plan: Plan) -> Section:
    section = Section("storm", f"Reconnect storm (N={plan.storm_size:,}, platform SIGKILLed)")
    folder = workspace.path("platform-storm")
    platform = await start_platform(
        workspace, folder / "platform.db", port=free_port(), gc_log=folder / "gc.log"
    )
    loadgen = await LoadGen.start(workspace, platform, plan.fleet_period_s)
    results = []
    try:
        await loadgen.grow(plan.storm_size, max(60.0, plan.storm_size * 0.05))
        for index in range(plan.storm_runs):
            # Every daemon must have stayed up one period, so that its backoff starts over as
            # in a fleet that has run for a while.
            await asyncio.sleep(plan.fleet_period_s + STABLE_MARGIN_S)
            platform, result = await _storm(workspace, platform, loadgen, plan)
            results.append(result)
            section.details[f"run_{index}_reached_after_ready_ms"] = result.pop(
                "reached_after_ready_ms"
            )
    finally:
        await loadgen.stop()
        await platform.child.stop()

    def values(key: str) -> list[float]:
        return [float(result[key]) for result in results]

    size = plan.storm_size
    section.add(Figure("platform restart: kill -> listening", "s", values("restart_s")))
    section.add(Figure("kill -> all online again", "s", values("all_back_after_kill_s")))
    section.add(Figure("listening -> all online again", "s", values("all_back_after_ready_s")))
    section.add(Figure("attempts the platform saw", "count", values("attempts_reached")))
    section.add(Figure("attempts refused while it was down", "count", values("attempts_refused")))
    section.add(Figure("attempts that reached it and failed", "count", values("attempts_failed")))
    section.add(
        Figure(
            "connections dropped, accept queue full",
            "count",
            values("listen_overflows"),
            note="kernel TcpExt ListenOverflows; each such SYN is sent again 1 s later",
        )
    )
    section.add(Figure("socket opens taking 1 s or more", "count", values("opens_over_1s")))
    section.add(Figure("slowest socket open", "s", values("slowest_open_s")))
    section.add(Figure("peak attempts in any 1 s", "per s", values("peak_per_s")))
    section.add(Figure("peak attempts in any 100 ms", "per 100 ms", values("peak_per_100ms")))
    section.add(Figure("mean attempts, listening -> all online", "per s", values("mean_per_s")))
    section.add(
        Figure(
            "peak attempts due in any 1 s (backoff schedule)",
            "per s",
            values("due_peak_per_s"),
            note="when each daemon's backoff told it to try again, after the platform "
            "listened: what real daemons on their own machines would do",
        )
    )
    section.add(
        Figure(
            "peak attempts due in any 100 ms (backoff schedule)",
            "per 100 ms",
            values("due_peak_per_100ms"),
        )
    )
    section.add(
        Figure(
            "platform's longest GC pause while they came back",
            "ms",
            values("gc_longest_ms"),
            note="collections of 1 ms or more, logged by gc_probe",
        )
    )
    section.add(
        Figure(
            "platform CPU, listening -> all online",
            "% of a core",
            values("platform_cpu_pct"),
            note="near 100 % means the platform's single event loop set the pace",
        )
    )
    section.add(
        Figure(
            "load generator CPU during the storm",
            "% of a core",
            values("loadgen_cpu_pct"),
            note="near 100 % means the generator, not the backoff, spread the attempts made",
        )
    )
    section.add(
        Figure(
            "busiest second of the schedule / fleet size",
            "x",
            [peak / size for peak in values("due_peak_per_s")],
            note="1.0 would mean the whole fleet knocked within one second",
        )
    )
    section.notes.append(
        "details hold, per run, each attempt the platform saw in ms after it listened again"
    )
    return section
