"""The relay socket against a real platform: heartbeats, supersession, 1008, left and lost."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agent.platform.access import ApiKey
from agent.platform.keys import create_key
from tests.conftest import StartPlatform, on_both_backends
from tests.helpers import WAIT_S, FakeDaemon, Platform, open_socket, wait_for


@on_both_backends
async def test_register_socket_ping_pong_shows_online_with_mode(platform: Platform) -> None:
    daemon = await platform.connect(
        "dev-1", currentMode="default", metadata={"os": "linux", "nodeVersion": None}
    )
    row = await platform.row("dev-1")
    # Opening the socket is the first heartbeat: online before any ping.
    assert row["connectionId"] == daemon.connection_id
    assert row["connectedAt"] is not None and row["lastHeartbeat"] == row["connectedAt"]
    assert row["podId"] == platform.server.settings.pod_id
    assert row["currentMode"] == "default"

    assert await daemon.ping(mode="acceptEdits") == {"type": "pong"}
    online = await platform.rows(onlineOnly="true")
    assert [r["deviceId"] for r in online] == ["dev-1"]
    assert online[0]["currentMode"] == "acceptEdits"
    assert online[0]["lastHeartbeat"] >= row["lastHeartbeat"]
    assert online[0]["metadata"] == {"os": "linux", "nodeVersion": None}
    await daemon.ws.close()


async def test_registration_reply_carries_period_and_row(start_platform: StartPlatform) -> None:
    platform = await start_platform(heartbeat_interval_ms=1234)
    reply = await platform.register("dev-1", listenerInstanceId="a", source="remote")
    assert reply["heartbeatIntervalMs"] == 1234
    assert reply["wsUrl"].startswith(f"ws://127.0.0.1:{platform.server.port}/")
    assert reply["environment"]["deviceId"] == "dev-1"
    assert reply["environment"]["connectionId"] is None  # no socket yet


@on_both_backends
async def test_same_identity_reuses_the_row(platform: Platform) -> None:
    first = await platform.register("dev-1")
    second = await platform.register("dev-1", connectionName="renamed")
    assert second["environment"]["id"] == first["environment"]["id"]
    assert second["environment"]["firstSeenAt"] == first["environment"]["firstSeenAt"]
    assert second["environment"]["connectionName"] == "renamed"
    assert second["connectionId"] != first["connectionId"]
    other_instance = await platform.register("dev-1", listenerInstanceId="second")
    assert other_instance["environment"]["id"] != first["environment"]["id"]
    assert len(await platform.rows()) == 2


@on_both_backends
async def test_one_row_by_its_id_or_by_device_and_each_says_its_source(platform: Platform) -> None:
    first = (await platform.register("dev-1", source="remote"))["environment"]
    second = (await platform.register("dev-1", listenerInstanceId="b"))["environment"]
    assert (first["source"], second["source"]) == ("remote", "local")
    assert {row["id"]: row["source"] for row in await platform.rows()} == {
        first["id"]: "remote",
        second["id"]: "local",
    }

    async def retrieve(name: str, key: str = platform.key) -> tuple[int, Any]:
        reply = await platform.http.get(
            f"{platform.url}/v1/environments/{name}", headers=platform.auth(key)
        )
        return reply.status_code, reply.json()

    # By device: the row without a listener instance; by id: each row exactly.
    assert await retrieve("dev-1") == (200, first)
    assert await retrieve(second["id"]) == (200, second)
    assert await retrieve(first["id"]) == (200, first)
    stranger = await create_key(platform.server.store, ApiKey("org-other", "user-x", "Eve"))
    for name in ("dev-1", first["id"], second["id"]):
        status, body = await retrieve(name, stranger)
        assert (status, body["error"]) == (404, "not_found"), name
    assert (await retrieve("env-unknown"))[1]["message"] == (
        "no environment with id or deviceId 'env-unknown'"
    )


@on_both_backends
async def test_update_device_status_is_folded_into_the_row(platform: Platform) -> None:
    daemon = await platform.connect("dev-1", metadata={"os": "linux", "custom": 1})
    await daemon.send(
        {
            "type": "update_device_status",
            "device_status": {
                "current_connection_id": daemon.connection_id,
                "connection_name": "new-name",
                "is_online": True,
                "current_permission_mode": "bypassPermissions",
                "current_working_directory": "/srv/app",
                "git_context": {"branch": "main"},
                "letta_code_version": "9.9.9",
                "supported_commands": ["sync"],
            },
        }
    )
    row = await wait_for(
        lambda: platform.row("dev-1"), lambda r: r.get("currentMode") == "bypassPermissions"
    )
    assert row["connectionName"] == "new-name"
    assert row["metadata"] == {
        "os": "linux",
        "custom": 1,
        "workingDirectory": "/srv/app",
        "gitBranch": "main",
        "lettaCodeVersion": "9.9.9",
        "supported_commands": ["sync"],
    }
    await daemon.ws.close()


@on_both_backends
async def test_newest_socket_wins_and_the_older_is_told_why(platform: Platform) -> None:
    older = await platform.connect("dev-1")
    newer = await platform.connect("dev-1")
    await older.wait_closed()
    assert older.ws.close_code == 1000
    assert older.ws.close_reason == "Replaced by new connection"
    assert await newer.ping() == {"type": "pong"}
    row = await platform.row("dev-1")
    assert row["connectionId"] == newer.connection_id
    await newer.ws.close()


@on_both_backends
async def test_reconnecting_with_the_same_connection_id_keeps_the_row_online(
    platform: Platform,
) -> None:
    first = await platform.connect("dev-1")
    again = FakeDaemon(
        await open_socket(first.registration["wsUrl"], "dev-1", platform.key), first.registration
    )
    await first.wait_closed()
    assert await again.ping() == {"type": "pong"}
    assert (await platform.row("dev-1"))["connectionId"] == first.connection_id
    await again.ws.close()


@on_both_backends
@pytest.mark.parametrize("case", ["unknown", "superseded", "wrong device"])
async def test_a_connection_that_is_not_current_is_refused_1008(
    platform: Platform, case: str
) -> None:
    registration = await platform.register("dev-1")
    ws_url, device = registration["wsUrl"], "dev-1"
    if case == "unknown":
        ws_url = ws_url.split("?")[0] + "?connectionId=conn-nobody"
    elif case == "superseded":
        await platform.register("dev-1")
    else:
        await platform.register("dev-2")
        device = "dev-2"
    ws = await open_socket(ws_url, device, platform.key)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), WAIT_S)
    assert ws.close_code == 1008
    assert "register again" in (ws.close_reason or "")
    assert (await platform.row("dev-1"))["connectionId"] is None


@on_both_backends
async def test_socket_needs_a_valid_key(platform: Platform) -> None:
    registration = await platform.register("dev-1")
    with pytest.raises(InvalidStatus) as refused:
        await open_socket(registration["wsUrl"], "dev-1", "envk_not-a-key")
    assert refused.value.response.status_code == 401


@on_both_backends
async def test_disconnect_frame_marks_the_row_offline_at_once(platform: Platform) -> None:
    daemon = await platform.connect("dev-1")
    await daemon.send({"type": "disconnect", "reason": "service stopping"})
    row = await wait_for(lambda: platform.row("dev-1"), lambda r: r["connectionId"] is None)
    assert row["connectedAt"] is None and row["podId"] is None
    assert await platform.rows(onlineOnly="true") == []
    # The socket itself is still open: "left" is decided by the frame, not the close.
    assert await daemon.ping() == {"type": "pong"}
    await daemon.ws.close()


@on_both_backends
async def test_clean_close_marks_the_row_offline_at_once(platform: Platform) -> None:
    daemon = await platform.connect("dev-1")
    await daemon.ws.close(1000)
    await wait_for(lambda: platform.row("dev-1"), lambda r: r["connectionId"] is None)


async def test_silence_marks_the_row_offline_after_the_online_window(
    start_platform: StartPlatform,
) -> None:
    platform = await start_platform(online_window_ms=300)
    daemon = await platform.connect("dev-1")
    assert await daemon.ping() == {"type": "pong"}
    assert len(await platform.rows(onlineOnly="true")) == 1
    await wait_for(lambda: platform.rows(onlineOnly="true"), lambda rows: rows == [])
    # "Lost", not "left": the socket is still open and still holds the row.
    assert (await platform.row("dev-1"))["connectionId"] == daemon.connection_id
    assert await daemon.ping() == {"type": "pong"}  # recorded within one presence interval
    await wait_for(lambda: platform.rows(onlineOnly="true"), lambda rows: len(rows) == 1)
    await daemon.ws.close()


async def _hand_made_upgrade(
    platform: Platform, registration: dict[str, Any], device_id: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An upgrade request written by hand, so that the test decides what follows it."""
    url = urlsplit(registration["wsUrl"])
    assert url.hostname is not None and url.port is not None
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    nonce = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {url.path}?{url.query}&deviceId={device_id} HTTP/1.1\r\n"
            f"Host: {url.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {nonce}\r\n"
            f"Authorization: Bearer {platform.key}\r\n\r\n"
        ).encode()
    )
    return reader, writer


async def test_transport_pings_drop_a_half_open_socket(start_platform: StartPlatform) -> None:
    platform = await start_platform(transport_ping_s=0.2)
    registration = await platform.register("dev-1")
    # A hand-made handshake, then silence: nothing will ever answer the platform's pings.
    reader, writer = await _hand_made_upgrade(platform, registration, "dev-1")
    status_line = await asyncio.wait_for(reader.readline(), WAIT_S)
    assert b" 101 " in status_line
    await wait_for(lambda: platform.row("dev-1"), lambda r: r["connectionId"] is not None)
    await wait_for(lambda: platform.row("dev-1"), lambda r: r["connectionId"] is None)
    writer.close()


async def test_a_daemon_gone_before_its_upgrade_is_answered_is_no_error(
    start_platform: StartPlatform, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A daemon gives up waiting for its upgrade when a pod is slow (a reconnect storm) and
    tries again. The platform learns it only when it answers: one line, not an error, and the
    row it had written online goes offline. A row lock held by the test holds the platform
    in the admission until the daemon has gone. (That such an end never takes the row from a
    newer socket with the same connection id is the store's rule, tested on both backends.)"""
    caplog.set_level(logging.INFO, "envagent")
    platform = await start_platform(database_url=postgres_url)
    registration = await platform.register("dev-1")
    admin = await asyncpg.connect(postgres_url)
    try:
        async with admin.transaction():
            await admin.execute(
                "SELECT 1 FROM environments WHERE id = $1 FOR UPDATE",
                registration["environment"]["id"],
            )
            _, abandoned = await _hand_made_upgrade(platform, registration, "dev-1")
            await _waiting_on_the_lock(admin)
            abandoned.transport.abort()
    finally:
        await admin.close()

    async def messages() -> list[str]:
        return caplog.messages

    gone = "a daemon went away before its upgrade was answered"
    await wait_for(messages, lambda logged: gone in logged)
    row = await wait_for(lambda: platform.row("dev-1"), lambda r: r["connectionId"] is None)
    assert row["connectedAt"] is None
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    retry = await open_socket(registration["wsUrl"], "dev-1", platform.key)
    daemon = FakeDaemon(retry, registration)
    assert await daemon.ping() == {"type": "pong"}
    await daemon.ws.close()


async def _waiting_on_the_lock(admin: asyncpg.Connection) -> None:
    await wait_for(
        lambda: admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ),
        lambda waiting: waiting == 1,
    )


@on_both_backends
async def test_bad_frames_are_ignored_and_the_session_goes_on(platform: Platform) -> None:
    daemon = await platform.connect("dev-1")
    for bad in [
        "not json",
        "[1, 2, 3]",
        "{}",
        '{"type": "launch_rockets"}',
        '{"type": "ping", "current_mode": "yolo"}',
        '{"type": "update_device_status", "device_status": {"is_online": "very"}}',
    ]:
        await daemon.ws.send(bad)
    await daemon.ws.send(b"\x00\x01binary")
    assert await daemon.ping() == {"type": "pong"}
    assert "currentMode" not in await platform.row("dev-1")  # the bad mode was not taken


@on_both_backends
async def test_a_flood_of_bad_frames_is_counted_not_logged_line_by_line(
    platform: Platform, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = await platform.connect("dev-1")
    for n in range(1000):
        await daemon.ws.send(f"garbage {n}")
    assert await daemon.ping() == {"type": "pong"}
    lines = [r.getMessage() for r in caplog.records if "ignored bad frame" in r.getMessage()]
    assert len(lines) == 6, lines
    assert "ignored bad frame #1: frame is not JSON" in lines[0]
    assert "#1000: frame is not JSON" in lines[-1]
    assert (await platform.rows(onlineOnly="true"))[0]["deviceId"] == "dev-1"
    await daemon.ws.close()


async def test_an_oversized_frame_closes_the_socket_1009(start_platform: StartPlatform) -> None:
    platform = await start_platform(max_frame_bytes=1024)
    daemon = await platform.connect("dev-1")
    await daemon.send({"type": "ping", "padding": "x" * 2048})
    await daemon.wait_closed()
    assert daemon.ws.close_code == 1009
    await wait_for(lambda: platform.row("dev-1"), lambda r: r["connectionId"] is None)


@on_both_backends
async def test_platform_frames_reach_the_live_socket(platform: Platform) -> None:
    daemon = await platform.connect("dev-1")
    frame = {"type": "change_device_state", "payload": {"mode": "unrestricted"}}
    sent = await platform.http.post(
        f"{platform.url}/v1/environments/{daemon.connection_id}/frames",
        json=frame,
        headers=platform.auth(),
    )
    assert sent.status_code == 204, sent.text
    assert await daemon.receive() == frame
    await daemon.send({"type": "sync_response", "request_id": "r-1", "success": True})
    missing = await platform.http.post(
        f"{platform.url}/v1/environments/conn-nobody/frames", json=frame, headers=platform.auth()
    )
    assert missing.status_code == 404
    bad = await platform.http.post(
        f"{platform.url}/v1/environments/{daemon.connection_id}/frames",
        content=json.dumps({"type": "ping"}),
        headers=platform.auth(),
    )
    assert bad.status_code == 422 and "unknown frame type" in bad.json()["message"]
    await daemon.ws.close()


async def test_frames_with_a_request_id_return_the_daemon_s_answer(
    start_platform: StartPlatform,
) -> None:
    platform = await start_platform(answer_wait_s=0.3)
    daemon = await platform.connect("dev-1")
    url = f"{platform.url}/v1/environments/{daemon.connection_id}/frames"
    command = {"type": "execute_command", "command_id": "get_status", "request_id": "r-1"}
    pending = asyncio.create_task(platform.http.post(url, json=command, headers=platform.auth()))
    assert await daemon.receive() == command
    answer = {
        "type": "execute_command_response",
        "request_id": "r-1",
        "success": True,
        "output": "ok",
    }
    await daemon.send(answer)
    reply = await asyncio.wait_for(pending, WAIT_S)
    assert (reply.status_code, reply.json()) == (200, answer)
    silent = await platform.http.post(
        url, json={"type": "sync", "request_id": "r-2"}, headers=platform.auth()
    )
    assert silent.status_code == 504 and "did not answer within 0.3 s" in silent.json()["message"]
    await daemon.ws.close()


async def test_stopping_the_platform_closes_sockets_going_away(
    start_platform: StartPlatform,
) -> None:
    platform = await start_platform()
    daemon = await platform.connect("dev-1")
    await platform.server.stop()
    await daemon.wait_closed()
    assert daemon.ws.close_code == 1001
