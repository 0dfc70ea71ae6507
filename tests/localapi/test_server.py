"""The daemon's small HTTP server (agent/localapi/server.py) on a real socket: keep-alive, the body
limit, malformed requests, slow and excess clients, a Unix socket and a clean close; and a real
daemon's local API under sockets trickling their heads."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agent.localapi import server as local_http
from agent.localapi.server import Admission, LocalHttpServer, Request, Response
from agent.protocol.httpapi import ApiError
from agent.support import exitcodes
from tests.daemon_helpers import Spawn, online
from tests.helpers import Platform, wait_for

WAIT_S = 10.0
MAX_BODY = 64
REAL_REQUEST_S = 2.0
"""How long a real request may take to be answered while hostile sockets hold the slots."""


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


async def test_a_head_request_gets_headers_only_and_the_connection_goes_on(
    server: tuple[LocalHttpServer, str], caplog: pytest.LogCaptureFixture
) -> None:
    """HTTP allows an answer to HEAD no body; writing one made h11 raise (found by the fuzz
    suite), which logged a traceback and dropped the connection."""
    _, url = server
    answer = await raw_exchange(
        url,
        b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n"
        b"GET /y HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"content-length: " in head.lower()
    assert rest.startswith(b"HTTP/1.1 200 ")  # no body in between: the next answer follows
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["path"] == "/y"
    assert not [r for r in caplog.records if r.exc_info]


async def test_a_refusal_quotes_at_most_a_little_of_the_request(
    server: tuple[LocalHttpServer, str],
) -> None:
    _, url = server
    answer = await raw_exchange(url, b"GET /" + b"x " * 3000 + b"HTTP/1.1\r\n\r\n")
    message = json.loads(answer.partition(b"\r\n\r\n")[2])["message"]
    assert message.startswith("malformed HTTP request: ") and len(message) < 300


async def test_a_kept_alive_connection_is_dropped_after_the_idle_timeout(
    server: tuple[LocalHttpServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_http, "IDLE_TIMEOUT_S", 0.2)
    _, url = server
    answer = await raw_exchange(url, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # then silence
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.count(b"HTTP/1.1") == 1  # closed with nothing more, no 408


@pytest.mark.parametrize("sent", [b"", b"GET / HTTP/1.1\r\nHost: a\r\n"], ids=["nothing", "half"])
async def test_a_request_not_whole_by_the_deadline_is_answered_408_and_closed(
    server: tuple[LocalHttpServer, str], monkeypatch: pytest.MonkeyPatch, sent: bytes
) -> None:
    monkeypatch.setattr(local_http, "REQUEST_DEADLINE_S", 0.5)
    _, url = server
    answer = await raw_exchange(url, sent)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "timeout"


async def test_a_trickling_head_is_cut_at_the_deadline_however_steady(
    server: tuple[LocalHttpServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_http, "REQUEST_DEADLINE_S", 1.0)
    _, url = server
    [trickler] = await open_tricklers(url, 1)
    pacing = asyncio.create_task(trickle([trickler], period_s=0.1))
    try:
        answer = await asyncio.wait_for(trickler.answer, WAIT_S)
    finally:
        pacing.cancel()
        trickler.writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")


@dataclass
class Trickler:
    """A socket sending a request head one byte at a time; `answer` is all the server sent
    before it closed the connection."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    answer: asyncio.Task[bytes]
    sent: int = 0


TRICKLED_HEAD = b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"p" * 500 + b"\r\n\r\n"


async def open_tricklers(url: str, count: int) -> list[Trickler]:
    """`count` connections to `url`, each having sent the first byte of its request."""
    host, port = url.removeprefix("http://").split(":")
    tricklers = []
    for _ in range(count):
        reader, writer = await asyncio.open_connection(host, int(port))
        trickler = Trickler(reader, writer, asyncio.create_task(read_answer(reader)))
        tricklers.append(trickler)
    await trickle(tricklers, period_s=0, rounds=1)
    return tricklers


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    """All the server sent before it closed; closing with our bytes unread resets the
    connection, which ends the answer as well."""
    answer = bytearray()
    try:
        while chunk := await reader.read(65536):
            answer += chunk
    except ConnectionResetError:
        pass
    return bytes(answer)


async def trickle(tricklers: list[Trickler], *, period_s: float, rounds: int = 0) -> None:
    """One more byte on each open connection every `period_s`, for `rounds` rounds (0: until
    cancelled). The pace is the attack itself, not a wait for something."""
    done = 0
    while rounds == 0 or done < rounds:
        for trickler in tricklers:
            if not trickler.answer.done() and trickler.sent < len(TRICKLED_HEAD):
                trickler.writer.write(TRICKLED_HEAD[trickler.sent : trickler.sent + 1])
                trickler.sent += 1
        done += 1
        await asyncio.sleep(period_s)


def closed(tricklers: list[Trickler]) -> int:
    return sum(trickler.answer.done() for trickler in tricklers)


async def test_waiting_connections_give_way_to_a_newcomer_oldest_first() -> None:
    http_server = LocalHttpServer(echo, refusal, max_body_bytes=MAX_BODY, max_connections=2)
    host, port = await http_server.listen_tcp("127.0.0.1", 0)
    url = f"http://{host}:{port}"
    try:
        oldest, younger = await open_tricklers(url, 2)
        async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
            assert (await http.get("/")).status_code == 200
        assert await asyncio.wait_for(oldest.answer, WAIT_S) == b""  # evicted, unanswered
        assert not younger.answer.done()
        younger.writer.close()
    finally:
        await http_server.close()


async def test_a_newcomer_is_refused_only_when_every_slot_is_being_answered() -> None:
    release = asyncio.Event()
    answering = asyncio.Event()

    async def slow(request: Request) -> Response:
        answering.set()
        await release.wait()
        return await echo(request)

    http_server = LocalHttpServer(slow, refusal, max_body_bytes=MAX_BODY, max_connections=1)
    host, port = await http_server.listen_tcp("127.0.0.1", 0)
    url = f"http://{host}:{port}"
    try:
        async with (
            httpx.AsyncClient(base_url=url, timeout=WAIT_S) as first,
            httpx.AsyncClient(base_url=url, timeout=WAIT_S) as second,
        ):
            pending = asyncio.create_task(first.get("/held"))
            await asyncio.wait_for(answering.wait(), WAIT_S)
            with pytest.raises(httpx.TransportError):
                await second.get("/refused")  # closed without an answer
            release.set()
            assert (await pending).status_code == 200
            assert (await second.get("/now")).status_code == 200
    finally:
        await http_server.close()


def test_admission_evicts_the_longest_waiting_and_never_one_being_answered() -> None:
    slots: Admission[str] = Admission(3)
    assert [slots.admit(name) for name in ("a", "b", "c")] == [None, None, None]
    slots.answering("a")
    assert slots.admit("d") == "b"  # "a" is being answered; "b" has waited longest
    slots.waiting("a")  # answered: now the most recent in line
    assert slots.admit("e") == "c"
    assert slots.admit("f") == "d"
    for name in ("a", "e", "f"):
        slots.answering(name)
    assert slots.admit("g") == "g"  # every slot is being answered: the newcomer is refused
    slots.leave("e")
    assert slots.admit("g") is None
    assert len(slots) == 3


def test_admission_frees_the_slot_of_a_connection_that_left() -> None:
    slots: Admission[int] = Admission(1)
    assert slots.admit(1) is None
    slots.leave(1)
    slots.leave(1)  # an evicted connection leaves again when its task ends
    assert slots.admit(2) is None
    assert len(slots) == 1


async def test_unix_socket_and_close_cuts_open_connections(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # left by an earlier run: replaced
    stale.close()
    http_server = LocalHttpServer(echo, refusal, max_body_bytes=MAX_BODY)
    await http_server.listen_unix(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
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


@pytest.mark.slow  # over 5 s
async def test_a_daemon_under_48_trickling_sockets_still_answers_real_requests(
    platform: Platform, spawn: Spawn
) -> None:
    daemon = await spawn(platform.url, platform.key)
    await daemon.wait_status(online)
    url = await daemon.local_url()
    token = (daemon.state_dir / "envagent" / "local-api-token").read_text().strip()
    tricklers = await open_tricklers(url, 48)
    pacing = asyncio.create_task(trickle(tricklers, period_s=0.2))
    try:
        # The slots are full once the daemon has closed the 16 beyond them.
        async def closed_now() -> int:
            return closed(tricklers)

        await wait_for(closed_now, lambda count: count >= 16)
        async with httpx.AsyncClient(base_url=url, timeout=REAL_REQUEST_S) as http:
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/v1/status")).json()["pid"] == daemon.process.pid
            changed = await http.put(
                "/v1/mode",
                json={"mode": "acceptEdits"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert changed.status_code == 200, changed.text
        assert closed(tricklers) < len(tricklers)  # the tricklers were still at it
        answers = await asyncio.wait_for(
            asyncio.gather(*(trickler.answer for trickler in tricklers)), WAIT_S
        )  # none finished its head; each is cut at the head deadline, if not evicted before
        assert all(answer == b"" or answer.startswith(b"HTTP/1.1 408 ") for answer in answers)
        assert any(answer.startswith(b"HTTP/1.1 408 ") for answer in answers)
    finally:
        pacing.cancel()
        for trickler in tricklers:
            trickler.writer.close()
    assert await daemon.stop() == exitcodes.OK
