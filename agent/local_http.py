"""A small HTTP/1.1 server for the daemon's loopback API: h11 for the protocol, asyncio streams
for the I/O.

The daemon answers a handful of tiny JSON requests from the same machine. aiohttp would cost it
about 10 MiB of its memory budget; h11 is already loaded for registration (httpx uses it), does
the parsing and framing, and leaves the loop here: read a request, call the handler, write the
answer, keep the connection alive or close it. Nothing here ticks while no one is connected.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

from agent.httpapi import ApiError

log = logging.getLogger("envagent.local_api")

MAX_HEAD_BYTES = 16 * 1024
"""Request line and headers together; answered 431 beyond it."""
IDLE_TIMEOUT_S = 30.0
"""A connection that sends nothing for this long is closed: no slow client holds a slot."""
MAX_CONNECTIONS = 32
"""Beyond this many open connections new ones are closed at once, so that no local program can
take the file descriptors the daemon needs for its own socket to the platform."""
HEAD_TOO_LARGE = f"the request line and headers are over the {MAX_HEAD_BYTES}-byte limit"
READ_CHUNK = 64 * 1024
LINGER_S = 1.0


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, str]
    """The first value of each query parameter, percent-decoded."""
    headers: Mapping[str, str]
    """Names in lower case."""
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    """JSON."""


Handler = Callable[[Request], Awaitable[Response]]
ErrorResponder = Callable[[ApiError], Response]
"""Builds the answer to a request the server refuses itself, without calling the handler."""


class LocalHttpServer:
    """Serves `handler` on a TCP address or a Unix socket until `close()`."""

    def __init__(self, handler: Handler, errors: ErrorResponder, *, max_body_bytes: int) -> None:
        self._handler = handler
        self._errors = errors
        self._max_body_bytes = max_body_bytes
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._closing = False

    async def listen_tcp(self, host: str, port: int) -> tuple[str, int]:
        """Listen and return the (host, port) actually bound, the port resolved if 0."""
        self._server = await asyncio.start_server(self._accept, host, port)
        bound: tuple[str, int] = self._server.sockets[0].getsockname()[:2]
        return bound

    async def listen_unix(self, path: Path) -> None:
        self._server = await asyncio.start_unix_server(self._accept, str(path))

    async def close(self) -> None:
        """Stop listening and drop the open connections (an answer being written is cut)."""
        self._closing = True  # a connection accepted but not started yet is dropped when it starts
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closing:
            writer.close()
            return
        if len(self._connections) >= MAX_CONNECTIONS:
            log.warning("closed a local API connection: %d are open already", MAX_CONNECTIONS)
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or went quiet; nothing to answer
        except asyncio.CancelledError:
            pass  # the server is closing; the connection is cut below
        except Exception:
            log.exception("local API connection failed")
        finally:
            self._connections.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        while True:
            try:
                request = await self._read_request(connection, reader, writer)
            except ApiError as refusal:
                if connection.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await self._write(connection, writer, self._errors(refusal), close=True)
                    await self._linger(reader, writer)
                return
            if request is None:
                return
            await self._write(connection, writer, await self._handler(request), close=False)
            if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                return
            connection.start_next_cycle()

    async def _read_request(
        self, connection: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Request | None:
        """The next whole request, or None when the client closed the connection."""
        head = await self._next_event(connection, reader)
        if isinstance(head, h11.ConnectionClosed):
            return None
        assert isinstance(head, h11.Request)
        head_bytes = len(head.target) + sum(len(name) + len(value) for name, value in head.headers)
        if head_bytes > MAX_HEAD_BYTES:  # h11 only bounds a head that arrives in pieces
            raise ApiError(431, "bad_request", HEAD_TOO_LARGE)
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in head.headers}
        declared = headers.get("content-length", "0")
        if declared.isdigit() and int(declared) > self._max_body_bytes:
            raise self._too_large()
        if connection.they_are_waiting_for_100_continue:  # curl asks before a large body
            writer.write(
                connection.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
            )
        body = bytearray()
        while not isinstance(event := await self._next_event(connection, reader), h11.EndOfMessage):
            assert isinstance(event, h11.Data)
            body += event.data
            if len(body) > self._max_body_bytes:
                raise self._too_large()
        target = urlsplit(head.target.decode("latin-1"))
        query: dict[str, str] = {}
        for name, value in parse_qsl(target.query, keep_blank_values=True):
            query.setdefault(name, value)
        return Request(
            method=head.method.decode("ascii"),
            path=unquote(target.path),
            query=query,
            headers=headers,
            body=bytes(body),
        )

    def _too_large(self) -> ApiError:
        message = f"request body is over the {self._max_body_bytes}-byte limit"
        return ApiError(413, "too_large", message)

    @staticmethod
    async def _next_event(connection: h11.Connection, reader: asyncio.StreamReader) -> h11.Event:
        """The next event of the request; what h11 cannot parse is a refusal (400, or 431)."""
        while True:
            try:
                event = connection.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                message = HEAD_TOO_LARGE if status == 431 else f"malformed HTTP request: {exc}"
                raise ApiError(status, "bad_request", message) from None
            if event is not h11.NEED_DATA:
                assert not isinstance(event, type)  # PAUSED only follows a request we answered
                return event
            async with asyncio.timeout(IDLE_TIMEOUT_S):
                connection.receive_data(await reader.read(READ_CHUNK))

    @staticmethod
    async def _write(
        connection: h11.Connection, writer: asyncio.StreamWriter, answer: Response, *, close: bool
    ) -> None:
        headers = [
            ("Content-Type", "application/json; charset=utf-8"),
            ("Content-Length", str(len(answer.body))),
            ("Cache-Control", "no-store"),
        ]
        if close:
            headers.append(("Connection", "close"))
        for event in (
            h11.Response(status_code=answer.status, headers=headers),
            h11.Data(data=answer.body),
            h11.EndOfMessage(),
        ):
            writer.write(connection.send(event) or b"")
        async with asyncio.timeout(IDLE_TIMEOUT_S):
            await writer.drain()

    @staticmethod
    async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """After a refusal: read what the client is still sending, so that closing with unread
        data does not reset the connection before the client has read the answer."""
        if writer.can_write_eof():
            writer.write_eof()
        try:
            async with asyncio.timeout(LINGER_S):
                while await reader.read(READ_CHUNK):
                    pass
        except TimeoutError:
            pass
