"""Start and stop the reference platform: the store, the development key, the HTTP site."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from agent.platform.app import RELAY_KEY, build_app
from agent.platform.keys import ensure_dev_key
from agent.platform.settings import PlatformSettings
from agent.platform.store import Store

log = logging.getLogger("envagent.platform")


class PlatformServer:
    """One platform process. `start` returns once it accepts connections."""

    def __init__(self, settings: PlatformSettings) -> None:
        self.settings = settings
        self._store: Store | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("the platform is not running")
        return self._store

    async def start(self) -> None:
        store = Store(self.settings.db)
        self._store = store
        stale = store.clear_connections()
        if stale:
            log.info("%d rows were connected when the platform last stopped: now offline", stale)
        ensure_dev_key(store, self.settings.dev_key_file)
        app = build_app(store, self.settings)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        # A deep accept queue: after a restart the whole fleet reconnects within a second or so,
        # and every connection the default 128 drops waits a second for its SYN to be resent.
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port, backlog=1024)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("platform %s listening on %s", self.settings.pod_id, self.url)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.app[RELAY_KEY].close_all()
            await self._runner.cleanup()
            self._runner = None
        if self._store is not None:
            self._store.close()
            self._store = None


async def serve_forever(settings: PlatformSettings) -> None:
    """Run until SIGTERM or SIGINT, then close every socket with 1001 and stop."""
    server = PlatformServer(settings)
    await server.start()
    print(f"envagent platform listening on {server.url}", flush=True)
    if settings.dev_key_file.exists():
        print(
            f'try: curl -H "Authorization: Bearer $(cat {settings.dev_key_file})" '
            f"{server.url}/v1/environments",
            flush=True,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()
