"""asyncpg or psycopg 3 for the platform's PostgreSQL store: the same workload through each.

    python -m tests.bench.pg_drivers            # 100,000 rows, 5 rounds (about 2 minutes)
    python -m tests.bench.pg_drivers --quick    # 20,000 rows, 2 rounds, to see that it works

A throwaway server (tests/postgres.py: fsync off, on this machine's cores, which the benchmark
shares) holds the platform's `environments` table, the schema of agent/platform/store/sqlite.py
in PostgreSQL's types (BIGSERIAL, BIGINT, metadata as TEXT so that both drivers get the same
string; a copy with JSONB is measured apart), with `--rows` rows in 10 organizations, every
other row of each organization online. Each driver gets a pool of 8 connections, opened once,
and runs, in the same process and event loop:

- the listing: one page (LIMIT 101) after a random cursor of a random organization, all rows
  and onlineOnly, 2,000 calls from 8 tasks; rows come back as tuples (asyncpg's Records are
  turned into tuples, psycopg's default rows already are), the shape the store maps to models;
- the heartbeat: `record_heartbeat`'s UPDATE of one row, 5,000 calls from 32 tasks (so calls
  wait for a connection, as they would under load), and a batched form updating 500 rows from
  arrays in one statement, one batch after another;
- the footprint: in a fresh interpreter per driver and run, the import time and the resident
  memory after the import, after opening the pool and after 400 listings.

Rounds alternate which driver goes first at each workload, so that drift (the table growing
dead tuples, the machine's load) falls on both. Latency is per call, waiting for a connection
included; client and server CPU are per call too. Statements are written with `?` like the
store's and translated to each driver's placeholders. psycopg runs in autocommit, as a store
doing single statements would (else each call pays a BEGIN and a COMMIT round trip).

The table is printed; the figures go to tests/bench/results/pg_drivers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import random
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

if not __package__:  # run as a script: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.protocol.constants import ONLINE_WINDOW_MS
from agent.support.clock import now_ms
from tests.bench import machine
from tests.bench.loadgen import sim_metadata
from tests.bench.procs import BenchError, memory, postgres_cpu_seconds
from tests.bench.report import Figure, Section, render, write_results
from tests.bench.stats import median, percentile
from tests.postgres import PostgresServer

RESULTS = Path(__file__).resolve().parent / "results" / "pg_drivers.json"
POOL_SIZE = 8
ORGANIZATIONS = 10
PAGE = 100
LISTING_CALLS, LISTING_TASKS = 2_000, 8
HEARTBEAT_CALLS, HEARTBEAT_TASKS = 5_000, 32
BATCH_ROWS, BATCHES = 500, 20
FOOTPRINT_LISTINGS = 400
DRIVERS = ("asyncpg", "psycopg")

_ROW_COLUMNS = (
    "id, connected_at, connection_id, connection_name, device_id, first_seen_at, "
    "last_heartbeat, last_seen_at, organization_id, pod_id, api_key_owner, current_mode, "
    "metadata, user_id"
)
"""agent/platform/store/base.py's listing columns (`_ROW_FIELDS`), in its order."""


def schema(table: str, metadata_type: str) -> str:
    """The `environments` table of the SQLite schema, with PostgreSQL's types."""
    return f"""
CREATE TABLE {table} (
    seq                  BIGSERIAL PRIMARY KEY,
    id                   TEXT NOT NULL UNIQUE,
    organization_id      TEXT NOT NULL,
    device_id            TEXT NOT NULL,
    listener_instance_id TEXT NOT NULL,
    user_id              TEXT,
    api_key_owner        TEXT,
    connection_name      TEXT NOT NULL,
    source               TEXT NOT NULL,
    current_mode         TEXT,
    metadata             {metadata_type} NOT NULL,
    issued_connection_id TEXT,
    connection_id        TEXT,
    connected_at         BIGINT,
    last_heartbeat       BIGINT,
    pod_id               TEXT,
    first_seen_at        BIGINT NOT NULL,
    last_seen_at         BIGINT NOT NULL,
    UNIQUE (organization_id, device_id, listener_instance_id)
);
CREATE INDEX {table}_by_org ON {table} (organization_id, seq);
CREATE INDEX {table}_by_issued ON {table} (issued_connection_id);
CREATE INDEX {table}_connected ON {table} (organization_id, seq)
    WHERE connection_id IS NOT NULL;
"""


def metadata_template() -> str:
    """`sim_metadata(0)` as JSON, which `row_metadata` turns into row `i`'s."""
    template = sim_metadata(0).to_json()
    if "$m$" in template or '/project-0"' not in template:
        raise BenchError(f"unexpected metadata template: {template}")
    return template


def row_metadata(template: str) -> str:
    """SQL of `sim_metadata(i)`'s JSON for the row numbered `i`, from the SQL of the template (a
    literal or a parameter): only the working directory differs. Both dialects take it."""
    return f"""replace({template}, '/project-0"', '/project-' || i || '"')"""


def fill_sql(table: str, metadata_type: str, rows: int, now: int) -> str:
    """`rows` rows written by the server itself (no driver is favoured): ids shaped like the
    store's (`env-<uuid>`, `conn-<uuid>`), real metadata (the load generator's, 354 bytes),
    organization `i % 10`, online when `(i / 10) % 2 = 0`, so half of each organization's rows,
    every other one."""
    metadata = row_metadata(f"$m${metadata_template()}$m$")
    if metadata_type == "JSONB":
        metadata = f"({metadata})::jsonb"
    return f"""
INSERT INTO {table} (id, organization_id, device_id, listener_instance_id, user_id,
    api_key_owner, connection_name, source, current_mode, metadata, issued_connection_id,
    connection_id, connected_at, last_heartbeat, pod_id, first_seen_at, last_seen_at)
SELECT 'env-' || md5('e' || i)::uuid, 'org-' || md5('o' || (i % {ORGANIZATIONS}))::uuid,
    'device-' || i, '', 'user-' || md5('u' || (i % {ORGANIZATIONS}))::uuid, 'bench',
    'device-' || i, 'local', 'default', {metadata}, 'conn-' || md5('c' || i)::uuid,
    CASE WHEN online THEN 'conn-' || md5('c' || i)::uuid END,
    CASE WHEN online THEN {now} END, CASE WHEN online THEN {now} END,
    CASE WHEN online THEN 'pod-bench' END, {now} - ({rows} - i) * 1000, {now}
FROM generate_series(1, {rows}) AS i, LATERAL (SELECT (i / 10) % 2 = 0 AS online) AS o
"""


LISTING_SQL = (
    f"SELECT {_ROW_COLUMNS} FROM {{table}} WHERE organization_id = ? {{online}}"
    "AND seq > ? ORDER BY seq LIMIT ?"
)
ONLINE = "AND connection_id IS NOT NULL AND last_heartbeat > ? "
HEARTBEAT_SQL = (
    "UPDATE environments SET last_heartbeat = ?, last_seen_at = ?, "
    "current_mode = COALESCE(?, current_mode) WHERE id = ? AND connection_id = ?"
)
BATCH_SQL = (
    "UPDATE environments AS e SET last_heartbeat = b.now, last_seen_at = b.now, "
    "current_mode = COALESCE(b.mode, e.current_mode) "
    "FROM unnest(?::text[], ?::text[], ?::bigint[], ?::text[]) AS b(id, connection_id, now, mode) "
    "WHERE e.id = b.id AND e.connection_id = b.connection_id"
)


def asyncpg_sql(sql: str) -> str:
    """`?` placeholders as asyncpg's `$1`, `$2`..."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${index}{part}" for index, part in enumerate(parts[1:], 1))


def psycopg_sql(sql: str) -> str:
    return sql.replace("?", "%s")


class Driver(Protocol):
    name: str

    async def open(self, dsn: str, size: int) -> None: ...
    async def close(self) -> None: ...
    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...
    async def execute(self, sql: str, *args: Any) -> int:
        """Run a write; how many rows it changed."""
        ...


class Asyncpg:
    name = "asyncpg"

    def __init__(self) -> None:
        import asyncpg

        self._module = asyncpg
        self._pool: Any = None
        self._sql: dict[str, str] = {}

    async def open(self, dsn: str, size: int) -> None:
        self._pool = await self._module.create_pool(dsn, min_size=size, max_size=size)

    async def close(self) -> None:
        await self._pool.close()

    def _translate(self, sql: str) -> str:
        found = self._sql.get(sql)
        if found is None:
            found = self._sql[sql] = asyncpg_sql(sql)
        return found

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        rows = await self._pool.fetch(self._translate(sql), *args)
        return [tuple(row) for row in rows]

    async def execute(self, sql: str, *args: Any) -> int:
        status: str = await self._pool.execute(self._translate(sql), *args)
        return int(status.rsplit(" ", 1)[1])


class Psycopg:
    name = "psycopg"

    def __init__(self) -> None:
        import psycopg_pool

        self._module = psycopg_pool
        self._pool: Any = None
        self._sql: dict[str, str] = {}

    async def open(self, dsn: str, size: int) -> None:
        self._pool = self._module.AsyncConnectionPool(
            dsn, min_size=size, max_size=size, open=False, kwargs={"autocommit": True}
        )
        await self._pool.open(wait=True)

    async def close(self) -> None:
        await self._pool.close()

    def _translate(self, sql: str) -> str:
        found = self._sql.get(sql)
        if found is None:
            found = self._sql[sql] = psycopg_sql(sql)
        return found

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self._pool.connection() as connection:
            cursor = await connection.execute(self._translate(sql), args)
            rows: list[tuple[Any, ...]] = await cursor.fetchall()
            return rows

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._pool.connection() as connection:
            cursor = await connection.execute(self._translate(sql), args)
            changed: int = cursor.rowcount
            return changed


def make_driver(name: str) -> Driver:
    return Asyncpg() if name == "asyncpg" else Psycopg()


@dataclass
class Run:
    """One workload by one driver, once."""

    latencies_s: list[float]
    seconds: float
    client_cpu_s: float
    server_cpu_s: float
    results: list[int]
    """Rows each call returned or changed, to check that both drivers did the same work."""

    @property
    def calls(self) -> int:
        return len(self.latencies_s)


Call = Callable[[Driver], Awaitable[int]]


async def drive(driver: Driver, calls: Sequence[Call], tasks: int, server: PostgresServer) -> Run:
    """`calls` from `tasks` concurrent tasks, each timed from its start to its result."""
    pending = iter(calls)
    latencies: list[float] = []
    results: list[int] = []

    async def worker() -> None:
        for call in pending:
            began = time.perf_counter()
            results.append(await call(driver))
            latencies.append(time.perf_counter() - began)

    server_cpu = postgres_cpu_seconds(server.postmaster_pid())
    client_cpu = time.process_time()
    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    seconds = time.perf_counter() - began
    return Run(
        latencies,
        seconds,
        time.process_time() - client_cpu,
        postgres_cpu_seconds(server.postmaster_pid()) - server_cpu,
        results,
    )


@dataclass
class Data:
    """What the workloads pick from: the same picks for both drivers in a round."""

    organizations: list[str]
    online: list[tuple[str, str]]
    """(row id, connection id) of every online row."""
    rows: int
    online_since: int
    """The onlineOnly threshold, fixed so that the set of online rows never changes."""


def listing_calls(data: Data, table: str, online: bool, rng: random.Random) -> list[Call]:
    sql = LISTING_SQL.format(table=table, online=ONLINE if online else "")
    calls: list[Call] = []
    for _ in range(LISTING_CALLS):
        organization = rng.choice(data.organizations)
        # Far enough from the end that every page is full: 101 onlineOnly rows of one
        # organization span 2 * ORGANIZATIONS * 101 seqs.
        after = rng.randrange(0, max(1, data.rows - 3 * ORGANIZATIONS * PAGE))
        args = (organization, data.online_since, after) if online else (organization, after)

        async def call(driver: Driver, args: tuple[Any, ...] = args) -> int:
            return len(await driver.fetch(sql, *args, PAGE + 1))

        calls.append(call)
    return calls


def heartbeat_calls(data: Data, rng: random.Random) -> list[Call]:
    calls: list[Call] = []
    for index in range(HEARTBEAT_CALLS):
        row_id, connection_id = rng.choice(data.online)
        mode = None if index % 2 else "default"

        async def call(
            driver: Driver,
            row_id: str = row_id,
            connection_id: str = connection_id,
            mode: str | None = mode,
        ) -> int:
            now = now_ms()
            return await driver.execute(HEARTBEAT_SQL, now, now, mode, row_id, connection_id)

        calls.append(call)
    return calls


def batch_calls(data: Data, rng: random.Random) -> list[Call]:
    calls: list[Call] = []
    for _ in range(BATCHES):
        picked = rng.sample(data.online, BATCH_ROWS)
        ids = [row_id for row_id, _ in picked]
        connections = [connection_id for _, connection_id in picked]
        modes = [None if index % 2 else "default" for index in range(BATCH_ROWS)]

        async def call(
            driver: Driver,
            ids: list[str] = ids,
            connections: list[str] = connections,
            modes: list[str | None] = modes,
        ) -> int:
            now = now_ms()
            return await driver.execute(BATCH_SQL, ids, connections, [now] * BATCH_ROWS, modes)

        calls.append(call)
    return calls


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    tasks: int
    make: Callable[[Data, random.Random], list[Call]]
    per_call: int
    """Rows every call must return or change."""
    batched: bool = False


WORKLOADS = (
    Workload(
        "listing",
        "listing, all rows: page of 101 after a random cursor",
        LISTING_TASKS,
        lambda data, rng: listing_calls(data, "environments", False, rng),
        PAGE + 1,
    ),
    Workload(
        "listing_online",
        "listing, onlineOnly",
        LISTING_TASKS,
        lambda data, rng: listing_calls(data, "environments", True, rng),
        PAGE + 1,
    ),
    Workload(
        "listing_jsonb",
        "listing, all rows, metadata JSONB (each driver's default decoding)",
        LISTING_TASKS,
        lambda data, rng: listing_calls(data, "environments_jsonb", False, rng),
        PAGE + 1,
    ),
    Workload("heartbeat", "heartbeat, one row a statement", HEARTBEAT_TASKS, heartbeat_calls, 1),
    Workload(
        "heartbeat_batch",
        f"heartbeat, {BATCH_ROWS} rows a statement (unnest of arrays), one batch at a time",
        1,
        batch_calls,
        BATCH_ROWS,
        batched=True,
    ),
)


@dataclass
class Collected:
    runs: dict[tuple[str, str], list[Run]] = field(default_factory=dict)

    def add(self, workload: str, driver: str, run: Run) -> None:
        self.runs.setdefault((workload, driver), []).append(run)


async def measure(server: PostgresServer, data: Data, dsn: str, rounds: int) -> Collected:
    drivers = {name: make_driver(name) for name in DRIVERS}
    for driver in drivers.values():
        await driver.open(dsn, POOL_SIZE)
    collected = Collected()
    try:
        # A round not kept: prepared statements cached, the table in shared buffers.
        for workload in WORKLOADS:
            for driver in drivers.values():
                calls = workload.make(data, random.Random(f"warm-{workload.key}"))
                await drive(driver, calls[: len(calls) // 4 or 1], workload.tasks, server)
        for round_index in range(rounds):
            for position, workload in enumerate(WORKLOADS):
                calls = workload.make(data, random.Random(f"{round_index}-{workload.key}"))
                order = DRIVERS if (round_index + position) % 2 == 0 else DRIVERS[::-1]
                for name in order:
                    run = await drive(drivers[name], calls, workload.tasks, server)
                    wrong = [count for count in run.results if count != workload.per_call]
                    if wrong:
                        raise BenchError(
                            f"{name}, {workload.key}: {len(wrong)} calls returned or changed "
                            f"{sorted(set(wrong))[:5]} rows instead of {workload.per_call}"
                        )
                    collected.add(workload.key, name, run)
            print(f"  round {round_index + 1}/{rounds} done", flush=True)
    finally:
        for driver in drivers.values():
            await driver.close()
    return collected


def throughput_sections(collected: Collected) -> list[Section]:
    sections = []
    for workload in WORKLOADS:
        section = Section(workload.key, workload.title)
        medians: dict[str, dict[str, float]] = {}
        for name in DRIVERS:
            runs = collected.runs[(workload.key, name)]
            calls = runs[0].calls
            p50 = [percentile(run.latencies_s, 0.5) * 1000 for run in runs]
            p99 = [percentile(run.latencies_s, 0.99) * 1000 for run in runs]
            rate = [run.calls / run.seconds for run in runs]
            client = [run.client_cpu_s / run.calls * 1e6 for run in runs]
            server = [run.server_cpu_s / run.calls * 1e6 for run in runs]
            unit = "batch" if workload.batched else "call"
            section.add(Figure(f"{name}: p50", "ms", p50, samples=calls))
            section.add(Figure(f"{name}: p99", "ms", p99, samples=calls))
            if workload.batched:
                rows = [value * BATCH_ROWS for value in rate]
                section.add(Figure(f"{name}: rows/s", "rows/s", rows, samples=calls))
            else:
                section.add(Figure(f"{name}: calls/s", "calls/s", rate, samples=calls))
            section.add(Figure(f"{name}: client CPU", f"µs/{unit}", client, samples=calls))
            section.add(Figure(f"{name}: server CPU", f"µs/{unit}", server, samples=calls))
            medians[name] = {
                "p50": median(p50),
                "p99": median(p99),
                "rate": median(rate),
                "client": median(client),
            }
        first, second = DRIVERS
        ratios = {key: medians[second][key] / medians[first][key] for key in medians[first]}
        section.notes.append(
            f"{second} / {first}: p50 x{ratios['p50']:.2f}, p99 x{ratios['p99']:.2f}, "
            f"throughput x{ratios['rate']:.2f}, client CPU x{ratios['client']:.2f}"
        )
        sections.append(section)
    return sections


_PROBE = r"""
import asyncio, json, sys, time

def stage(name, **values):
    print(json.dumps({"stage": name, **values}), flush=True)
    sys.stdin.readline()

driver, dsn, size, sql, organization, calls = sys.argv[1:7]
size, calls = int(size), int(calls)
stage("python")
began = time.perf_counter()
if driver == "asyncpg":
    import asyncpg
else:
    import psycopg, psycopg_pool
stage("imported", import_ms=(time.perf_counter() - began) * 1000)

async def main():
    if driver == "asyncpg":
        pool = await asyncpg.create_pool(dsn, min_size=size, max_size=size)
        async def fetch(*args):
            return [tuple(row) for row in await pool.fetch(sql, *args)]
    else:
        pool = psycopg_pool.AsyncConnectionPool(
            dsn, min_size=size, max_size=size, open=False, kwargs={"autocommit": True}
        )
        await pool.open(wait=True)
        async def fetch(*args):
            async with pool.connection() as connection:
                return await (await connection.execute(sql, args)).fetchall()
    await fetch(organization, 0, 101)
    stage("pool")
    async def worker(count):
        for index in range(count):
            await fetch(organization, index * 10, 101)
    await asyncio.gather(*(worker(calls // size) for _ in range(size)))
    stage("used")
    await pool.close()

asyncio.run(main())
"""


def probe_footprint(name: str, dsn: str, organization: str) -> dict[str, float]:
    """Import time and resident memory of a fresh interpreter that imports `name`, opens its
    pool and lists; memory read from outside (/proc) at each stage."""
    sql = LISTING_SQL.format(table="environments", online="")
    sql = asyncpg_sql(sql) if name == "asyncpg" else psycopg_sql(sql)
    args = [name, dsn, str(POOL_SIZE), sql, organization, str(FOOTPRINT_LISTINGS)]
    child = subprocess.Popen(
        [sys.executable, "-c", _PROBE, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    found: dict[str, float] = {}
    try:
        for _ in range(4):
            line = child.stdout.readline()
            if not line:
                raise BenchError(f"footprint probe of {name} ended early: {child.stderr.read()}")
            report = json.loads(line)
            rss = memory(child.pid).rss_kib / 1024
            found[f"rss_{report['stage']}_mib"] = rss
            if "import_ms" in report:
                found["import_ms"] = report["import_ms"]
            child.stdin.write("\n")
            child.stdin.flush()
        if child.wait(timeout=30) != 0:
            raise BenchError(f"footprint probe of {name} failed: {child.stderr.read()}")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return found


def footprint_section(dsn: str, organization: str, runs: int) -> Section:
    section = Section("footprint", "footprint: a fresh interpreter per driver and run")
    values: dict[str, dict[str, list[float]]] = {name: {} for name in DRIVERS}
    for index in range(runs):
        for name in DRIVERS if index % 2 == 0 else DRIVERS[::-1]:
            for key, value in probe_footprint(name, dsn, organization).items():
                values[name].setdefault(key, []).append(value)
    for name in DRIVERS:
        found = values[name]

        def above(stage: str, found: dict[str, list[float]] = found) -> list[float]:
            pairs = zip(found[stage], found["rss_python_mib"], strict=True)
            return [after - before for after, before in pairs]

        section.add(Figure(f"{name}: import time", "ms", found["import_ms"]))
        section.add(Figure(f"{name}: RSS added by the import", "MiB", above("rss_imported_mib")))
        section.add(
            Figure(f"{name}: RSS added, pool of {POOL_SIZE} open", "MiB", above("rss_pool_mib"))
        )
        section.add(
            Figure(
                f"{name}: RSS added, after {FOOTPRINT_LISTINGS} listings",
                "MiB",
                above("rss_used_mib"),
            )
        )
        section.add(Figure(f"{name}: RSS, total after the listings", "MiB", found["rss_used_mib"]))
    section.notes.append(
        "RSS added: over the same interpreter with asyncio imported (the platform imports it "
        "anyway); psycopg counts psycopg, psycopg_binary and psycopg_pool"
    )
    return section


def prepare(server: PostgresServer, rows: int) -> tuple[str, Data, dict[str, float]]:
    timings: dict[str, float] = {}
    began = time.monotonic()
    url = server.create_database("bench")
    database = "bench"
    now = now_ms()
    for table, metadata_type in (("environments", "TEXT"), ("environments_jsonb", "JSONB")):
        server.psql(schema(table, metadata_type), database)
        server.psql(fill_sql(table, metadata_type, rows, now), database)
        server.psql(f"VACUUM ANALYZE {table}", database)
    timings["fill_s"] = time.monotonic() - began
    organizations = server.psql(
        "SELECT DISTINCT organization_id FROM environments ORDER BY 1", database
    ).split()
    online: list[tuple[str, str]] = []
    for line in server.psql(
        "SELECT id, connection_id FROM environments WHERE connection_id IS NOT NULL ORDER BY seq",
        database,
    ).splitlines():
        row_id, connection_id = line.split("|")
        online.append((row_id, connection_id))
    data = Data(organizations, online, rows, now - ONLINE_WINDOW_MS)
    return url, data, timings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.pg_drivers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="20,000 rows, 2 rounds")
    parser.add_argument("--rows", type=int, help="rows in the table (default 100,000)")
    parser.add_argument("--rounds", type=int, help="rounds of every workload (default 5)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"default: {RESULTS}")
    args = parser.parse_args(argv)
    rows = args.rows or (20_000 if args.quick else 100_000)
    rounds = args.rounds or (2 if args.quick else 5)

    header: dict[str, Any] = {
        "date": machine.now_utc(),
        "git": machine.git_commit(),
        "load_average_before": machine.load_average(),
        "rows": rows,
        "organizations": ORGANIZATIONS,
        "rounds": rounds,
        "pool_size": POOL_SIZE,
        "drivers": {
            name: importlib.metadata.version(package)
            for name, package in (
                ("asyncpg", "asyncpg"),
                ("psycopg", "psycopg"),
                ("psycopg-binary", "psycopg-binary"),
                ("psycopg-pool", "psycopg-pool"),
            )
        },
    }
    started = time.monotonic()
    with PostgresServer.start() as server:
        header["machine"] = machine.describe(server.directory)
        header["postgres"] = {
            "version": server.psql("SHOW server_version"),
            "start_s": round(server.started_in_s, 2),
            "settings": "tests/postgres.py SETTINGS: fsync, synchronous_commit, "
            "full_page_writes off; locale C",
        }
        print(
            f"PostgreSQL {header['postgres']['version']} started in "
            f"{server.started_in_s:.2f} s; filling {rows:,} rows twice (TEXT, JSONB)",
            flush=True,
        )
        url, data, timings = prepare(server, rows)
        header["fill_s"] = round(timings["fill_s"], 1)
        print(f"filled in {timings['fill_s']:.1f} s; {rounds} rounds", flush=True)
        collected = asyncio.run(measure(server, data, url, rounds))
        sections = throughput_sections(collected)
        print("  footprint probes", flush=True)
        sections.append(footprint_section(url, data.organizations[0], max(rounds, 3)))
    header["load_average_after"] = machine.load_average()
    header["seconds"] = round(time.monotonic() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_results(args.output, header, sections)
    print(
        f"\n{render(sections)}\n\nmedian, min and max over {rounds} rounds (runs: how many, "
        f"x calls in each); latency includes waiting for a pooled connection\n"
        f"written to {args.output} ({header['seconds']:g} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
