"""The SQLite backend's own rules: its files private and never reached through a symlink, a
version 1 or 4 database migrated to a new one's indexes, a newer one refused, a user's page
read through the index by user."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import pytest

from agent.platform.access import ApiKey
from agent.platform.keys import create_key, hash_key
from agent.platform.store import sqlite
from agent.platform.store.base import SCHEMA_VERSION, Heartbeat, StoreError
from agent.platform.store.sqlite import SqliteStore
from agent.protocol.models import ListQuery, RegisterRequest
from tests.conftest import StartPlatform
from tests.helpers import FakeDaemon, mode_of, open_socket

ALICE = ApiKey("org-a", "user-alice", "Alice")
NOW = 1_700_000_000_000


async def test_the_database_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """Under umask 0, a file not made 0600 on purpose would be readable and writable by
    everyone."""
    db = tmp_path / "data" / "platform.db"
    umask = os.umask(0)
    try:
        store = await SqliteStore.open(db)
        await store.register(
            ALICE, RegisterRequest(device_id="dev-1", connection_name="d"), NOW
        )  # a write: the -wal and -shm files exist
        files = sorted(db.parent.iterdir())
        assert [path.name for path in files] == [
            "platform.db",
            "platform.db-shm",
            "platform.db-wal",
        ]
        assert all(mode_of(path) == 0o600 for path in files), [oct(mode_of(p)) for p in files]
        assert mode_of(db.parent) == 0o700
        await store.close()
    finally:
        os.umask(umask)


async def test_a_database_others_could_read_is_made_private(tmp_path: Path) -> None:
    db = tmp_path / "platform.db"
    await (await SqliteStore.open(db)).close()
    db.chmod(0o644)
    store = await SqliteStore.open(db)
    assert mode_of(db) == 0o600
    await store.close()


@pytest.mark.parametrize("content", [b"keep me\n", b""], ids=["a file", "an empty file"])
async def test_a_symlink_planted_as_the_database_is_refused_and_its_target_untouched(
    tmp_path: Path, content: bytes
) -> None:
    """Followed, the symlink's target would have its mode changed (for root, any file on the
    machine), and an empty target would be made a database."""
    target = tmp_path / "precious"
    target.write_bytes(content)
    target.chmod(0o644)
    db = tmp_path / "platform.db"
    db.symlink_to(target)
    with pytest.raises(StoreError) as refused:
        await SqliteStore.open(db)
    assert str(refused.value) == (
        f"cannot use the platform database {db}: it is a symlink, which is never followed"
    )
    assert target.read_bytes() == content and mode_of(target) == 0o644
    assert sorted(path.name for path in tmp_path.iterdir()) == ["platform.db", "precious"]


VERSION_1 = """
CREATE TABLE api_keys (key_hash TEXT PRIMARY KEY, organization_id TEXT NOT NULL,
    user_id TEXT NOT NULL, owner TEXT, created_at INTEGER NOT NULL);
CREATE TABLE environments (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
    organization_id TEXT NOT NULL, device_id TEXT NOT NULL, listener_instance_id TEXT NOT NULL,
    user_id TEXT, api_key_owner TEXT, connection_name TEXT NOT NULL, source TEXT NOT NULL,
    current_mode TEXT, metadata TEXT NOT NULL, issued_connection_id TEXT, connection_id TEXT,
    connected_at INTEGER, last_heartbeat INTEGER, pod_id TEXT, first_seen_at INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL, UNIQUE (organization_id, device_id, listener_instance_id));
CREATE INDEX environments_by_org ON environments (organization_id, seq);
CREATE INDEX environments_by_issued ON environments (issued_connection_id);
CREATE INDEX environments_connected ON environments (organization_id, seq)
    WHERE connection_id IS NOT NULL;
INSERT INTO environments VALUES (1, 'env-old', 'org-x', 'dev-1', '', 'u1', 'Ann', 'old box',
    'local', 'acceptEdits', '{"os": "linux"}', 'conn-old', NULL, NULL, NULL, NULL, 1, 2);
PRAGMA user_version = 1;
"""


async def test_a_version_1_database_is_migrated(
    start_platform: StartPlatform, tmp_path: Path
) -> None:
    db = tmp_path / "platform.db"
    old = sqlite3.connect(db)
    old.executescript(VERSION_1)
    old.execute("INSERT INTO api_keys VALUES (?, 'org-x', 'u1', 'Ann', 1)", (hash_key("envk_old"),))
    old.commit()
    old.close()

    platform = await start_platform(db=db)
    store = platform.server.store
    assert await store.find_key(hash_key("envk_old")) == ApiKey("org-x", "u1", "Ann", "member")
    row = await platform.row("dev-1", "envk_old")
    assert (row["id"], row["connectionName"], row["currentMode"]) == (
        "env-old",
        "old box",
        "acceptEdits",
    )
    # The old key still steers its row; the member key of another user does not.
    other = await create_key(store, ApiKey("org-x", "u2", None))
    daemon = FakeDaemon(
        await open_socket(f"{platform.url.replace('http', 'ws')}/v1/listener/ws"
                          "?connectionId=conn-old", "dev-1", "envk_old"),
        {"connectionId": "conn-old"},
    )  # fmt: skip
    assert await daemon.ping() == {"type": "pong"}
    refused = await platform.http.post(
        f"{platform.url}/v1/environments/register",
        json={"deviceId": "dev-1", "connectionName": "mine"},
        headers=platform.auth(other),
    )
    assert refused.status_code == 403
    await daemon.ws.close()
    await platform.server.stop()
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    await (await SqliteStore.open(db)).close()  # opening a current database again changes nothing
    assert indexes(db) == await indexes_of_a_new_database(tmp_path)


def indexes(db: Path) -> dict[str, str]:
    """The indexes the schema declares (not SQLite's own for UNIQUE), by name, each statement
    on one line."""
    with contextlib.closing(sqlite3.connect(db)) as check:
        found = check.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
        )
        return {name: " ".join(sql.split()) for name, sql in found}


async def indexes_of_a_new_database(folder: Path) -> dict[str, str]:
    new = folder / "new.db"
    await (await SqliteStore.open(new)).close()
    return indexes(new)


async def test_a_version_4_database_gets_the_index_by_user(tmp_path: Path) -> None:
    db = tmp_path / "platform.db"
    await (await SqliteStore.open(db)).close()
    with contextlib.closing(sqlite3.connect(db)) as rewind:  # what version 4 had
        rewind.execute("DROP INDEX environments_by_user")
        rewind.execute("PRAGMA user_version = 4")
    await (await SqliteStore.open(db)).close()
    assert "environments_by_user" in indexes(db)
    assert indexes(db) == await indexes_of_a_new_database(tmp_path)
    with contextlib.closing(sqlite3.connect(db)) as check:
        assert check.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


async def test_a_user_s_page_reads_the_index_by_user(tmp_path: Path) -> None:
    """Not the whole organization's index, filtered: 0.25 s for a page of a user with few rows
    among 1,000,000 (tests/bench/big_listing.py). Without statistics (the product never runs
    ANALYZE), SQLite's plan depends on the schema alone."""
    store = await SqliteStore.open(tmp_path / "platform.db")
    statements: list[str] = []
    try:
        store._db.set_trace_callback(statements.append)
        await store.list("org-a", ListQuery(user_id="user-alice"), NOW, 120_000)
        store._db.set_trace_callback(None)
        (listing,) = [sql for sql in statements if "user_id = " in sql]
        plan = store._db.execute(f"EXPLAIN QUERY PLAN {listing}").fetchall()
    finally:
        await store.close()
    assert [step[3] for step in plan] == [
        "SEARCH environments USING INDEX environments_by_user (organization_id=? AND user_id=?)"
    ]


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "platform.db"
    with sqlite3.connect(db) as newer:
        newer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this envagent"):
        await SqliteStore.open(db)


async def test_heartbeats_beyond_one_statement_s_parameters_go_in_several(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "HEARTBEATS_PER_STATEMENT", 2)
    store = await SqliteStore.open(tmp_path / "platform.db")
    try:
        beats, lease = [], await store.join("pod", NOW)
        for n in range(5):
            request = RegisterRequest(device_id=f"dev-{n}", connection_name="d")
            row_id, connection_id = await store.register(ALICE, request, NOW)
            await store.mark_connected(row_id, connection_id, lease, None, NOW)
            beats.append(Heartbeat(row_id, connection_id, NOW + 1))
        assert await store.record_heartbeats(beats, lease) == 5
        rows = [await store.get("org-a", beat.row_id) for beat in beats]
        assert [row.last_heartbeat for row in rows if row] == [NOW + 1] * 5
    finally:
        await store.close()
