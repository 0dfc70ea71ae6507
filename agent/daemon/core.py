"""The daemon: registration, the socket loop, the state around them, and the local API.

`Daemon.run` is the one code path for every way envagent runs (service, started by a coding
tool, foreground). It returns the process exit code; see `agent.support.exitcodes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import httpx

from agent import __version__
from agent.daemon.commands import Commands
from agent.daemon.config import Platform, Settings
from agent.daemon.lock import EMBEDDED, InstanceLock, LockHolder
from agent.daemon.notify import Notifier
from agent.daemon.parent import ParentWatch
from agent.daemon.progress import Progress
from agent.daemon.session.connection import Session, socket_url
from agent.daemon.session.policy import (
    CloseAction,
    Random,
    ReconnectPolicy,
    heartbeat_period,
)
from agent.daemon.session.register import (
    RegistrationRefused,
    TransientRegistrationError,
    register,
)
from agent.daemon.state import DaemonState, LastConnection, StateStore, state_path
from agent.localapi.routes import LocalApi, LocalApiAddress, load_or_create_token
from agent.machine.metadata import MetadataCollector
from agent.protocol.models import (
    ChangeDeviceStateFrame,
    DaemonStatus,
    DeviceStatus,
    EnvironmentRow,
    ExecuteCommandFrame,
    ExecuteCommandResponseFrame,
    Health,
    HeartbeatCounts,
    Metadata,
    Mode,
    NodeReport,
    RegisterReply,
    RegisterRequest,
    Source,
)
from agent.support import exitcodes
from agent.support.clock import now_ms
from agent.support.files import private_dir, save_private
from agent.support.logs import register_secret
from agent.support.paths import instance_file, state_dir

log = logging.getLogger("envagent")

T = TypeVar("T")


class Finished(Exception):
    """Ends the run with an exit code, from wherever the reason was found."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        parent_pid: int | None = None,
        on_ready: Callable[[Daemon], None] | None = None,
        rand: Random = random.random,
    ) -> None:
        self.settings = settings
        self.platform = Platform(settings.base_url or "", "", embedded=settings.base_url is None)
        """Until `run` resolves it (the embedded platform's URL is known only once started)."""
        self.source: Source = settings.source
        self._parent_pid = parent_pid
        self._on_ready = on_ready
        self._rand = rand
        self._store = StateStore(state_path(settings.listener_instance_id))
        self._state: DaemonState | None = None
        self._name = settings.name or socket.gethostname()
        self._collector = MetadataCollector(
            settings.workdir, settings.client_version or __version__, Commands.NAMES
        )
        self._commands = Commands(self)
        self._metadata = Metadata()
        self._reported: Metadata | None = None
        self._progress = Progress()
        self._started_at = now_ms()
        self._started_monotonic = time.monotonic()
        self._local_api: LocalApi | None = None
        self._notifier = Notifier()
        self._restart = False
        self.stopping = asyncio.Event()
        self.changed = asyncio.Event()

    # --- the state the session reads -------------------------------------------------------

    @property
    def state(self) -> DaemonState:
        assert self._state is not None, "the daemon has not loaded its state"
        return self._state

    @property
    def mode(self) -> Mode:
        return self.state.mode

    @property
    def metadata(self) -> Metadata:
        return self._metadata

    async def set_mode(self, mode: Mode, origin: str) -> None:
        """The last one to set the mode wins; it is persisted and reported at once."""
        if mode != self.mode:
            log.info("mode %s → %s (from %s)", self.mode, mode, origin)
            self._state = await asyncio.to_thread(self._store.update, mode=mode)
        self.changed.set()

    async def refresh(self) -> bool:
        """Re-read the machine; True when the platform was told something now out of date."""
        self._metadata = await self._collector.collect()
        return self._metadata != self._reported

    async def device_status(self, connection_id: str) -> DeviceStatus:
        metadata = self._metadata
        self._reported = metadata
        return DeviceStatus.report(
            metadata, connection_id=connection_id, connection_name=self._name, mode=self.mode
        )

    async def change_device_state(self, frame: ChangeDeviceStateFrame) -> None:
        if frame.payload.mode is not None:
            await self.set_mode(frame.payload.mode, "the platform")
        if frame.payload.cwd is not None:
            await self._change_workdir(Path(frame.payload.cwd))
        await self.refresh()

    async def _change_workdir(self, path: Path) -> None:
        if not path.is_absolute() or not await asyncio.to_thread(path.is_dir):
            log.warning("ignored a working directory that is not an absolute folder: %s", path)
            return
        log.info("working directory %s → %s (from the platform)", self._collector.workdir, path)
        self._collector.workdir = path

    async def execute(self, frame: ExecuteCommandFrame) -> ExecuteCommandResponseFrame:
        return await self._commands.run(frame)

    def connected(self, connection_id: str) -> None:
        progress = self._progress
        self._set_state("online", f"connection {connection_id}")
        self._notifier.watchdog()
        progress.connects += 1
        progress.connection_id = connection_id
        progress.connected_at = progress.last_pong_at = now_ms()
        progress.last_error = None

    def heartbeat_answered(self) -> None:
        self._progress.last_pong_at = now_ms()
        self._notifier.watchdog()

    # --- what the local API shows -----------------------------------------------------------

    def listing_row(self) -> EnvironmentRow:
        return self._progress.own_row(
            self.state,
            name=self._name,
            mode=self.mode,
            metadata=self._metadata,
            started_at=self._started_at,
        )

    def health(self) -> Health:
        return self._progress.health()

    def status(self) -> DaemonStatus:
        progress, watchdog = self._progress, self._progress.watchdog
        node = self._collector.node
        reply = progress.reply
        return DaemonStatus(
            state=progress.state,
            platform_url=self.platform.url,
            embedded_platform=self.platform.embedded,
            device_id=self.state.device_id,
            connection_name=self._name,
            connection_id=progress.connection_id if progress.state == "online" else None,
            environment_id=reply.environment.id if reply and reply.environment else None,
            mode=self.mode,
            working_directory=str(self._collector.workdir),
            last_error=progress.last_error,
            heartbeat_period_s=progress.heartbeat_s,
            heartbeats=HeartbeatCounts(
                sent=watchdog.sent, answered=watchdog.answered, unanswered_now=watchdog.unanswered
            ),
            registrations=progress.registrations,
            connects=progress.connects,
            connected_at=progress.connected_at,
            last_pong_at=progress.last_pong_at,
            pid=os.getpid(),
            started_at=self._started_at,
            uptime_s=round(time.monotonic() - self._started_monotonic, 3),
            local_api=self._local_api.url if self._local_api else "",
            log_path=str(self.settings.log_file) if self.settings.log_file else None,
            node=NodeReport(version=node.version, path=node.path, found_via=node.found_via)
            if node
            else None,
        )

    # --- the run ----------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until stopped or refused; returns the exit code.

        Raises AlreadyRunning when another live daemon holds this identity, and UnusableFile
        when a file or folder it needs cannot be trusted or used.
        """
        try:
            async with contextlib.AsyncExitStack() as cleanup:
                await self._start(cleanup)
                code = await self._connect_loop()
                return exitcodes.RESTART if self._restart else code
        except Finished as finished:
            return finished.code
        finally:
            self._set_state("stopped")
            self._notifier.stopping()
            self._notifier.close()

    async def _start(self, cleanup: contextlib.AsyncExitStack) -> None:
        """Everything local, in order, each undone on the way out: never waits for the platform."""
        await asyncio.to_thread(private_dir, state_dir())
        self._state = await asyncio.to_thread(self._load_state)
        instance = self.settings.listener_instance_id
        lock = InstanceLock(
            LockHolder(
                pid=os.getpid(),
                platform=self.settings.base_url or EMBEDDED,
                device_id=self.state.device_id,
                instance_id=instance,
            )
        )
        await asyncio.to_thread(lock.acquire)
        cleanup.callback(lock.release)
        self.platform = await self._open_platform(cleanup)
        register_secret(self.platform.api_key)
        token = await asyncio.to_thread(
            load_or_create_token, instance_file("local-api-token", instance)
        )
        register_secret(token)
        self._local_api = LocalApi(
            self,
            host=self.settings.local_api_host,
            port=self.settings.local_api_port,
            socket=self.settings.local_api_socket,
            token=token,
        )
        url = await self._local_api.start()
        cleanup.push_async_callback(self._local_api.stop)
        address_file = instance_file("local-api", instance, ".json")
        address = LocalApiAddress(url=url)
        await asyncio.to_thread(
            save_private, address_file, address.model_dump_json().encode(), "the local API address"
        )
        cleanup.callback(address_file.unlink, missing_ok=True)
        await asyncio.to_thread(lock.set_local_api, url)
        self._install_signal_handlers()
        if self._parent_pid:
            cleanup.callback(ParentWatch(self._parent_pid, self._parent_exited).cancel)
        self._notifier.ready(f"started; local API at {url}")
        if self._on_ready is not None:
            self._on_ready(self)

    async def _open_platform(self, cleanup: contextlib.AsyncExitStack) -> Platform:
        settings = self.settings
        if settings.base_url is None:
            # Imported here: a daemon with a platform of its own never loads the platform's code.
            from agent.daemon.embedded import EmbeddedPlatformError, start_embedded

            try:
                server, platform = await start_embedded(self.settings.listener_instance_id)
            except EmbeddedPlatformError as exc:
                log.error("%s", exc)
                raise Finished(exitcodes.ERROR) from None
            cleanup.push_async_callback(server.stop)
            return platform
        if settings.api_key is None:
            log.error(
                "no API key for %s: set LETTA_API_KEY or api_key in the config file",
                settings.base_url,
            )
            raise Finished(exitcodes.CONFIG)
        return Platform(settings.base_url, settings.api_key.get_secret_value(), embedded=False)

    def _set_state(self, state: str, detail: str | None = None) -> None:
        self._progress.state = state
        self._notifier.status(f"{state}: {detail}" if detail else state)

    def _load_state(self) -> DaemonState:
        state = self._store.load()
        if self.settings.mode is not None and self.settings.mode != state.mode:
            state = self._store.update(mode=self.settings.mode)
        return state

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop_requested, signum)

    def _stop_requested(self, signum: int) -> None:
        self._begin_stop(signal.Signals(signum).name)

    def _parent_exited(self) -> None:
        self._begin_stop(f"the parent process {self._parent_pid} exited")

    def request_restart(self, why: str) -> None:
        """Stop the session cleanly, then exit with RESTART so that the new version starts.

        A stop already under way (SIGTERM) stays a stop."""
        if self.stopping.is_set():
            return
        self._restart = True
        self._begin_stop(why)

    def _begin_stop(self, why: str) -> None:
        log.info("%s: stopping", why)
        self._notifier.stopping()
        self.stopping.set()

    async def _connect_loop(self) -> int:
        async with httpx.AsyncClient() as client:
            reply = await self._register(client)
            progress = self._progress
            policy = ReconnectPolicy(stable_after_s=progress.heartbeat_s, rand=self._rand)
            while not self.stopping.is_set():
                self._set_state("connecting")
                session = Session(
                    self,
                    api_key=self.platform.api_key,
                    connection_id=reply.connection_id,
                    url=socket_url(reply.ws_url, self.state.device_id, self._name),
                    heartbeat_s=progress.heartbeat_s,
                    rand=self._rand,
                    stopping=self.stopping,
                    watchdog=progress.watchdog,
                )
                policy.stable_after_s = progress.heartbeat_s  # the platform may assign a new one
                end = await session.run()
                if end.connected_at is not None:
                    policy.connected(end.connected_at)
                if end.action is None:
                    return exitcodes.OK
                progress.last_error = end.reason
                if end.action is CloseAction.STOP_REPLACED:
                    self._set_state("replaced")
                    log.error(
                        "another process took this identity (device %s): stopping; "
                        "this daemon never fights for the slot",
                        self.state.device_id,
                    )
                    raise Finished(exitcodes.REPLACED)
                retry = policy.lost(time.monotonic())
                self._set_state("reconnecting", end.reason)
                log.warning("%s: retrying in %.1f s", end.reason, retry.delay_s)
                if await self._wait(retry.delay_s):
                    return exitcodes.OK
                if end.action is CloseAction.REREGISTER or retry.register_again:
                    reply = await self._register(client)
        return exitcodes.OK

    async def _register(self, client: httpx.AsyncClient) -> RegisterReply:
        """Register, retrying transient failures; raises Finished when refused or stopped."""
        self._set_state("registering")
        await self.refresh()
        request = RegisterRequest(
            device_id=self.state.device_id,
            listener_instance_id=self.settings.listener_instance_id,
            connection_name=self._name,
            metadata=self._metadata,
            current_mode=self.mode,
            source=self.source,
        )
        attempts = register(
            client,
            self.platform.url,
            self.platform.api_key,
            request,
            rand=self._rand,
            sleep=asyncio.sleep,
            on_retry=self._registration_failed,
        )
        try:
            reply = await self._unless_stopped(attempts)
        except RegistrationRefused as exc:
            self._set_state("refused", str(exc))
            self._progress.last_error = str(exc)
            log.error("%s", exc)
            raise Finished(exitcodes.CREDENTIALS) from None
        await self._registered(reply)
        return reply

    def _registration_failed(self, failure: TransientRegistrationError, delay: float) -> None:
        self._progress.last_error = str(failure)
        self._notifier.status(f"registering: {failure}")
        log.warning("registration failed: %s; retrying in %.1f s", failure, delay)

    async def _registered(self, reply: RegisterReply) -> None:
        """Take the platform's answer: its heartbeat period, and the connection to persist."""
        progress = self._progress
        progress.registrations += 1
        progress.reply = reply
        progress.heartbeat_s = heartbeat_period(
            self.settings.heartbeat_ms, reply.heartbeat_interval_ms
        )
        last = LastConnection(
            platform_url=self.platform.url,
            connection_id=reply.connection_id,
            ws_url=reply.ws_url,
            environment_id=reply.environment.id if reply.environment else None,
            at=now_ms(),
        )
        self._state = await asyncio.to_thread(self._store.update, last_connection=last)
        log.info("registered as %s (connection %s)", self._name, reply.connection_id)

    async def _unless_stopped(self, work: Coroutine[Any, Any, T]) -> T:
        """The result of `work`, or Finished(OK) as soon as a stop is asked for: `work` is
        then cancelled, wherever it is (a request in flight, a backoff sleep)."""
        task = asyncio.ensure_future(work)
        stop = asyncio.ensure_future(self.stopping.wait())
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

    async def _wait(self, delay_s: float) -> bool:
        """Sleep `delay_s`, or less if a stop comes; True when stopping."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay_s):
                await self.stopping.wait()
        return self.stopping.is_set()
