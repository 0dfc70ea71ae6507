"""The daemon's life: start everything local in order, keep the link to the platform until a
stop, then undo it all; and the answers the local API and the commands ask of it.

`Daemon.run` is the one code path for every way envagent runs (service, started by a coding
tool, foreground). It returns the process exit code; see `agent.support.exitcodes`. The parts
it holds each have one job: `Environment` (what the platform is told), `Link` (registration
and the socket), `Progress` (what is reported), `LocalApi` (the loopback listing).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import signal
import socket
from collections.abc import Callable

from agent import __version__
from agent.daemon.commands import Commands
from agent.daemon.config import Platform, Settings
from agent.daemon.environment import Environment
from agent.daemon.link import Link
from agent.daemon.lock import EMBEDDED, InstanceLock, LockHolder
from agent.daemon.metrics import daemon_families
from agent.daemon.notify import Notifier
from agent.daemon.parent import ParentWatch
from agent.daemon.progress import Progress
from agent.daemon.session.policy import Random
from agent.daemon.session.route import Route, UnusableProxy
from agent.daemon.state import StateStore, state_path
from agent.localapi.routes import LocalApi, load_or_create_token
from agent.machine.metadata import MetadataCollector
from agent.protocol.models import (
    DaemonStatus,
    EnvironmentRow,
    Health,
    LocalApiAddress,
    Metadata,
    Mode,
)
from agent.support import exitcodes
from agent.support.exitcodes import Finished
from agent.support.files import private_dir, save_private
from agent.support.logs import register_secret
from agent.support.metrics import Exposition, Rendered
from agent.support.paths import instance_file, state_dir
from agent.support.tls import CAFileError, client_trust

log = logging.getLogger("envagent")


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
        self._parent_pid = parent_pid
        self._on_ready = on_ready
        self._rand = rand
        self._environment: Environment | None = None
        self._commands = Commands(self)
        self._progress = Progress()
        self._metrics = Exposition(lambda: daemon_families(self._progress))
        self._local_api: LocalApi | None = None
        self._notifier = Notifier()
        self._restart = False
        self.stopping = asyncio.Event()

    @property
    def environment(self) -> Environment:
        assert self._environment is not None, "the daemon has not loaded its state"
        return self._environment

    # --- what the local API and the commands read and ask ------------------------------------

    @property
    def mode(self) -> Mode:
        return self.environment.mode

    @property
    def metadata(self) -> Metadata:
        return self.environment.metadata

    async def set_mode(self, mode: Mode, origin: str) -> None:
        await self.environment.set_mode(mode, origin)

    async def refresh(self) -> bool:
        return await self.environment.refresh()

    def listing_row(self) -> EnvironmentRow:
        environment = self.environment
        return self._progress.own_row(
            environment.state,
            name=environment.name,
            mode=environment.mode,
            metadata=environment.metadata,
            source=self.settings.source,
        )

    def health(self) -> Health:
        return self._progress.health()

    def status(self, *, measure_process: bool = True) -> DaemonStatus:
        return self._progress.status(
            self.environment,
            self.platform,
            local_api=self._local_api.url if self._local_api else "",
            log_file=self.settings.log_file,
            measure_process=measure_process,
        )

    def metrics(self) -> Rendered:
        return self._metrics.render()

    def request_restart(self, why: str) -> None:
        """Stop the session cleanly, then exit with RESTART so that the new version starts.

        A stop already under way (SIGTERM) stays a stop."""
        if self.stopping.is_set():
            return
        self._restart = True
        self._begin_stop(why)

    # --- the run ----------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until stopped or refused; returns the exit code.

        Raises AlreadyRunning when another live daemon holds this identity, and UnusableFile
        when a file or folder it needs cannot be trusted or used.
        """
        try:
            async with contextlib.AsyncExitStack() as cleanup:
                route = await self._start(cleanup)
                await Link(
                    settings=self.settings,
                    platform=self.platform,
                    route=route,
                    environment=self.environment,
                    commands=self._commands,
                    progress=self._progress,
                    notifier=self._notifier,
                    stopping=self.stopping,
                    rand=self._rand,
                    on_first_online=self._first_online,
                ).run()
                return exitcodes.RESTART if self._restart else exitcodes.OK
        except Finished as finished:
            return finished.code
        finally:
            self._notifier.status(self._progress.enter("stopped"))
            self._notifier.stopping()
            self._notifier.close()

    async def _start(self, cleanup: contextlib.AsyncExitStack) -> Route:
        """Everything local, in order, each undone on the way out: never waits for the platform.
        Returns how to reach it."""
        settings, instance = self.settings, self.settings.listener_instance_id
        self._install_signal_handlers()  # first: a SIGTERM during start is a clean stop too
        route = await self._open_route()
        await asyncio.to_thread(private_dir, state_dir())
        self._environment = environment = await Environment.load(
            StateStore(state_path(instance)),
            settings.mode,
            settings.name or socket.gethostname(),
            MetadataCollector(
                settings.workdir, settings.client_version or __version__, Commands.NAMES
            ),
        )
        # Node, git and the self-update answer are looked up in threads while the rest starts
        # (the lock, the platform, the local API), so that registration finds them ready.
        warm_up = asyncio.create_task(environment.collector.collect(), name="metadata warm-up")
        cleanup.push_async_callback(_settle, warm_up)
        lock = InstanceLock(
            LockHolder(
                pid=os.getpid(),
                platform=settings.base_url or EMBEDDED,
                device_id=environment.device_id,
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
            host=settings.local_api_host,
            port=settings.local_api_port,
            socket=settings.local_api_socket,
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
        if self._parent_pid:
            cleanup.callback(ParentWatch(self._parent_pid, self._parent_exited).cancel)
        self._notifier.ready(f"started; local API at {url}")
        if self._on_ready is not None:
            self._on_ready(self)
        return route

    async def _open_route(self) -> Route:
        """How to reach the platform, checked before anything starts: a CA file or a proxy that
        cannot be used ends the run with one line and CONFIG, as a bad setting does."""
        url = self.settings.base_url
        route = Route(
            functools.partial(client_trust, self.settings.ca_file),
            proxied=url is not None,  # the embedded platform: directly
        )
        try:
            if url is not None and url.startswith("https:"):
                await asyncio.to_thread(lambda: route.trust)  # a bad CA file stops the start
            if url is not None:
                route.proxy(url)
        except (CAFileError, UnusableProxy) as exc:
            log.error("%s", exc)
            raise Finished(exitcodes.CONFIG) from None
        return route

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

    def _first_online(self) -> None:
        """One line, once per process, when the platform first sees the daemon: where to look
        for it. Reconnects say nothing more: the line is in the log already."""
        local = self._local_api.url if self._local_api else ""
        log.info(
            "online as %s: platform GET %s/v1/environments/%s, local GET %s/v1/environments",
            self.environment.name,
            self.platform.url,
            self.environment.device_id,
            local,
        )

    def _install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop_requested, signum)

    def _stop_requested(self, signum: int) -> None:
        self._begin_stop(signal.Signals(signum).name)

    def _parent_exited(self) -> None:
        self._begin_stop(f"the parent process {self._parent_pid} exited")

    def _begin_stop(self, why: str) -> None:
        log.info("%s: stopping", why)
        self._notifier.stopping()
        self.stopping.set()


async def _settle(task: asyncio.Task[object]) -> None:
    """A start-up task that must not outlive the daemon: done, or cancelled and awaited."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
