"""The store in PostgreSQL, shared by every platform process ("pod") that serves one fleet.

asyncpg with a pool: statements never block the event loop, and a pod holds a few connections
whatever its number of sockets. The SQL is the shared one (`base`), its `?` placeholders
numbered for PostgreSQL once per statement text. The schema is created or migrated at start
inside one transaction that first takes an advisory lock, so pods started together migrate
once, one after the other.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import asyncpg
from pydantic import BaseModel, TypeAdapter, ValidationError

from agent.platform.store.base import (
    BEATS_RETURNING,
    BY_USER_INDEX,
    INDEXES,
    LEASE_HOLDS,
    PODS_TABLE,
    SCHEMA_VERSION,
    Beat,
    Heartbeat,
    Lease,
    Listening,
    Message,
    RowRef,
    Store,
    StoreError,
    describe_location,
    migration_steps,
)

POOL_SIZE = 8
"""Connections a pod holds at most: statements are short, so a few serve thousands of sockets."""
STATEMENT_TIMEOUT_S = 10.0
MIGRATION_LOCK = 0x656E76_6167656E  # "envagen": any constant, the same in every pod

MESSAGES_TABLE = """CREATE TABLE pod_messages (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pod_id         TEXT NOT NULL,
    kind           TEXT NOT NULL,
    row_id         TEXT NOT NULL,
    connection_id  TEXT NOT NULL,
    body           TEXT NOT NULL,
    reply_to       TEXT
)"""
"""What pods leave for each other (version 4). The rows are the truth; a NOTIFY on the
recipient's channel only says there is something to read, so a notification lost while its
listening connection was down costs a delay (the next re-read), never a message."""

_SCHEMA = (
    """CREATE TABLE api_keys (
    key_hash        TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    owner           TEXT,
    created_at      BIGINT NOT NULL,
    role            TEXT NOT NULL DEFAULT 'member'
)""",
    # COLLATE "C": rows are ordered by bytes, as SQLite orders them, whatever the locale.
    """CREATE TABLE environments (
    seq                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                   TEXT NOT NULL UNIQUE,
    organization_id      TEXT NOT NULL,
    device_id            TEXT NOT NULL,
    listener_instance_id TEXT COLLATE "C" NOT NULL,
    user_id              TEXT,
    api_key_owner        TEXT,
    connection_name      TEXT NOT NULL,
    source               TEXT NOT NULL,
    current_mode         TEXT,
    metadata             TEXT NOT NULL,
    issued_connection_id TEXT,
    connection_id        TEXT,
    connected_at         BIGINT,
    last_heartbeat       BIGINT,
    pod_id               TEXT,
    first_seen_at        BIGINT NOT NULL,
    last_seen_at         BIGINT NOT NULL,
    UNIQUE (organization_id, device_id, listener_instance_id)
)""",
    *INDEXES,
    PODS_TABLE,
    MESSAGES_TABLE,
)
"""A new database, created at SCHEMA_VERSION."""

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (PODS_TABLE,),
    3: (MESSAGES_TABLE,),
    # Inside the migration's transaction, so not CONCURRENTLY: writes to the table wait while
    # it is built (about 4 s at 1,000,000 rows).
    4: (BY_USER_INDEX,),
}
"""The statements that take a database from version N to N + 1 (PostgreSQL support began at
version 2)."""

CHANGES_CHANNEL = "envagent_rows"
"""Where every pod announces the rows it changed (`announce`) and listens for the others'."""
HEARTBEATS_CHANNEL = "envagent_heartbeats"
"""Where every pod announces the heartbeats each presence flush wrote, and listens for them."""
CHANGES_PER_NOTIFY = 7_000
"""Bytes of changes (or heartbeats) in one NOTIFY: its payload must stay under 8,000."""
_CHANGES: TypeAdapter[list[tuple[str, str]]] = TypeAdapter(list[tuple[str, str]])
"""A NOTIFY's changes: `[[organization id, row id], ...]`."""


class _BeatsNote(BaseModel):
    """A NOTIFY's heartbeats: `beats` as `[[organization id, row id, at], ...]`; `more` when the
    announcement's next NOTIFY holds more of them. One statement's NOTIFYs reach a listener
    together and in order, so a listener puts an announcement's heartbeats back together."""

    more: bool
    beats: list[tuple[str, str, int]]


_TRY_AGAIN_CLASSES = ("08", "53", "57")
"""SQLSTATE classes that may pass: connection exceptions, insufficient resources (a full disk,
too many connections), operator intervention (a shutdown, a restart)."""
_TRY_AGAIN_STATES = frozenset({"25006", "40001", "40P01"})
"""A read-only transaction (a standby), a serialization failure, a deadlock."""


async def _keep_session(connection: asyncpg.Connection) -> None:
    """What a connection goes back to the pool with: nothing to undo. Pool connections hold no
    session state (no LISTEN: the listener has a connection of its own; no SET, session lock or
    cursor), so asyncpg's reset query, four statements and a round trip at every release (half
    of a pod's round trips under heartbeats), is skipped. An open transaction is still rolled
    back by the pool itself."""


class PostgresStore(Store):
    def __init__(self, pool: asyncpg.Pool, url: str) -> None:
        super().__init__()
        self._pool = pool
        self._url = url

    @classmethod
    async def open(cls, url: str) -> PostgresStore:
        """Connect and migrate; StoreError (naming the URL without its password) when the
        database cannot be used."""
        pool = await asyncpg.create_pool(
            url,
            min_size=0,  # no floor to restore: asyncpg logs a traceback per try in an outage
            max_size=POOL_SIZE,
            command_timeout=STATEMENT_TIMEOUT_S,
            reset=_keep_session,
        )
        try:
            await _migrate(pool)  # the first connection
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await pool.close()
            raise StoreError(
                f"cannot use the platform database {describe_location(url)}: {exc}"
            ) from None
        except BaseException:
            await pool.close()
            raise
        return cls(pool, url)

    async def close(self) -> None:
        await self._pool.close()

    async def _one(self, sql: str, *params: Any) -> tuple[Any, ...] | None:
        found = await self._run(self._pool.fetchrow, sql, params, "answer")
        return tuple(found) if found is not None else None

    async def _all(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await self._run(self._pool.fetch, sql, params, "answer")]

    async def _write(self, sql: str, *params: Any) -> tuple[list[tuple[Any, ...]], int]:
        if " RETURNING " in sql:
            rows = [tuple(row) for row in await self._run(self._pool.fetch, sql, params)]
            return rows, len(rows)
        return [], _changed(await self._run(self._pool.execute, sql, params))

    async def _record_heartbeats(
        self, beats: Sequence[Heartbeat], lease: Lease
    ) -> list[tuple[Any, ...]]:
        written = await self._run(
            self._pool.fetch,
            "UPDATE environments SET last_heartbeat = beat.at, last_seen_at = beat.at "  # noqa: S608
            "FROM unnest(?::text[], ?::text[], ?::bigint[]) AS beat (id, connection_id, at) "
            "WHERE environments.id = beat.id AND environments.connection_id = beat.connection_id "
            f"AND {LEASE_HOLDS} {BEATS_RETURNING}",
            (
                [beat.row_id for beat in beats],
                [beat.connection_id for beat in beats],
                [beat.at for beat in beats],
                lease.pod_id,
                lease.generation,
            ),
        )
        return [tuple(row) for row in written]

    async def post(self, pod_id: str, message: Message) -> None:
        await self._run(
            self._pool.execute,
            "WITH posted AS (INSERT INTO pod_messages (pod_id, kind, row_id, connection_id, body, "
            "reply_to) VALUES (?, ?, ?, ?, ?, ?) RETURNING 1) "
            "SELECT pg_notify(?, '') FROM posted",
            (
                pod_id,
                message.kind,
                message.row_id,
                message.connection_id,
                message.body,
                message.reply_to,
                _channel(pod_id),
            ),
        )

    async def fence_silent(self, silent_since: int, now: int) -> list[str]:
        """As for any store, and what was left for the fenced pods goes: its askers time out,
        and a pod that joins again starts with no stale orders."""
        fenced = await super().fence_silent(silent_since, now)
        if fenced:
            await self._write("DELETE FROM pod_messages WHERE pod_id = ANY(?::text[])", fenced)
        return fenced

    async def take(self, pod_id: str) -> list[Message]:
        rows = await self._run(
            self._pool.fetch,
            "DELETE FROM pod_messages WHERE pod_id = ? "
            "RETURNING id, kind, row_id, connection_id, body, reply_to",
            (pod_id,),
        )
        return [Message(*tuple(row)[1:]) for row in sorted(rows, key=lambda row: row[0])]

    async def announce(self, changes: Sequence[RowRef], beats: Sequence[Beat] = ()) -> None:
        """One statement, however many NOTIFYs the changes and heartbeats fill."""
        pairs = ((change.organization_id, change.row_id) for change in changes)
        notes = [(CHANGES_CHANNEL, payload) for payload in _payloads(pairs)]
        chunks = _payloads((beat.organization_id, beat.row_id, beat.at) for beat in beats)
        notes += [
            (HEARTBEATS_CHANNEL, f'{{"more":{json.dumps(n < len(chunks))},"beats":{chunk}}}')
            for n, chunk in enumerate(chunks, 1)
        ]
        await self._run(
            self._pool.execute,
            "SELECT pg_notify(note.channel, note.payload) "
            "FROM unnest(?::text[], ?::text[]) AS note (channel, payload)",
            ([channel for channel, _ in notes], [payload for _, payload in notes]),
        )

    async def listen(
        self,
        pod_id: str,
        signalled: Callable[[], None],
        changed: Callable[[list[RowRef]], None],
        beaten: Callable[[list[Beat]], None],
    ) -> Listening:
        """A connection of its own, outside the pool (which would take a dropped one back),
        LISTENing on the pod's channel, the changes' and the heartbeats'."""
        channel = _channel(pod_id)
        partial: list[Beat] = []
        """An announcement's heartbeats so far, until its last NOTIFY."""

        def heard(*_: object) -> None:
            signalled()

        def announced(_connection: object, _pid: int, _channel: str, payload: object) -> None:
            try:
                pairs = _CHANGES.validate_json(str(payload))
            except ValidationError:  # not from a pod of ours
                return
            changed([RowRef(*pair) for pair in pairs])

        def beat(_connection: object, _pid: int, _channel: str, payload: object) -> None:
            try:
                note = _BeatsNote.model_validate_json(str(payload))
            except ValidationError:  # not from a pod of ours
                return
            partial.extend(Beat(*triple) for triple in note.beats)
            if not note.more:
                beaten(partial.copy())
                partial.clear()

        try:
            connection = await asyncpg.connect(self._url, command_timeout=STATEMENT_TIMEOUT_S)
            await connection.add_listener(channel, heard)
            await connection.add_listener(CHANGES_CHANNEL, announced)
            await connection.add_listener(HEARTBEATS_CHANNEL, beat)
        except _CONNECTION_FAILURES as exc:
            raise self._unavailable(repr(exc), "listen") from None

        async def stop() -> None:
            with contextlib.suppress(*_CONNECTION_FAILURES):
                await connection.close(timeout=STATEMENT_TIMEOUT_S)

        return Listening(alive=lambda: not connection.is_closed(), stop=stop)

    async def _run(
        self,
        call: Callable[..., Awaitable[Any]],
        sql: str,
        params: tuple[Any, ...],
        what: str = "take writes",
    ) -> Any:
        """One statement on a pooled connection. A failure that may pass (the network, a
        `_TRY_AGAIN_*` state) is StoreUnavailable; any other (a bug, a schema problem that
        retrying cannot mend) is raised as it is.

        A failure without a state is the connection's own (a socket the server closed, which
        can leave asyncpg's connection in a state it cannot leave): the pool then replaces
        every connection it holds, so that the next statements get sound ones."""
        try:
            result = await call(_numbered(sql), *params)
        except _CONNECTION_FAILURES as exc:
            state = getattr(exc, "sqlstate", None)
            lasting = state is not None and state[:2] not in _TRY_AGAIN_CLASSES
            if lasting and state not in _TRY_AGAIN_STATES:
                raise
            if state is None or state[:2] in ("08", "57"):
                await self._pool.expire_connections()
            cause = f"{exc} (SQLSTATE {state})" if state else repr(exc)
            raise self._unavailable(cause, what) from None
        self._available()
        return result


_CONNECTION_FAILURES = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


@functools.lru_cache(maxsize=256)
def _numbered(sql: str) -> str:
    """`?` placeholders as `$1`, `$2`… (the shared SQL has no `?` inside a literal)."""
    count = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _: f"${next(count)}", sql)


def _channel(pod_id: str) -> str:
    """A channel name for any pod id: identifiers are at most 63 bytes."""
    return "envagent_" + hashlib.sha256(pod_id.encode()).hexdigest()[:32]


def _payloads(entries: Iterable[Sequence[str | int]]) -> list[str]:
    """The entries as JSON arrays of at most `CHANGES_PER_NOTIFY` bytes (one entry an array at
    least): the changes as `_CHANGES` reads them, the heartbeats as `_BeatsNote` holds them."""
    payloads: list[str] = []
    items: list[str] = []
    size = 0
    for entry in entries:
        item = json.dumps(list(entry), separators=(",", ":"))
        if items and size + len(item) + 1 > CHANGES_PER_NOTIFY:
            payloads.append(f"[{','.join(items)}]")
            items, size = [], 0
        items.append(item)
        size += len(item) + 1
    if items:
        payloads.append(f"[{','.join(items)}]")
    return payloads


def _changed(status: str) -> int:
    """The row count of a command status such as `UPDATE 3`."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


async def _migrate(pool: asyncpg.Pool) -> None:
    """Create the schema, or bring an older one up to date, once whichever pods start."""
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS envagent_schema (version INTEGER NOT NULL)"
        )
        version = await connection.fetchval("SELECT max(version) FROM envagent_schema")
        if version is not None and version > SCHEMA_VERSION:
            raise StoreError(
                f"the platform database's schema version {version} is newer than this "
                f"envagent ({SCHEMA_VERSION})"
            )
        if version == SCHEMA_VERSION:
            return
        steps = _SCHEMA if version is None else migration_steps(_MIGRATIONS, version)
        for statement in steps:
            await connection.execute(statement)
        await connection.execute("DELETE FROM envagent_schema")
        await connection.execute("INSERT INTO envagent_schema VALUES ($1)", SCHEMA_VERSION)
