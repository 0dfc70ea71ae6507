"""How far one platform process goes: N simulated daemons connected and heartbeating, the
latency of their pongs, and the platform's CPU and memory at each N.

One fleet grows through the sizes of the plan; at each size the measurement is repeated over
consecutive windows, each window being one "run" of the figures (median, min, max). Latency is
timed in the load generator, from handing a `ping` to the socket to reading its `pong`; the
generator's own CPU and event-loop lag are reported beside it, to show it was not the limit.
The platform runs under `gc_probe`, so that a stall from its garbage collector is seen as one.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

from tests.bench.fixtures import start_platform
from tests.bench.gc_probe import pauses
from tests.bench.loadgen_client import LoadGen
from tests.bench.plan import Plan
from tests.bench.procs import Workspace, cpu_seconds, memory
from tests.bench.report import Budget, Figure, Section

MIB = 1024.0
SETTLE_S = 2.0
"""After a fleet has grown: the last registrations and status reports are done."""
BUDGET_SIZE = 10_000
PONG_BUDGET = Budget(50, "budget: 10,000 daemons at 30 s heartbeats, pong p99 <= 50 ms")


def grow_bound_s(size: int) -> float:
    """Generous: 50 ms a daemon, at least a minute."""
    return max(60.0, size * 0.05)


async def run(workspace: Workspace, plan: Plan) -> Section:
    section = Section("scale", f"Platform scale (heartbeats every {plan.fleet_period_s:g} s)")
    folder = workspace.path("platform-scale")
    gc_log = folder / "gc.log"
    platform = await start_platform(workspace, folder / "platform.db", gc_log=gc_log)
    pid = platform.child.pid
    idle_rss = memory(pid).rss_kib
    loadgen = await LoadGen.start(workspace, platform, plan.fleet_period_s)
    details: dict[str, list[dict[str, float]]] = defaultdict(list)
    try:
        previous = 0
        for size in plan.fleet_sizes:
            grown = await loadgen.grow(size, grow_bound_s(size))
            rate = (size - previous) / grown["seconds"]
            previous = size
            await asyncio.sleep(SETTLE_S)
            windows = []
            for _ in range(plan.windows):
                cpu_before, started = cpu_seconds(pid), time.monotonic()
                measured = await loadgen.measure(plan.window_s)
                ended = time.monotonic()
                elapsed = ended - started
                used = memory(pid)
                collections = pauses(gc_log, started, ended)
                measured |= {
                    "gc_longest_ms": max(collections, default=0.0) * 1000,
                    "gc_total_ms": sum(collections) * 1000,
                    "platform_cpu_pct": (cpu_seconds(pid) - cpu_before) / elapsed * 100,
                    "platform_rss_mib": used.rss_kib / MIB,
                    "platform_pss_mib": used.pss_kib / MIB,
                    "rss_per_daemon_kib": (used.rss_kib - idle_rss) / size,
                }
                windows.append(measured)
            details[str(size)] = windows
            _figures(section, size, windows, rate, plan)
    finally:
        await loadgen.stop()
        await platform.child.stop()
    section.details["windows"] = details
    section.details["platform_idle_rss_mib"] = idle_rss / MIB
    section.notes.append(
        f"each run is one {plan.window_s:g} s window; samples = pongs per window; the platform "
        "also pings every socket itself every 30 s (aiohttp heartbeat), included in its CPU"
    )
    return section


def _figures(
    section: Section, size: int, windows: list[dict[str, float]], grow_rate: float, plan: Plan
) -> None:
    def values(key: str) -> list[float]:
        return [window[key] for window in windows]

    samples = min(int(window["samples"]) for window in windows)
    at = f"N={size:,}"
    section.add(Figure(f"{at}: pong p50", "ms", values("p50_ms"), samples=samples))
    section.add(
        Figure(
            f"{at}: pong p99",
            "ms",
            values("p99_ms"),
            samples=samples,
            budget=PONG_BUDGET if size == BUDGET_SIZE and plan.fleet_period_s == 30 else None,
        )
    )
    section.add(Figure(f"{at}: pong max", "ms", values("max_ms"), samples=samples))
    section.add(Figure(f"{at}: platform CPU", "% of a core", values("platform_cpu_pct")))
    section.add(
        Figure(
            f"{at}: platform CPU per 1,000 daemons",
            "% of a core",
            [cpu / size * 1000 for cpu in values("platform_cpu_pct")],
        )
    )
    section.add(
        Figure(
            f"{at}: platform's longest GC pause",
            "ms",
            values("gc_longest_ms"),
            note="collections of 1 ms or more, logged by gc_probe; 0 when none",
        )
    )
    section.add(
        Figure(
            f"{at}: platform's time in GC pauses",
            "ms",
            values("gc_total_ms"),
            note="the sum of those collections over the window",
        )
    )
    section.add(Figure(f"{at}: platform RSS", "MiB", values("platform_rss_mib")))
    section.add(Figure(f"{at}: platform RSS per daemon", "KiB", values("rss_per_daemon_kib")))
    section.add(Figure(f"{at}: load generator CPU", "% of a core", values("loadgen_cpu_pct")))
    section.add(Figure(f"{at}: load generator loop lag p99", "ms", values("loadgen_lag_p99_ms")))
    section.add(
        Figure(
            f"{at}: load generator's longest GC pause",
            "ms",
            values("loadgen_gc_longest_ms"),
            note="delays the pongs in flight: a pong max near it is the generator's",
        )
    )
    section.add(
        Figure(
            f"{at}: daemons added per second, growing to N",
            "per s",
            [grow_rate],
            note="registration and socket of each new daemon, 100 at a time",
        )
    )
