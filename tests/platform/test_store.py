"""The reference platform's SQLite store (agent/platform/store.py) on real files: what a socket
that was replaced may no longer write, the online window at both ends, page boundaries, which
row a device lookup returns, and the database files, private and never reached through a
symlink; the API keys and their roles; the schema, a version 1 database migrated and a newer one
refused."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.platform.access import ApiKey
from agent.platform.keys import create_key, hash_key
from agent.platform.store import SCHEMA_VERSION, Store, StoreError
from agent.protocol.models import EnvironmentRow, ListQuery, RegisterRequest
from tests.conftest import StartPlatform
from tests.helpers import FakeDaemon, open_socket

ALICE = ApiKey("org-a", "user-alice", "Alice")
BOB = ApiKey("org-a", "user-bob", None)
STRANGER = ApiKey("org-b", "user-eve", "Eve", "admin")
WINDOW_MS = 120_000
NOW = 1_700_000_000_000


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "platform.db")
    yield opened
    opened.close()


def request(device: str, instance: str | None = None, **fields: object) -> RegisterRequest:
    return RegisterRequest.model_validate(
        {"deviceId": device, "listenerInstanceId": instance, "connectionName": device, **fields}
    )


def page(store: Store, key: ApiKey = ALICE, now: int = NOW, **query: Any) -> list[str]:
    listed = store.list(key.organization_id, ListQuery(**query), now, WINDOW_MS)
    return [row.device_id for row in listed.connections]


def row_of(store: Store, row_id: str, key: ApiKey = ALICE) -> EnvironmentRow:
    row = store.get(key.organization_id, row_id)
    assert row is not None
    return row


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_the_database_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """Under umask 0, a file not made 0600 on purpose would be readable and writable by
    everyone."""
    db = tmp_path / "data" / "platform.db"
    umask = os.umask(0)
    try:
        store = Store(db)
        store.register(ALICE, request("dev-1"), NOW)  # a write: the -wal and -shm files exist
        files = sorted(db.parent.iterdir())
        assert [path.name for path in files] == [
            "platform.db",
            "platform.db-shm",
            "platform.db-wal",
        ]
        assert all(mode_of(path) == 0o600 for path in files), [oct(mode_of(p)) for p in files]
        assert mode_of(db.parent) == 0o700
        store.close()
    finally:
        os.umask(umask)


def test_a_database_others_could_read_is_made_private(tmp_path: Path) -> None:
    db = tmp_path / "platform.db"
    Store(db).close()
    db.chmod(0o644)
    store = Store(db)
    assert mode_of(db) == 0o600
    store.close()


@pytest.mark.parametrize("content", [b"keep me\n", b""], ids=["a file", "an empty file"])
def test_a_symlink_planted_as_the_database_is_refused_and_its_target_untouched(
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
        Store(db)
    assert str(refused.value) == (
        f"cannot use the platform database {db}: it is a symlink, which is never followed"
    )
    assert target.read_bytes() == content and mode_of(target) == 0o644
    assert sorted(path.name for path in tmp_path.iterdir()) == ["platform.db", "precious"]


def test_a_replaced_socket_can_no_longer_write_the_row(store: Store) -> None:
    row_id, first = store.register(ALICE, request("dev-1"), NOW)
    store.mark_connected(row_id, first, "pod-1", None, NOW)
    again, second = store.register(ALICE, request("dev-1"), NOW + 1)
    assert (again, store.find_issued("org-a", first)) == (row_id, None)  # superseded
    store.mark_connected(row_id, second, "pod-2", None, NOW + 2)

    store.record_heartbeat(row_id, first, "unrestricted", NOW + 3)
    assert not store.mark_disconnected(row_id, first, NOW + 4)
    row = row_of(store, row_id)
    assert (row.connection_id, row.pod_id, row.last_heartbeat) == (second, "pod-2", NOW + 2)
    assert row.current_mode is None

    store.record_heartbeat(row_id, second, "acceptEdits", NOW + 5)
    assert row_of(store, row_id).current_mode == "acceptEdits"
    assert store.mark_disconnected(row_id, second, NOW + 6)
    assert row_of(store, row_id).connection_id is None


def test_a_connection_id_is_unknown_to_another_organization(store: Store) -> None:
    row_id, connection_id = store.register(ALICE, request("dev-1"), NOW)
    issued = store.find_issued("org-a", connection_id)
    assert issued is not None and (issued.row_id, issued.owner_user_id) == (row_id, "user-alice")
    assert store.find_issued(STRANGER.organization_id, connection_id) is None
    assert store.get(STRANGER.organization_id, row_id) is None
    assert store.get_by_device(STRANGER.organization_id, "dev-1") is None


@pytest.mark.parametrize(
    ("age_ms", "online"), [(0, True), (WINDOW_MS - 1, True), (WINDOW_MS, False)]
)
def test_the_online_window_at_both_ends_agrees_with_the_row_s_own_rule(
    store: Store, age_ms: int, online: bool
) -> None:
    row_id, connection_id = store.register(ALICE, request("dev-1"), NOW)
    store.mark_connected(row_id, connection_id, "pod", None, NOW - age_ms)
    assert page(store, online_only=True) == (["dev-1"] if online else [])
    assert row_of(store, row_id).is_online(NOW, WINDOW_MS) is online
    assert page(store) == ["dev-1"]


def test_a_row_without_a_socket_is_never_online_whatever_its_heartbeat(store: Store) -> None:
    row_id, connection_id = store.register(ALICE, request("dev-1"), NOW)
    store.mark_connected(row_id, connection_id, "pod", None, NOW)
    store.mark_disconnected(row_id, connection_id, NOW)
    assert row_of(store, row_id).last_heartbeat == NOW
    assert page(store, online_only=True) == []


@pytest.mark.parametrize(("rows", "more"), [(2, False), (3, False), (4, True)])
def test_a_page_says_there_is_more_only_when_there_is(store: Store, rows: int, more: bool) -> None:
    for n in range(rows):
        store.register(ALICE, request(f"dev-{n}"), NOW + n)
    first = store.list("org-a", ListQuery(limit=3), NOW, WINDOW_MS)
    assert len(first.connections) == min(rows, 3) and first.has_next_page is more
    rest = store.list("org-a", ListQuery(limit=3, after=first.connections[-1].id), NOW, WINDOW_MS)
    assert [row.device_id for row in rest.connections] == [f"dev-{n}" for n in range(3, rows)]
    assert rest.has_next_page is False


def test_a_device_lookup_returns_the_row_without_a_listener_instance_first(store: Store) -> None:
    for instance in ("b", "a"):
        store.register(
            ALICE, request("dev-1", instance, connectionName=f"instance {instance}"), NOW
        )
    found = store.get_by_device("org-a", "dev-1")
    assert found is not None and found.connection_name == "instance a"  # by id, not by age
    store.register(ALICE, request("dev-1", connectionName="no instance"), NOW)  # the newest
    found = store.get_by_device("org-a", "dev-1")
    assert found is not None and found.connection_name == "no instance"


def test_registering_again_keeps_who_and_when_and_a_mode_not_sent(store: Store) -> None:
    row_id, _ = store.register(ALICE, request("dev-1", currentMode="acceptEdits"), NOW)
    store.register(
        BOB, request("dev-1", source="remote", metadata={"os": "darwin"}), NOW + 1
    )  # whether Bob may is the caller's question; the row's owner stays
    row = row_of(store, row_id)
    assert (row.user_id, row.api_key_owner, row.first_seen_at) == ("user-alice", "Alice", NOW)
    assert (row.current_mode, row.last_seen_at) == ("acceptEdits", NOW + 1)
    assert row.metadata is not None and row.metadata.os == "darwin"
    assert page(store, source="remote") == ["dev-1"]
    assert page(store, user_id="user-bob") == []


def test_hostile_ids_and_filters_are_data_not_sql(store: Store) -> None:
    hostile = "x'; DROP TABLE environments; --"
    store.register(ALICE, request(hostile), NOW)
    store.register(BOB, request("dev-2"), NOW)
    assert page(store, user_id="' OR '1'='1") == []
    assert page(store, user_id="%") == []
    assert page(store) == [hostile, "dev-2"]
    found = store.get_by_device("org-a", hostile)
    assert found is not None and found.device_id == hostile


def test_keys_carry_a_role_and_old_keys_are_members(store: Store) -> None:
    admin = create_key(store, ApiKey("org-x", "u3", "Ops", "admin"))
    plain = create_key(store, ApiKey("org-x", "u2", None))
    assert store.find_key(hash_key(admin)) == ApiKey("org-x", "u3", "Ops", "admin")
    assert store.find_key(hash_key(plain)) == ApiKey("org-x", "u2", None, "member")
    listed = [(k.key.user_id, k.key.role, k.fingerprint) for k in store.list_keys()]
    assert ("u3", "admin", hash_key(admin)[:12]) in listed
    assert ("u2", "member", hash_key(plain)[:12]) in listed


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
    assert store.find_key(hash_key("envk_old")) == ApiKey("org-x", "u1", "Ann", "member")
    row = await platform.row("dev-1", "envk_old")
    assert (row["id"], row["connectionName"], row["currentMode"]) == (
        "env-old",
        "old box",
        "acceptEdits",
    )
    # The old key still steers its row; the member key of another user does not.
    other = create_key(store, ApiKey("org-x", "u2", None))
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
    Store(db).close()  # opening a current database again changes nothing


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "platform.db"
    with sqlite3.connect(db) as newer:
        newer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this envagent"):
        Store(db)
