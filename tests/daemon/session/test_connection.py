"""One socket session against a scripted platform (a real `websockets` server on 127.0.0.1): what
is sent first, what each platform frame gets, which frames are skipped, and how each end is
reported."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve

from agent.daemon.commands import Commands
from agent.daemon.environment import Environment
from agent.daemon.session.connection import MAX_FRAME_CHARS, Session, SessionEnd, socket_url
from agent.daemon.session.policy import CloseAction, Watchdog
from agent.daemon.session.route import Route
from agent.daemon.state import StateStore
from agent.machine.metadata import MetadataCollector
from agent.machine.node import NodeInfo
from agent.protocol.constants import REPLACED_REASON
from agent.protocol.models import ExecuteCommandFrame, ExecuteCommandResponseFrame
from agent.support.tls import client_trust
from tests.helpers import WAIT_S, free_port


class ScriptedPlatform:
    """Accepts one socket at a time; the test reads what the daemon sent and sends frames."""

    def __init__(self) -> None:
        self.server: Server | None = None
        self.sockets: asyncio.Queue[ServerConnection] = asyncio.Queue()
        self.headers: list[dict[str, str]] = []

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/v1/listen?connectionId=conn-1"

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        self.headers.append(dict(ws.request.headers))
        await self.sockets.put(ws)
        await ws.wait_closed()

    async def socket(self) -> ServerConnection:
        return await asyncio.wait_for(self.sockets.get(), WAIT_S)


async def receive(ws: ServerConnection) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
    return frame


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedPlatform]:
    platform = ScriptedPlatform()
    async with serve(platform._handler, "127.0.0.1", 0) as server:
        platform.server = server
        yield platform


class Owner:
    """Records what the session tells its owner, and answers commands at once."""

    def __init__(self) -> None:
        self.connected_ids: list[str] = []
        self.pongs = 0

    def connected(self, connection_id: str) -> None:
        self.connected_ids.append(connection_id)

    def heartbeat_answered(self) -> None:
        self.pongs += 1

    async def execute(self, frame: ExecuteCommandFrame) -> ExecuteCommandResponseFrame:
        return ExecuteCommandResponseFrame(
            request_id=frame.request_id, success=True, output=f"ran {frame.command_id}"
        )


def _environment(tmp_path: Path) -> Environment:
    collector = MetadataCollector(
        tmp_path, "1.0.0", Commands.NAMES, node_finder=lambda: NodeInfo(None, None, "none")
    )
    store = StateStore(tmp_path / "state.json")
    return Environment(store, store.load(), "box", collector)


def _session(
    url: str, environment: Environment, owner: Owner, stopping: asyncio.Event, heartbeat_s: float
) -> Session:
    return Session(
        environment,
        owner,
        api_key="envk_secret",
        connection_id="conn-1",
        url=socket_url(url, environment.device_id, environment.name),
        route=Route(client_trust),
        heartbeat_s=heartbeat_s,
        rand=lambda: 0.5,
        stopping=stopping,
        watchdog=Watchdog(),
    )


@dataclass
class Running:
    """A session under way, the platform's side of its socket, and what it reports to."""

    run: asyncio.Task[SessionEnd]
    ws: ServerConnection
    owner: Owner
    stopping: asyncio.Event
    environment: Environment

    async def stop(self) -> SessionEnd:
        self.stopping.set()
        return await asyncio.wait_for(self.run, WAIT_S)


async def _start(scripted: ScriptedPlatform, tmp_path: Path, heartbeat_s: float = 30.0) -> Running:
    environment, owner, stopping = _environment(tmp_path), Owner(), asyncio.Event()
    await environment.refresh()
    run = asyncio.create_task(
        _session(scripted.url, environment, owner, stopping, heartbeat_s).run()
    )
    return Running(run, await scripted.socket(), owner, stopping, environment)


def test_socket_url_sets_device_and_name_and_replaces_any_given() -> None:
    url = socket_url("ws://p/v1/listen?connectionId=c&deviceId=evil&x=1", "dev 1", "my box")
    assert url == "ws://p/v1/listen?connectionId=c&x=1&deviceId=dev+1&connectionName=my+box"


async def test_the_first_frame_is_the_device_status_and_the_key_is_sent_as_bearer(
    scripted: ScriptedPlatform, tmp_path: Path
) -> None:
    session = await _start(scripted, tmp_path)
    ws = session.ws
    first = await receive(ws)
    assert first["type"] == "update_device_status"
    status = first["device_status"]
    assert (status["current_connection_id"], status["connection_name"]) == ("conn-1", "box")
    assert scripted.headers[0]["authorization"] == "Bearer envk_secret"
    assert session.owner.connected_ids == ["conn-1"]
    session.stopping.set()
    assert (await receive(ws))["type"] == "disconnect"
    end = await session.stop()
    assert (end.action, end.reason) == (None, "stopped")
    assert end.connected_at is not None
    assert (ws.close_code, ws.close_reason) == (1000, "daemon stopping")


async def test_platform_frames_are_answered_and_bad_ones_skipped_without_ending_the_session(
    scripted: ScriptedPlatform, tmp_path: Path
) -> None:
    session = await _start(scripted, tmp_path)
    ws = session.ws
    await receive(ws)
    await ws.send(b"\x00binary")
    await ws.send("x" * (MAX_FRAME_CHARS + 1))
    await ws.send("[" * 3000 + "]" * 3000)
    await ws.send('{"type": "no_such_frame"}')
    await ws.send(json.dumps({"type": "pong"}))
    await ws.send(json.dumps({"type": "sync", "request_id": "s-1"}))
    assert (await receive(ws))["type"] == "update_device_status"
    assert await receive(ws) == {"type": "sync_response", "request_id": "s-1", "success": True}
    await ws.send(
        json.dumps({"type": "execute_command", "command_id": "get_status", "request_id": "e-1"})
    )
    answer = await receive(ws)
    assert (answer["request_id"], answer["output"]) == ("e-1", "ran get_status")
    assert session.owner.pongs == 1
    await ws.send(json.dumps({"type": "change_device_state", "payload": {"mode": "acceptEdits"}}))
    status = (await receive(ws))["device_status"]
    assert status["current_permission_mode"] == "acceptEdits" == session.environment.mode
    assert not session.run.done()
    await session.stop()


async def test_a_local_change_is_reported_without_waiting_for_a_heartbeat(
    scripted: ScriptedPlatform, tmp_path: Path
) -> None:
    session = await _start(scripted, tmp_path)
    ws = session.ws
    await receive(ws)
    await session.environment.set_mode("bypassPermissions", "a test")
    status = (await receive(ws))["device_status"]
    assert status["current_permission_mode"] == "bypassPermissions"
    await session.stop()


async def test_a_silent_platform_is_given_up_after_three_unanswered_pings(
    scripted: ScriptedPlatform, tmp_path: Path
) -> None:
    session = await _start(scripted, tmp_path, heartbeat_s=0.05)
    ws = session.ws
    pings = []
    while len(pings) < 3:
        frame = await receive(ws)
        if frame["type"] == "ping":
            pings.append(frame)
    assert all(ping["current_mode"] == "default" for ping in pings)
    end = await asyncio.wait_for(session.run, WAIT_S)
    assert (end.action, end.reason) == (CloseAction.RECONNECT, "the platform stopped answering")


@pytest.mark.parametrize(
    ("code", "reason", "action"),
    [
        (1008, "connection superseded", CloseAction.REREGISTER),
        (1000, REPLACED_REASON, CloseAction.STOP_REPLACED),
        (1000, "bye", CloseAction.RECONNECT),
        (1011, "internal error", CloseAction.RECONNECT),
    ],
)
async def test_a_close_from_the_platform_says_what_to_do_next(
    scripted: ScriptedPlatform, tmp_path: Path, code: int, reason: str, action: CloseAction
) -> None:
    session = await _start(scripted, tmp_path)
    ws = session.ws
    await receive(ws)
    await ws.close(code, reason)
    end = await asyncio.wait_for(session.run, WAIT_S)
    assert end.action is action
    assert end.reason == f"the platform closed the socket ({code} {reason})"


async def test_a_socket_that_cannot_open_is_reported_without_a_connection(
    tmp_path: Path,
) -> None:
    owner = Owner()
    url = f"ws://127.0.0.1:{free_port()}/v1/listen?connectionId=conn-1"
    end = await _session(url, _environment(tmp_path), owner, asyncio.Event(), 30.0).run()
    assert end.action is CloseAction.RECONNECT
    assert end.reason.startswith("cannot open the socket")
    assert (end.connected_at, owner.connected_ids) == (None, [])


@pytest.mark.parametrize(
    ("status", "action"),
    [(401, CloseAction.REREGISTER), (404, CloseAction.REREGISTER), (503, CloseAction.RECONNECT)],
)
async def test_a_refused_upgrade_registers_again_only_for_an_identity_problem(
    tmp_path: Path, status: int, action: CloseAction
) -> None:
    async def refuse(connection: ServerConnection, request: Any) -> Any:
        return connection.respond(status, "no\n")

    async with serve(lambda ws: ws.wait_closed(), "127.0.0.1", 0, process_request=refuse) as srv:
        port = srv.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}/v1/listen?connectionId=conn-1"
        end = await _session(url, _environment(tmp_path), Owner(), asyncio.Event(), 30.0).run()
    assert end.action is action
    assert end.reason == f"the socket was refused with HTTP {status}"
