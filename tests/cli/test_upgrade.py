"""`envagent upgrade` (agent/cli/upgrade.py): after an upgrade it tells whether a running daemon
still runs the old code, from what that daemon answers. Upgrading itself, and the command's
refusals, are in tests/upgrade/test_install.py, with real installs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from agent.cli.upgrade import _running_daemon_note
from agent.localapi.client import address_file
from agent.protocol.models import LocalApiAddress
from agent.support.files import write_private
from tests.daemon_helpers import Spawn, online
from tests.helpers import Platform

OLD = "0.0.1"

Daemon = Callable[[dict[str, Any], dict[str, Any]], Awaitable[None]]


async def note(instance: str | None = None) -> str | None:
    """The note, asked off the event loop: the CLI's client is synchronous."""
    return await asyncio.to_thread(_running_daemon_note, instance, OLD)


@pytest.fixture
async def answering() -> AsyncIterator[Daemon]:
    """A local server that answers the daemon's `/v1/status` and `/v1/environments` as told,
    found through the address file a daemon writes: a daemon of another install."""
    runners: list[web.AppRunner] = []

    async def start(status: dict[str, Any], listing: dict[str, Any]) -> None:
        async def reply(request: web.Request) -> web.Response:
            return web.json_response(status if request.path == "/v1/status" else listing)

        app = web.Application()
        app.router.add_get("/v1/status", reply)
        app.router.add_get("/v1/environments", reply)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        url = LocalApiAddress(url=f"http://{host}:{port}")
        write_private(address_file(None), url.model_dump_json().encode())

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_a_daemon_of_this_install_is_told_to_restart(
    platform: Platform, spawn: Spawn
) -> None:
    daemon = await spawn(platform.url, platform.key, state="state")  # this test's XDG folder
    await daemon.wait_status(online)
    assert await note() == (
        f"the running daemon (pid {daemon.process.pid}) still runs {OLD} from this install: "
        "restart it to run the new version (restart its service, or stop it and start "
        "`envagent run`)"
    )
    assert await note("another-instance") is None  # that one runs no daemon


async def test_no_running_daemon_means_no_note() -> None:
    assert await note() is None


def status(pid: int) -> dict[str, Any]:
    """Only what the note reads of `/v1/status` is real; the rest is filled in."""
    return {
        "state": "online", "platformUrl": "http://p", "embeddedPlatform": False,
        "deviceId": "dev-1", "connectionName": "box", "connectionId": None,
        "environmentId": None, "mode": "default", "workingDirectory": "/", "lastError": None,
        "heartbeatPeriodS": 30, "heartbeats": {"sent": 0, "answered": 0, "unansweredNow": 0},
        "registrations": 0, "connects": 0, "connectedAt": None, "lastPongAt": None,
        "pid": pid, "startedAt": 1, "uptimeS": 1, "localApi": "http://127.0.0.1:1",
        "logPath": None, "node": None,
    }  # fmt: skip


def listing(metadata: dict[str, Any] | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": "env-1", "connectedAt": None, "connectionId": None, "connectionName": "box",
        "deviceId": "dev-1", "firstSeenAt": 1, "lastHeartbeat": None, "lastSeenAt": 1,
        "organizationId": "org", "podId": None,
    }  # fmt: skip
    if metadata is not None:
        row["metadata"] = metadata
    return {"connections": [row], "hasNextPage": False}


@pytest.mark.parametrize(
    ("metadata", "where"),
    [
        ({"self_update": {"supported": True, "writable": True, "install_path": "/opt/other"}},
         "/opt/other"),
        ({"self_update": {"supported": False, "writable": False}}, "another install"),
        ({"os": "linux"}, "another install"),
        (None, "another install"),
    ],
    ids=["other-path", "no-path", "no-self-update", "no-metadata"],
)  # fmt: skip
async def test_a_daemon_of_another_install_is_not_changed_by_this_upgrade(
    answering: Daemon, metadata: dict[str, Any] | None, where: str
) -> None:
    await answering(status(4321), listing(metadata))
    assert await note() == (
        f"the running daemon (pid 4321) runs from {where}: this upgrade does not change it"
    )


@pytest.mark.parametrize(
    ("status_body", "listing_body"),
    [
        (status(4321), {"connections": [], "hasNextPage": False}),
        (status(4321), {"connections": "none"}),
        ({"pid": "not a daemon"}, listing(None)),
    ],
    ids=["no-row", "not-a-listing", "not-a-status"],
)
async def test_a_daemon_that_answers_nonsense_gets_no_note(
    answering: Daemon, status_body: dict[str, Any], listing_body: dict[str, Any]
) -> None:
    await answering(status_body, listing_body)
    assert await note() is None
