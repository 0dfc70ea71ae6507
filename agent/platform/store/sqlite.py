"""The store in SQLite (WAL): the default, and the embedded platform's.

One connection, used from one worker thread of its own, so that no statement (a write waiting
on SQLite's lock, a slow disk) ever blocks the event loop, and statements still run one at a
time as SQLite wants. WAL with `synchronous=NORMAL` keeps every committed row across a crash of
the process; only a power loss may drop the last commits.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from agent.platform.store.base import (
    BEATS_RETURNING,
    BY_USER_INDEX,
    INDEXES,
    LEASE_HOLDS,
    PODS_TABLE,
    SCHEMA_VERSION,
    Heartbeat,
    Lease,
    Store,
    StoreError,
    migration_steps,
)

T = TypeVar("T")

HEARTBEATS_PER_STATEMENT = 10_000
"""Three parameters each: SQLite takes at most 32,766 in one statement."""

_SCHEMA = (
    """CREATE TABLE api_keys (
    key_hash        TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    owner           TEXT,
    created_at      INTEGER NOT NULL,
    role            TEXT NOT NULL DEFAULT 'member'
)""",
    """CREATE TABLE environments (
    seq                  INTEGER PRIMARY KEY AUTOINCREMENT,
    id                   TEXT NOT NULL UNIQUE,
    organization_id      TEXT NOT NULL,
    device_id            TEXT NOT NULL,
    listener_instance_id TEXT NOT NULL,  -- '' when the daemon sent none
    user_id              TEXT,
    api_key_owner        TEXT,
    connection_name      TEXT NOT NULL,
    source               TEXT NOT NULL,
    current_mode         TEXT,
    metadata             TEXT NOT NULL,  -- JSON, as registered and updated
    issued_connection_id TEXT,           -- the only id a new socket may use
    connection_id        TEXT,           -- the live socket's id, NULL when none
    connected_at         INTEGER,
    last_heartbeat       INTEGER,
    pod_id               TEXT,
    first_seen_at        INTEGER NOT NULL,
    last_seen_at         INTEGER NOT NULL,
    UNIQUE (organization_id, device_id, listener_instance_id)
)""",
    *INDEXES,
    PODS_TABLE,
)
"""A new database, created at SCHEMA_VERSION."""

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE api_keys ADD COLUMN role TEXT NOT NULL DEFAULT 'member'",),
    2: (PODS_TABLE,),
    3: (),  # version 4 added PostgreSQL's messages between pods: one process has no other
    4: (BY_USER_INDEX,),
}
"""The statements that take a database from version N to N + 1."""

_CANNOT_WRITE_NOW = frozenset(
    {
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_READONLY,
    }
)
"""Primary result codes of a write that may work later: a full disk, an I/O error, a lock, a
file system remounted read-only."""


class SqliteStore(Store):
    def __init__(self, path: Path, db: sqlite3.Connection, thread: ThreadPoolExecutor) -> None:
        super().__init__()
        self.path = path
        self._db = db
        self._thread = thread

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        """Open (creating it 0600 if need be) and migrate; StoreError when it cannot be used."""
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        try:
            db = await asyncio.get_running_loop().run_in_executor(thread, _connect, path)
        except BaseException:
            thread.shutdown(wait=False)
            raise
        return cls(path, db, thread)

    async def close(self) -> None:
        await self._run(self._db.close)
        self._thread.shutdown(wait=False)

    async def _run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, work)

    async def _one(self, sql: str, *params: Any) -> tuple[Any, ...] | None:
        found: tuple[Any, ...] | None = await self._run(
            lambda: self._db.execute(sql, params).fetchone()
        )
        return found

    async def _all(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return await self._run(lambda: self._db.execute(sql, params).fetchall())

    async def _record_heartbeats(
        self, beats: Sequence[Heartbeat], lease: Lease
    ) -> list[tuple[Any, ...]]:
        written: list[tuple[Any, ...]] = []
        for start in range(0, len(beats), HEARTBEATS_PER_STATEMENT):
            chunk = beats[start : start + HEARTBEATS_PER_STATEMENT]
            values = ", ".join(["(?, ?, ?)"] * len(chunk))
            rows, _ = await self._write(
                "UPDATE environments SET last_heartbeat = beat.column3, "  # noqa: S608
                f"last_seen_at = beat.column3 FROM (VALUES {values}) AS beat "
                "WHERE environments.id = beat.column1 "
                f"AND environments.connection_id = beat.column2 AND {LEASE_HOLDS} "
                f"{BEATS_RETURNING}",
                *(value for b in chunk for value in (b.row_id, b.connection_id, b.at)),
                lease.pod_id,
                lease.generation,
            )
            written += rows
        return written

    async def _write(self, sql: str, *params: Any) -> tuple[list[tuple[Any, ...]], int]:
        def write() -> tuple[list[tuple[Any, ...]], int]:
            # Fetched here: a statement with RETURNING commits only once its rows are read.
            cursor = self._db.execute(sql, params)
            return cursor.fetchall(), cursor.rowcount

        try:
            done = await self._run(write)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in _CANNOT_WRITE_NOW:
                raise
            raise self._unavailable(f"{exc} ({exc.sqlite_errorname})") from None
        self._available()
        return done


def _connect(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _create_private(path)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        _migrate(db)
    except (OSError, sqlite3.DatabaseError) as exc:
        raise StoreError(f"cannot use the platform database {path}: {exc}") from None
    return db


def _migrate(db: sqlite3.Connection) -> None:
    """Create the schema, or bring an older one up to date, in one transaction."""
    db.execute("BEGIN IMMEDIATE")  # a concurrent `keys create` migrates once
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this envagent ({SCHEMA_VERSION})"
            )
        if version < SCHEMA_VERSION:
            for statement in _SCHEMA if version == 0 else migration_steps(_MIGRATIONS, version):
                db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _create_private(path: Path) -> None:
    """Create the database file 0600, or make it 0600, before SQLite opens it: SQLite gives the
    -wal and -shm files the database's mode. Done through a descriptor of the file itself, never
    through a symlink, whose target (another file of this user's, any file for root) would have
    its mode changed and, if empty, be made a database."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreError(
                f"cannot use the platform database {path}: it is a symlink, which is never followed"
            ) from None
        raise
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
