"""A small HTTP/1.1 server for the daemon's loopback API: h11 for the protocol, asyncio streams
for the I/O.

The daemon answers a handful of tiny JSON requests from the same machine. aiohttp would cost it
about 10 MiB of its memory budget; h11 is already loaded for registration (httpx uses it), does
the parsing and framing, and leaves the loop here: read a request, call the handler, write the
answer, keep the connection alive or close it. Nothing here ticks while no one is connected.

No local program can starve it: a request must arrive whole within a few seconds, and when
every slot is taken a newcomer pushes out the connection that has waited longest for a request
(see `Admission`), so sockets that send nothing, or a byte at a time, only push each other out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

from agent.protocol.httpapi import ApiError
from agent.support.files import UnusableFile, unusable

log = logging.getLogger("envagent.local_api")

MAX_HEAD_BYTES = 16 * 1024
"""Request line and headers together; answered 431 beyond it."""
IDLE_TIMEOUT_S = 30.0
"""A kept-alive connection that starts no new request for this long is closed."""
REQUEST_DEADLINE_S = 5.0
"""A request, head and body, must arrive whole this long after its first byte (after the accept,
for a connection's first request), or it is answered 408 and closed: a client sending a byte at
a time holds a slot no longer. An answer the client does not take in this time is cut."""
MAX_CONNECTIONS = 32
"""At most this many open connections, so that no local program can take the file descriptors
the daemon needs for its own socket to the platform; see `Admission` for who gives way."""
HEAD_TOO_LARGE = f"the request line and headers are over the {MAX_HEAD_BYTES}-byte limit"
READ_CHUNK = 64 * 1024
MAX_DETAIL_CHARS = 200
"""Of h11's own explanation of a refusal, so that an error message stays one short line."""
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
    content_type: str = "application/json; charset=utf-8"


Handler = Callable[[Request], Awaitable[Response]]
ErrorResponder = Callable[[ApiError], Response]
"""Builds the answer to a request the server refuses itself, without calling the handler."""


Key = TypeVar("Key", bound=Hashable)


class Admission(Generic[Key]):
    """Who holds the connection slots, and who gives way to a newcomer when they are all taken.

    A connection waiting for a request (its first, one trickling in, or the next on a kept-alive
    connection) gives way, the one that has waited longest first; a connection being answered
    never does. A real request completes its head at once and is answered at once, so hostile
    sockets, however many, cannot keep it out: they only push out each other.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._waiting: dict[Key, None] = {}
        """In the order they began waiting: the longest waiting first."""
        self._answering: set[Key] = set()

    def __len__(self) -> int:
        return len(self._waiting) + len(self._answering)

    def admit(self, new: Key) -> Key | None:
        """Take `new` in, waiting for its request. Returns the connection to close to make room:
        the one waiting longest, or `new` itself when every slot is being answered; None when
        there was room."""
        evicted = None
        if len(self) >= self.limit:
            if not self._waiting:
                return new
            evicted = next(iter(self._waiting))
            del self._waiting[evicted]
        self._waiting[new] = None
        return evicted

    def answering(self, key: Key) -> None:
        """`key` has sent a whole request: it keeps its slot until the answer is written."""
        del self._waiting[key]
        self._answering.add(key)

    def waiting(self, key: Key) -> None:
        """`key` was answered and waits for its next request, now the most recent in line."""
        self._answering.discard(key)
        self._waiting[key] = None

    def leave(self, key: Key) -> None:
        """`key` is closed (or was evicted): its slot is free."""
        self._waiting.pop(key, None)
        self._answering.discard(key)


class LocalHttpServer:
    """Serves `handler` on a TCP address or a Unix socket until `close()`."""

    def __init__(
        self,
        handler: Handler,
        errors: ErrorResponder,
        *,
        max_body_bytes: int,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._handler = handler
        self._errors = errors
        self._max_body_bytes = max_body_bytes
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        """Every connection task still running, an evicted one until it has closed."""
        self._admission: Admission[asyncio.Task[None]] = Admission(max_connections)
        self._closing = False

    async def listen_tcp(self, host: str, port: int) -> tuple[str, int]:
        """Listen and return the (host, port) actually bound, the port resolved if 0."""
        self._server = await asyncio.start_server(self._accept, host, port)
        bound: tuple[str, int] = self._server.sockets[0].getsockname()[:2]
        return bound

    async def listen_unix(self, path: Path) -> None:
        """Listen on a socket at `path` (UnusableFile when that path cannot be used)."""
        self._server = await asyncio.start_unix_server(self._accept, sock=_bind_unix(path))

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
        task = asyncio.current_task()
        assert task is not None
        if self._closing or not self._admitted(task):
            writer.close()
            return
        self._connections.add(task)
        try:
            await self._serve(reader, writer, task)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or went quiet; nothing to answer
        except asyncio.CancelledError:
            pass  # evicted, or the server is closing; the connection is cut below
        except Exception:
            log.exception("local API connection failed")
        finally:
            self._admission.leave(task)
            self._connections.discard(task)
            writer.close()

    def _admitted(self, task: asyncio.Task[None]) -> bool:
        """Give `task` a slot, cutting the connection that waited longest if need be; False
        when every slot is being answered."""
        evicted = self._admission.admit(task)
        limit = self._admission.limit
        if evicted is task:
            log.warning("closed a local API connection: all %d are being answered", limit)
            return False
        if evicted is not None:
            log.debug("all %d local API slots taken: closed the one waiting longest", limit)
            evicted.cancel()
        return True

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, task: asyncio.Task[None]
    ) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        while True:
            try:
                request = await self._read_in_time(connection, reader, writer)
            except ApiError as refusal:
                if connection.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    # A HEAD request refused after its head was read takes no body: h11 says
                    # so, and the connection is closed anyway.
                    with contextlib.suppress(h11.LocalProtocolError):
                        await self._write(connection, writer, self._errors(refusal), close=True)
                    await self._linger(reader, writer)
                return
            if request is None:
                return
            self._admission.answering(task)
            answer = await self._handler(request)
            await self._write(
                connection, writer, answer, close=False, head=request.method == "HEAD"
            )
            self._admission.waiting(task)
            if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                return
            connection.start_next_cycle()
            await self._next_request_begins(connection, reader)

    async def _read_in_time(
        self, connection: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Request | None:
        """The next whole request within REQUEST_DEADLINE_S, or None when the client closed."""
        try:
            async with asyncio.timeout(REQUEST_DEADLINE_S):
                return await self._read_request(connection, reader, writer)
        except TimeoutError:
            message = f"the request did not arrive whole within {REQUEST_DEADLINE_S:g} s"
            raise ApiError(408, "timeout", message) from None

    @staticmethod
    async def _next_request_begins(
        connection: h11.Connection, reader: asyncio.StreamReader
    ) -> None:
        """On a kept-alive connection, wait up to IDLE_TIMEOUT_S for the next request's first
        bytes (unless they came with the last one): its deadline runs from there."""
        pending, closed = connection.trailing_data
        if pending or closed:
            return
        async with asyncio.timeout(IDLE_TIMEOUT_S):
            connection.receive_data(await reader.read(READ_CHUNK))

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
                detail = str(exc)  # h11 quotes what it refused, which may be kilobytes long
                if len(detail) > MAX_DETAIL_CHARS:
                    detail = detail[:MAX_DETAIL_CHARS] + "..."
                message = HEAD_TOO_LARGE if status == 431 else f"malformed HTTP request: {detail}"
                raise ApiError(status, "bad_request", message) from None
            if event is not h11.NEED_DATA:
                assert not isinstance(event, type)  # PAUSED only follows a request we answered
                return event
            connection.receive_data(await reader.read(READ_CHUNK))

    @staticmethod
    async def _write(
        connection: h11.Connection,
        writer: asyncio.StreamWriter,
        answer: Response,
        *,
        close: bool,
        head: bool = False,
    ) -> None:
        """Write `answer`; to a HEAD request, its headers only (HTTP allows it no body)."""
        headers = [
            ("Content-Type", answer.content_type),
            ("Content-Length", str(len(answer.body))),
            ("Cache-Control", "no-store"),
        ]
        if close:
            headers.append(("Connection", "close"))
        for event in (
            h11.Response(status_code=answer.status, headers=headers),
            h11.Data(data=b"" if head else answer.body),
            h11.EndOfMessage(),
        ):
            writer.write(connection.send(event) or b"")
        async with asyncio.timeout(REQUEST_DEADLINE_S):
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


def _bind_unix(path: Path) -> socket.socket:
    """A socket bound at `path`, created 0600: the umask is narrowed for the bind, so that no
    other user can connect in between and nothing is chmod'ed by name (which follows a symlink)
    afterwards. A socket left there by an earlier run is replaced, anything else is refused."""
    action = "cannot serve the local API there"
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise UnusableFile(f"{path}: {action}: it exists and is not a socket")
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise unusable(path, action, exc) from None
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    umask = os.umask(0o177)
    try:
        listener.bind(str(path))
    except OSError as exc:
        listener.close()
        raise unusable(path, action, exc) from None
    finally:
        os.umask(umask)
    return listener
