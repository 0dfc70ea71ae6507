"""The daemon's loopback HTTP API: its own listing row, health, status and the mode.

Reads need nothing; `PUT /v1/mode` needs the token from a 0600 file. Every request must name a
loopback host in its Host header, so that a web page cannot reach the API through a DNS name
rebound to 127.0.0.1.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path
from typing import Protocol

from aiohttp import web
from pydantic import BaseModel, ValidationError

from agent.clock import now_ms
from agent.files import write_private
from agent.httpapi import ApiError, Handler, json_errors, list_query, unknown_cursor
from agent.loopback import is_loopback_host
from agent.models import (
    DaemonStatus,
    EnvironmentList,
    EnvironmentRow,
    Health,
    ListQuery,
    Mode,
    ModeChange,
    Source,
    describe_validation_error,
)
from agent.platform.settings import ONLINE_WINDOW_MS

log = logging.getLogger("envagent.local_api")

MAX_BODY_BYTES = 4096


class DaemonView(Protocol):
    """What the local API reads from, and asks of, the running daemon."""

    source: Source

    @property
    def mode(self) -> Mode: ...

    def listing_row(self) -> EnvironmentRow: ...

    def status(self) -> DaemonStatus: ...

    def health(self) -> Health: ...

    async def set_mode(self, mode: Mode, origin: str) -> None: ...


class LocalApiAddress(BaseModel):
    """Written beside the state while the daemon runs, so that the CLI can find it."""

    url: str
    pid: int


def local_page(row: EnvironmentRow, query: ListQuery, source: Source, now: int) -> EnvironmentList:
    """The listing of one row, filtered exactly as the platform filters its rows."""
    if query.after is not None:
        if query.after != row.id:
            raise unknown_cursor(query.after)
        return EnvironmentList(connections=[], has_next_page=False)
    keep = (
        (not query.online_only or row.is_online(now, ONLINE_WINDOW_MS))
        and (query.source is None or query.source == source)
        and (query.user_id is None or query.user_id == row.user_id)
    )
    return EnvironmentList(connections=[row] if keep else [], has_next_page=False)


def load_or_create_token(path: Path) -> str:
    """The token that guards state changes; made once, kept 0600."""
    try:
        token = path.read_text().strip()
        if token:
            path.chmod(0o600)
            return token
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    write_private(path, (token + "\n").encode())
    return token


class LocalApi:
    def __init__(
        self, daemon: DaemonView, *, host: str, port: int, socket: Path | None, token: str
    ) -> None:
        self._daemon = daemon
        self._host = host
        self._port = port
        self._socket = socket
        self._token = token
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application(
            middlewares=[json_errors(MAX_BODY_BYTES), self._loopback_only],
            client_max_size=MAX_BODY_BYTES,
        )
        app.router.add_get("/v1/environments", self._list)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/v1/status", self._status)
        app.router.add_get("/v1/mode", self._get_mode)
        app.router.add_put("/v1/mode", self._put_mode)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        if self._socket is not None:
            self._socket.unlink(missing_ok=True)
            await web.UnixSite(self._runner, str(self._socket)).start()
            os.chmod(self._socket, 0o600)
            self.url = f"unix:{self._socket}"
        else:
            await web.TCPSite(self._runner, self._host, self._port).start()
            host, port = self._runner.addresses[0][:2]
            self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._socket is not None:
            self._socket.unlink(missing_ok=True)

    @web.middleware
    async def _loopback_only(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host", "")
        if self._socket is None and not is_loopback_host(host):
            log.warning("refused a request for Host %r: not a loopback name", host[:100])
            raise ApiError(
                403, "forbidden", f"Host {host!r} is not a loopback name; only those are answered"
            )
        return await handler(request)

    async def _list(self, request: web.Request) -> web.Response:
        page = local_page(
            self._daemon.listing_row(), list_query(request), self._daemon.source, now_ms()
        )
        return web.json_response(page.to_wire())

    async def _health(self, request: web.Request) -> web.Response:
        health = self._daemon.health()
        return web.json_response(health.to_wire(), status=200 if health.ok else 503)

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self._daemon.status().to_wire())

    async def _get_mode(self, request: web.Request) -> web.Response:
        return web.json_response(ModeChange(mode=self._daemon.mode).to_wire())

    async def _put_mode(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        given = header.removeprefix("Bearer ").strip()
        if not given or not hmac.compare_digest(given.encode(), self._token.encode()):
            raise ApiError(401, "unauthorized", "changing the mode needs the local API token")
        try:
            change = ModeChange.model_validate_json(await request.read())
        except ValidationError as exc:
            raise ApiError(422, "invalid_body", describe_validation_error(exc)) from None
        await self._daemon.set_mode(change.mode, "local API")
        return web.json_response(change.to_wire())
