"""The link to the platform, in the test's event loop against a real platform: registration, the
socket kept up by tenacity with the policy's delays, and how each kind of end finishes it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from agent.daemon.commands import Commands
from agent.daemon.config import Platform as PlatformAddress
from agent.daemon.config import Settings
from agent.daemon.environment import Environment
from agent.daemon.link import Link
from agent.daemon.notify import Notifier
from agent.daemon.progress import Progress
from agent.daemon.session.policy import backoff_delay
from agent.daemon.session.route import Route
from agent.daemon.state import StateStore
from agent.machine.metadata import MetadataCollector
from agent.machine.node import NodeInfo
from agent.protocol.models import DaemonStatus, Metadata
from agent.support import exitcodes
from agent.support.exitcodes import Finished
from agent.support.tls import client_trust
from tests.conftest import StartPlatform
from tests.helpers import WAIT_S, Platform, free_port, open_socket, wait_for


def no_randomness() -> float:
    return 0.0


@dataclass
class Linked:
    """A link under test, with the parts it reports through."""

    link: Link
    environment: Environment
    progress: Progress
    stopping: asyncio.Event

    async def state(self, wanted: Callable[[Progress], bool]) -> Progress:
        return await wait_for(lambda: _now(self.progress), wanted)


async def _now(progress: Progress) -> Progress:
    return progress


class CommandsNotUnderTest:
    """The commands' host: these tests never send a command."""

    settings = Settings()
    metadata = Metadata()

    async def refresh(self) -> bool:
        raise AssertionError("no command runs in these tests")

    def status(self) -> DaemonStatus:
        raise AssertionError("no command runs in these tests")

    def request_restart(self, why: str) -> None:
        raise AssertionError("no command runs in these tests")


@pytest.fixture
async def make_link(tmp_path: Path) -> AsyncIterator[Callable[[str, str], Linked]]:
    runs: list[asyncio.Event] = []

    def make(url: str, key: str) -> Linked:
        settings = Settings(base_url=url, api_key=SecretStr(key), workdir=tmp_path)
        collector = MetadataCollector(
            tmp_path, "1.0.0", Commands.NAMES, node_finder=lambda: NodeInfo(None, None, "none")
        )
        store = StateStore(tmp_path / "state.json")
        environment = Environment(store, store.load(), "box", collector)
        progress, stopping = Progress(), asyncio.Event()
        runs.append(stopping)
        link = Link(
            settings=settings,
            platform=PlatformAddress(url, key, embedded=False),
            route=Route(client_trust),
            environment=environment,
            commands=Commands(CommandsNotUnderTest()),
            progress=progress,
            notifier=Notifier(),
            stopping=stopping,
            rand=no_randomness,
        )
        return Linked(link, environment, progress, stopping)

    yield make
    for stopping in runs:
        stopping.set()


async def _finish(run: asyncio.Task[None]) -> BaseException | None:
    """How the link ended: None when it returned, else what it raised."""
    await asyncio.wait({run}, timeout=WAIT_S)
    assert run.done(), "the link did not end"
    return run.exception()


async def test_registers_connects_and_a_stop_leaves_the_row_offline(
    platform: Platform, make_link: Callable[[str, str], Linked]
) -> None:
    linked = make_link(platform.url, platform.key)
    run = asyncio.create_task(linked.link.run())
    online = await linked.state(lambda p: p.state == "online")
    assert (online.registrations, online.connects) == (1, 1)
    row = await platform.row(linked.environment.device_id)
    assert row["connectionId"] == online.connection_id
    assert row["connectionName"] == "box"
    remembered = linked.environment.state.last_connection
    assert remembered is not None and remembered.connection_id == online.connection_id
    linked.stopping.set()
    assert await _finish(run) is None
    assert (await platform.row(linked.environment.device_id))["connectionId"] is None


async def test_a_lost_socket_waits_the_policy_s_delay_and_a_stop_ends_the_wait(
    platform: Platform, make_link: Callable[[str, str], Linked], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "envagent")
    linked = make_link(platform.url, platform.key)
    run = asyncio.create_task(linked.link.run())
    await linked.state(lambda p: p.state == "online")
    await platform.server.stop()
    lost = await linked.state(lambda p: p.state == "reconnecting")
    assert lost.last_error is not None
    first_delay = backoff_delay(0, no_randomness)
    await wait_for(
        lambda: _now(caplog.text), lambda text: f"retrying in {first_delay:.1f} s" in text
    )
    linked.stopping.set()
    assert await _finish(run) is None
    assert (linked.progress.registrations, linked.progress.connects) == (1, 1)


async def test_after_a_platform_restart_the_same_connection_comes_back_without_registering(
    start_platform: StartPlatform, make_link: Callable[[str, str], Linked]
) -> None:
    platform = await start_platform()
    linked = make_link(platform.url, platform.key)
    run = asyncio.create_task(linked.link.run())
    first = (await linked.state(lambda p: p.state == "online")).connection_id
    port = platform.server.port
    await platform.server.stop()
    await linked.state(lambda p: p.state != "online")
    await start_platform(port=port)
    back = await linked.state(lambda p: p.state == "online" and p.connects == 2)
    assert back.registrations == 1 and back.connection_id == first
    linked.stopping.set()
    assert await _finish(run) is None


async def test_a_superseded_connection_is_registered_again(
    start_platform: StartPlatform, make_link: Callable[[str, str], Linked]
) -> None:
    platform = await start_platform()
    linked = make_link(platform.url, platform.key)
    run = asyncio.create_task(linked.link.run())
    first = (await linked.state(lambda p: p.state == "online")).connection_id
    device = linked.environment.device_id
    await platform.register(device, connectionName="box")  # a new connection id for the device
    port = platform.server.port
    await platform.server.stop()
    restarted = await start_platform(port=port)
    back = await linked.state(lambda p: p.state == "online" and p.registrations == 2)
    assert back.connection_id != first
    assert (await restarted.row(device))["connectionId"] == back.connection_id
    linked.stopping.set()
    assert await _finish(run) is None


async def test_replaced_by_another_socket_finishes_with_the_replaced_code(
    platform: Platform, make_link: Callable[[str, str], Linked]
) -> None:
    linked = make_link(platform.url, platform.key)
    run = asyncio.create_task(linked.link.run())
    await linked.state(lambda p: p.state == "online")
    reply = linked.progress.reply
    assert reply is not None
    contender = await open_socket(reply.ws_url, linked.environment.device_id, platform.key)
    failure = await _finish(run)
    assert isinstance(failure, Finished) and failure.code == exitcodes.REPLACED
    assert linked.progress.state == "replaced"
    assert linked.progress.registrations == 1, "a replaced daemon never fights for the slot"
    await contender.close()


async def test_a_refused_key_finishes_with_the_credentials_code_after_one_request(
    platform: Platform, make_link: Callable[[str, str], Linked]
) -> None:
    linked = make_link(platform.url, "envk_not-a-real-key")
    failure = await _finish(asyncio.create_task(linked.link.run()))
    assert isinstance(failure, Finished) and failure.code == exitcodes.CREDENTIALS
    assert linked.progress.state == "refused"
    assert linked.progress.last_error is not None
    assert "refused the API key (HTTP 401" in linked.progress.last_error
    assert linked.progress.registrations == 0


async def test_a_stop_while_registration_is_retried_finishes_at_once_with_ok(
    make_link: Callable[[str, str], Linked], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "envagent")
    linked = make_link(f"http://127.0.0.1:{free_port()}", "envk_any")
    run = asyncio.create_task(linked.link.run())
    await wait_for(lambda: _now(caplog.text), lambda text: "registration failed" in text)
    assert linked.progress.state == "registering"
    linked.stopping.set()
    failure = await _finish(run)
    assert isinstance(failure, Finished) and failure.code == exitcodes.OK
