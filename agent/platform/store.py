"""The reference platform's rows and API keys, in SQLite (WAL).

All SQL lives here. Calls are short indexed statements run on the event loop's thread: a
thread hop would cost more than the statement. WAL with `synchronous=NORMAL` keeps every
committed row across a crash of the process; only a power loss may drop the last commits.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.platform.access import ApiKey
from agent.protocol.models import (
    DeviceStatus,
    EnvironmentList,
    EnvironmentRow,
    ListQuery,
    Metadata,
    Mode,
    RegisterRequest,
)

log = logging.getLogger("envagent.platform")

SCHEMA_VERSION = 2

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
    "CREATE INDEX environments_by_org ON environments (organization_id, seq)",
    "CREATE INDEX environments_by_issued ON environments (issued_connection_id)",
    # onlineOnly pages walk only connected rows; heartbeats do not change this index.
    "CREATE INDEX environments_connected ON environments (organization_id, seq) "
    "WHERE connection_id IS NOT NULL",
)
"""A new database, created at SCHEMA_VERSION."""

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE api_keys ADD COLUMN role TEXT NOT NULL DEFAULT 'member'",),
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

_ROW_FIELDS = (
    "id",
    "connected_at",
    "connection_id",
    "connection_name",
    "device_id",
    "first_seen_at",
    "last_heartbeat",
    "last_seen_at",
    "organization_id",
    "pod_id",
    "api_key_owner",
    "current_mode",
    "metadata",
    "user_id",
)
"""The columns of a listing row, named as the EnvironmentRow fields they fill."""
_ROW_COLUMNS = ", ".join(_ROW_FIELDS)


@dataclass(frozen=True)
class StoredKey:
    """A key as `envagent platform keys list` shows it: never the key, a prefix of its hash."""

    key: ApiKey
    fingerprint: str
    created_at: int


@dataclass(frozen=True)
class RowOwner:
    row_id: str
    user_id: str
    """The user that registered the row: only they (or an admin) may steer it."""


@dataclass(frozen=True)
class IssuedConnection:
    row_id: str
    device_id: str
    owner_user_id: str
    """The user that registered the row: only they (or an admin) may steer it."""


class UnknownCursor(LookupError):
    """`after` names no row this organization can see."""


class StoreError(RuntimeError):
    """The database cannot be opened or has a schema this version does not know."""


class StoreUnavailable(StoreError):
    """The database cannot take a write now (full, I/O error, locked): try again later."""


class Store:
    def __init__(self, path: Path) -> None:
        self._write_failing = False
        """A write failed for a cause that may pass (see `_writing`), and none has worked since."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _create_private(path)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._migrate()
        except (OSError, sqlite3.DatabaseError) as exc:
            raise StoreError(f"cannot use the platform database {path}: {exc}") from None

    def _migrate(self) -> None:
        """Create the schema, or bring an older one up to date, in one transaction."""
        self._db.execute("BEGIN IMMEDIATE")  # a concurrent `keys create` migrates once
        try:
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"schema version {version} is newer than this envagent ({SCHEMA_VERSION})"
                )
            if version < SCHEMA_VERSION:
                for statement in _SCHEMA if version == 0 else _migration_steps(version):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Turn a write that may work later into StoreUnavailable, so that clients are told to
        come back; the cause is logged once per outage, not once per refused write."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in _CANNOT_WRITE_NOW:
                raise
            if not self._write_failing:
                self._write_failing = True
                log.warning(
                    "the platform database cannot take writes: %s (%s); "
                    "registrations are answered 503 until it can",
                    exc,
                    exc.sqlite_errorname,
                )
            raise StoreUnavailable(f"the platform database cannot take writes: {exc}") from None
        else:
            if self._write_failing:
                self._write_failing = False
                log.info("the platform database takes writes again")

    def _write(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[list[Any], int]:
        """Run one writing statement to its end: (the rows it returned, the rows it changed).
        StoreUnavailable when it may work later (`_writing`); fetching is inside, since a
        statement with RETURNING commits only once its rows have been read."""
        with self._writing():
            cursor = self._db.execute(sql, params)
            return cursor.fetchall(), cursor.rowcount

    # --- API keys ----------------------------------------------------------------------------

    def add_key(self, key_hash: str, key: ApiKey, now: int) -> None:
        self._write(
            "INSERT INTO api_keys (key_hash, organization_id, user_id, owner, role, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (key_hash, key.organization_id, key.user_id, key.owner, key.role, now),
        )

    def find_key(self, key_hash: str) -> ApiKey | None:
        found = self._db.execute(
            "SELECT organization_id, user_id, owner, role FROM api_keys WHERE key_hash = ?",
            (key_hash,),
        ).fetchone()
        return ApiKey(*found) if found else None

    def list_keys(self) -> list[StoredKey]:
        """Every key, oldest first, by the first 12 hex digits of its hash."""
        found = self._db.execute(
            "SELECT organization_id, user_id, owner, role, substr(key_hash, 1, 12), created_at "
            "FROM api_keys ORDER BY created_at, key_hash"
        ).fetchall()
        return [StoredKey(ApiKey(*row[:4]), row[4], row[5]) for row in found]

    def has_keys(self) -> bool:
        return self._db.execute("SELECT 1 FROM api_keys LIMIT 1").fetchone() is not None

    # --- environments ------------------------------------------------------------------------

    def find_owner(self, organization_id: str, request: RegisterRequest) -> RowOwner | None:
        """Who registered this identity's row, None when there is no row yet."""
        found = self._db.execute(
            "SELECT id, COALESCE(user_id, '') FROM environments "
            "WHERE organization_id = ? AND device_id = ? AND listener_instance_id = ?",
            (organization_id, request.device_id, request.listener_instance_id or ""),
        ).fetchone()
        return RowOwner(*found) if found else None

    def register(self, key: ApiKey, request: RegisterRequest, now: int) -> tuple[str, str]:
        """Create or update the row for this identity and issue a new connection id.

        Returns (row id, connection id). The row keeps its id, firstSeenAt, userId and
        apiKeyOwner; a socket that is still open keeps serving until the new connection's
        socket replaces it. Whether `key` may take an existing row is the caller's question.
        """
        connection_id = f"conn-{uuid.uuid4()}"
        [(row_id,)], _ = self._write(
            "INSERT INTO environments (id, organization_id, device_id, listener_instance_id, "
            "user_id, api_key_owner, connection_name, source, current_mode, metadata, "
            "issued_connection_id, first_seen_at, last_seen_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (organization_id, device_id, listener_instance_id) DO UPDATE SET "
            "connection_name = excluded.connection_name, source = excluded.source, "
            "current_mode = COALESCE(excluded.current_mode, current_mode), "
            "metadata = excluded.metadata, "
            "issued_connection_id = excluded.issued_connection_id, "
            "last_seen_at = excluded.last_seen_at "
            "RETURNING id",
            (
                f"env-{uuid.uuid4()}",
                key.organization_id,
                request.device_id,
                request.listener_instance_id or "",
                key.user_id,
                key.owner,
                request.connection_name,
                request.source or "local",
                request.current_mode,
                request.metadata.to_json(),
                connection_id,
                now,
                now,
            ),
        )
        return row_id, connection_id

    def find_issued(self, organization_id: str, connection_id: str) -> IssuedConnection | None:
        """The row a socket with this connection id may serve, if the id is still current."""
        found = self._db.execute(
            "SELECT id, device_id, COALESCE(user_id, '') FROM environments "
            "WHERE issued_connection_id = ? AND organization_id = ?",
            (connection_id, organization_id),
        ).fetchone()
        return IssuedConnection(*found) if found else None

    def mark_connected(
        self, row_id: str, connection_id: str, pod_id: str, connection_name: str | None, now: int
    ) -> None:
        """The socket opening counts as the first heartbeat: online at once."""
        self._write(
            "UPDATE environments SET connection_id = ?, connected_at = ?, last_heartbeat = ?, "
            "last_seen_at = ?, pod_id = ?, connection_name = COALESCE(?, connection_name) "
            "WHERE id = ?",
            (connection_id, now, now, now, pod_id, connection_name, row_id),
        )

    def record_heartbeat(
        self, row_id: str, connection_id: str, mode: Mode | None, now: int
    ) -> None:
        self._write(
            "UPDATE environments SET last_heartbeat = ?, last_seen_at = ?, "
            "current_mode = COALESCE(?, current_mode) WHERE id = ? AND connection_id = ?",
            (now, now, mode, row_id, connection_id),
        )

    def apply_device_status(self, row_id: str, status: DeviceStatus, now: int) -> None:
        """Fold what `update_device_status` reported into the row's metadata and mode."""
        found = self._db.execute(
            "SELECT metadata FROM environments WHERE id = ?", (row_id,)
        ).fetchone()
        if not found:
            return
        metadata: dict[str, Any] = json.loads(found[0])
        metadata.update(status.metadata_changes())
        self._write(
            "UPDATE environments SET metadata = ?, last_seen_at = ?, "
            "current_mode = COALESCE(?, current_mode), "
            "connection_name = COALESCE(?, connection_name) WHERE id = ?",
            (
                json.dumps(metadata, separators=(",", ":")),
                now,
                status.current_permission_mode,
                status.connection_name or None,
                row_id,
            ),
        )

    def mark_disconnected(self, row_id: str, connection_id: str, now: int) -> bool:
        """Offline at once; a no-op when a newer socket already holds the row."""
        _, changed = self._write(
            "UPDATE environments SET connection_id = NULL, connected_at = NULL, pod_id = NULL, "
            "last_seen_at = ? WHERE id = ? AND connection_id = ?",
            (now, row_id, connection_id),
        )
        return changed > 0

    def clear_connections(self) -> int:
        """At start-up no socket is open, whatever the rows say after a crash."""
        _, changed = self._write(
            "UPDATE environments SET connection_id = NULL, connected_at = NULL, pod_id = NULL "
            "WHERE connection_id IS NOT NULL OR pod_id IS NOT NULL"
        )
        return changed

    def get(self, organization_id: str, row_id: str) -> EnvironmentRow | None:
        found = self._db.execute(
            f"SELECT {_ROW_COLUMNS} FROM environments WHERE id = ? AND organization_id = ?",  # noqa: S608
            (row_id, organization_id),
        ).fetchone()
        return _to_row(found) if found else None

    def get_by_device(self, organization_id: str, device_id: str) -> EnvironmentRow | None:
        """The row of this device; the one without a listener instance id comes first."""
        found = self._db.execute(
            f"SELECT {_ROW_COLUMNS} FROM environments "  # noqa: S608
            "WHERE organization_id = ? AND device_id = ? ORDER BY listener_instance_id, seq "
            "LIMIT 1",
            (organization_id, device_id),
        ).fetchone()
        return _to_row(found) if found else None

    def list(
        self, organization_id: str, query: ListQuery, now: int, online_window_ms: int
    ) -> EnvironmentList:
        """One page in creation order, which no heartbeat changes, so paging is exact."""
        where = ["organization_id = ?"]
        params: list[Any] = [organization_id]
        if query.after is not None:
            found = self._db.execute(
                "SELECT seq FROM environments WHERE id = ? AND organization_id = ?",
                (query.after, organization_id),
            ).fetchone()
            if not found:
                raise UnknownCursor(query.after)
            where.append("seq > ?")
            params.append(found[0])
        if query.user_id is not None:
            where.append("user_id = ?")
            params.append(query.user_id)
        if query.source is not None:
            where.append("source = ?")
            params.append(query.source)
        if query.online_only:
            where.append("connection_id IS NOT NULL AND last_heartbeat > ?")
            params.append(now - online_window_ms)
        params.append(query.limit + 1)
        rows = self._db.execute(
            f"SELECT {_ROW_COLUMNS} FROM environments WHERE {' AND '.join(where)} "  # noqa: S608
            "ORDER BY seq LIMIT ?",
            params,
        ).fetchall()
        return EnvironmentList(
            connections=[_to_row(row) for row in rows[: query.limit]],
            has_next_page=len(rows) > query.limit,
        )


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


def _migration_steps(version: int) -> tuple[str, ...]:
    """The statements that take a database at `version` to SCHEMA_VERSION."""
    return tuple(
        statement for step in range(version, SCHEMA_VERSION) for statement in _MIGRATIONS[step]
    )


def _to_row(values: tuple[Any, ...]) -> EnvironmentRow:
    fields = dict(zip(_ROW_FIELDS, values, strict=True))
    fields["metadata"] = Metadata.model_validate_json(fields["metadata"])
    return EnvironmentRow.model_validate(fields)
