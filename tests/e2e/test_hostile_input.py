"""Input that broke a parser once: every parse path refuses it as bad input, never as a 5xx
or the end of a session."""

from __future__ import annotations

import pytest

from tests.helpers import Platform

DEEP_LIST = "[" * 3000 + "]" * 3000
"""6 KB that made `json.loads` raise RecursionError, which ended the platform's socket."""
DEEP_OBJECT = '{"a":' * 3000 + "1" + "}" * 3000


@pytest.mark.parametrize(
    "frame",
    [
        DEEP_LIST,
        '{"type": "ping", "current_mode": ' + DEEP_LIST + "}",
        '{"type": "update_device_status", "device_status": ' + DEEP_OBJECT + "}",
        '{"type": "ping", "sent_at": NaN}',
    ],
)
async def test_a_frame_the_parser_cannot_take_is_ignored_and_the_session_goes_on(
    platform: Platform, frame: str
) -> None:
    daemon = await platform.connect("dev-1")
    await daemon.ws.send(frame)
    assert await daemon.ping(mode="acceptEdits") == {"type": "pong"}
    row = await platform.row("dev-1")
    assert row["connectionId"] == daemon.connection_id
    assert row["currentMode"] == "acceptEdits"
    await daemon.ws.close()


@pytest.mark.parametrize("body", [DEEP_LIST, DEEP_OBJECT, '{"type": "sync", "x": NaN}'])
async def test_the_frames_route_refuses_what_the_parser_cannot_take(
    platform: Platform, body: str
) -> None:
    daemon = await platform.connect("dev-1")
    reply = await platform.http.post(
        f"{platform.url}/v1/environments/{daemon.connection_id}/frames",
        content=body,
        headers=platform.auth(),
    )
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"] == "invalid_body"
    assert "not JSON" in reply.json()["message"]
    assert await daemon.ping() == {"type": "pong"}
    await daemon.ws.close()


@pytest.mark.parametrize(
    "body",
    [
        DEEP_LIST,
        '{"deviceId": "d", "connectionName": "n", "metadata": ' + DEEP_OBJECT + "}",
        b'{"deviceId": "\xff\xfe", "connectionName": "n"}',
        '{"deviceId": "\\ud800", "connectionName": "n"}',
    ],
)
async def test_registration_refuses_bodies_the_parser_cannot_take(
    platform: Platform, body: str | bytes
) -> None:
    reply = await platform.http.post(
        f"{platform.url}/v1/environments/register", content=body, headers=platform.auth()
    )
    assert reply.status_code in (400, 422), reply.text
    assert set(reply.json()) == {"error", "message"}
    assert "\n" not in reply.json()["message"]
    assert await platform.rows() == []


@pytest.mark.parametrize(
    "limit", ["\u00b2", "\u0665", " 1", "1_0", "+1", "9" * 5000, "", "0", "101"]
)
async def test_the_platform_listing_refuses_limits_that_are_not_ascii_digits(
    platform: Platform, limit: str
) -> None:
    reply = await platform.list(limit=limit)
    assert reply.status_code == 400, reply.text
    assert reply.json()["message"].startswith("limit ")
    assert len(reply.json()["message"]) < 200
