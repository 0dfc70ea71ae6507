"""The daemon's loopback HTTP API: its own listing row, health, status, metrics and the mode.

Reads need nothing; `PUT /v1/mode` needs the token from a 0600 file, sent as
`Authorization: Bearer <token>`. Every request must name a
loopback host in its Host header, so that a web page cannot reach the API through a DNS name
rebound to 127.0.0.1.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from agent.localapi.server import LocalHttpServer, Request, Response
from agent.protocol.constants import ONLINE_WINDOW_MS
from agent.protocol.httpapi import ApiError, bearer_token, list_query, unknown_cursor
from agent.protocol.models import (
    DaemonStatus,
    EnvironmentList,
    EnvironmentRow,
    ErrorReply,
    Health,
    ListQuery,
    Mode,
    ModeChange,
    WireModel,
    describe_validation_error,
)
from agent.support.clock import now_ms
from agent.support.files import Untrusted, read_private, save_private
from agent.support.loopback import is_loopback_host
from agent.support.metrics import Rendered

log = logging.getLogger("envagent.local_api")

MAX_BODY_BYTES = 4096


class DaemonView(Protocol):
    """What the local API reads from, and asks of, the running daemon."""

    @property
    def mode(self) -> Mode: ...

    def listing_row(self) -> EnvironmentRow: ...

    def status(self) -> DaemonStatus: ...

    def health(self) -> Health: ...

    def metrics(self) -> Rendered:
        """The Prometheus text of the daemon's figures."""
        ...

    async def set_mode(self, mode: Mode, origin: str) -> None: ...


class PortUnavailable(Exception):
    """The local API's TCP port cannot be bound; the message is the one line to print. Unlike
    an unusable file, this may heal by itself (the other program exits), so it is no final exit.
    """


def local_page(row: EnvironmentRow, query: ListQuery, now: int) -> EnvironmentList:
    """The listing of one row, filtered exactly as the platform filters its rows."""
    if query.after is not None:
        if query.after != row.id:
            raise unknown_cursor(query.after)
        return EnvironmentList(connections=[], has_next_page=False)
    keep = (
        (not query.online_only or row.is_online(now, ONLINE_WINDOW_MS))
        and (query.source is None or query.source == row.source)
        and (query.user_id is None or query.user_id == row.user_id)
    )
    return EnvironmentList(connections=[row] if keep else [], has_next_page=False)


TOKEN_FORMAT = re.compile(rb"[A-Za-z0-9_-]{43}\n?")
"""What `load_or_create_token` writes: `secrets.token_urlsafe(32)` and a newline."""


def load_or_create_token(path: Path) -> str:
    """The token that guards state changes: made once, kept 0600.

    A token file that is not exactly what this function writes may have been planted or read by
    someone else, so it is replaced with a new token, never trusted. Raises UnusableFile when it
    cannot be replaced (a folder) or written.
    """
    try:
        return _read_token(path)
    except FileNotFoundError:
        pass
    except Untrusted as exc:
        log.warning("the local API token file %s was %s: made a new token", path, exc)
    token = secrets.token_urlsafe(32)
    save_private(path, (token + "\n").encode(), "the local API token")
    return token


def _read_token(path: Path) -> str:
    """The token in `path`; Untrusted when the file is anything but one we wrote."""
    try:
        private = read_private(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise Untrusted(f"unreadable ({exc.strerror})") from None
    if private.mode != 0o600:
        raise Untrusted(f"mode {private.mode:04o}, so others may have read it")
    if not TOKEN_FORMAT.fullmatch(private.data):
        raise Untrusted("not a token envagent wrote")
    return private.data.decode("ascii").strip()


Route = Callable[["LocalApi", Request], Awaitable[Response]]


def json_response(body: WireModel, status: int = 200) -> Response:
    return Response(status, body.to_json().encode())


def error_response(refusal: ApiError) -> Response:
    return json_response(ErrorReply(error=refusal.error, message=refusal.message), refusal.status)


class LocalApi:
    def __init__(
        self, daemon: DaemonView, *, host: str, port: int, socket: Path | None, token: str
    ) -> None:
        self._daemon = daemon
        self._host = host
        self._port = port
        self._socket = socket
        self._token = token
        self._server = LocalHttpServer(self._answer, error_response, max_body_bytes=MAX_BODY_BYTES)
        self.url = ""

    async def start(self) -> str:
        """Listen; UnusableFile when the Unix socket's path cannot be used, PortUnavailable
        when the TCP port cannot be bound (taken by another program, say)."""
        if self._socket is not None:
            await self._server.listen_unix(self._socket)
            self.url = f"unix:{self._socket}"
        else:
            try:
                host, port = await self._server.listen_tcp(self._host, self._port)
            except OSError as exc:
                raise PortUnavailable(
                    f"cannot serve the local API on {self._host}:{self._port}: "
                    f"{exc.strerror or exc}; choose another --local-api-port, "
                    "or leave it unset for a free one"
                ) from None
            self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        return self.url

    async def stop(self) -> None:
        await self._server.close()
        if self._socket is not None:
            self._socket.unlink(missing_ok=True)

    async def _answer(self, request: Request) -> Response:
        """Every request: the Host check, the route, and every failure as an `ErrorReply`."""
        try:
            self._check_host(request)
            return await self._route(request)(self, request)
        except ApiError as refusal:
            return error_response(refusal)
        except Exception:
            log.exception("unexpected error answering %s %s", request.method, request.path)
            return error_response(
                ApiError(500, "internal", "the daemon failed to answer; see its log")
            )

    def _check_host(self, request: Request) -> None:
        host = request.headers.get("host", "")
        if self._socket is None and not is_loopback_host(host):
            log.warning("refused a request for Host %r: not a loopback name", host[:100])
            raise ApiError(
                403, "forbidden", f"Host {host!r} is not a loopback name; only those are answered"
            )

    @staticmethod
    def _route(request: Request) -> Route:
        methods = ROUTES.get(request.path)
        if methods is None:
            raise ApiError(
                404,
                "not_found",
                f"{request.method} {request.path}: no such endpoint; "
                f"the local API has {', '.join(ROUTES)}",
            )
        route = methods.get(request.method)
        if route is None:
            allowed = ", ".join(methods)
            raise ApiError(
                405, "method_not_allowed", f"{request.method} {request.path}: use {allowed}"
            )
        return route

    async def _list(self, request: Request) -> Response:
        page = local_page(self._daemon.listing_row(), list_query(request.query), now_ms())
        return json_response(page)

    async def _health(self, request: Request) -> Response:
        health = self._daemon.health()
        return json_response(health, 200 if health.ok else 503)

    async def _status(self, request: Request) -> Response:
        return json_response(self._daemon.status())

    async def _metrics(self, request: Request) -> Response:
        rendered = self._daemon.metrics()
        return Response(200, rendered.body, rendered.content_type)

    async def _get_mode(self, request: Request) -> Response:
        return json_response(ModeChange(mode=self._daemon.mode))

    async def _put_mode(self, request: Request) -> Response:
        given = bearer_token(request.headers.get("authorization", ""))
        if given is None or not hmac.compare_digest(given.encode(), self._token.encode()):
            raise ApiError(
                401,
                "unauthorized",
                "changing the mode needs the local API token: Authorization: Bearer <token>",
            )
        try:
            change = ModeChange.model_validate_json(request.body)
        except ValidationError as exc:
            raise ApiError(422, "invalid_body", describe_validation_error(exc)) from None
        await self._daemon.set_mode(change.mode, "local API")
        return json_response(change)


ROUTES: dict[str, dict[str, Route]] = {
    "/v1/environments": {"GET": LocalApi._list},
    "/healthz": {"GET": LocalApi._health},
    "/v1/status": {"GET": LocalApi._status},
    "/metrics": {"GET": LocalApi._metrics},
    "/v1/mode": {"GET": LocalApi._get_mode, "PUT": LocalApi._put_mode},
}
