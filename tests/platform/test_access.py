"""Within an organization reading is shared and steering is not (docs/protocol.md, "Who may
steer"): each route against each kind of key, on a real platform. (The key roles as stored, and
the schema migration, are tested in tests/platform/test_store.py.)"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from agent.platform.access import ApiKey, Forbidden, check_may_steer, may_steer
from agent.platform.keys import create_key
from tests.conftest import on_both_backends
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
    keys = {who: await create_key(platform.server.store, key) for who, key in KEYS.items()}
    daemon = await platform.connect("dev-1", keys["owner"], currentMode="default")
    return Scene(platform, keys, daemon)


@on_both_backends
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
        # Other users, whichever way their ids sort: only equality makes a key the owner's.
        (ApiKey("o", "u1", None), "u2", False),
        (ApiKey("o", "u3", None), "u2", False),
    ],
)
def test_the_rule_alone(key: ApiKey, owner: str, allowed: bool) -> None:
    assert may_steer(key, owner) is allowed


def test_a_refusal_names_the_rule_and_is_logged_with_both_users(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="envagent.platform")
    check_may_steer(ApiKey("org-x", "u1", "Ann"), "u1", "env-1")
    check_may_steer(ApiKey("org-x", "u3", "Ops", "admin"), "u1", "env-1")
    assert caplog.records == []
    with pytest.raises(Forbidden) as refused:
        check_may_steer(ApiKey("org-x", "u2", "Bob"), "u1", "env-1")
    assert str(refused.value) == (
        "only user u1, who registered this environment, or an admin key of org-x may steer it"
    )
    assert caplog.messages == [
        "refused user u2 (key 'Bob') of org-x steering row env-1, which user u1 registered"
    ]


def test_a_key_is_frozen() -> None:
    """Who a key speaks for is decided once, when it is looked up: never promoted after."""
    key = ApiKey("org-x", "u2", "Bob")
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.role = "admin"  # type: ignore[misc]
    assert key.role == "member"


@on_both_backends
async def test_a_member_cannot_steer_another_user_s_daemon(
    platform: Platform, spawn: Spawn
) -> None:
    """A real daemon: the member's mode change and socket are refused and change nothing; an
    admin's mode change is applied."""
    store = platform.server.store
    owner = await create_key(store, ApiKey("org-x", "u1", "Ann"))
    member = await create_key(store, ApiKey("org-x", "u2", "Bob"))
    admin = await create_key(store, ApiKey("org-x", "u3", None, "admin"))
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


@on_both_backends
async def test_an_admin_re_registering_keeps_the_owner(platform: Platform) -> None:
    store = platform.server.store
    owner = await create_key(store, ApiKey("org-x", "u1", "Ann"))
    admin = await create_key(store, ApiKey("org-x", "u3", "Ops", "admin"))
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
