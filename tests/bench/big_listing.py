"""`GET /v1/environments?limit=100` over `big_listing_rows` rows (1,000,000), on PostgreSQL and
on SQLite: a plain first page, `onlineOnly`, `userId` and an `after` cursor 90% deep.

Each backend's schema is the product's (the store opens the empty database and creates it),
and its development key is made as the platform makes it (`ensure_dev_key`). The rows are then
written by one INSERT (generate_series on PostgreSQL, a recursive CTE on SQLite), shaped as
`Store.register` writes them: `env-<uuid>` ids, a `conn-<uuid>` issued connection id, the load
generator's metadata (`sim_metadata(i)`), one second apart in creation order, all in the
development key's organization, spread over 100 users: the key's own user owns every
5,000th row (200 rows in 1,000,000, a person's few machines in a large fleet: the worst case
for `userId`), 99 others share the rest evenly. The platform is then started, and every 10th
row is marked connected (as 100,000 sockets opening would: SQLite's platform clears every
connection at its start), with an online window of a day so that no row goes offline while the
benchmark runs (the query is the same whatever the window). PostgreSQL then gets the VACUUM
ANALYZE that autovacuum would run; SQLite gets nothing, as the product runs no ANALYZE.

Requests are sequential on one keep-alive connection, a warm-up first (which also takes asyncpg
past PostgreSQL's five custom plans of a prepared statement, to the plan it keeps).

What the planners do with these 1,000,000 rows (PostgreSQL 15: EXPLAIN (ANALYZE, BUFFERS), with
the values and as the generic plan a prepared statement ends with; SQLite 3.40: EXPLAIN QUERY
PLAN and the statement timed alone):

- limit=100: PostgreSQL walks the primary key, filtering on the organization (every row is
  its, so that index, smaller than (organization_id, seq), is the cheaper walk): 30 buffers,
  0.2-0.4 ms. SQLite walks environments_by_org: 0.4 ms.
- onlineOnly: both walk the partial index of connected rows: 12 buffers, 0.2-0.4 ms; 0.45 ms.
- after 90% deep: the cursor's row by environments_id_key, then a range of the primary key
  (PostgreSQL) or environments_by_org (SQLite): 0.2-0.3 ms; 0.4 ms.
- userId, before schema version 5 (no index held user_id): both walked the organization's rows
  in order, filtering: for the key's user, 505,000 rows (131,000 buffers) before a page was
  full, 415 ms as the generic plan, 517 ms as the custom one (a parallel scan of the primary
  key); SQLite 253 ms. For a user with 10,000 rows: 11 ms; 5.6 ms. With environments_by_user
  (organization_id, user_id, seq), version 5: 0.3-1.1 ms and 0.24 ms, whichever the user, and
  no other variant's plan changed.
- random_page_cost 1.1 instead of the default 4 gave the same plan for every variant, before
  and after version 5, so no setting is changed.

End to end (full plan): `userId` p99 was 360 ms on PostgreSQL and 278 ms on SQLite before
version 5 (measured with the index dropped, 3x100 requests), 14 ms on both after; every other
variant is 12-16 ms on both, before and after.

What remains of a full page is the platform's own work, the same on both backends: building
100 rows (1.2 ms) and their JSON (to_wire and json.dumps, 3 ms, 70 KB), in a process that
shares this machine's cores with the database and the client.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg

from agent.platform.keys import DEV_ORGANIZATION, DEV_OWNER, DEV_USER, ensure_dev_key
from agent.platform.settings import PlatformSettings
from agent.platform.store.opening import open_store
from agent.support.clock import now_ms
from tests.bench.fixtures import HTTP_TIMEOUT, PlatformProcess, start_platform
from tests.bench.listing import PAGE, add_percentiles, measure
from tests.bench.pg_drivers import asyncpg_sql, metadata_template, row_metadata
from tests.bench.plan import Plan
from tests.bench.procs import BenchError, Workspace
from tests.bench.report import Budget, Figure, Section
from tests.postgres import PostgresServer

BUDGET_ROWS = 1_000_000
BUDGET = Budget(
    25, "budget: GET /v1/environments?limit=100 p99 <= 25 ms, 1,000,000 rows on PostgreSQL"
)
OTHER_USERS = 99
RARE_EVERY = 5_000
"""The development key's user owns every this-many-th row."""
ONLINE_EVERY = 10
DEEP = 0.9
ONLINE_WINDOW_MS = 24 * 3600 * 1000
"""A day: no row goes offline while the benchmark runs (the query is the same whatever the
window)."""
POD = "bench-pod"
WARM_UP = 50
"""Unmeasured requests of each variant before the runs."""

_UUID = {
    "postgres": "md5('{seed}' || i)::uuid",
    "sqlite": "lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-' || "
    "hex(randomblob(2)) || '-' || hex(randomblob(2)) || '-' || hex(randomblob(6)))",
}
"""A uuid's text for row `i`: md5 of the row's number on PostgreSQL, random on SQLite (which has
no hash function); either way spread over the id indexes as uuid4s are."""


def fill_sql(dialect: str, rows: int, now: int) -> str:
    """One INSERT of `rows` offline rows, numbered `i` from 1; its parameters are the
    organization, the development user, its key's owner and the metadata template."""
    if dialect == "postgres":
        numbers, source = "", f"generate_series(1, {rows}) AS g(i)"
    else:
        numbers = (
            f"WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {rows}) "
        )
        source = "g"
    env, conn = (_UUID[dialect].format(seed=seed) for seed in ("e", "c"))
    return f"""{numbers}INSERT INTO environments (id, organization_id, device_id,
    listener_instance_id, user_id, api_key_owner, connection_name, source, current_mode,
    metadata, issued_connection_id, first_seen_at, last_seen_at)
SELECT 'env-' || {env}, ?, 'device-' || i, '',
    CASE WHEN i % {RARE_EVERY} = 0 THEN ? ELSE 'user-' || (i % {OTHER_USERS}) END,
    CASE WHEN i % {RARE_EVERY} = 0 THEN ? ELSE 'bench' END,
    'device-' || i, 'local', 'default', {row_metadata("?")}, 'conn-' || {conn},
    {now} - ({rows} - i) * 1000, {now} - ({rows} - i) * 1000
FROM {source}"""


def fill_params() -> tuple[str, ...]:
    return (DEV_ORGANIZATION, DEV_USER, DEV_OWNER, metadata_template())


def connect_sql(now: int) -> str:
    """Every ONLINE_EVERY-th row connected now, as `mark_connected` writes it."""
    return (
        f"UPDATE environments SET connection_id = issued_connection_id, connected_at = {now}, "
        f"last_heartbeat = {now}, last_seen_at = {now}, pod_id = '{POD}' "
        f"WHERE seq % {ONLINE_EVERY} = 0"
    )


@dataclass(frozen=True)
class Database:
    location: Path | str
    """What the platform's `--database` is given."""
    key: str
    """The development key."""


class Backend(ABC):
    name: str
    dialect: str

    @abstractmethod
    async def create(self, workspace: Workspace) -> Database:
        """An empty database with the product's schema and its development key."""

    @abstractmethod
    async def execute(self, sql: str, *params: str) -> None:
        """One statement, in a transaction of its own."""

    @abstractmethod
    async def row_id(self, seq: int) -> str: ...

    @abstractmethod
    async def settle(self) -> None:
        """What the database gets after a bulk write, before it is read."""

    @abstractmethod
    async def close(self) -> None: ...


async def _schema_and_key(location: Path | str, key_file: Path) -> Database:
    """Open the store on the empty database (so its tables and indexes are the product's) and
    make the development key as a platform finding no key does."""
    store = await open_store(location)
    try:
        if not await ensure_dev_key(store, key_file):
            raise BenchError(f"{location} already has keys")
    finally:
        await store.close()
    return Database(location, key_file.read_text().strip())


class Sqlite(Backend):
    name, dialect = "SQLite", "sqlite"

    def __init__(self) -> None:
        self._db: sqlite3.Connection | None = None

    async def create(self, workspace: Workspace) -> Database:
        path = workspace.path("big-listing-sqlite") / "platform.db"
        database = await _schema_and_key(path, PlatformSettings(db=path).dev_key_file)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=10000")  # the platform writes to it too
        return database

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise BenchError("the SQLite database is not created yet")
        return self._db

    async def execute(self, sql: str, *params: str) -> None:
        def run() -> None:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(sql, params)
            self.db.execute("COMMIT")

        await asyncio.to_thread(run)

    async def row_id(self, seq: int) -> str:
        found = self.db.execute("SELECT id FROM environments WHERE seq = ?", (seq,)).fetchone()
        return str(found[0])

    async def settle(self) -> None:
        """Nothing: the product never runs ANALYZE, so SQLite plans without statistics."""

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()


class Postgres(Backend):
    name, dialect = "PostgreSQL", "postgres"

    def __init__(self) -> None:
        self._server: PostgresServer | None = None
        self._db: asyncpg.Connection | None = None

    async def create(self, workspace: Workspace) -> Database:
        self._server = await asyncio.to_thread(PostgresServer.start)
        url = await asyncio.to_thread(self._server.create_database, "big_listing")
        database = await _schema_and_key(url, workspace.path("big-listing-pg") / "dev-key")
        self._db = await asyncpg.connect(url)  # no statement timeout: the fill takes a while
        return database

    @property
    def db(self) -> asyncpg.Connection:
        if self._db is None:
            raise BenchError("the PostgreSQL database is not created yet")
        return self._db

    async def execute(self, sql: str, *params: str) -> None:
        await self.db.execute(asyncpg_sql(sql), *params)

    async def row_id(self, seq: int) -> str:
        return str(await self.db.fetchval("SELECT id FROM environments WHERE seq = $1", seq))

    async def settle(self) -> None:
        """What autovacuum would do after the fill and the connections: statistics, and no
        dead row versions left to skip."""
        await self.db.execute("VACUUM ANALYZE environments")

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
        if self._server is not None:
            await asyncio.to_thread(self._server.stop)


@dataclass
class Measured:
    fill_s: float
    online_s: float
    runs: dict[str, list[list[float]]]


def variants(deep_id: str) -> dict[str, dict[str, str]]:
    return {
        "limit=100": {"limit": PAGE},
        "onlineOnly": {"limit": PAGE, "onlineOnly": "true"},
        "userId": {"limit": PAGE, "userId": DEV_USER},
        "after 90% deep": {"limit": PAGE, "after": deep_id},
    }


def expected_rows(rows: int) -> dict[str, int]:
    """How many rows each variant's page holds."""
    page = int(PAGE)
    deep = int(rows * DEEP)
    return {
        "limit=100": page,
        "onlineOnly": min(page, rows // ONLINE_EVERY),
        "userId": min(page, rows // RARE_EVERY),
        "after 90% deep": min(page, rows - deep),
    }


async def _check(
    http: aiohttp.ClientSession,
    platform: PlatformProcess,
    chosen: dict[str, dict[str, str]],
    rows: int,
) -> None:
    """The pages measured are the pages meant: as full as they should be, with the rows asked."""
    expected = expected_rows(rows)
    for name, params in chosen.items():
        page = await platform.listing(http, **params)
        if len(page.connections) != expected[name]:
            raise BenchError(f"{name}: {len(page.connections)} rows, not {expected[name]}")
        if name == "onlineOnly" and not all(row.connection_id for row in page.connections):
            raise BenchError("onlineOnly: a row without a connection")
        if name == "userId" and {row.user_id for row in page.connections} != {DEV_USER}:
            raise BenchError("userId: a row of another user")


async def _measure(workspace: Workspace, plan: Plan, backend: Backend) -> Measured:
    rows = plan.big_listing_rows
    database = await backend.create(workspace)
    began = time.monotonic()
    await backend.execute(fill_sql(backend.dialect, rows, now_ms()), *fill_params())
    fill_s = time.monotonic() - began
    platform = await start_platform(
        workspace,
        database.location,
        key=database.key,
        online_window_ms=ONLINE_WINDOW_MS,
        name=f"platform-{backend.dialect}",
    )
    try:
        began = time.monotonic()
        await backend.execute(connect_sql(now_ms()))
        await backend.settle()
        online_s = time.monotonic() - began
        chosen = variants(await backend.row_id(int(rows * DEEP)))
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector, timeout=HTTP_TIMEOUT) as http:
            await _check(http, platform, chosen, rows)
            await measure(http, platform, chosen, 1, WARM_UP)
            runs = await measure(
                http, platform, chosen, plan.listing_runs, plan.big_listing_requests
            )
    finally:
        await platform.child.stop()
    return Measured(fill_s, online_s, runs)


async def run(workspace: Workspace, plan: Plan) -> Section:
    rows = plan.big_listing_rows
    section = Section("big_listing", f"Listing at {rows:,} rows: PostgreSQL next to SQLite")
    measured: dict[str, Measured] = {}
    for backend in (Postgres(), Sqlite()):
        try:
            measured[backend.name] = await _measure(workspace, plan, backend)
        finally:
            await backend.close()
    p99 = {name: _figures(section, name, found, rows) for name, found in measured.items()}
    for variant, pg in p99["PostgreSQL"].items():
        ratios = [a / b for a, b in zip(pg, p99["SQLite"][variant], strict=True)]
        section.add(Figure(f"{variant}: p99 PostgreSQL / SQLite", "x", ratios))
    section.notes.append(
        f"one organization, {OTHER_USERS + 1} users (`userId` asks for the key's own, every "
        f"{RARE_EVERY:,}th row); every {ONLINE_EVERY}th row online; `after` the row "
        f"{DEEP:.0%} deep; PostgreSQL on a throwaway server (fsync off), VACUUM ANALYZEd; "
        "SQLite never analyzed, as in the product"
    )
    return section


def _figures(section: Section, name: str, found: Measured, rows: int) -> dict[str, list[float]]:
    """The fill time, each variant's p50 and p99; the p99s of each variant's runs."""
    section.add(Figure(f"{name}: fill {rows:,} rows", "s", [found.fill_s]))
    section.details[f"{name}: connect every {ONLINE_EVERY}th row, settle (s)"] = round(
        found.online_s, 1
    )
    budget = BUDGET if name == "PostgreSQL" and rows == BUDGET_ROWS else None
    return {
        variant: add_percentiles(section, f"{name}, {variant}", runs, budget)
        for variant, runs in found.runs.items()
    }
