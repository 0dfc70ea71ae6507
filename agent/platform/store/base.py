"""The store's interface, and all of its SQL, written once for both backends.

A backend (`sqlite`, `postgres`) supplies only how to connect, create or migrate its schema,
run one statement without blocking the event loop, and which of its errors mean "try again
later". The statements themselves are here, in the dialect both databases share (`?`
placeholders, `ON CONFLICT … DO UPDATE … RETURNING`), so the two cannot drift apart.
"""

from __future__ import annotations

import json
import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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

SCHEMA_VERSION = 5
"""Both backends' schemas are at this version; each has its own steps to reach it."""

PODS_TABLE = """CREATE TABLE pods (
    id           TEXT PRIMARY KEY,
    generation   BIGINT NOT NULL,  -- raised at each join and each fencing: the lease
    heartbeat_at BIGINT NOT NULL,
    fenced_at    BIGINT            -- NULL while the pod's lease holds
)"""
"""The platform processes sharing the database (version 3), the same in both dialects."""

BY_USER_INDEX = "CREATE INDEX environments_by_user ON environments (organization_id, user_id, seq)"
"""`userId` pages read only that user's rows, in order (version 5): without it, a user with few
rows made a page walk the whole organization (0.3-0.5 s at 1,000,000 rows, on either backend).
No statement changes user_id, so heartbeats never write it."""

INDEXES = (
    "CREATE INDEX environments_by_org ON environments (organization_id, seq)",
    "CREATE INDEX environments_by_issued ON environments (issued_connection_id)",
    # onlineOnly pages walk only connected rows; heartbeats do not change this index.
    "CREATE INDEX environments_connected ON environments (organization_id, seq) "
    "WHERE connection_id IS NOT NULL",
    BY_USER_INDEX,
)
"""The same in both dialects."""


LEASE_HOLDS = "EXISTS (SELECT 1 FROM pods WHERE pods.id = ? AND pods.generation = ?)"
"""The condition every presence write carries: the writing pod's lease is current."""

BEATS_RETURNING = (
    "RETURNING environments.organization_id, environments.id, environments.last_heartbeat"
)
"""What a batch of heartbeats returns, as `Beat` reads it: the rows it wrote, no more."""


def migration_steps(migrations: dict[int, tuple[str, ...]], version: int) -> tuple[str, ...]:
    """The statements that take a database at `version` to SCHEMA_VERSION; StoreError when a
    step is unknown (a version this backend never had)."""
    missing = [step for step in range(version, SCHEMA_VERSION) if step not in migrations]
    if missing:
        raise StoreError(f"the platform database's schema version {version} is unknown")
    return tuple(
        statement for step in range(version, SCHEMA_VERSION) for statement in migrations[step]
    )


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
    "source",
)
"""The columns of a listing row, named as the EnvironmentRow fields they fill."""
_ROW_COLUMNS = ", ".join(_ROW_FIELDS)


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(location: Path | str) -> bool:
    """Whether a database location is a PostgreSQL URL (else it is a SQLite file's path)."""
    return isinstance(location, str) and location.startswith(POSTGRES_SCHEMES)


def describe_location(location: Path | str) -> str:
    """The location to print or log: a URL without its password."""
    if not is_postgres(location):
        return str(location)
    parts = urlsplit(str(location))
    if parts.password is None:
        return str(location)
    user = f"{parts.username}@" if parts.username else ""
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return parts._replace(netloc=f"{user}{host}{port}").geturl()


@dataclass(frozen=True)
class RowRef:
    """A row that changed in a way a person sees, and its organization: what the live channel
    is told (`platform.events`), so that only pods with a stream of that organization read it."""

    organization_id: str
    row_id: str


@dataclass(frozen=True)
class Lease:
    """A pod's right to write presence: its id and the generation it joined with. Fencing raises
    the generation, so every write carrying the old one changes nothing."""

    pod_id: str
    generation: int


@dataclass(frozen=True)
class Heartbeat:
    """A ping's presence, without a change of mode: written in batches (`platform.presence`)."""

    row_id: str
    connection_id: str
    at: int


@dataclass(frozen=True)
class Beat:
    """A heartbeat written, with its row's organization: what the live channel pushes
    (`platform.events`), the value in hand, so that no pod reads the row for it."""

    organization_id: str
    row_id: str
    at: int


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
    pod_id: str | None = None
    """The pod holding the row's socket now, if any."""
    live_connection_id: str | None = None


@dataclass(frozen=True)
class Listening:
    """A pod's listening connection: `alive()` turns False when the database dropped it."""

    alive: Callable[[], bool]
    stop: Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Message:
    """What one pod asks of another that holds a socket: `frame` (send `body` to the socket;
    the answer goes back to `reply_to`), `answer` (a daemon's answer, `body`), `gone` (no such
    socket here any more), `replace` (a newer socket of the row opened elsewhere: close it)."""

    kind: str
    row_id: str
    connection_id: str
    body: str = ""
    reply_to: str | None = None


class UnknownCursor(LookupError):
    """`after` names no row this organization can see."""


class StoreError(RuntimeError):
    """The database cannot be opened or has a schema this version does not know."""


class StoreUnavailable(StoreError):
    """The database cannot take a write now (full, I/O error, locked): try again later."""


class Store(ABC):
    """One platform database. Every method is a coroutine and none blocks the event loop."""

    def __init__(self) -> None:
        self._failing = False
        """A statement failed for a cause that may pass, and none has worked since."""
        self.on_change: Callable[[list[RowRef]], None] = _nobody
        """Told, after the write, of every row a write changed in a way a person sees (a
        heartbeat alone is not): set by the live channel's bus (`platform.events`)."""
        self.on_heartbeats: Callable[[list[Beat]], None] = _nobody
        """Told, after each batch of heartbeats (`record_heartbeats`), of the rows it wrote and
        their new `lastHeartbeat`: set by the live channel's bus too."""

    def _unavailable(self, cause: str, what: str = "take writes") -> StoreUnavailable:
        """What to raise for a statement that may work later; the cause is logged once per
        outage, not once per refused statement."""
        if not self._failing:
            self._failing = True
            log.warning(
                "the platform database cannot %s: %s; registrations are answered 503 until it can",
                what,
                cause,
            )
        return StoreUnavailable(f"the platform database cannot {what}: {cause}")

    def _available(self) -> None:
        if self._failing:
            self._failing = False
            log.info("the platform database takes writes again")

    # --- what a backend supplies ----------------------------------------------------------

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def _one(self, sql: str, *params: Any) -> tuple[Any, ...] | None:
        """The first row of a reading statement, None when there is none."""

    @abstractmethod
    async def _all(self, sql: str, *params: Any) -> list[tuple[Any, ...]]: ...

    @abstractmethod
    async def _record_heartbeats(
        self, beats: Sequence[Heartbeat], lease: Lease
    ) -> list[tuple[Any, ...]]:
        """Write many heartbeats in one statement (or a few, for very many), each ending
        `BEATS_RETURNING`: the rows written."""

    async def record_heartbeats(self, beats: Sequence[Heartbeat], lease: Lease) -> int:
        """Record many heartbeats at once, tell `on_heartbeats` of them; the rows changed. A
        beat whose connection no longer holds its row changes nothing, as in
        `record_heartbeat`, and none does once `lease` is fenced."""
        written = [Beat(*row) for row in await self._record_heartbeats(beats, lease)]
        if written:
            self.on_heartbeats(written)
        return len(written)

    @abstractmethod
    async def _write(self, sql: str, *params: Any) -> tuple[list[tuple[Any, ...]], int]:
        """Run one writing statement to its end: (the rows it returned, the rows it changed).
        StoreUnavailable when the database cannot take it now but may later."""

    async def _write_rows(self, sql: str, *params: Any) -> bool:
        """Run a write that ends `RETURNING organization_id, id`, tell `on_change` of the rows
        it changed; whether there were any."""
        rows, _ = await self._write(sql, *params)
        if rows:
            self.on_change([RowRef(*row) for row in rows])
        return bool(rows)

    # --- API keys ----------------------------------------------------------------------------

    async def add_key(self, key_hash: str, key: ApiKey, now: int) -> None:
        await self._write(
            "INSERT INTO api_keys (key_hash, organization_id, user_id, owner, role, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?)",
            key_hash,
            key.organization_id,
            key.user_id,
            key.owner,
            key.role,
            now,
        )

    async def find_key(self, key_hash: str) -> ApiKey | None:
        found = await self._one(
            "SELECT organization_id, user_id, owner, role FROM api_keys WHERE key_hash = ?",
            key_hash,
        )
        return ApiKey(*found) if found else None

    async def list_keys(self) -> list[StoredKey]:
        """Every key, oldest first, by the first 12 hex digits of its hash."""
        found = await self._all(
            "SELECT organization_id, user_id, owner, role, substr(key_hash, 1, 12), created_at "
            "FROM api_keys ORDER BY created_at, key_hash"
        )
        return [StoredKey(ApiKey(*row[:4]), row[4], row[5]) for row in found]

    async def has_keys(self) -> bool:
        return await self._one("SELECT 1 FROM api_keys LIMIT 1") is not None

    # --- environments ------------------------------------------------------------------------

    async def find_owner(self, organization_id: str, request: RegisterRequest) -> RowOwner | None:
        """Who registered this identity's row, None when there is no row yet."""
        found = await self._one(
            "SELECT id, COALESCE(user_id, '') FROM environments "
            "WHERE organization_id = ? AND device_id = ? AND listener_instance_id = ?",
            organization_id,
            request.device_id,
            request.listener_instance_id or "",
        )
        return RowOwner(*found) if found else None

    async def register(self, key: ApiKey, request: RegisterRequest, now: int) -> tuple[str, str]:
        """Create or update the row for this identity and issue a new connection id.

        Returns (row id, connection id). The row keeps its id, firstSeenAt, userId and
        apiKeyOwner; a socket that is still open keeps serving until the new connection's
        socket replaces it. Whether `key` may take an existing row is the caller's question.
        """
        connection_id = f"conn-{uuid.uuid4()}"
        [(row_id,)], _ = await self._write(
            "INSERT INTO environments (id, organization_id, device_id, listener_instance_id, "
            "user_id, api_key_owner, connection_name, source, current_mode, metadata, "
            "issued_connection_id, first_seen_at, last_seen_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (organization_id, device_id, listener_instance_id) DO UPDATE SET "
            "connection_name = excluded.connection_name, source = excluded.source, "
            "current_mode = COALESCE(excluded.current_mode, environments.current_mode), "
            "metadata = excluded.metadata, "
            "issued_connection_id = excluded.issued_connection_id, "
            "last_seen_at = excluded.last_seen_at "
            "RETURNING id",
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
        )
        self.on_change([RowRef(key.organization_id, row_id)])
        return row_id, connection_id

    async def find_issued(
        self, organization_id: str, connection_id: str
    ) -> IssuedConnection | None:
        """The row a socket with this connection id may serve, if the id is still current."""
        found = await self._one(
            "SELECT id, device_id, COALESCE(user_id, ''), pod_id, connection_id FROM environments "
            "WHERE issued_connection_id = ? AND organization_id = ?",
            connection_id,
            organization_id,
        )
        return IssuedConnection(*found) if found else None

    async def mark_connected(
        self, row_id: str, connection_id: str, lease: Lease, connection_name: str | None, now: int
    ) -> bool:
        """The socket opening counts as the first heartbeat: online at once. False (nothing
        written) when `lease` is fenced."""
        changed = await self._write_rows(
            "UPDATE environments SET connection_id = ?, connected_at = ?, last_heartbeat = ?, "  # noqa: S608
            "last_seen_at = ?, pod_id = ?, connection_name = COALESCE(?, connection_name) "
            f"WHERE id = ? AND {LEASE_HOLDS} RETURNING organization_id, id",
            connection_id,
            now,
            now,
            now,
            lease.pod_id,
            connection_name,
            row_id,
            lease.pod_id,
            lease.generation,
        )
        return changed

    async def record_heartbeat(
        self, row_id: str, connection_id: str, mode: Mode | None, now: int, lease: Lease
    ) -> None:
        """A ping that carries a new mode (the relay batches the others: `presence`)."""
        await self._write_rows(
            "UPDATE environments SET last_heartbeat = ?, last_seen_at = ?, "  # noqa: S608
            "current_mode = COALESCE(?, current_mode) WHERE id = ? AND connection_id = ? "
            f"AND {LEASE_HOLDS} RETURNING organization_id, id",
            now,
            now,
            mode,
            row_id,
            connection_id,
            lease.pod_id,
            lease.generation,
        )

    # --- pods ------------------------------------------------------------------------------

    async def post(self, pod_id: str, message: Message) -> None:
        """Leave `message` for `pod_id` and signal it. Only a database several pods share
        has other pods to ask; SQLite's one process never calls this."""
        raise NotImplementedError("one platform process: there is no other pod")

    async def take(self, pod_id: str) -> list[Message]:
        """The messages left for `pod_id`, oldest first, removed as they are read."""
        raise NotImplementedError("one platform process: there is no other pod")

    async def listen(
        self,
        pod_id: str,
        signalled: Callable[[], None],
        changed: Callable[[list[RowRef]], None],
        beaten: Callable[[list[Beat]], None],
    ) -> Listening:
        """Call `signalled` whenever a message is left for `pod_id`, `changed` with the rows
        any pod `announce`s, and `beaten` with the heartbeats of each announcement, whole,
        until stopped."""
        raise NotImplementedError("one platform process: there is no other pod")

    async def announce(self, changes: Sequence[RowRef], beats: Sequence[Beat] = ()) -> None:
        """Tell every pod's `listen` of these changed rows and these heartbeats written (one
        flush's, or several merged). Only a database several pods share carries them; SQLite's
        one process tells itself (`platform.events`)."""
        raise NotImplementedError("one platform process: there is no other pod")

    async def join(self, pod_id: str, now: int) -> Lease:
        """Take a new lease for this pod (a restart of the same id supersedes the old one) and
        mark the rows its earlier life held offline: no socket of that life is open now."""
        [(generation,)], _ = await self._write(
            "INSERT INTO pods (id, generation, heartbeat_at) VALUES (?, 1, ?) "
            "ON CONFLICT (id) DO UPDATE SET generation = pods.generation + 1, "
            "heartbeat_at = excluded.heartbeat_at, fenced_at = NULL RETURNING generation",
            pod_id,
            now,
        )
        await self._release_rows(pod_id)
        return Lease(pod_id, generation)

    async def renew(self, lease: Lease, now: int) -> bool:
        """The pod's heartbeat; False when it was fenced meanwhile (it must join again)."""
        _, changed = await self._write(
            "UPDATE pods SET heartbeat_at = ? WHERE id = ? AND generation = ? "
            "AND fenced_at IS NULL",
            now,
            lease.pod_id,
            lease.generation,
        )
        return changed > 0

    async def fence_silent(self, silent_since: int, now: int) -> list[str]:
        """Fence every pod whose last heartbeat is older than `silent_since` and mark the rows
        it held lost; the fenced pods' ids. A fenced pod's writes change nothing any more."""
        fenced, _ = await self._write(
            "UPDATE pods SET generation = generation + 1, fenced_at = ? "
            "WHERE heartbeat_at < ? AND fenced_at IS NULL RETURNING id",
            now,
            silent_since,
        )
        for (pod_id,) in fenced:
            await self._release_rows(pod_id)
        return [pod_id for (pod_id,) in fenced]

    async def _release_rows(self, pod_id: str) -> bool:
        return await self._write_rows(
            "UPDATE environments SET connection_id = NULL, connected_at = NULL, pod_id = NULL "
            "WHERE pod_id = ? RETURNING organization_id, id",
            pod_id,
        )

    async def apply_device_status(self, row_id: str, status: DeviceStatus, now: int) -> None:
        """Fold what `update_device_status` reported into the row's metadata and mode."""
        found = await self._one(
            "SELECT organization_id, metadata, current_mode, connection_name FROM environments "
            "WHERE id = ?",
            row_id,
        )
        if not found:
            return
        organization_id, before, mode, name = found
        old: dict[str, Any] = json.loads(before)
        metadata = {**old, **status.metadata_changes()}
        await self._write(
            "UPDATE environments SET metadata = ?, last_seen_at = ?, "
            "current_mode = COALESCE(?, current_mode), "
            "connection_name = COALESCE(?, connection_name) WHERE id = ?",
            json.dumps(metadata, separators=(",", ":")),
            now,
            status.current_permission_mode,
            status.connection_name or None,
            row_id,
        )
        if (
            metadata != old
            or status.current_permission_mode not in (None, mode)
            or status.connection_name not in (None, name)
        ):
            self.on_change([RowRef(organization_id, row_id)])

    async def mark_disconnected(
        self, row_id: str, connection_id: str, pod_id: str, connected_at: int, now: int
    ) -> bool:
        """Offline at once, if the row is still the ending socket's: the socket `pod_id` wrote
        online at `connected_at` (unique per pod and row). A daemon comes back with the
        connection id it holds, so a newer socket, here or on another pod, may share it."""
        return await self._write_rows(
            "UPDATE environments SET connection_id = NULL, connected_at = NULL, pod_id = NULL, "
            "last_seen_at = ? WHERE id = ? AND connection_id = ? AND pod_id = ? "
            "AND connected_at = ? RETURNING organization_id, id",
            now,
            row_id,
            connection_id,
            pod_id,
            connected_at,
        )

    async def clear_connections(self) -> int:
        """At the start of a platform that is the database's only process (SQLite) no socket
        is open, whatever the rows say after a crash. Not announced: no stream is open yet."""
        _, changed = await self._write(
            "UPDATE environments SET connection_id = NULL, connected_at = NULL, pod_id = NULL "
            "WHERE connection_id IS NOT NULL OR pod_id IS NOT NULL"
        )
        return changed

    async def get(self, organization_id: str, row_id: str) -> EnvironmentRow | None:
        found = await self._one(
            f"SELECT {_ROW_COLUMNS} FROM environments WHERE id = ? AND organization_id = ?",  # noqa: S608
            row_id,
            organization_id,
        )
        return _to_row(found) if found else None

    async def rows(self, row_ids: Sequence[str]) -> list[EnvironmentRow]:
        """These rows as the listing shows them, in one statement, whatever their organization
        (each row says its own): the live channel reads each changed row once a pod."""
        if not row_ids:
            return []
        marks = ", ".join("?" * len(row_ids))
        found = await self._all(
            f"SELECT {_ROW_COLUMNS} FROM environments WHERE id IN ({marks})",  # noqa: S608
            *row_ids,
        )
        return [_to_row(row) for row in found]

    async def get_by_name(self, organization_id: str, name: str) -> EnvironmentRow | None:
        """The row whose `id` is `name`, else the row of the device `name` (the one without a
        listener instance id first), in one statement: `GET /v1/environments/{name}`."""
        found = await self._one(
            f"SELECT {_ROW_COLUMNS} FROM environments "  # noqa: S608
            "WHERE organization_id = ? AND (id = ? OR device_id = ?) "
            "ORDER BY id = ? DESC, listener_instance_id, seq LIMIT 1",
            organization_id,
            name,
            name,
            name,
        )
        return _to_row(found) if found else None

    async def list(
        self, organization_id: str, query: ListQuery, now: int, online_window_ms: int
    ) -> EnvironmentList:
        """One page in creation order, which no heartbeat changes, so paging is exact."""
        where = ["organization_id = ?"]
        params: list[Any] = [organization_id]
        if query.after is not None:
            found = await self._one(
                "SELECT seq FROM environments WHERE id = ? AND organization_id = ?",
                query.after,
                organization_id,
            )
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
        rows = await self._all(
            f"SELECT {_ROW_COLUMNS} FROM environments WHERE {' AND '.join(where)} "  # noqa: S608
            "ORDER BY seq LIMIT ?",
            *params,
        )
        return EnvironmentList(
            connections=[_to_row(row) for row in rows[: query.limit]],
            has_next_page=len(rows) > query.limit,
        )


def _nobody(told: list[RowRef] | list[Beat]) -> None:
    """No live channel listens (a store opened by a command, or by a test)."""


def _to_row(values: tuple[Any, ...]) -> EnvironmentRow:
    fields = dict(zip(_ROW_FIELDS, values, strict=True))
    fields["metadata"] = Metadata.model_validate_json(fields["metadata"])
    return EnvironmentRow.model_validate(fields)
