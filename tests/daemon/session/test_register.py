"""Registration against a real local HTTP server answering what each case needs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from aiohttp import web

from agent.daemon.session.register import (
    RegistrationRefused,
    TransientRegistrationError,
    register,
    register_once,
)
from agent.protocol.models import Metadata, RegisterReply, RegisterRequest
from tests.helpers import refusing_port

REQUEST = RegisterRequest(
    device_id="dev-1",
    connection_name="laptop",
    metadata=Metadata(os="linux"),
    current_mode="default",
    source="local",
)
GOOD_REPLY = {"connectionId": "c-1", "wsUrl": "ws://127.0.0.1:1/ws", "heartbeatIntervalMs": 5000}


@dataclass
class Script:
    """Answers to give in order; the last one repeats."""

    answers: list[web.Response] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, Script]]:
    script = Script()

    async def handle(request: web.Request) -> web.Response:
        script.requests.append((dict(request.headers), await request.read()))
        index = min(len(script.requests), len(script.answers)) - 1
        return script.answers[index]

    app = web.Application()
    app.router.add_post("/v1/environments/register", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}", script
    await runner.cleanup()


async def _register(url: str, sleeps: list[float]) -> RegisterReply:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    retries: list[str] = []
    async with httpx.AsyncClient() as client:
        return await register(
            client,
            url,
            "envk_test",
            REQUEST,
            rand=lambda: 0.0,
            sleep=sleep,
            on_retry=lambda failure, delay: retries.append(str(failure)),
        )


async def test_transient_failures_back_off_and_honour_retry_after(
    server: tuple[str, Script],
) -> None:
    url, script = server
    script.answers = [
        web.Response(status=503, text="maintenance"),
        web.Response(status=502),
        web.Response(status=429, headers={"Retry-After": "7"}),
        web.Response(status=500, headers={"Retry-After": "1"}),
        web.json_response(GOOD_REPLY | {"unknownKey": True}, status=201),
    ]
    sleeps: list[float] = []
    reply = await _register(url, sleeps)
    assert reply.connection_id == "c-1" and reply.heartbeat_interval_ms == 5000
    # 1, 2, then 4 raised to Retry-After's 7, then 8 (Retry-After 1 is only a floor).
    assert sleeps == [1, 2, 7, 8]
    assert len(script.requests) == 5


async def test_the_request_is_what_the_protocol_says(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [web.json_response(GOOD_REPLY)]
    await _register(url, [])
    headers, body = script.requests[0]
    assert headers["Authorization"] == "Bearer envk_test"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Letta-Source"] == "envagent"
    assert headers["User-Agent"].startswith("envagent/")
    assert json.loads(body) == REQUEST.to_wire()
    assert "listenerInstanceId" not in json.loads(body)


async def test_network_errors_are_transient() -> None:
    refused = pytest.raises(TransientRegistrationError, match="cannot reach")
    async with httpx.AsyncClient() as client:
        with refusing_port() as port, refused:
            await register_once(client, f"http://127.0.0.1:{port}", "k", REQUEST)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            web.json_response({"error": "unauthorized", "message": "bad key"}, status=401),
            r"the platform refused the API key \(HTTP 401 from http://\S+\): bad key",
        ),
        (web.Response(status=403), "the platform refused the API key"),
        (web.Response(status=404), "does not offer environment registration"),
        (
            web.json_response({"error": "invalid", "message": "deviceId: too long"}, status=422),
            "registration refused: HTTP 422 .*: deviceId: too long",
        ),
        (web.Response(status=200, text="<html>hello</html>"), "is this a Letta platform"),
        (web.json_response({"connectionId": "c"}), "is this a Letta platform"),
    ],
)
async def test_final_answers_stop_at_once_with_one_line(
    server: tuple[str, Script], answer: web.Response, message: str
) -> None:
    url, script = server
    script.answers = [answer]
    with pytest.raises(RegistrationRefused, match=message) as refused:
        await _register(url, [])
    assert "\n" not in str(refused.value)
    assert len(script.requests) == 1  # no retry
