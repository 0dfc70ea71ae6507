"""The daemon's small HTTP server (agent/local_http.py) on a real socket: keep-alive, the body
limit, malformed requests, slow and excess clients, a Unix socket and a clean close."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from agent import local_http
from agent.httpapi import ApiError
from agent.local_http import LocalHttpServer, Request, Response
from tests.helpers import wait_for

WAIT_S = 10.0
MAX_BODY = 64


async def echo(request: Request) -> Response:
    """Answers with what it was asked, so a test sees what the server parsed."""
    seen = {
        "method": request.method,
        "path": request.path,
        "query": dict(request.query),
        "host": request.headers.get("host"),
        "body": request.body.decode(),
    }
    return Response(200, json.dumps(seen).encode())


def refusal(refused: ApiError) -> Response:
    return Response(
        refused.status, json.dumps({"error": refused.error, "message": refused.message}).encode()
    )


@pytest.fixture
async def server() -> AsyncIterator[tuple[LocalHttpServer, str]]:
    http_server = LocalHttpServer(echo, refusal, max_body_bytes=MAX_BODY)
    host, port = await http_server.listen_tcp("127.0.0.1", 0)
    yield http_server, f"http://{host}:{port}"
    await http_server.close()


async def raw_exchange(url: str, data: bytes) -> bytes:
    """Send `data` as is and read until the server closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), WAIT_S)
    finally:
        writer.close()


async def test_requests_share_one_kept_alive_connection(
    server: tuple[LocalHttpServer, str],
) -> None:
    _, url = server
    connections: list[object] = []
    async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
        for index in range(3):
            reply = await http.put(
                "/a%20b", params=[("k", str(index)), ("k", "later"), ("e", "")], content=b"{}"
            )
            assert reply.status_code == 200
            assert reply.headers["content-type"] == "application/json; charset=utf-8"
            assert reply.headers["cache-control"] == "no-store"
            assert reply.json() == {
                "method": "PUT",
                "path": "/a b",
                "query": {"k": str(index), "e": ""},
                "host": url.removeprefix("http://"),
                "body": "{}",
            }
            connections.append(reply.extensions["network_stream"])
    assert connections[0] is connections[1] is connections[2]


async def test_a_body_over_the_limit_is_refused_with_413(
    server: tuple[LocalHttpServer, str],
) -> None:
    _, url = server
    async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
        declared = await http.put("/x", content=b"x" * (MAX_BODY + 1))
        assert declared.status_code == 413
        assert declared.json()["message"] == f"request body is over the {MAX_BODY}-byte limit"

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b"y" * 40  # no Content-Length: chunked, counted as it arrives

        streamed = await http.put("/x", content=chunks())
        assert streamed.status_code == 413
        assert (await http.put("/x", content=b"z" * MAX_BODY)).status_code == 200


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * (20 * 1024) + b"\r\n\r\n", 431),
    ],
)
async def test_malformed_requests_get_an_error_and_a_close(
    server: tuple[LocalHttpServer, str], request_bytes: bytes, status: int
) -> None:
    _, url = server
    answer = await raw_exchange(url, request_bytes)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
    assert b"connection: close" in rest.lower()
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"] == "bad_request"


async def test_http_1_0_is_answered_and_closed(server: tuple[LocalHttpServer, str]) -> None:
    _, url = server
    answer = await raw_exchange(url, b"GET /old?x=1 HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["query"] == {"x": "1"}


async def test_a_silent_client_is_dropped_after_the_idle_timeout(
    server: tuple[LocalHttpServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_http, "IDLE_TIMEOUT_S", 0.2)
    _, url = server
    answer = await raw_exchange(url, b"GET / HTTP/1.1\r\nHost: a\r\n")  # head never finished
    assert answer == b""


async def test_connections_over_the_cap_are_closed_and_slots_come_back(
    server: tuple[LocalHttpServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_http, "MAX_CONNECTIONS", 2)
    _, url = server
    host, port = url.removeprefix("http://").split(":")
    held = [await asyncio.open_connection(host, int(port)) for _ in range(2)]
    async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
        with pytest.raises(httpx.TransportError):
            await http.get("/")  # the server closes it without an answer
    for _, writer in held:
        writer.close()
        await writer.wait_closed()

    async def answered() -> bool:
        async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
            try:
                return (await http.get("/")).status_code == 200
            except httpx.TransportError:
                return False

    assert await wait_for(answered, bool)  # the server notices the closes on its own time


async def test_unix_socket_and_close_cuts_open_connections(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    http_server = LocalHttpServer(echo, refusal, max_body_bytes=MAX_BODY)
    await http_server.listen_unix(path)
    transport = httpx.AsyncHTTPTransport(uds=str(path))
    async with httpx.AsyncClient(
        base_url="http://localhost", transport=transport, timeout=WAIT_S
    ) as http:
        assert (await http.get("/over-unix")).json()["path"] == "/over-unix"
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n")  # left half-sent
        await writer.drain()
        await asyncio.wait_for(http_server.close(), WAIT_S)
        try:
            rest = await asyncio.wait_for(reader.read(), WAIT_S)
        except ConnectionResetError:
            rest = b""  # closed with our half-request unread: the kernel resets
        assert rest == b""
        writer.close()


async def test_a_client_expecting_100_continue_gets_it_before_sending_the_body(
    server: tuple[LocalHttpServer, str],
) -> None:
    _, url = server
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"PUT /m HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
        assert interim.startswith(b"HTTP/1.1 100 ")
        writer.write(b"{}")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
        assert head.startswith(b"HTTP/1.1 200 ")
    finally:
        writer.close()
