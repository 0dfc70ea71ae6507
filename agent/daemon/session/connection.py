"""One WebSocket session with the platform (docs/protocol.md, "The WebSocket"), from connect to its
end.

The decisions (when to ping, when the peer is dead, what a close code means) come from
`policy`; this module only moves frames. It reports how the session ended and leaves the
choice of what to do next to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidProxy, InvalidStatus

from agent import __version__
from agent.daemon.session.policy import (
    CloseAction,
    EndCause,
    Random,
    Tick,
    Watchdog,
    close_action,
    close_cause,
    heartbeat_delay,
)
from agent.daemon.session.route import Route, UnusableProxy
from agent.protocol.models import (
    ChangeDeviceStateFrame,
    DeviceStatus,
    DisconnectFrame,
    ExecuteCommandFrame,
    ExecuteCommandResponseFrame,
    FrameError,
    Mode,
    PingFrame,
    PongFrame,
    SyncFrame,
    SyncResponseFrame,
    UpdateDeviceStatusFrame,
    parse_platform_frame,
)
from agent.support.clock import now_ms

log = logging.getLogger("envagent.session")
frames_log = logging.getLogger("envagent.frames")

MAX_FRAME_CHARS = 256 * 1024
"""Frames longer than this are logged and ignored (docs/protocol.md, "Bad frames and size
limits")."""
HARD_MAX_FRAME_BYTES = 16 * 1024 * 1024
"""Above this the socket itself gives up (close 1009): such a frame cannot be skipped unread."""
OPEN_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 1.0


class SessionHost(Protocol):
    """The environment the socket reports, and that the platform's frames change."""

    @property
    def mode(self) -> Mode: ...

    changed: asyncio.Event
    """Set when something the platform should hear about has changed."""

    async def device_status(self, connection_id: str) -> DeviceStatus: ...

    async def refresh(self) -> bool:
        """Re-read the machine; True when what the platform was told is now out of date."""
        ...

    async def change_device_state(self, frame: ChangeDeviceStateFrame) -> None: ...


class SessionOwner(Protocol):
    """Whoever keeps the socket up: told how it goes, and running the platform's commands."""

    def connected(self, connection_id: str) -> None: ...

    def heartbeat_answered(self) -> None: ...

    async def execute(self, frame: ExecuteCommandFrame) -> ExecuteCommandResponseFrame: ...


@dataclass(frozen=True)
class SessionEnd:
    action: CloseAction | None
    """None when the daemon itself is stopping."""
    reason: str
    connected_at: float | None
    """When the socket opened (`time.monotonic`), None when it never did."""
    cause: EndCause


def socket_url(ws_url: str, device_id: str, connection_name: str) -> str:
    """`wsUrl` with `deviceId` and `connectionName` set, replacing any of the same name."""
    parts = urlsplit(ws_url)
    query = [
        (key, value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
        if key not in ("deviceId", "connectionName")
    ]
    query += [("deviceId", device_id), ("connectionName", connection_name)]
    return urlunsplit(parts._replace(query=urlencode(query)))


async def open_socket(
    url: str, api_key: str, route: Route, client: str = f"envagent/{__version__}"
) -> ClientConnection:
    """The socket to the platform as the daemon opens it: the route's proxy and trust, the key,
    no library timers; `envagent doctor` opens its check socket through here too."""
    return await websockets.connect(
        url,
        ssl=route.socket_ssl(url),
        proxy=route.proxy(url),  # None: directly, whatever websockets would read itself
        additional_headers={"Authorization": f"Bearer {api_key}"},
        user_agent_header=client,
        open_timeout=OPEN_TIMEOUT_S,
        close_timeout=CLOSE_TIMEOUT_S,
        ping_interval=None,  # our own pings are the heartbeat; no timer of theirs
        compression=None,  # small JSON frames: a deflate context costs more than it saves
        max_size=HARD_MAX_FRAME_BYTES,
    )


class Session:
    def __init__(
        self,
        host: SessionHost,
        owner: SessionOwner,
        *,
        api_key: str,
        connection_id: str,
        url: str,
        route: Route,
        heartbeat_s: float,
        rand: Random,
        stopping: asyncio.Event,
        watchdog: Watchdog,
    ) -> None:
        self._host = host
        self._owner = owner
        self._api_key = api_key
        self._connection_id = connection_id
        self._url = url
        self._route = route
        self._heartbeat_s = heartbeat_s
        self._rand = rand
        self._stopping = stopping
        self.watchdog = watchdog
        self._connected_at: float | None = None
        self._commands: set[asyncio.Task[None]] = set()

    async def run(self) -> SessionEnd:
        route, url = self._route, self._url
        try:
            ws = await open_socket(url, self._api_key, route)
        except InvalidStatus as exc:
            status = exc.response.status_code
            action = CloseAction.REREGISTER if status in (401, 403, 404) else CloseAction.RECONNECT
            refused = f"the socket was refused with HTTP {status}"
            return SessionEnd(action, refused, None, "refused")
        except UnusableProxy as exc:
            return SessionEnd(CloseAction.RECONNECT, str(exc), None, "network")
        except (OSError, TimeoutError, InvalidHandshake, InvalidProxy) as exc:
            reason = route.failure(exc, url) or f"cannot open the socket: {exc!r}"
            return SessionEnd(CloseAction.RECONNECT, reason, None, "network")
        self._connected_at = time.monotonic()
        self.watchdog.new_connection()
        self._owner.connected(self._connection_id)
        log.info("connected (%s)", self._connection_id)
        try:
            return await self._serve(ws)
        finally:
            # Never leave a socket behind, whichever way the session ended; after a dead peer
            # this drops it without a close handshake, as docs/protocol.md, "Dead peer", says.
            ws.transport.abort()

    async def _serve(self, ws: ClientConnection) -> SessionEnd:
        try:
            await self._send_status(ws)
        except ConnectionClosed:
            return self._closed(ws)
        tasks = {
            asyncio.create_task(self._read(ws), name="read"),
            asyncio.create_task(self._heartbeat(ws), name="heartbeat"),
            asyncio.create_task(self._report_changes(ws), name="changes"),
            asyncio.create_task(self._stopping.wait(), name="stop"),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks | self._commands:
                task.cancel()
            await asyncio.gather(*tasks, *self._commands, return_exceptions=True)
        finished = done.pop()
        if finished.get_name() == "stop":
            return await self._leave(ws)
        failure = finished.exception()
        if isinstance(failure, ConnectionClosed):
            return self._closed(ws)
        if failure is not None:
            # A bug of ours must not end the daemon: say so loudly, then start over.
            log.error("the session failed", exc_info=failure)
            why = f"internal error: {failure!r}"
            return SessionEnd(CloseAction.RECONNECT, why, self._connected_at, "internal")
        end = finished.result()
        assert isinstance(end, SessionEnd)
        return end

    def _closed(self, ws: ClientConnection) -> SessionEnd:
        code, reason = ws.close_code, ws.close_reason or ""
        action = close_action(code, reason)
        described = f"the platform closed the socket ({code} {reason})".replace(" )", ")")
        return SessionEnd(action, described, self._connected_at, close_cause(code))

    async def _leave(self, ws: ClientConnection) -> SessionEnd:
        """A deliberate stop: say so, then close 1000, both bounded."""
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self._send(ws, DisconnectFrame(reason="daemon stopping").to_json())
                await ws.close(1000, "daemon stopping")
        return SessionEnd(None, "stopped", self._connected_at, "stopped")

    async def _send(self, ws: ClientConnection, text: str) -> None:
        frames_log.debug("→ %s", text)
        await ws.send(text)

    async def _send_status(self, ws: ClientConnection) -> None:
        status = await self._host.device_status(self._connection_id)
        await self._send(ws, UpdateDeviceStatusFrame(device_status=status).to_json())

    async def _read(self, ws: ClientConnection) -> SessionEnd:
        async for message in ws:
            if isinstance(message, bytes):
                log.warning(
                    "ignored a binary frame of %d bytes: frames are JSON text", len(message)
                )
                continue
            if len(message) > MAX_FRAME_CHARS:
                log.warning(
                    "ignored a frame of %d characters (limit %d)", len(message), MAX_FRAME_CHARS
                )
                continue
            frames_log.debug("← %s", message)
            try:
                frame = parse_platform_frame(message)
            except FrameError as exc:
                log.warning("ignored a frame: %s", exc)
                continue
            await self._on_frame(ws, frame)
        return self._closed(ws)

    async def _on_frame(
        self,
        ws: ClientConnection,
        frame: PongFrame | ChangeDeviceStateFrame | ExecuteCommandFrame | SyncFrame,
    ) -> None:
        if isinstance(frame, PongFrame):
            self.watchdog.pong()
            self._owner.heartbeat_answered()
        elif isinstance(frame, ChangeDeviceStateFrame):
            await self._host.change_device_state(frame)
            await self._send_status(ws)
        elif isinstance(frame, ExecuteCommandFrame):
            # In the background: a long command (an upgrade) must not stop pongs being read.
            command = asyncio.create_task(self._answer(ws, frame))
            self._commands.add(command)
            command.add_done_callback(self._commands.discard)
        else:
            await self._send_status(ws)
            reply_frame = SyncResponseFrame(request_id=frame.request_id, success=True)
            await self._send(ws, reply_frame.to_json())

    async def _answer(self, ws: ClientConnection, frame: ExecuteCommandFrame) -> None:
        reply = await self._owner.execute(frame)
        with contextlib.suppress(ConnectionClosed):
            await self._send(ws, reply.to_json())

    async def _heartbeat(self, ws: ClientConnection) -> SessionEnd:
        while True:
            await asyncio.sleep(heartbeat_delay(self._heartbeat_s, self._rand))
            tick = self.watchdog.tick()
            if tick is Tick.DEAD:
                log.warning("%d pings unanswered: dropping the socket", self.watchdog.unanswered)
                why = "the platform stopped answering"
                return SessionEnd(CloseAction.RECONNECT, why, self._connected_at, "dead_peer")
            if tick is Tick.WAIT:
                continue
            ping = PingFrame(current_mode=self._host.mode, sent_at=now_ms())
            await self._send(ws, ping.to_json())
            if await self._host.refresh():
                await self._send_status(ws)

    async def _report_changes(self, ws: ClientConnection) -> SessionEnd:
        while True:
            await self._host.changed.wait()
            self._host.changed.clear()
            await self._send_status(ws)
