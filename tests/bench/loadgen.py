"""The load generator: thousands of simulated daemons in one asyncio process.

Each simulated daemon speaks the real protocol with the daemon's own pieces: it registers
through `agent.daemon.session.register.register` (httpx, tenacity retries), opens the socket with
`websockets` and the options `agent.daemon.session.connection` uses (no library pings, no
compression), sends `update_device_status`, then a `ping` every period with ±10 % jitter,
answers `sync` as the daemon does, counts unanswered pings with `Watchdog`, and after losing the
socket waits as `ReconnectPolicy` says before trying again. Only the parts that touch the
machine (git, node) are left out: the platform cannot tell them apart.

`websockets` rather than aiohttp's client: measured here with 1,000 sockets, both cost about
12 KiB and 0.4 ms of CPU per connection and 50 µs per ping, so the daemon's own library wins.

The process is driven over stdin/stdout, one JSON object a line (see `loadgen_client`):
`grow`, `measure`, `record` and `until_back`; it exits at `quit` or when stdin closes (its
parent is gone).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from agent import __version__
from agent.daemon.commands import Commands
from agent.daemon.session.connection import HARD_MAX_FRAME_BYTES, OPEN_TIMEOUT_S, socket_url
from agent.daemon.session.policy import (
    CloseAction,
    ReconnectPolicy,
    Tick,
    Watchdog,
    close_action,
    heartbeat_delay,
)
from agent.daemon.session.register import TransientRegistrationError, register
from agent.protocol.models import (
    DeviceStatus,
    FrameError,
    GitContext,
    Metadata,
    PingFrame,
    PongFrame,
    RegisterReply,
    RegisterRequest,
    SelfUpdate,
    SyncFrame,
    SyncResponseFrame,
    UpdateDeviceStatusFrame,
    parse_platform_frame,
)
from agent.support.clock import now_ms
from tests.bench.procs import raise_open_files_limit
from tests.bench.stats import percentile

log = logging.getLogger("loadgen")

CONNECT_CONCURRENCY = 100
"""Simulated daemons registering and connecting at once while a fleet grows."""
REGISTER_CONNECTIONS = 8
"""httpx connections shared by the registrations: httpcore's pool checks every connection for
every queued request, which at 100 connections cost the generator 10 ms a registration."""
LAG_PROBE_S = 0.01


def sim_metadata(index: int) -> Metadata:
    """What a real daemon registers, so that rows and listings have their real size."""
    return Metadata(
        os="linux",
        node_version="v22.19.0",
        letta_code_version=__version__,
        git_branch="main",
        working_directory=f"/home/bench/projects/project-{index}",
        self_update=SelfUpdate(
            supported=True,
            writable=True,
            install_path="/home/bench/.local/share/pipx/venvs/envagent",
            manual_command="pipx upgrade envagent",
        ),
        supported_commands=list(Commands.NAMES),
    )


@dataclass(frozen=True)
class Attempt:
    """One try at opening the socket during a storm."""

    at: float
    reached: bool
    """Something accepted the TCP connection (else the kernel refused it: nothing listened)."""
    opened: bool
    seconds: float
    """From the start of the attempt to its end: the TCP handshake (a SYN dropped by a full
    accept queue is sent again 1 s later), then the wait for the platform to get to the upgrade
    behind everyone who knocked at the same time."""

    def to_json(self) -> dict[str, Any]:
        return {
            "at": round(self.at, 4),
            "reached": self.reached,
            "opened": self.opened,
            "seconds": round(self.seconds, 4),
        }


class SimDaemon:
    """One simulated daemon: its identity, its watchdog and the ping it awaits a pong for."""

    def __init__(self, fleet: Fleet, index: int) -> None:
        self.fleet = fleet
        self.index = index
        self.device_id = f"{fleet.tag}-{index}"
        self.name = f"sim-{index}"
        self.watchdog = Watchdog()
        self.ping_sent: float | None = None
        self.ever_connected = False

    async def run(self) -> None:
        """The daemon's connect loop (agent.daemon.core.Daemon._connect_loop), minus the machine."""
        async with self.fleet.gate:  # only the first registration and open are paced
            reply = await self._register()
            opened = await self._open(reply)
        policy = ReconnectPolicy(stable_after_s=self.fleet.period_s, rand=random.random)
        while True:
            action, connected_at = await self._session(opened, reply.connection_id)
            if action is CloseAction.STOP_REPLACED:
                return
            if connected_at is not None:
                policy.connected(connected_at)
            retry = policy.lost(time.monotonic())
            self.fleet.scheduled(time.monotonic() + retry.delay_s)
            await asyncio.sleep(retry.delay_s)
            if action is CloseAction.REREGISTER or retry.register_again:
                reply = await self._register()
            opened = await self._open(reply)

    async def _register(self) -> RegisterReply:
        self.fleet.registering()
        request = RegisterRequest(
            device_id=self.device_id,
            connection_name=self.name,
            metadata=sim_metadata(self.index),
            current_mode="default",
            source="local",
        )

        def retrying(failure: TransientRegistrationError, delay: float) -> None:
            log.warning(
                "%s: registration failed: %s; retrying in %.1f s", self.name, failure, delay
            )

        fleet = self.fleet
        return await register(
            fleet.http,
            fleet.url,
            fleet.key,
            request,
            rand=random.random,
            sleep=asyncio.sleep,
            on_retry=retrying,
        )

    async def _open(self, reply: RegisterReply) -> websockets.ClientConnection | CloseAction:
        """The socket, or what its refusal means; every attempt is recorded for the storm."""
        url = socket_url(reply.ws_url, self.device_id, self.name)
        attempted = time.monotonic()
        try:
            ws = await websockets.connect(
                url,
                additional_headers={"Authorization": f"Bearer {self.fleet.key}"},
                user_agent_header=f"envagent/{__version__}",
                open_timeout=OPEN_TIMEOUT_S,
                ping_interval=None,
                compression=None,
                max_size=HARD_MAX_FRAME_BYTES,
            )
        except InvalidStatus as exc:
            self.fleet.attempt(attempted, reached=True, opened=False)
            refused = exc.response.status_code in (401, 403, 404)
            return CloseAction.REREGISTER if refused else CloseAction.RECONNECT
        except ConnectionRefusedError:  # nothing listens: the platform never saw it
            self.fleet.attempt(attempted, reached=False, opened=False)
            return CloseAction.RECONNECT
        except (OSError, TimeoutError, InvalidHandshake):
            self.fleet.attempt(attempted, reached=True, opened=False)
            return CloseAction.RECONNECT
        self.fleet.attempt(attempted, reached=True, opened=True)
        return ws

    async def _session(
        self, opened: websockets.ClientConnection | CloseAction, connection_id: str
    ) -> tuple[CloseAction, float | None]:
        """An open socket from its start to its end: (what its end means, when it opened)."""
        if isinstance(opened, CloseAction):
            return opened, None
        ws = opened
        connected_at = time.monotonic()
        self.watchdog.new_connection()
        self.fleet.connected(self)
        try:
            await self._serve(ws, connection_id)
        finally:
            ws.transport.abort()
            self.fleet.disconnected()
        return close_action(ws.close_code, ws.close_reason), connected_at

    async def _serve(self, ws: websockets.ClientConnection, connection_id: str) -> None:
        status = UpdateDeviceStatusFrame(
            device_status=DeviceStatus(
                current_connection_id=connection_id,
                connection_name=self.name,
                is_online=True,
                current_permission_mode="default",
                current_working_directory=f"/home/bench/projects/project-{self.index}",
                git_context=GitContext(branch="main"),
                letta_code_version=__version__,
                supported_commands=list(Commands.NAMES),
            )
        ).to_json()
        heartbeat = asyncio.create_task(self._heartbeat(ws))
        try:
            await ws.send(status)
            async for message in ws:
                try:
                    frame = parse_platform_frame(message)
                except FrameError:
                    continue
                if isinstance(frame, PongFrame):
                    self._pong()
                elif isinstance(frame, SyncFrame):  # as the daemon answers: status, then reply
                    await ws.send(status)
                    await ws.send(SyncResponseFrame(request_id=frame.request_id).to_json())
        except ConnectionClosed:
            pass
        finally:
            heartbeat.cancel()

    def _pong(self) -> None:
        self.watchdog.pong()
        if self.ping_sent is not None:
            self.fleet.latency(time.monotonic() - self.ping_sent)
            self.ping_sent = None

    async def _heartbeat(self, ws: websockets.ClientConnection) -> None:
        period = self.fleet.period_s
        # A fleet started at once would ping in step; real daemons start at any time, so the
        # first ping of a first connection comes at a random phase. After a reconnect it comes
        # one period later, as the daemon's does.
        if self.ever_connected:
            await asyncio.sleep(heartbeat_delay(period, random.random))
        else:
            self.ever_connected = True
            await asyncio.sleep(random.random() * period)
        while True:
            tick = self.watchdog.tick()
            if tick is Tick.DEAD:
                ws.transport.abort()
                return
            if tick is Tick.PING:
                self.ping_sent = time.monotonic()
                await ws.send(PingFrame(current_mode="default", sent_at=now_ms()).to_json())
            await asyncio.sleep(heartbeat_delay(period, random.random))


class Fleet:
    """The simulated daemons and what is recorded about them."""

    def __init__(self, url: str, key: str, period_s: float, tag: str) -> None:
        self.url = url
        self.key = key
        self.period_s = period_s
        self.tag = tag
        limits = httpx.Limits(
            max_connections=REGISTER_CONNECTIONS, max_keepalive_connections=REGISTER_CONNECTIONS
        )
        self.http = httpx.AsyncClient(limits=limits)
        self.gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        self.sims: list[SimDaemon] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.online = 0
        self.changed = asyncio.Event()
        self.latencies: list[float] | None = None
        self.attempts: list[Attempt] | None = None
        self.due: list[float] = []
        self.storm_started: float | None = None
        self.storm_cpu = 0.0
        self.back: set[int] = set()
        self.last_back = 0.0
        self.registrations = 0
        """Since `record`: how many registrations the daemons made (a reconnect with the
        connection id they hold needs none)."""

    def registering(self) -> None:
        self.registrations += 1

    def attempt(self, at: float, *, reached: bool, opened: bool) -> None:
        """An attempt that began `at` has just ended: opened, failed, or never reached."""
        if self.attempts is not None:
            self.attempts.append(Attempt(at, reached, opened, time.monotonic() - at))

    def scheduled(self, due: float) -> None:
        """When a daemon's backoff says it will try again: the time a real daemon, with a
        machine of its own, would knock, whether or not this one process keeps up."""
        if self.attempts is not None:
            self.due.append(due)

    def connected(self, sim: SimDaemon) -> None:
        self.online += 1
        if self.storm_started is not None and sim.index not in self.back:
            self.back.add(sim.index)
            self.last_back = time.monotonic()
        self.changed.set()

    def disconnected(self) -> None:
        self.online -= 1
        self.changed.set()

    def latency(self, seconds: float) -> None:
        if self.latencies is not None:
            self.latencies.append(seconds)

    async def until(self, condition: Callable[[], bool], within_s: float) -> bool:
        """Wait until `condition()` holds, re-checked at every change; False on timeout."""
        try:
            async with asyncio.timeout(within_s):
                while not condition():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            return False
        return True

    async def grow(self, size: int, within_s: float) -> dict[str, Any]:
        """Start simulated daemons up to `size` and wait until all are online."""
        started = time.monotonic()
        for index in range(len(self.sims), size):
            sim = SimDaemon(self, index)
            self.sims.append(sim)
            self.tasks.append(asyncio.create_task(sim.run()))
        done = await self.until(lambda: self.online >= size, within_s)
        seconds = time.monotonic() - started
        # The fleet is long-lived: keep this process's collector from walking it again, or its
        # full collections (0.9 s at 10,000) delay the pongs in flight and show as the
        # platform's. Cycles left by daemons that go away wait for the process to end.
        gc.collect()
        gc.freeze()
        return {"online": self.online, "complete": done, "seconds": seconds}

    async def measure(self, window_s: float, samples: bool = False) -> dict[str, Any]:
        """Pong latencies over a window, with this process's own CPU and event-loop lag, which
        say whether the generator rather than the platform set the figure; with `samples`,
        every latency too (ms), for percentiles over several generators."""
        self.latencies = []
        lags: list[float] = []
        collections: list[float] = []
        probe = asyncio.create_task(_lag_probe(lags))
        gc.callbacks.append(timed := _collection_timer(collections))
        cpu_before, started = time.process_time(), time.monotonic()
        await asyncio.sleep(window_s)
        elapsed = time.monotonic() - started
        cpu = (time.process_time() - cpu_before) / elapsed * 100
        gc.callbacks.remove(timed)
        probe.cancel()
        latencies, self.latencies = self.latencies, None
        return {
            "samples": len(latencies),
            "p50_ms": percentile(latencies, 0.50) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000,
            "max_ms": max(latencies, default=float("nan")) * 1000,
            "online": self.online,
            "loadgen_cpu_pct": cpu,
            "loadgen_lag_p99_ms": percentile(lags, 0.99) * 1000,
            "loadgen_gc_longest_ms": max(collections, default=0.0) * 1000,
            **({"latencies_ms": [round(x * 1000, 3) for x in latencies]} if samples else {}),
        }

    def record(self) -> dict[str, Any]:
        """From now on, log every connection attempt and which daemons have come back."""
        self.attempts, self.due, self.back = [], [], set()
        self.registrations = 0
        self.storm_started = time.monotonic()
        self.storm_cpu = time.process_time()
        return {"started": self.storm_started}

    async def until_back(self, within_s: float, expect: int | None = None) -> dict[str, Any]:
        """Wait until every daemon (or `expect` of them: those a dead pod held) has connected
        again since `record`; return the log."""
        size = len(self.sims) if expect is None else expect
        done = await self.until(lambda: len(self.back) >= size, within_s)
        attempts, due = self.attempts or [], self.due
        elapsed = time.monotonic() - (self.storm_started or 0.0)
        cpu = (time.process_time() - self.storm_cpu) / elapsed * 100
        self.attempts, self.due, self.storm_started = None, [], None
        return {
            "complete": done,
            "back": len(self.back),
            "last_back": self.last_back,
            "registrations": self.registrations,
            "loadgen_cpu_pct": cpu,
            "attempts": [attempt.to_json() for attempt in attempts],
            "due": [round(at, 4) for at in due],
        }

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.http.aclose()


async def _lag_probe(lags: list[float]) -> None:
    """How late a 10 ms sleep wakes: the generator's own scheduling delay."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(LAG_PROBE_S)
        lags.append(loop.time() - before - LAG_PROBE_S)


def _collection_timer(durations: list[float]) -> Callable[[str, dict[str, Any]], None]:
    """A `gc.callbacks` entry appending how long each collection took: a long one here delays
    the pongs already on their way, which the lag probe, sampling every 10 ms, barely shows."""
    started = 0.0

    def timed(phase: str, _info: dict[str, Any]) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
        else:
            durations.append(time.perf_counter() - started)

    return timed


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def serve(url: str, key: str, period_s: float, tag: str) -> None:
    """Answer commands from stdin until `quit` or end of input."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    fleet = Fleet(url, key, period_s, tag)
    _reply({"op": "ready"})
    try:
        while line := await reader.readline():
            command = json.loads(line)
            op = command["op"]
            if op == "grow":
                _reply({"op": op, **await fleet.grow(command["size"], command["within_s"])})
            elif op == "measure":
                measured = await fleet.measure(command["window_s"], command.get("samples", False))
                _reply({"op": op, **measured})
            elif op == "record":
                _reply({"op": op, **fleet.record()})
            elif op == "until_back":
                back = await fleet.until_back(command["within_s"], command.get("expect"))
                _reply({"op": op, **back})
            elif op == "quit":
                break
    finally:
        await fleet.close()


def main() -> None:
    """`python -m tests.bench.loadgen URL PERIOD_S TAG`, the key in LETTA_API_KEY (never on
    the command line, where every user could read it)."""
    url, period_s, tag = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    key = os.environ["LETTA_API_KEY"]
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    raise_open_files_limit()
    asyncio.run(serve(url, key, period_s, tag))


if __name__ == "__main__":
    main()
