"""Within an organization reading is shared and steering is not (docs/protocol.md, "Who may
steer"): each route against each kind of key, on a real platform; the key roles and the schema
migration."""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from agent.platform.access import ApiKey, may_steer
from agent.platform.keys import create_key, hash_key
from agent.platform.store import SCHEMA_VERSION, Store, StoreError
from tests.conftest import StartPlatform
from tests.daemon_helpers import Spawn, online
from tests.helpers import WAIT_S, FakeDaemon, Platform, open_socket

KEYS = {
    "owner": ApiKey("org-x", "u1", "Ann"),
    "member": ApiKey("org-x", "u2", "Bob"),
    "admin": ApiKey("org-x", "u3", "Ops", "admin"),
    "stranger": ApiKey("org-y", "u9", "Eve", "admin"),  # an admin, of another organization
}
RULE = "only user u1, who registered this environment, or an admin key of org-x may steer it"

EXPECTED = {
    "register": {"owner": "201 same row", "member": "403", "admin": "201 same row",
                 "stranger": "201 own row"},
    "frames": {"owner": "204 delivered", "member": "403", "admin": "204 delivered",
               "stranger": "404"},
    "socket": {"owner": "open", "member": "1008 forbidden", "admin": "open",
               "stranger": "1008 unknown"},
    "list": {"owner": "200 listed", "member": "200 listed", "admin": "200 listed",
             "stranger": "200 not listed"},
    "retrieve": {"owner": "200", "member": "200", "admin": "200", "stranger": "404"},
}  # fmt: skip
REFUSED = {"403", "404", "1008 forbidden", "1008 unknown"}


@dataclass
class Scene:
    platform: Platform
    keys: dict[str, str]
    daemon: FakeDaemon
    """u1's daemon, online with u1's key."""

    @property
    def row_id(self) -> str:
        value: str = self.daemon.registration["environment"]["id"]
        return value


async def _register(scene: Scene, key: str) -> str:
    reply = await scene.platform.http.post(
        f"{scene.platform.url}/v1/environments/register",
        json={"deviceId": "dev-1", "connectionName": "taken", "currentMode": "unrestricted"},
        headers=scene.platform.auth(key),
    )
    if reply.status_code != 201:
        return _refusal(reply.status_code, reply.json())
    same = reply.json()["environment"]["id"] == scene.row_id
    return "201 same row" if same else "201 own row"


async def _frames(scene: Scene, key: str) -> str:
    frame = {"type": "change_device_state", "payload": {"mode": "unrestricted"}}
    reply = await scene.platform.http.post(
        f"{scene.platform.url}/v1/environments/{scene.daemon.connection_id}/frames",
        json=frame,
        headers=scene.platform.auth(key),
    )
    if reply.status_code != 204:
        return _refusal(reply.status_code, reply.json())
    assert await scene.daemon.receive() == frame
    return "204 delivered"


async def _socket(scene: Scene, key: str) -> str:
    ws = await open_socket(scene.daemon.registration["wsUrl"], "dev-1", key)
    contender = FakeDaemon(ws, scene.daemon.registration)
    try:
        pong = await contender.ping()
    except ConnectionClosed:
        reason = ws.close_reason or ""
        assert len(reason.encode()) <= 120
        if reason == RULE:
            return f"{ws.close_code} forbidden"
        assert "register again" in reason, reason
        return f"{ws.close_code} unknown"
    assert pong == {"type": "pong"}
    await scene.daemon.wait_closed()  # allowed: the newest socket wins, as for the owner
    assert scene.daemon.ws.close_reason == "Replaced by new connection"
    await ws.close()
    return "open"


async def _list(scene: Scene, key: str) -> str:
    reply = await scene.platform.list(key, userId="u1")
    listed = [row["id"] for row in reply.json()["connections"]] == [scene.row_id]
    return f"{reply.status_code} {'listed' if listed else 'not listed'}"


async def _retrieve(scene: Scene, key: str) -> str:
    reply = await scene.platform.http.get(
        f"{scene.platform.url}/v1/environments/dev-1", headers=scene.platform.auth(key)
    )
    if reply.status_code != 200:
        return _refusal(reply.status_code, reply.json())
    assert reply.json()["id"] == scene.row_id
    return "200"


def _refusal(status: int, body: dict[str, Any]) -> str:
    if status == 403:
        assert body == {"error": "forbidden", "message": RULE}
    return str(status)


ROUTES = {
    "register": _register,
    "frames": _frames,
    "socket": _socket,
    "list": _list,
    "retrieve": _retrieve,
}


@pytest.fixture
async def scene(platform: Platform) -> Scene:
    keys = {who: create_key(platform.server.store, key) for who, key in KEYS.items()}
    daemon = await platform.connect("dev-1", keys["owner"], currentMode="default")
    return Scene(platform, keys, daemon)


@pytest.mark.parametrize("who", list(KEYS))
@pytest.mark.parametrize("route", list(ROUTES))
async def test_only_the_owner_or_an_admin_steers_a_row(
    scene: Scene, route: str, who: str, caplog: pytest.LogCaptureFixture
) -> None:
    outcome = await ROUTES[route](scene, scene.keys[who])
    assert outcome == EXPECTED[route][who]

    owner = scene.keys["owner"]
    row = await scene.platform.row("dev-1", owner)
    assert row["id"] == scene.row_id
    assert (row["userId"], row["apiKeyOwner"]) == ("u1", "Ann")  # never taken over
    if outcome in REFUSED:
        assert row["currentMode"] == "default"
        assert row["connectionName"] == "dev-1-name"
        assert row["connectionId"] == scene.daemon.connection_id
        assert await scene.daemon.ping() == {"type": "pong"}  # and no frame came before it
    if outcome in ("403", "1008 forbidden"):
        refusals = [r for r in caplog.records if r.levelname == "WARNING" and "refused" in r.msg]
        assert [r.getMessage() for r in refusals] == [
            f"refused user u2 (key 'Bob') of org-x steering row {scene.row_id}, "
            "which user u1 registered"
        ]
    assert all(key not in caplog.text for key in scene.keys.values())
    await scene.daemon.ws.close()


@pytest.mark.parametrize(
    ("key", "owner", "allowed"),
    [
        (ApiKey("o", "u1", None), "u1", True),
        (ApiKey("o", "u2", None), "u1", False),
        (ApiKey("o", "u2", None, "admin"), "u1", True),
        (ApiKey("o", "u2", None, "member"), "", False),
    ],
)
def test_the_rule_alone(key: ApiKey, owner: str, allowed: bool) -> None:
    assert may_steer(key, owner) is allowed


async def test_a_member_cannot_steer_another_user_s_daemon(
    platform: Platform, spawn: Spawn
) -> None:
    """A real daemon: the member's mode change and socket are refused and change nothing; an
    admin's mode change is applied."""
    store = platform.server.store
    owner = create_key(store, ApiKey("org-x", "u1", "Ann"))
    member = create_key(store, ApiKey("org-x", "u2", "Bob"))
    admin = create_key(store, ApiKey("org-x", "u3", None, "admin"))
    daemon = await spawn(platform.url, owner, "--mode", "default")
    status = await daemon.wait_status(online)
    url = f"{platform.url}/v1/environments/{status['connectionId']}/frames"
    frame = {"type": "change_device_state", "payload": {"mode": "unrestricted"}}

    refused = await platform.http.post(url, json=frame, headers=platform.auth(member))
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    ws_url = f"ws://127.0.0.1:{platform.server.port}/v1/listener/ws?connectionId="
    ws = await open_socket(ws_url + status["connectionId"], status["deviceId"], member)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), WAIT_S)
    assert ws.close_code == 1008
    sync = await platform.http.post(
        url, json={"type": "sync", "request_id": "r-1"}, headers=platform.auth(owner)
    )
    assert sync.status_code == 200  # the owner's session goes on, on the same connection
    after = await daemon.status()
    assert (after["mode"], after["connectionId"]) == ("default", status["connectionId"])
    assert daemon.process.returncode is None

    applied = await platform.http.post(url, json=frame, headers=platform.auth(admin))
    assert applied.status_code == 204
    await daemon.wait_status(lambda s: s["mode"] == "unrestricted")


async def test_keys_carry_a_role_and_old_keys_are_members(platform: Platform) -> None:
    store = platform.server.store
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


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "platform.db"
    with sqlite3.connect(db) as newer:
        newer.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this envagent"):
        Store(db)


async def test_an_admin_re_registering_keeps_the_owner(platform: Platform) -> None:
    store = platform.server.store
    owner = create_key(store, ApiKey("org-x", "u1", "Ann"))
    admin = create_key(store, ApiKey("org-x", "u3", "Ops", "admin"))
    first = await platform.register("dev-1", owner, listenerInstanceId="a")
    again = await platform.register("dev-1", admin, listenerInstanceId="a", connectionName="ops")
    assert again["environment"]["id"] == first["environment"]["id"]
    assert again["environment"]["userId"] == "u1"
    assert again["environment"]["apiKeyOwner"] == "Ann"
    assert again["environment"]["connectionName"] == "ops"
    # A row the admin registers itself is the admin's user's.
    own = await platform.register("dev-2", admin)
    assert own["environment"]["userId"] == "u3"
    assert [row["deviceId"] for row in await platform.rows(owner, userId="u1")] == ["dev-1"]
