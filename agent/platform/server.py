"""Start and stop the reference platform: the database lock, the store, the development key,
the HTTP site."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl
import sys
import time

from aiohttp import web

from agent.platform.app import EVENTS_KEY, RELAY_KEY, build_app
from agent.platform.dblock import DatabaseLock
from agent.platform.events import Events
from agent.platform.keys import ensure_dev_key
from agent.platform.relay import Relay
from agent.platform.settings import PlatformSettings
from agent.platform.store.base import (
    Listening,
    RowRef,
    Store,
    StoreUnavailable,
    is_postgres,
)
from agent.platform.store.opening import open_store
from agent.platform.web_errors import JsonErrorRunner
from agent.support.clock import now_ms

log = logging.getLogger("envagent.platform")

GC_PASS_S = 2.0
"""How often the collector's young objects are collected and the survivors frozen."""
GC_FULL_AFTER = 0.25
"""A full walk once this fraction of the open sockets has closed since the last one, or the
heap has grown by this fraction."""
GC_FULL_MIN_CLOSED = 256
"""Fewer closed sockets than this never call for a full walk (their cycles: a few MiB)."""


class TlsFilesError(Exception):
    """The certificate or key to serve TLS with cannot be used; the message is one line."""


def server_tls(settings: PlatformSettings) -> ssl.SSLContext | None:
    """The context to serve HTTPS and wss:// with, None for plain HTTP."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except ssl.SSLError as exc:
        problem = f"not a PEM certificate chain and its key ({exc.reason or exc})"
    except OSError as exc:
        problem = f"cannot read them: {exc.strerror or exc}"
    else:
        return context
    raise TlsFilesError(f"--tls-cert {settings.tls_cert}, --tls-key {settings.tls_key}: {problem}")


class PlatformServer:
    """One platform process. `start` returns once it accepts connections."""

    def __init__(self, settings: PlatformSettings) -> None:
        self.settings = settings
        # SQLite serves one process; PostgreSQL serves every pod that shares it.
        self._lock = None if is_postgres(settings.database) else DatabaseLock(settings.db)
        self._store: Store | None = None
        self._runner: web.AppRunner | None = None
        self._presence: asyncio.Task[None] | None = None
        self._pods: asyncio.Task[None] | None = None
        self._listening: Listening | None = None
        self._reachable_since: int | None = 0
        """When this pod's lease rounds began to succeed again after failing (0: none has
        failed). It fences other pods only once it has reached the database for a whole
        `pod_fence_after_s`, so that their silence is theirs and not the database's: after an
        outage every pod renews before any judges the others, and no daemon reconnects."""
        self.port = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.tls_cert else "http"
        return f"{scheme}://{self.settings.host}:{self.port}"

    @property
    def relay(self) -> Relay:
        if self._runner is None:
            raise RuntimeError("the platform is not running")
        return self._runner.app[RELAY_KEY]

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the platform is not running")
        return self._store

    async def start(self) -> None:
        """Lock the database (DatabaseInUse when another process serves it), then serve."""
        if self._lock is not None:
            self._lock.acquire()
        try:
            await self._serve()
        except BaseException:
            await self.stop()
            raise

    async def _serve(self) -> None:
        settings = self.settings
        tls = server_tls(settings)  # first: a bad file is said before the database is touched
        store = await open_store(settings.database)
        self._store = store
        released: list[RowRef] = []  # the rows of this pod's earlier life, told once it can
        store.on_change = released.extend
        lease = await store.join(settings.pod_id, now_ms())
        if self._lock is not None:  # the database's only process: no row has a socket now
            stale = await store.clear_connections()
            if stale:
                log.info("%d rows were connected when the platform last stopped: offline", stale)
        await ensure_dev_key(store, settings.dev_key_file)
        app = build_app(store, settings, lease)
        if released:  # left: other pods' streams show it
            app[EVENTS_KEY].changed(released)
        self._runner = JsonErrorRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._presence = asyncio.create_task(app[RELAY_KEY].presence.run())
        if self._lock is None:  # pods sharing the database: a lease, and messages between them
            relay, events = app[RELAY_KEY], app[EVENTS_KEY]
            self._listening = await store.listen(
                settings.pod_id, relay.wake, events.heard, events.heard_beats
            )
            relay.wake()  # what was left while this pod was away
            self._pods = asyncio.create_task(self._keep_lease(relay, events))
        # A deep accept queue: after a restart the whole fleet reconnects within a second or so,
        # and every connection the default 128 drops waits a second for its SYN to be resent.
        site = web.TCPSite(
            self._runner,
            self.settings.host,
            self.settings.port,
            backlog=1024,
            reuse_port=self.settings.reuse_port or None,
            ssl_context=tls,
        )
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("platform %s listening on %s", self.settings.pod_id, self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            # Every socket closed marks its row offline at once: no ping is left waiting.
            relay = self._runner.app[RELAY_KEY]
            await relay.close_all()
            await self._runner.cleanup()
            self._runner = None
            for task in (self._presence, self._pods):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            self._presence = self._pods = None
            await relay.quiesce()
        if self._listening is not None:
            await self._listening.stop()
            self._listening = None
        if self._store is not None:
            await self._store.close()
            self._store = None
        if self._lock is not None:
            self._lock.release()

    async def _keep_lease(self, relay: Relay, events: Events) -> None:
        """Every `pod_heartbeat_s`: renew this pod's lease (joining again, sockets closed, when
        it was fenced), then fence every pod silent for `pod_fence_after_s`, whose rows are
        then lost. A dead pod's rows are lost within fence_after + heartbeat seconds."""
        while True:
            await asyncio.sleep(self.settings.pod_heartbeat_s)
            try:
                await self._renew_round(relay, events)
            except StoreUnavailable:  # logged by the store; next round
                self._reachable_since = None
            except Exception:  # a bug must not end the pod's lease: said loudly, then on
                log.exception("pod %s: the lease round failed", self.settings.pod_id)

    async def _renew_round(self, relay: Relay, events: Events) -> None:
        """One round: the lease, the listening connection, the messages, the silent pods."""
        settings, store = self.settings, self.store
        now = now_ms()
        if not await store.renew(relay.presence.lease, now):
            log.warning("pod %s was fenced (silent too long): joining again", settings.pod_id)
            await relay.rejoin(await store.join(settings.pod_id, now))
        if self._reachable_since is None:
            self._reachable_since = now
        if self._listening is not None and not self._listening.alive():
            log.warning(
                "pod %s: its listening connection was dropped: listening again",
                settings.pod_id,
            )
            await self._listening.stop()
            self._listening = None
        if self._listening is None:  # dropped, and maybe refused since: tried every round
            with contextlib.suppress(StoreUnavailable):  # logged by the store; the round goes on
                self._listening = await store.listen(
                    settings.pod_id, relay.wake, events.heard, events.heard_beats
                )
                # Changes announced while no connection listened were not heard: the streams
                # end, and their pages read the listing again.
                await events.end_all()
        await relay.drain()  # a signal lost with a listening connection is not a loss
        fence_after_ms = int(settings.pod_fence_after_s * 1000)
        if now - self._reachable_since < fence_after_ms:
            return  # back from an outage: the others' silence may be the database's
        for pod_id in await store.fence_silent(now - fence_after_ms, now):
            log.warning("pod %s fell silent: fenced, its connections marked lost", pod_id)


class Collector:
    """Runs the cyclic garbage collector so that thousands of open sockets cost no long pause.

    CPython 3.11 walks every tracked object in a full collection, and starts one once the
    objects promoted to its oldest generation since the last reach a quarter of it. An open
    socket holds about 80 tracked objects (aiohttp's request, protocol, transport, tasks,
    coroutines...), and each of its pings leaves a dozen more that live until the next ping
    (the reader's future, the receive coroutines, the heartbeat timer), long enough to be
    promoted. At 10,000 sockets that meant a full collection every two minutes or so, which
    stopped the event loop for 0.7 s to walk 800,000 objects and free none of them.

    So the long-lived objects are walked only when there is something to free: every
    `GC_PASS_S` a step collects what is not frozen (what was created since the last step, a
    few thousand objects) and freezes the survivors (`gc.freeze`), which no collection walks
    again. Frozen objects are still freed by reference counting; only cycles among them wait
    for a full walk (`gc.unfreeze`, then collect). Such cycles come from closed connections:
    about 35 objects of aiohttp's each (measured), against a fraction of one per HTTP request,
    and a daemon's keep-alive HTTP connection closes with its socket. So a full walk is done
    once the sockets closed since the last one reach a quarter of those open, as CPython's
    own rule bounds garbage to a quarter of the oldest generation. Cycles from anything else
    (an API client's keep-alive connection that was frozen while open) are bounded by a second
    rule: a full walk once pymalloc's blocks have grown by a quarter since the last one. A
    steady fleet calls for neither; a growing one costs a walk per quarter of growth.

    Process-wide: installed by `serve_forever`, never in a process that embeds the platform.
    """

    def __init__(self, relay: Relay) -> None:
        self._relay = relay
        self._closed = 0
        """`Relay.sockets_closed` at the last full walk."""
        self._blocks = 0
        """`sys.getallocatedblocks()` after the last full walk."""

    def walk_all(self) -> None:
        """A full collection, frozen objects included; then freeze what is left."""
        started = time.monotonic()
        self._closed = self._relay.sockets_closed
        gc.unfreeze()
        freed = gc.collect()
        gc.freeze()
        self._blocks = sys.getallocatedblocks()
        log.debug(  # routine: the start-up walk, then one per quarter of growth or of closes
            "full garbage collection: %d objects freed in %.0f ms",
            freed,
            (time.monotonic() - started) * 1000,
        )

    def step(self) -> None:
        """Collect what is not frozen and freeze the rest, or walk all when that is due."""
        closed = self._relay.sockets_closed - self._closed
        grown = sys.getallocatedblocks() > self._blocks * (1 + GC_FULL_AFTER)
        if grown or closed >= max(GC_FULL_MIN_CLOSED, self._relay.sockets_open * GC_FULL_AFTER):
            self.walk_all()
        else:
            gc.collect()  # walks only what is not frozen
            gc.freeze()

    async def run(self) -> None:
        """Walk all once (the start-up heap), then step every `GC_PASS_S` until cancelled."""
        try:
            self.walk_all()
            while True:
                await asyncio.sleep(GC_PASS_S)
                self.step()
        finally:
            gc.unfreeze()  # the collector walks everything again, as in any other process


async def serve_forever(settings: PlatformSettings) -> None:
    """Run until SIGTERM or SIGINT, then close every socket with 1001 and stop."""
    server = PlatformServer(settings)
    await server.start()
    collecting = asyncio.create_task(Collector(server.relay).run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):  # before saying so: a SIGTERM may come next
        loop.add_signal_handler(signum, stop.set)
    print(f"envagent platform listening on {server.url}", flush=True)
    if settings.dev_key_file.exists():
        print(
            f'try: curl -H "Authorization: Bearer $(cat {settings.dev_key_file})" '
            f"{server.url}/v1/environments",
            flush=True,
        )
    try:
        await stop.wait()
    finally:
        collecting.cancel()
        await server.stop()
