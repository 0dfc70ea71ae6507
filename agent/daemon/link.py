"""The link to the platform: register, then keep a socket open, reconnecting and registering
again as docs/protocol.md says, until the daemon stops.

Both retries are tenacity's: registration retries transient failures (`session.register`), and
this module retries a lost socket, its waits decided by the pure `ReconnectPolicy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from agent.daemon.commands import Commands
from agent.daemon.config import Platform, Settings
from agent.daemon.environment import Environment
from agent.daemon.notify import Notifier
from agent.daemon.progress import Progress, State
from agent.daemon.session.connection import Session, SessionEnd, socket_url
from agent.daemon.session.policy import CloseAction, Random, ReconnectPolicy, heartbeat_period
from agent.daemon.session.register import (
    RegistrationRefused,
    TransientRegistrationError,
    register,
)
from agent.daemon.session.route import Route
from agent.daemon.state import LastConnection
from agent.protocol.models import (
    ExecuteCommandFrame,
    ExecuteCommandResponseFrame,
    RegisterReply,
    RegisterRequest,
)
from agent.support import exitcodes
from agent.support.clock import now_ms
from agent.support.exitcodes import Finished

log = logging.getLogger("envagent")

T = TypeVar("T")


class SessionLost(Exception):
    """A socket ended, or never opened, for a reason worth another try."""

    def __init__(self, end: SessionEnd) -> None:
        super().__init__(end.reason)
        self.end = end


class Link:
    def __init__(
        self,
        *,
        settings: Settings,
        platform: Platform,
        route: Route,
        environment: Environment,
        commands: Commands,
        progress: Progress,
        notifier: Notifier,
        stopping: asyncio.Event,
        rand: Random,
        on_first_online: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._platform = platform
        self._route = route
        self._environment = environment
        self._commands = commands
        self._progress = progress
        self._notifier = notifier
        self._stopping = stopping
        self._rand = rand
        self._on_first_online = on_first_online
        self._policy = ReconnectPolicy(stable_after_s=progress.heartbeat_s, rand=rand)
        self._register_next = False

    async def run(self) -> None:
        """Until stopped; raises Finished when the key is refused or another process takes over.

        A stop is seen wherever it comes: in a request, a session or a wait between them."""
        platform = self._platform
        if not platform.embedded:
            log.info("reaching %s %s", platform.url, self._route.described(platform.url))
        async with self._route.http_client(platform.url) as client:
            await self._keep_up(client)

    async def _keep_up(self, client: httpx.AsyncClient) -> None:
        reply = await self._register(client)
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(SessionLost),
            wait=self._lost,
            sleep=self._pause,
            before_sleep=self._retrying,
            reraise=True,
        ):
            with attempt:
                if self._stopping.is_set():
                    return
                if self._register_next:
                    self._register_next = False
                    reply = await self._register(client)
                await self._session(reply)

    # --- what the socket tells its owner (session.connection.SessionOwner) -------------------

    def connected(self, connection_id: str) -> None:
        progress = self._progress
        self._announce("online", f"connection {connection_id}")
        self._notifier.watchdog()
        progress.connects += 1
        progress.connection_id = connection_id
        progress.connected_at = progress.last_pong_at = now_ms()
        progress.last_error = None
        if progress.connects == 1 and self._on_first_online is not None:
            self._on_first_online()

    def heartbeat_answered(self) -> None:
        self._progress.last_pong_at = now_ms()
        self._notifier.watchdog()

    async def execute(self, frame: ExecuteCommandFrame) -> ExecuteCommandResponseFrame:
        return await self._commands.run(frame)

    # --- one socket, and what its end means --------------------------------------------------

    async def _session(self, reply: RegisterReply) -> None:
        """One socket to its end: returns when the daemon stops, raises SessionLost or, when
        replaced, Finished(REPLACED)."""
        self._announce("connecting")
        session = Session(
            self._environment,
            self,
            api_key=self._platform.api_key,
            connection_id=reply.connection_id,
            url=socket_url(reply.ws_url, self._environment.device_id, self._environment.name),
            route=self._route,
            heartbeat_s=self._progress.heartbeat_s,
            rand=self._rand,
            stopping=self._stopping,
            watchdog=self._progress.watchdog,
        )
        end = await session.run()
        if end.action is None:
            return
        self._progress.last_error = end.reason
        if end.action is CloseAction.STOP_REPLACED:
            self._announce("replaced")
            log.error(
                "another process took this identity (device %s): stopping; "
                "this daemon never fights for the slot",
                self._environment.device_id,
            )
            raise Finished(exitcodes.REPLACED)
        raise SessionLost(end)

    def _lost(self, attempt: RetryCallState) -> float:
        """tenacity's wait: the policy's backoff, remembering whether to register first."""
        failure = attempt.outcome.exception() if attempt.outcome else None
        assert isinstance(failure, SessionLost)
        end, policy = failure.end, self._policy
        self._progress.reconnects[end.cause] += 1
        policy.stable_after_s = self._progress.heartbeat_s  # the platform may assign a new one
        if end.connected_at is not None:
            policy.connected(end.connected_at)
        retry = policy.lost(time.monotonic())
        self._register_next = retry.register_again or end.action is CloseAction.REREGISTER
        return retry.delay_s

    def _retrying(self, attempt: RetryCallState) -> None:
        reason = str(attempt.outcome.exception()) if attempt.outcome else "the socket ended"
        self._announce("reconnecting", reason)
        log.warning("%s: retrying in %.1f s", reason, attempt.upcoming_sleep)

    async def _pause(self, delay_s: float) -> None:
        """tenacity's sleep: `delay_s`, or less when a stop comes (the next attempt sees it)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await self._stopping.wait()

    # --- registration ----------------------------------------------------------------------

    async def _register(self, client: httpx.AsyncClient) -> RegisterReply:
        """Register, retrying transient failures; raises Finished when refused or stopped."""
        self._announce("registering")
        environment, settings = self._environment, self._settings
        await environment.refresh()
        request = RegisterRequest(
            device_id=environment.device_id,
            listener_instance_id=settings.listener_instance_id,
            connection_name=environment.name,
            metadata=environment.metadata,
            current_mode=environment.mode,
            source=settings.source,
        )
        attempts = register(
            client,
            self._platform.url,
            self._platform.api_key,
            request,
            route=self._route,
            rand=self._rand,
            sleep=asyncio.sleep,
            on_retry=self._registration_failed,
        )
        try:
            reply = await self._unless_stopped(attempts)
        except RegistrationRefused as exc:
            self._announce("refused", str(exc))
            self._progress.registration_attempts["refused"] += 1
            self._progress.last_error = str(exc)
            log.error("%s", exc)
            raise Finished(exitcodes.CREDENTIALS) from None
        await self._registered(reply)
        return reply

    def _registration_failed(self, failure: TransientRegistrationError, delay: float) -> None:
        self._progress.registration_attempts["failed"] += 1
        self._progress.last_error = str(failure)
        self._notifier.status(f"registering: {failure}")
        log.warning("registration failed: %s; retrying in %.1f s", failure, delay)

    async def _registered(self, reply: RegisterReply) -> None:
        """Take the platform's answer: its heartbeat period, and the connection to persist."""
        progress = self._progress
        progress.registration_attempts["ok"] += 1
        progress.reply = reply
        progress.heartbeat_s = heartbeat_period(
            self._settings.heartbeat_ms, reply.heartbeat_interval_ms
        )
        await self._environment.remember(
            LastConnection(
                platform_url=self._platform.url,
                connection_id=reply.connection_id,
                ws_url=reply.ws_url,
                environment_id=reply.environment.id if reply.environment else None,
                at=now_ms(),
            )
        )
        log.info("registered as %s (connection %s)", self._environment.name, reply.connection_id)

    async def _unless_stopped(self, work: Coroutine[Any, Any, T]) -> T:
        """The result of `work`, or Finished(OK) as soon as a stop is asked for: `work` is
        then cancelled, wherever it is (a request in flight, a backoff sleep)."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise Finished(exitcodes.OK)
        return task.result()

    def _announce(self, state: State, detail: str | None = None) -> None:
        self._notifier.status(self._progress.enter(state, detail))
