"""Pods on PostgreSQL: one pod against two holding the same fleet, frames across pods, and a
pod killed with SIGKILL under its daemons.

- Scale: the fleet (`pods_fleet` simulated daemons, in two load generators of half each) is
  held by one pod, then by two (each generator talking to its own pod), on a fresh database
  each time. Per window: pong p50/p99 over the whole fleet, each pod's CPU and RSS,
  PostgreSQL's CPU, and the statements PostgreSQL ran per second (`pg_stat_statements`,
  top-level statements of the pods' database), the busiest named.
- Frames: while the two pods hold the fleet, `POST …/frames` with a `sync` and a request id
  (answered by the simulated daemon, as the daemon answers it) is sent alternately to the pod
  holding the socket and to the other one; the time until the answer is back.
- Kill: two pods on one port (SO_REUSEPORT, as `--workers` runs them), the fleet spread over
  them by the kernel; once every daemon has been up one heartbeat period, the pod holding more
  is killed with SIGKILL. Measured: seconds until every daemon it held is connected again
  (through the survivor) and how many registrations that took; then the survivor's listing
  must show the whole fleet online, each row once.

The server is a throwaway PostgreSQL (tests/postgres.py: fsync off, on this machine's cores,
shared with the pods and the generators).
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp

from agent.protocol.models import SyncFrame, SyncResponseFrame
from tests.bench.fixtures import HTTP_TIMEOUT, PlatformProcess, create_key, start_platform
from tests.bench.loadgen_client import LoadGen
from tests.bench.plan import Plan
from tests.bench.platform_scale import SETTLE_S, grow_bound_s
from tests.bench.procs import BenchError, Workspace, cpu_seconds, memory, postgres_cpu_seconds
from tests.bench.report import Budget, Figure, Section
from tests.bench.stats import percentile
from tests.postgres import PostgresServer

MIB = 1024.0
GENERATORS = 2
STATEMENTS = {"shared_preload_libraries": "'pg_stat_statements'"}
"""Counts every statement PostgreSQL runs, by statement, for the statements-per-second figure."""
BUSIEST = 5
"""Statements named in the details, the busiest first."""
STABLE_MARGIN_S = 1.0
CROSS_POD_BUDGET = Budget(2.0, "budget: a frame across pods p99 <= 2x same-pod")
KILL_BUDGET = Budget(60.0, "budget: a pod killed under 5,000 daemons, all online again <= 60 s")


@dataclass
class Database:
    server: PostgresServer
    name: str
    url: str
    key: str

    async def statements(self) -> Counter[str]:
        """Calls of each statement run in this database since the last `reset_statements`."""
        out = await asyncio.to_thread(
            self.server.psql,
            "SELECT s.calls, regexp_replace(s.query, '\\s+', ' ', 'g') "
            "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
            f"WHERE d.datname = '{self.name}' AND s.toplevel",
        )
        calls: Counter[str] = Counter()
        for line in out.splitlines():
            count, query = line.split("|", 1)
            calls[query] += int(count)
        return calls

    async def reset_statements(self) -> None:
        await asyncio.to_thread(self.server.psql, "SELECT pg_stat_statements_reset()")


async def _database(workspace: Workspace, server: PostgresServer, name: str) -> Database:
    url = await asyncio.to_thread(server.create_database, name)
    return Database(server, name, url, await create_key(workspace, url))


async def _pod(
    workspace: Workspace, database: Database, pod_id: str, *, port: int = 0, shared: bool = False
) -> PlatformProcess:
    return await start_platform(
        workspace,
        database.url,
        key=database.key,
        port=port,
        name=pod_id,
        pod_args=["--pod-id", pod_id, *(["--reuse-port"] if shared else [])],
    )


async def run(workspace: Workspace, plan: Plan) -> Section:
    section = Section("pods", f"Pods on PostgreSQL (N={plan.pods_fleet:,} daemons)")
    server = await asyncio.to_thread(PostgresServer.start, STATEMENTS)
    try:
        await asyncio.to_thread(server.psql, "CREATE EXTENSION pg_stat_statements")
        one, _ = await _scale(workspace, plan, await _database(workspace, server, "one_pod"), 1)
        two, frames = await _scale(
            workspace, plan, await _database(workspace, server, "two_pods"), 2
        )
        killed = await _kill(workspace, plan, await _database(workspace, server, "kill"))
    finally:
        await workspace.stop_all()
        await asyncio.to_thread(server.stop)
    _scale_figures(section, plan, one, two)
    assert frames is not None
    _frame_figures(section, plan, frames)
    _kill_figures(section, killed)
    section.details |= {"one_pod": one, "two_pods": two, "kill": killed}
    section.details["postgres"] = {
        "version": server.major_version,
        "settings": "tests/postgres.py SETTINGS (fsync, synchronous_commit off) "
        "+ pg_stat_statements",
    }
    section.notes.append(
        f"each run is one {plan.window_s:g} s window; two load generators of "
        f"{plan.pods_fleet // GENERATORS:,} daemons each, both on the one pod or one on each "
        f"pod; PostgreSQL, the pods and the generators share this machine's cores"
    )
    return section


async def _scale(
    workspace: Workspace,
    plan: Plan,
    database: Database,
    pods_count: int,
) -> tuple[list[dict[str, Any]], Frames | None]:
    """The fleet held by `pods_count` pods: one dict of figures per window; with two pods,
    frames are then timed within and across them while the fleet is held."""
    pods = [await _pod(workspace, database, f"pod-{n}") for n in range(1, pods_count + 1)]
    half = plan.pods_fleet // GENERATORS
    loadgens = [
        await LoadGen.start(workspace, pods[n % pods_count], plan.fleet_period_s)
        for n in range(GENERATORS)
    ]
    try:
        await asyncio.gather(*(loadgen.grow(half, grow_bound_s(half)) for loadgen in loadgens))
        await asyncio.sleep(SETTLE_S)
        windows = [await _window(plan, database, pods, loadgens) for _ in range(plan.windows)]
        frames = await _frames(plan, pods) if pods_count == 2 else None
    finally:
        for loadgen in loadgens:
            await loadgen.stop()
        for pod in pods:
            await pod.child.stop()
    return windows, frames


async def _window(
    plan: Plan, database: Database, pods: list[PlatformProcess], loadgens: list[LoadGen]
) -> dict[str, Any]:
    postmaster = database.server.postmaster_pid()
    await database.reset_statements()
    pods_cpu = [cpu_seconds(pod.child.pid) for pod in pods]
    postgres_cpu, started = postgres_cpu_seconds(postmaster), time.monotonic()
    measured = await asyncio.gather(
        *(loadgen.measure(plan.window_s, samples=True) for loadgen in loadgens)
    )
    elapsed = time.monotonic() - started
    postgres_cpu = postgres_cpu_seconds(postmaster) - postgres_cpu
    calls = await database.statements()
    latencies = [ms for one in measured for ms in one.pop("latencies_ms")]
    return {
        "samples": len(latencies),
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies, default=float("nan")),
        "online": sum(one["online"] for one in measured),
        "pod_cpu_pct": [
            (cpu_seconds(pod.child.pid) - before) / elapsed * 100
            for pod, before in zip(pods, pods_cpu, strict=True)
        ],
        "pod_rss_mib": [memory(pod.child.pid).rss_kib / MIB for pod in pods],
        "postgres_cpu_pct": postgres_cpu / elapsed * 100,
        "statements_per_s": calls.total() / elapsed,
        "busiest_statements_per_s": {
            query: round(count / elapsed, 2) for query, count in calls.most_common(BUSIEST)
        },
        "loadgen_cpu_pct": max(one["loadgen_cpu_pct"] for one in measured),
        "loadgen_lag_p99_ms": max(one["loadgen_lag_p99_ms"] for one in measured),
    }


@dataclass
class Frames:
    targets: int
    """Sockets the frames went to, in turn."""
    same_pod: list[list[float]]
    """Per run, each frame's milliseconds when asked of the pod holding the socket."""
    across_pods: list[list[float]]


async def _frames(plan: Plan, pods: list[PlatformProcess]) -> Frames:
    """`sync` frames for sockets the first pod (`pod-1`) holds, asked of it and of the second
    pod in turn, so that both see the same moments of the fleet's load."""
    holder, other = pods
    async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
        rows = await holder.walk(http, onlineOnly="true")
        targets = [row.connection_id for row in rows if row.pod_id == "pod-1" and row.connection_id]
        if not targets:
            raise BenchError("no socket held by pod-1 in the listing")
        same_runs, cross_runs = [], []
        for _ in range(plan.pods_frame_runs):
            same: list[float] = []
            cross: list[float] = []
            for index in range(plan.pods_frames):
                target = targets[index % len(targets)]
                same.append(await _frame(http, holder, holder, target))
                cross.append(await _frame(http, other, holder, target))
            same_runs.append(same)
            cross_runs.append(cross)
    return Frames(len(targets), same_runs, cross_runs)


def _frame_figures(section: Section, plan: Plan, frames: Frames) -> None:
    for name, runs in (("same pod", frames.same_pod), ("across pods", frames.across_pods)):
        for label, fraction in (("p50", 0.5), ("p99", 0.99)):
            section.add(
                Figure(
                    f"frame with an answer, {name}: {label}",
                    "ms",
                    [percentile(times, fraction) for times in runs],
                    samples=plan.pods_frames,
                )
            )
    section.add(
        Figure(
            "frame p99: across pods / same pod",
            "x",
            [
                percentile(cross, 0.99) / percentile(same, 0.99)
                for cross, same in zip(frames.across_pods, frames.same_pod, strict=True)
            ],
            budget=CROSS_POD_BUDGET,
            note=f"a sync with a request id to {frames.targets:,} sockets of one pod in turn, "
            "asked of that pod and of the other one alternately, while both hold the fleet",
        )
    )


async def _frame(
    http: aiohttp.ClientSession, via: PlatformProcess, holder: PlatformProcess, target: str
) -> float:
    """Milliseconds from sending a `sync` through `via` to having the daemon's answer."""
    request_id = uuid.uuid4().hex
    started = time.perf_counter()
    async with http.post(
        f"{via.url}/v1/environments/{target}/frames",
        data=SyncFrame(request_id=request_id).to_json(),
        headers=via.auth,
    ) as reply:
        body = await reply.read()
    took = (time.perf_counter() - started) * 1000
    if reply.status != 200:
        raise BenchError(f"a frame via {via.url} answered {reply.status}: {body[:200]!r}")
    answer = SyncResponseFrame.model_validate_json(body)
    if answer.request_id != request_id:
        raise BenchError(f"the answer was to {answer.request_id!r}, not {request_id!r}")
    return took


async def _kill(workspace: Workspace, plan: Plan, database: Database) -> dict[str, Any]:
    first = await _pod(workspace, database, "pod-a", shared=True)
    second = await _pod(workspace, database, "pod-b", port=first.port, shared=True)
    pods = {"pod-a": first, "pod-b": second}
    loadgen = await LoadGen.start(workspace, first, plan.fleet_period_s)
    try:
        await loadgen.grow(plan.pods_fleet, grow_bound_s(plan.pods_fleet))
        # Every daemon must have stayed up one period, so that its backoff starts over as in a
        # fleet that has run for a while.
        await asyncio.sleep(plan.fleet_period_s + STABLE_MARGIN_S)
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
            holders = Counter(row.pod_id for row in await first.walk(http, onlineOnly="true"))
            victim_id, held = holders.most_common(1)[0]
            victim = pods.pop(str(victim_id))
            ((survivor_id, survivor),) = pods.items()
            await loadgen.command({"op": "record"}, 0)
            killed = time.monotonic()
            await victim.child.stop(signal.SIGKILL)
            bound = plan.storm_timeout_s
            back = await loadgen.command(
                {"op": "until_back", "within_s": bound, "expect": held}, bound
            )
            if not back["complete"]:
                raise BenchError(f"only {back['back']} of the {held} daemons came back")
            rows = await survivor.walk(http)
            online = await survivor.walk(http, onlineOnly="true")
    finally:
        await loadgen.stop()
        for pod in (first, second):
            await pod.child.stop()
    if len(rows) != plan.pods_fleet or len({row.id for row in rows}) != plan.pods_fleet:
        raise BenchError(f"{len(rows)} rows listed for a fleet of {plan.pods_fleet}")
    if len(online) != plan.pods_fleet:
        raise BenchError(f"{len(online)} rows online after the kill, not {plan.pods_fleet}")
    return {
        "held_by_killed_pod": held,
        "held_by_survivor_before": plan.pods_fleet - held,
        "all_back_after_kill_s": back["last_back"] - killed,
        "registrations": back["registrations"],
        "attempts": len(back["attempts"]),
        "attempts_failed": sum(1 for attempt in back["attempts"] if not attempt["opened"]),
        "loadgen_cpu_pct": back["loadgen_cpu_pct"],
        "survivor_holds_after": sum(1 for row in online if row.pod_id == survivor_id),
    }


def _scale_figures(
    section: Section, plan: Plan, one: list[dict[str, Any]], two: list[dict[str, Any]]
) -> None:
    size = f"{plan.pods_fleet:,}"

    def values(windows: list[dict[str, Any]], key: str) -> list[float]:
        return [float(window[key]) for window in windows]

    for label, windows in ((f"1 pod x {size}", one), (f"2 pods x {plan.pods_fleet // 2:,}", two)):
        samples = min(int(window["samples"]) for window in windows)
        section.add(Figure(f"{label}: pong p50", "ms", values(windows, "p50_ms"), samples=samples))
        section.add(Figure(f"{label}: pong p99", "ms", values(windows, "p99_ms"), samples=samples))
        for index in range(len(windows[0]["pod_cpu_pct"])):
            pod = f"{label}: pod {index + 1}"
            section.add(
                Figure(f"{pod} CPU", "% of a core", [w["pod_cpu_pct"][index] for w in windows])
            )
            section.add(Figure(f"{pod} RSS", "MiB", [w["pod_rss_mib"][index] for w in windows]))
        section.add(
            Figure(f"{label}: PostgreSQL CPU", "% of a core", values(windows, "postgres_cpu_pct"))
        )
        section.add(
            Figure(
                f"{label}: database statements",
                "per s",
                values(windows, "statements_per_s"),
                note="pg_stat_statements, top-level statements of the pods' database",
            )
        )
    section.add(
        Figure(
            "pong p99: 2 pods / 1 pod",
            "x",
            [a / b for a, b in zip(values(two, "p99_ms"), values(one, "p99_ms"), strict=True)],
        )
    )


def _kill_figures(section: Section, killed: dict[str, Any]) -> None:
    held = killed["held_by_killed_pod"]
    section.add(
        Figure(
            f"pod killed holding {held:,}: kill -> all connected again",
            "s",
            [killed["all_back_after_kill_s"]],
            budget=KILL_BUDGET,
            note="through the surviving pod on the same port, with the connection id they held",
        )
    )
    section.add(
        Figure(
            f"pod killed holding {held:,}: registrations it took",
            "count",
            [killed["registrations"]],
        )
    )
    section.add(
        Figure(f"pod killed holding {held:,}: socket attempts", "count", [killed["attempts"]])
    )
