"""The platform's own errors: requests too malformed to reach a handler, and a database that
cannot take writes. Every one is an `ErrorReply` in JSON, on a real platform."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from typing import Any

import httpx
import pytest
from aiohttp import web

from agent.daemon.session.register import TransientRegistrationError, register_once
from agent.platform.web_errors import JsonErrorRunner
from agent.protocol.models import RegisterRequest
from tests.helpers import WAIT_S, Platform, open_socket

LIMIT = 8190  # aiohttp's longest request line or header


async def _raw(platform: Platform, request: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Send `request` as is; the status, headers and JSON body of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", platform.server.port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), WAIT_S)  # the platform closes after it
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {
        name.lower(): value.strip()
        for name, _, value in (line.partition(":") for line in header_lines)
    }
    return int(status_line.split()[1]), headers, json.loads(body)


@pytest.mark.parametrize(
    ("request_bytes", "detail"),
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", f"over the {LIMIT}-byte"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", f"{LIMIT}-byte"),
        (b"FOO / HTTP/1.1\r\nHost: x\r\n\r\n", "method"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", "HTTPS"),
        (b"\x00\xff\xfe garbage \x01\r\n\r\n", ""),
    ],
    ids=["long request line", "long header", "unknown method", "TLS hello", "binary garbage"],
)
async def test_malformed_requests_get_json_400s_and_an_info_line(
    platform: Platform, caplog: pytest.LogCaptureFixture, request_bytes: bytes, detail: str
) -> None:
    caplog.set_level(logging.DEBUG)
    status, headers, body = await _raw(platform, request_bytes)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert body["error"] == "bad_request"
    assert body["message"].startswith("malformed HTTP request: ") and detail in body["message"]
    assert "\n" not in body["message"] and len(body["message"]) < 300
    logged = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert [(r.levelname, r.exc_info) for r in logged] == [("INFO", None)]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # And the platform goes on serving.
    assert (await platform.list()).status_code == 200


async def _fill(platform: Platform, prefix: str) -> httpx.Response:
    """Register new rows until the database refuses one; that refusal."""
    for n in range(10_000):
        reply = await platform.http.post(
            f"{platform.url}/v1/environments/register",
            json={"deviceId": f"{prefix}-{n}", "connectionName": "x" * 200},
            headers=platform.auth(),
        )
        if reply.status_code != 201:
            return reply
    raise AssertionError("the database never filled up")


def _limit_growth(db: sqlite3.Connection, pages: int) -> None:
    """A real SQLITE_FULL: the store's own connection may not grow the file any further."""
    (now,) = db.execute("PRAGMA page_count").fetchone()
    db.execute(f"PRAGMA max_page_count = {now + pages}")


async def test_a_full_database_answers_503_with_retry_after_until_it_has_room(
    platform: Platform, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    db: sqlite3.Connection = platform.server.store._db
    _limit_growth(db, 4)
    refused = await _fill(platform, "a")
    assert refused.status_code == 503
    assert refused.headers["content-type"].startswith("application/json")
    assert int(refused.headers["retry-after"]) > 0
    assert refused.json()["error"] == "unavailable"
    assert "database or disk is full" in refused.json()["message"]
    assert (await _fill(platform, "b")).status_code == 503

    def warnings() -> list[str]:
        return [r.levelname for r in caplog.records if "cannot take writes" in r.getMessage()]

    assert warnings() == ["WARNING"]  # once per outage, not once per refusal
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    # What a daemon makes of it: transient, with the platform's Retry-After as a floor.
    request = RegisterRequest.model_validate({"deviceId": "daemon", "connectionName": "d"})
    with pytest.raises(TransientRegistrationError) as transient:
        await register_once(platform.http, platform.url, platform.key, request)
    assert transient.value.retry_after_s == int(refused.headers["retry-after"])

    db.execute("PRAGMA max_page_count = 1073741823")
    assert (await platform.register("after-the-outage"))["environment"]["id"]
    assert any("takes writes again" in r.getMessage() for r in caplog.records)
    _limit_growth(db, 1)  # a second outage, after a write worked, is logged again
    assert (await _fill(platform, "c")).status_code == 503
    assert warnings() == ["WARNING", "WARNING"]


async def test_a_database_that_takes_no_writes_keeps_live_sockets_and_refuses_new_ones(
    platform: Platform, caplog: pytest.LogCaptureFixture
) -> None:
    """A file system remounted read-only, as SQLite sees it (`query_only`): heartbeats and
    status reports cannot be recorded, yet the open socket is answered; a new socket is
    asked to come back later (1013); a registration gets 503. Nothing escapes as a traceback."""
    daemon = await platform.connect("dev-1")
    db: sqlite3.Connection = platform.server.store._db
    db.execute("PRAGMA query_only = ON")
    try:
        assert await daemon.ping(mode="acceptEdits") == {"type": "pong"}
        await daemon.send({"type": "update_device_status", "device_status": {"is_online": True}})
        assert await daemon.ping() == {"type": "pong"}
        for device in ("dev-2", "dev-1"):
            registered = await platform.http.post(
                f"{platform.url}/v1/environments/register",
                json={"deviceId": device, "connectionName": "n"},
                headers=platform.auth(),
            )
            assert registered.status_code == 503, registered.text
            assert registered.headers["retry-after"]
        other = await open_socket(daemon.registration["wsUrl"], "dev-1", platform.key)
        await asyncio.wait_for(other.wait_closed(), WAIT_S)
        assert other.close_code == 1013
        assert (await platform.row("dev-1"))["connectionId"] == daemon.connection_id
    finally:
        db.execute("PRAGMA query_only = OFF")
    assert await daemon.ping(mode="acceptEdits") == {"type": "pong"}
    assert (await platform.row("dev-1"))["currentMode"] == "acceptEdits"
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    await daemon.ws.close()


async def test_an_exception_that_escapes_the_application_is_a_json_500_logged_as_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The runner alone, with no middleware in front of a failing handler."""

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError("a bug")

    app = web.Application()
    app.router.add_get("/", broken)
    runner = JsonErrorRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        async with httpx.AsyncClient(timeout=WAIT_S) as http:
            reply = await http.get(f"http://127.0.0.1:{port}/")
    finally:
        await runner.cleanup()
    assert reply.status_code == 500
    assert reply.json() == {
        "error": "internal",
        "message": "the server failed to answer; see its log",
    }
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info is not None and "a bug" in str(record.exc_info[1])
