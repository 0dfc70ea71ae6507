"""The listing and the HTTP surface: paging, filters, organizations, bad input."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent.platform.access import ApiKey
from agent.platform.keys import create_key
from tests.conftest import on_both_backends
from tests.helpers import WAIT_S, FakeDaemon, Platform


async def _heartbeat_until(stop: asyncio.Event, daemons: list[FakeDaemon]) -> int:
    beats = 0
    while not stop.is_set():
        beats += 1
        for daemon in daemons:
            assert await daemon.ping(mode="acceptEdits") == {"type": "pong"}
    return beats


@on_both_backends
async def test_paging_returns_every_row_once_while_others_heartbeat(platform: Platform) -> None:
    daemons = [await platform.connect(f"live-{n}") for n in range(5)]
    for n in range(245):
        await platform.register(f"dev-{n:03}")
    stop = asyncio.Event()
    heartbeats = asyncio.create_task(_heartbeat_until(stop, daemons[:3]))
    seen: list[str] = []
    pages = 0
    params: dict[str, str] = {"limit": "7"}
    while True:
        reply = await platform.list(**params)
        assert reply.status_code == 200, reply.text
        page = reply.json()
        pages += 1
        assert len(page["connections"]) <= 7
        seen.extend(row["id"] for row in page["connections"])
        if not page["hasNextPage"]:
            break
        params["after"] = page["connections"][-1]["id"]
        # A heartbeat between pages must not move rows around.
        await daemons[3 + pages % 2].ping(mode="default")
    assert not heartbeats.done(), heartbeats
    stop.set()
    assert await asyncio.wait_for(heartbeats, WAIT_S) > 1  # they really went on meanwhile
    assert pages == 36  # 250 rows / 7 per page
    assert len(seen) == 250 and len(set(seen)) == 250
    every = {row["id"] for row in await platform.rows(limit="100")}
    every |= {row["id"] for row in await platform.rows(limit="100", after=seen[99])}
    every |= {row["id"] for row in await platform.rows(limit="100", after=seen[199])}
    assert every == set(seen)
    for daemon in daemons:
        await daemon.ws.close()


@on_both_backends
async def test_default_and_maximum_page_sizes(platform: Platform) -> None:
    for n in range(120):
        await platform.register(f"dev-{n:03}")
    first = (await platform.list()).json()
    assert len(first["connections"]) == 50 and first["hasNextPage"] is True
    full = (await platform.list(limit="100")).json()
    assert len(full["connections"]) == 100 and full["hasNextPage"] is True
    assert [row["deviceId"] for row in full["connections"][:3]] == ["dev-000", "dev-001", "dev-002"]
    last = (await platform.list(limit="100", after=full["connections"][-1]["id"])).json()
    assert len(last["connections"]) == 20 and last["hasNextPage"] is False


@on_both_backends
async def test_filters_and_their_combinations(platform: Platform) -> None:
    store = platform.server.store
    alice = await create_key(store, ApiKey("org-dev", "user-alice", "Alice"))
    bob = await create_key(store, ApiKey("org-dev", "user-bob", None))
    # (device, key, source, online)
    layout = [
        ("a-local-on", alice, "local", True),
        ("a-local-off", alice, "local", False),
        ("a-remote-on", alice, "remote", True),
        ("b-local-on", bob, "local", True),
        ("b-remote-off", bob, "remote", False),
        ("b-default-off", bob, None, False),
    ]
    daemons = []
    for device, key, source, online in layout:
        fields: dict[str, Any] = {"source": source} if source else {}
        if online:
            daemons.append(await platform.connect(device, key, **fields))
        else:
            await platform.register(device, key, **fields)

    async def devices(**params: str) -> set[str]:
        return {row["deviceId"] for row in await platform.rows(**params)}

    def expect(user: str | None, source: str | None, online_only: bool) -> set[str]:
        return {
            device
            for device, key, row_source, online in layout
            if (user is None or key == {"user-alice": alice, "user-bob": bob}[user])
            and (source is None or (row_source or "local") == source)
            and (not online_only or online)
        }

    for user in (None, "user-alice", "user-bob"):
        for source in (None, "local", "remote"):
            for online_only in (False, True):
                params = {"onlineOnly": "true" if online_only else "false"}
                if user:
                    params["userId"] = user
                if source:
                    params["source"] = source
                assert await devices(**params) == expect(user, source, online_only), params
    assert await devices(userId="user-nobody") == set()
    rows = {row["deviceId"]: row for row in await platform.rows()}
    assert rows["a-local-on"]["apiKeyOwner"] == "Alice"
    assert rows["a-local-on"]["userId"] == "user-alice"
    assert "apiKeyOwner" not in rows["b-local-on"]
    for daemon in daemons:
        await daemon.ws.close()


@on_both_backends
async def test_organizations_never_see_each_other(platform: Platform) -> None:
    store = platform.server.store
    key_a = await create_key(store, ApiKey("org-a", "user-a", None))
    key_b = await create_key(store, ApiKey("org-b", "user-b", None))
    daemon_a = await platform.connect("shared-device", key_a)
    daemon_b = await platform.connect("shared-device", key_b)  # same device id, other org
    await platform.register("only-b", key_b)

    rows_a = await platform.rows(key_a)
    rows_b = await platform.rows(key_b)
    assert [(r["deviceId"], r["organizationId"]) for r in rows_a] == [("shared-device", "org-a")]
    assert {(r["deviceId"], r["organizationId"]) for r in rows_b} == {
        ("shared-device", "org-b"),
        ("only-b", "org-b"),
    }
    assert rows_a[0]["id"] != rows_b[0]["id"]
    # Neither socket replaced the other.
    assert await daemon_a.ping() == {"type": "pong"}
    assert await daemon_b.ping() == {"type": "pong"}
    # B's ids mean nothing to A.
    cursor = await platform.list(key_a, after=rows_b[0]["id"])
    assert cursor.status_code == 400
    missing = await platform.http.get(
        f"{platform.url}/v1/environments/only-b", headers=platform.auth(key_a)
    )
    assert missing.status_code == 404
    pushed = await platform.http.post(
        f"{platform.url}/v1/environments/{daemon_b.connection_id}/frames",
        json={"type": "sync"},
        headers=platform.auth(key_a),
    )
    assert pushed.status_code == 404
    assert await platform.rows() == []  # the development key's organization has nothing
    await daemon_a.ws.close()
    await daemon_b.ws.close()


@on_both_backends
@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"onlineOnly": "maybe"}, "onlineOnly"),
        ({"source": "cloud"}, "source"),
        ({"after": "env-does-not-exist"}, "after"),
    ],
)
async def test_bad_query_parameters_are_400_naming_the_parameter(
    platform: Platform, params: dict[str, str], named: str
) -> None:
    reply = await platform.list(**params)
    assert reply.status_code == 400
    assert reply.json()["error"] == "invalid_query"
    assert reply.json()["message"].startswith(f"{named}")


@on_both_backends
async def test_bad_requests_get_a_clear_4xx_and_the_platform_keeps_serving(
    platform: Platform,
) -> None:
    url = f"{platform.url}/v1/environments/register"
    http, auth = platform.http, platform.auth()

    async def post(body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
        reply = await http.post(url, content=body, headers=auth if headers is None else headers)
        return reply.status_code, reply.json()["message"]

    assert await post(b'{"deviceId": "d", ') == (
        400,
        "request body is not valid JSON: EOF while parsing a value at line 1 column 18",
    )
    assert await post(b"[]") == (422, "body: Input should be an object")
    status, message = await post(b'{"deviceId": 7, "metadata": {"os": 1}}')
    assert status == 422
    assert "deviceId: Input should be a valid string" in message
    assert "connectionName: Field required" in message
    assert "metadata.os: Input should be a valid string" in message
    status, message = await post(b'{"deviceId": "d", "connectionName": "n", "currentMode": "x"}')
    assert (status, "currentMode" in message) == (422, True)
    status, message = await post(b'{"deviceId": "d", "connectionName": "n", "source": "cloud"}')
    assert (status, "source" in message) == (422, True)
    status, message = await post(b'{"deviceId": "' + b"x" * 70_000 + b'"}')
    assert (status, message) == (413, "request body is over the 65536-byte limit")
    assert (await post(b"{}", headers={}))[0] == 401
    assert (await post(b"{}", headers={"Authorization": "Bearer envk_wrong"})) == (
        401,
        "the API key was not recognised",
    )
    assert (await post(b"{}", headers={"Authorization": "Basic abc"}))[0] == 401
    unknown = await http.get(f"{platform.url}/v2/nothing", headers=auth)
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
    wrong_method = await http.delete(f"{platform.url}/v1/environments", headers=auth)
    assert wrong_method.status_code == 405
    not_upgraded = await http.get(f"{platform.url}/v1/listener/ws?connectionId=c", headers=auth)
    assert not_upgraded.status_code == 400
    no_connection = await http.get(f"{platform.url}/v1/listener/ws", headers=auth)
    assert no_connection.status_code == 400 and "connectionId" in no_connection.json()["message"]
    # Still serving, and nothing was stored by any of it.
    assert await platform.rows() == []
    assert (await platform.register("fine"))["environment"]["deviceId"] == "fine"
