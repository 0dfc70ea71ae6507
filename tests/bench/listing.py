"""`GET /v1/environments?limit=100` over many rows, with and without `onlineOnly`.

The rows are written straight into the platform's database through the store
(`Store.register`, the statement registration runs) before the platform starts, because
100,000 registrations over HTTP would take minutes and measure registration instead. They are
offline, as every row is after a restart. Then a fleet of simulated daemons registers over HTTP
and stays online, heartbeating: their rows are the newest, so a first page of `onlineOnly` must
get past every offline row first, which is both the worst case and the usual one (the devices
that went away are the old ones).

Requests are sequential on one keep-alive connection, so each latency is one request's.
"""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp

from agent.platform.access import ApiKey
from agent.platform.keys import DEV_ORGANIZATION, DEV_OWNER, DEV_USER
from agent.platform.store.sqlite import SqliteStore
from agent.protocol.models import EnvironmentList, RegisterRequest
from agent.support.clock import now_ms
from tests.bench.fixtures import HTTP_TIMEOUT, PlatformProcess, start_platform
from tests.bench.loadgen import sim_metadata
from tests.bench.loadgen_client import LoadGen
from tests.bench.plan import Plan
from tests.bench.procs import BenchError, Workspace
from tests.bench.report import Budget, Figure, Section
from tests.bench.stats import percentile

PAGE = "100"
BUDGET_ROWS = 100_000
LISTING_BUDGET = Budget(25, "budget: GET /v1/environments?limit=100 p99 <= 25 ms, 100,000 rows")
VARIANTS = {"all rows": {"limit": PAGE}, "onlineOnly": {"limit": PAGE, "onlineOnly": "true"}}


async def fill(db: Path, rows: int) -> float:
    """Write `rows` offline rows for the development key's organization; returns seconds."""
    started = time.monotonic()
    store = await SqliteStore.open(db)
    owner = ApiKey(DEV_ORGANIZATION, DEV_USER, DEV_OWNER)
    try:
        for index in range(rows):
            request = RegisterRequest(
                device_id=f"filled-{index}",
                connection_name=f"filled-{index}",
                metadata=sim_metadata(index),
                current_mode="default",
                source="local",
            )
            await store.register(owner, request, now_ms())
    finally:
        await store.close()
    return time.monotonic() - started


async def _latencies(
    http: aiohttp.ClientSession, platform: PlatformProcess, params: dict[str, str], count: int
) -> list[float]:
    """`count` GETs of the listing one after the other, each timed alone (ms)."""
    url = f"{platform.url}/v1/environments"
    times = []
    for _ in range(count):
        started = time.perf_counter()
        async with http.get(url, params=params, headers=platform.auth) as reply:
            await reply.read()
        times.append((time.perf_counter() - started) * 1000)
        if reply.status != 200:
            raise BenchError(f"GET {url} {params} answered {reply.status}")
    return times


async def measure(
    http: aiohttp.ClientSession,
    platform: PlatformProcess,
    variants: dict[str, dict[str, str]],
    runs: int,
    requests: int,
) -> dict[str, list[list[float]]]:
    """The latencies of each variant in each run; the variants take turns within a run, so
    that drift (the machine's load, a cache warming) falls on all of them."""
    measured: dict[str, list[list[float]]] = {name: [] for name in variants}
    for _ in range(runs):
        for name, params in variants.items():
            measured[name].append(await _latencies(http, platform, params, requests))
    return measured


def add_percentiles(
    section: Section, at: str, runs: list[list[float]], budget: Budget | None = None
) -> list[float]:
    """A p50 and a p99 figure over `runs` (each run's latencies, ms); the p99 of each run."""
    samples = len(runs[0]) if runs else None
    p50 = [percentile(times, 0.5) for times in runs]
    p99 = [percentile(times, 0.99) for times in runs]
    section.add(Figure(f"{at}: p50", "ms", p50, samples=samples))
    section.add(Figure(f"{at}: p99", "ms", p99, samples=samples, budget=budget))
    return p99


async def _check(
    http: aiohttp.ClientSession, platform: PlatformProcess, expected_online: int
) -> None:
    """The pages measured are the pages meant: full, and online rows where asked."""
    for name, params in VARIANTS.items():
        async with http.get(
            f"{platform.url}/v1/environments", params=params, headers=platform.auth
        ) as reply:
            page = EnvironmentList.model_validate_json(await reply.read())
        wanted = min(int(PAGE), expected_online) if name == "onlineOnly" else int(PAGE)
        if len(page.connections) != wanted:
            raise BenchError(f"{name}: {len(page.connections)} rows on the page, not {wanted}")


async def run(workspace: Workspace, plan: Plan) -> Section:
    section = Section("listing", "Listing latency (GET /v1/environments?limit=100)")
    p99: dict[tuple[int, str], list[float]] = {}
    for rows in plan.listing_rows:
        db = workspace.path(f"listing-{rows}") / "platform.db"
        fill_s = await fill(db, rows)
        section.details[f"fill_{rows}_rows_per_s"] = rows / fill_s
        platform = await start_platform(workspace, db)
        loadgen = await LoadGen.start(workspace, platform, plan.fleet_period_s)
        connector = aiohttp.TCPConnector(limit=1)
        try:
            await loadgen.grow(plan.listing_live, max(60.0, plan.listing_live * 0.05))
            async with aiohttp.ClientSession(connector=connector, timeout=HTTP_TIMEOUT) as http:
                await _check(http, platform, plan.listing_live)
                runs = await measure(
                    http, platform, VARIANTS, plan.listing_runs, plan.listing_requests
                )
        finally:
            await loadgen.stop()
            await platform.child.stop()
        for name, measured in runs.items():
            budget = LISTING_BUDGET if rows == BUDGET_ROWS else None
            p99[rows, name] = add_percentiles(section, f"{rows:,} rows, {name}", measured, budget)
    _ratios(section, plan, p99)
    section.notes.append(
        f"rows filled through Store.register before the platform starts (offline), then "
        f"{plan.listing_live:,} simulated daemons registered over HTTP and online"
    )
    return section


def _ratios(section: Section, plan: Plan, p99: dict[tuple[int, str], list[float]]) -> None:
    """Within each run: what onlineOnly costs over a plain page, and what 10x the rows costs."""
    for rows in plan.listing_rows:
        online, plain = p99[rows, "onlineOnly"], p99[rows, "all rows"]
        section.add(
            Figure(
                f"{rows:,} rows: p99 onlineOnly / all rows",
                "x",
                [a / b for a, b in zip(online, plain, strict=True)],
            )
        )
    smallest, largest = min(plan.listing_rows), max(plan.listing_rows)
    if smallest != largest:
        for name in VARIANTS:
            section.add(
                Figure(
                    f"{name}: p99 at {largest:,} / {smallest:,} rows",
                    "x",
                    [a / b for a, b in zip(p99[largest, name], p99[smallest, name], strict=True)],
                )
            )
