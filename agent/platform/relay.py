"""The relay socket: one live WebSocket per environment row, newest wins.

Rules from docs/protocol.md, "Rows on the platform": a socket must present the row's current
connection id (else close 1008) with a key that may steer the row (`access`; else close 1008 naming
the rule); a second socket for the same row closes the older with 1000 `Replaced by new connection`;
opening counts as the first heartbeat; every `ping` gets a `pong`; a `disconnect` frame or a clean
close marks the row offline at once. Bad frames are logged and ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, WSMessage, WSMsgType, web

from agent.platform.access import ApiKey, Forbidden, check_may_steer
from agent.platform.metrics import PlatformMetrics
from agent.platform.presence import Presence
from agent.platform.settings import PlatformSettings
from agent.platform.store.base import Lease, Message, Store, StoreUnavailable
from agent.protocol.constants import REPLACED_REASON
from agent.protocol.models import (
    MAX_NAME_CHARS,
    DaemonFrame,
    DisconnectFrame,
    ExecuteCommandResponseFrame,
    FrameError,
    Mode,
    PingFrame,
    PlatformFrame,
    PongFrame,
    SyncResponseFrame,
    UpdateDeviceStatusFrame,
    parse_daemon_frame,
    parse_platform_frame,
)
from agent.support.clock import now_ms

log = logging.getLogger("envagent.platform")

UNKNOWN_CONNECTION_REASON = "unknown or superseded connectionId: register again"
SHUTDOWN_REASON = "platform shutting down"
FENCED_REASON = "this platform pod lost its lease: reconnect"
UNAVAILABLE_REASON = "the platform's database cannot take writes now: try again later"
CLOSE_TIMEOUT_S = 2.0  # how long a closing handshake may take before the socket is dropped
BAD_FRAMES_LOGGED = 5  # per socket; after that one line every 1000, so a noisy peer can't flood
_PONG = PongFrame().to_json()
_MAX_CLOSE_REASON = 120  # close reasons must fit in a 125-byte control frame
_ENDED = frozenset({WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED})
"""What `receive()` returns once the socket is closing: where `async for` would stop."""


Answer = ExecuteCommandResponseFrame | SyncResponseFrame


class NoSocket(LookupError):
    """No live socket holds that connection id (in that organization)."""


@dataclass(eq=False)
class LiveSocket:
    row_id: str
    connection_id: str
    connected_at: int
    """When this pod wrote the row online for this socket: which socket the row is."""
    ws: web.WebSocketResponse
    left: bool = False
    mode: Mode | None = None
    """The mode the row last recorded from this socket: a ping with another is written at once."""
    bad_frames: int = 0
    awaiting: dict[str, asyncio.Future[Answer]] = field(default_factory=dict)
    """Answers awaited by `Relay.send`, by request id."""
    last_ping: int = field(init=False)
    """When the last ping came, or the socket opened (`now_ms`): how long it has been silent."""

    def __post_init__(self) -> None:
        self.last_ping = self.connected_at


class Relay:
    def __init__(
        self, store: Store, settings: PlatformSettings, lease: Lease, metrics: PlatformMetrics
    ) -> None:
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self.presence = Presence(store, lease, settings.presence_interval_s)
        self._live: dict[str, LiveSocket] = {}
        self._last_connected_at = 0
        self._closing: set[asyncio.Task[bool]] = set()
        self._remote: dict[str, asyncio.Future[Answer]] = {}
        """Answers awaited from sockets of other pods, by request id."""
        self._draining: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.sockets_closed = 0
        """Sockets that were open and have ended, since the start."""

    async def serve(self, request: web.Request, key: ApiKey) -> web.WebSocketResponse:
        """Run one daemon's socket from the upgrade to its end.

        The row is marked online before the upgrade completes, so that a daemon whose socket
        is open is online in the listing; a refusal is a close frame right after the upgrade,
        with a reason the daemon reads (a 4xx it would not)."""
        ws = web.WebSocketResponse(
            timeout=CLOSE_TIMEOUT_S,
            heartbeat=self._settings.transport_ping_s,
            max_msg_size=self._settings.max_frame_bytes,
            compress=False,  # a deflate context per socket costs more memory than it saves
        )
        connection_id = request.query.get("connectionId", "")
        refusal: tuple[str, WSCloseCode] | None = None
        try:
            row_id, connected_at = await self._admit(key, connection_id, request.query)
        except NoSocket:
            refusal = (UNKNOWN_CONNECTION_REASON, WSCloseCode.POLICY_VIOLATION)
        except Forbidden as exc:
            refusal = (str(exc), WSCloseCode.POLICY_VIOLATION)
        except StoreUnavailable:  # logged by the store, once an outage
            refusal = (UNAVAILABLE_REASON, WSCloseCode.TRY_AGAIN_LATER)
        if refusal is not None:
            if await _upgraded(ws, request):
                await _refuse(ws, *refusal)
            return ws
        live = LiveSocket(row_id, connection_id, connected_at, ws)
        try:
            if not await _upgraded(ws, request):
                return ws
            self._take(live)
            try:
                # `receive()` rather than `async for`, and no message held while the next one
                # is awaited: what a socket keeps from one ping to the next outlives the
                # collector's young generations (see `server.Collector`).
                while await self._on_message(live, await ws.receive()):
                    pass
            finally:
                self.sockets_closed += 1
                if self._live.get(live.row_id) is live:
                    del self._live[live.row_id]
                how = "left" if live.left or ws.close_code in (1000, 1001) else "lost"
                log.info("row %s %s (close code %s)", live.row_id, how, ws.close_code)
        finally:
            await self._left_behind(live)
        return ws

    async def _admit(
        self, key: ApiKey, connection_id: str, query: Mapping[str, str]
    ) -> tuple[str, int]:
        """Mark the row this connection id serves online; its id and the socket's
        `connected_at`. NoSocket when the id is not current, Forbidden when `key` may not steer
        the row (the open socket, if any, goes on)."""
        device_id = query.get("deviceId")
        issued = await self._store.find_issued(key.organization_id, connection_id)
        if issued is None or (device_id is not None and device_id != issued.device_id):
            log.info("refused a socket for connection %r: not current", connection_id[:64])
            raise NoSocket(connection_id)
        check_may_steer(key, issued.owner_user_id, issued.row_id)
        name = (query.get("connectionName") or "")[:MAX_NAME_CHARS] or None
        # Strictly increasing: two sockets of one row on this pod never share it.
        connected_at = self._last_connected_at = max(now_ms(), self._last_connected_at + 1)
        if not await self._store.mark_connected(
            issued.row_id, connection_id, self.presence.lease, name, connected_at
        ):
            raise StoreUnavailable("this pod was fenced: it is joining again")
        if issued.pod_id is not None and issued.pod_id != self.pod_id:  # its old socket's pod
            replace = Message("replace", issued.row_id, issued.live_connection_id or "")
            self._background(self._store.post(issued.pod_id, replace))
        return issued.row_id, connected_at

    def _take(self, live: LiveSocket) -> LiveSocket:
        """Make `live` its row's socket. An older socket of the row is closed in the background
        and not referenced any longer: it must not stay in memory as long as its successor."""
        previous = self._live.get(live.row_id)
        self._live[live.row_id] = live
        if previous is not None:
            log.info("row %s: a newer socket replaces the open one", live.row_id)
            # In the background: a half-open old socket must not delay the new one's pongs.
            closing = asyncio.create_task(
                previous.ws.close(code=WSCloseCode.OK, message=_reason(REPLACED_REASON))
            )
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        return live

    async def _left_behind(self, live: LiveSocket) -> None:
        """`live` has ended, upgraded or not: its row goes offline unless a newer socket has
        it, here or on another pod (which the store checks: it may share the connection id)."""
        if self._live.get(live.row_id) is not None:  # a successor here
            return
        self.presence.forget(live.row_id)
        with contextlib.suppress(StoreUnavailable):  # the row goes stale: lost
            await self._store.mark_disconnected(
                live.row_id, live.connection_id, self.pod_id, live.connected_at, now_ms()
            )

    @property
    def sockets_open(self) -> int:
        """Sockets open now (one a row)."""
        return len(self._live)

    def silent(self, since_ms: int) -> int:
        """Open sockets whose last ping (or whose opening) is older than `since_ms`."""
        return sum(1 for live in self._live.values() if live.last_ping < since_ms)

    async def _on_message(self, live: LiveSocket, message: WSMessage) -> bool:
        """Handle one message; False once the socket is closing or closed."""
        if message.type == WSMsgType.TEXT:
            try:
                await self._on_frame(live, message.data)
            except ConnectionResetError:  # the peer dropped the socket as we answered
                return False
        elif message.type == WSMsgType.BINARY:
            self._ignore(live, "a binary frame: frames are JSON text")
        elif message.type == WSMsgType.ERROR:
            log.warning("row %s: socket error: %s", live.row_id, live.ws.exception())
        return message.type not in _ENDED

    async def _on_frame(self, live: LiveSocket, text: str) -> None:
        try:
            frame = parse_daemon_frame(text)
        except FrameError as exc:
            self._ignore(live, str(exc))
            return
        try:
            await self._on_valid_frame(live, frame)
        except StoreUnavailable:
            # Logged by the store, once an outage. The socket goes on: the daemon is fine and
            # frames still reach it; its row says what the database could last record.
            if isinstance(frame, PingFrame):
                await live.ws.send_str(_PONG)
                self._metrics.pongs += 1

    async def _on_valid_frame(self, live: LiveSocket, frame: DaemonFrame) -> None:
        now = now_ms()
        if isinstance(frame, PingFrame):
            self._metrics.pings += 1
            live.last_ping = now
            mode = frame.current_mode
            if mode is not None and mode != live.mode:  # a change of state: written at once
                self.presence.forget(live.row_id)
                await self._store.record_heartbeat(
                    live.row_id, live.connection_id, mode, now, self.presence.lease
                )
                live.mode = mode
            else:  # presence alone: batched (`presence`)
                self.presence.heartbeat(live.row_id, live.connection_id, now)
            await live.ws.send_str(_PONG)
            self._metrics.pongs += 1
        elif isinstance(frame, UpdateDeviceStatusFrame):
            await self._store.apply_device_status(live.row_id, frame.device_status, now)
            live.mode = frame.device_status.current_permission_mode or live.mode
        elif isinstance(frame, DisconnectFrame):
            live.left = True
            self.presence.forget(live.row_id)
            await self._store.mark_disconnected(
                live.row_id, live.connection_id, self.pod_id, live.connected_at, now
            )
            log.info("row %s is leaving: %s", live.row_id, frame.reason[:200] or "no reason")
        else:
            self._metrics.answers[frame.type] += 1
            waiting = live.awaiting.get(frame.request_id or "")
            if waiting is not None and not waiting.done():
                waiting.set_result(frame)
            else:
                log.info("row %s answered %r, which nobody awaits", live.row_id, frame.request_id)

    def _ignore(self, live: LiveSocket, why: str) -> None:
        self._metrics.bad_frames += 1
        live.bad_frames += 1
        if live.bad_frames <= BAD_FRAMES_LOGGED or live.bad_frames % 1000 == 0:
            log.warning("row %s: ignored bad frame #%d: %s", live.row_id, live.bad_frames, why)

    async def send(
        self, key: ApiKey, connection_id: str, frame: PlatformFrame, wait_s: float
    ) -> Answer | None:
        """Send `frame` to the live socket holding `connection_id`: NoSocket when none,
        Forbidden when `key` may not steer its row.

        A frame with a `request_id` waits up to `wait_s` for the daemon's answer (None when
        none came); other frames return None at once.
        """
        issued = await self._store.find_issued(key.organization_id, connection_id)
        if issued is None:
            raise NoSocket(connection_id)
        check_may_steer(key, issued.owner_user_id, issued.row_id)
        live = self._live.get(issued.row_id)
        if live is not None and live.connection_id == connection_id:
            return await self._ask(live, frame, wait_s)
        holder = issued.pod_id  # another pod's socket: asked through the database
        if holder not in (None, self.pod_id) and issued.live_connection_id == connection_id:
            assert holder is not None
            return await self._ask_pod(holder, issued.row_id, connection_id, frame, wait_s)
        raise NoSocket(connection_id)

    async def _ask(self, live: LiveSocket, frame: PlatformFrame, wait_s: float) -> Answer | None:
        """Send `frame` on `live`; with a request id, its answer (None after `wait_s`)."""
        self._metrics.frames_sent[frame.type] += 1
        request_id = getattr(frame, "request_id", None)
        if request_id is None:
            await live.ws.send_str(frame.to_json())
            return None
        return await _answer_to(
            live.awaiting, request_id, lambda: live.ws.send_str(frame.to_json()), wait_s
        )

    # --- frames for sockets another pod holds (docs/operations.md, "Storage") ---------------------

    @property
    def pod_id(self) -> str:
        return self.presence.lease.pod_id

    async def _ask_pod(
        self, pod_id: str, row_id: str, connection_id: str, frame: PlatformFrame, wait_s: float
    ) -> Answer | None:
        """`_ask`, through the pod that holds the socket: its answer comes back the same way."""
        request_id = getattr(frame, "request_id", None)
        reply_to = self.pod_id if request_id is not None else None
        message = Message("frame", row_id, connection_id, frame.to_json(), reply_to)
        if request_id is None:
            await self._store.post(pod_id, message)
            return None
        return await _answer_to(
            self._remote, request_id, lambda: self._store.post(pod_id, message), wait_s
        )

    def wake(self) -> None:
        """Another pod left messages: read them (once at a time, later signals coalesce)."""
        if self._draining is None or self._draining.done():
            self._draining = asyncio.create_task(self.drain())

    async def drain(self) -> None:
        """Read and carry out what other pods left for this one. Called on every signal and,
        in case a signal was lost, on every lease renewal."""
        with contextlib.suppress(StoreUnavailable):  # logged by the store; read next time
            for message in await self._store.take(self.pod_id):
                await self._carry_out(message)

    async def _carry_out(self, message: Message) -> None:
        live = self._live.get(message.row_id)
        if message.kind == "replace":
            if live is not None and self._live.pop(message.row_id) is live:
                log.info("row %s: a newer socket on another pod replaces this one", live.row_id)
                self.presence.forget(live.row_id)
                self._background(
                    live.ws.close(code=WSCloseCode.OK, message=_reason(REPLACED_REASON))
                )
        elif message.kind == "frame":
            if live is None or live.connection_id != message.connection_id:
                if message.reply_to is not None:
                    gone = Message("gone", message.row_id, message.connection_id, message.body)
                    self._background(self._store.post(message.reply_to, gone))
                return
            self._background(self._answer_pod(live, message))
        else:
            self._settle(message)

    async def _answer_pod(self, live: LiveSocket, message: Message) -> None:
        frame = parse_platform_frame(message.body)
        answer = await self._ask(live, frame, self._settings.answer_wait_s)
        if answer is not None and message.reply_to is not None:
            reply = Message("answer", message.row_id, message.connection_id, answer.to_json())
            await self._store.post(message.reply_to, reply)

    def _settle(self, message: Message) -> None:
        """An answer (or `gone`) for a frame this pod sent to another."""
        parse = parse_daemon_frame if message.kind == "answer" else parse_platform_frame
        try:
            frame = parse(message.body)
        except FrameError:
            return
        waiting = self._remote.get(getattr(frame, "request_id", None) or "")
        if waiting is None or waiting.done():
            return
        if message.kind == "gone":
            waiting.set_exception(NoSocket(message.connection_id))
        elif isinstance(frame, ExecuteCommandResponseFrame | SyncResponseFrame):
            waiting.set_result(frame)

    def _background(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        failure = None if task.cancelled() else task.exception()
        if failure is not None and not isinstance(failure, StoreUnavailable | ConnectionError):
            log.warning("a message between pods failed: %r", failure)

    async def quiesce(self) -> None:
        """Before the store closes: no message is read or sent any more."""
        pending = [*self._tasks, *([self._draining] if self._draining else [])]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def close_all(
        self, code: WSCloseCode = WSCloseCode.GOING_AWAY, reason: str = SHUTDOWN_REASON
    ) -> None:
        """Going away (1001) unless told: daemons treat it as transient and come back."""
        sockets = list(self._live.values())
        await asyncio.gather(
            *(live.ws.close(code=code, message=_reason(reason)) for live in sockets),
            return_exceptions=True,
        )

    async def rejoin(self, lease: Lease) -> None:
        """This pod was fenced (its rows are marked lost) and joined again under `lease`: every
        socket it holds is closed (1012), so that each daemon comes back and is online again
        under the new lease, here or on another pod."""
        self.presence.lease = lease
        await self.close_all(WSCloseCode.SERVICE_RESTART, FENCED_REASON)


async def _answer_to(
    waiting: dict[str, asyncio.Future[Answer]],
    request_id: str,
    send: Callable[[], Awaitable[None]],
    wait_s: float,
) -> Answer | None:
    """Send, then the answer to `request_id` (settled through `waiting` by whoever reads it),
    or None after `wait_s`."""
    answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
    waiting[request_id] = answer
    try:
        await send()
        async with asyncio.timeout(wait_s):
            return await answer
    except TimeoutError:
        return None
    finally:
        waiting.pop(request_id, None)


async def _upgraded(ws: web.WebSocketResponse, request: web.Request) -> bool:
    """Answer the upgrade; False when the daemon has gone meanwhile (it gave up waiting and
    will try again): not the platform's error."""
    try:
        await ws.prepare(request)
    except ConnectionResetError:
        log.info("a daemon went away before its upgrade was answered")
        return False
    return True


async def _refuse(
    ws: web.WebSocketResponse, why: str, code: WSCloseCode = WSCloseCode.POLICY_VIOLATION
) -> None:
    """Close right after the upgrade (1008 unless told): the daemon reads the reason, a 4xx it
    would not."""
    await ws.close(code=code, message=_reason(why))


def _reason(text: str) -> bytes:
    """At most `_MAX_CLOSE_REASON` bytes, cut between characters: peers reject bad UTF-8."""
    return text.encode()[:_MAX_CLOSE_REASON].decode(errors="ignore").encode()
