"""The CLI's side of a platform's listing (agent/platform/client.py): walking every page of a real
platform, every failure as one line (a platform that refuses, is silent, answers something else
or pages round forever), and which fields of the platform's row `status --verify` compares."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from agent.platform.access import ApiKey
from agent.platform.client import PlatformClient, differences, find_own_row
from agent.protocol.httpapi import ClientError
from agent.protocol.models import EnvironmentRow, Metadata, RegisterRequest
from agent.support.clock import now_ms
from tests.helpers import Platform, free_port


async def walk(client: PlatformClient, online_only: bool = False) -> list[EnvironmentRow]:
    """The client is synchronous, as the CLI is: it runs beside the platform's event loop."""
    return await asyncio.to_thread(lambda: list(client.pages(online_only)))


async def refusal(client: PlatformClient) -> str:
    with pytest.raises(ClientError) as raised:
        await walk(client)
    return str(raised.value)


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Any]]:
    """Serve `GET /v1/environments` with a handler of the test's; yields a starter returning
    the URL. A real local server, for answers no reference platform gives."""
    runners: list[web.AppRunner] = []

    async def start(handler: Callable[[web.Request], web.Response]) -> str:
        async def answer(request: web.Request) -> web.Response:
            return handler(request)

        app = web.Application()
        app.router.add_get("/v1/environments", answer)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_every_row_is_walked_once_in_creation_order_across_pages(platform: Platform) -> None:
    key = ApiKey("org-dev", "user-dev", None)
    devices = [f"dev-{n:03}" for n in range(201)]  # pages of 100, 100 and 1
    for device in devices:
        await platform.server.store.register(
            key, RegisterRequest(device_id=device, connection_name=device), now_ms()
        )
    rows = await walk(PlatformClient(platform.url, platform.key))
    assert [row.device_id for row in rows] == devices


async def test_online_only_asks_the_platform_for_online_rows(platform: Platform) -> None:
    live = await platform.connect("live")
    await platform.register("registered-only")
    client = PlatformClient(platform.url, platform.key)
    assert [row.device_id for row in await walk(client, online_only=True)] == ["live"]
    assert len(await walk(client)) == 2
    await live.ws.close()


async def test_a_refused_key_is_one_line_with_the_platform_s_reason(platform: Platform) -> None:
    message = await refusal(PlatformClient(platform.url, "envk_wrong"))
    assert message == f"the platform {platform.url} refused: the API key was not recognised"


async def test_a_platform_that_does_not_answer_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    message = await refusal(PlatformClient(url, "envk_any"))
    assert message.startswith(f"the platform {url} does not answer: ConnectError(")


@pytest.mark.parametrize(
    "body",
    [b"<html>it works</html>", b'{"connections": "none"}', b"[" * 5000 + b"]" * 5000],
    ids=["html", "wrong-shape", "deep"],
)
async def test_an_answer_that_is_no_listing_is_one_line(
    scripted: Callable[..., Any], body: bytes
) -> None:
    """A URL that is not a Letta platform may well answer 200: one line, not a pydantic
    traceback."""
    url = await scripted(lambda request: web.Response(body=body))
    assert await refusal(PlatformClient(url, "envk_any")) == (
        f"the platform {url} answered something that is not a listing: is this a Letta platform?"
    )


async def test_a_platform_whose_pages_go_round_ends_the_walk(
    scripted: Callable[..., Any],
) -> None:
    """Two pages that name each other as the next would be walked forever. The platform stops
    after 10 requests, so that the test fails rather than hangs should the walk go round."""
    asked: list[str | None] = []

    def row(row_id: str) -> dict[str, Any]:
        return EnvironmentRow(
            id=row_id, connected_at=None, connection_id=None, connection_name=row_id,
            device_id=row_id, first_seen_at=1, last_heartbeat=None, last_seen_at=1,
            organization_id="org", pod_id=None,
        ).to_wire()  # fmt: skip

    def pages(request: web.Request) -> web.Response:
        asked.append(request.query.get("after"))
        if len(asked) > 10:
            return web.json_response({"error": "stop", "message": "asked too often"}, status=429)
        rows = [row("env-3")] if request.query.get("after") == "env-2" else [row("env-2")]
        return web.json_response({"connections": rows, "hasNextPage": True})

    url = await scripted(pages)
    message = await refusal(PlatformClient(url, "envk_any"))
    assert message == f"the platform {url} listed row 'env-2' twice: its paging goes round"
    assert asked == [None, "env-2", "env-3"]


def listing_row(**fields: Any) -> EnvironmentRow:
    now = now_ms()
    values: dict[str, Any] = {
        "id": "env-1", "connected_at": now, "connection_id": "conn-1", "connection_name": "box",
        "device_id": "dev-1", "first_seen_at": 1, "last_heartbeat": now, "last_seen_at": now,
        "organization_id": "org-a", "pod_id": None, "current_mode": "default",
        "user_id": "user-a", "api_key_owner": "Ann",
        "metadata": Metadata(os="linux", git_branch="main"),
    }  # fmt: skip
    return EnvironmentRow.model_validate(values | fields)


def test_the_own_row_is_found_by_id_among_rows_of_the_same_device() -> None:
    """Two listener instances on one device: the row with the daemon's id, not the first."""
    other = listing_row(id="env-0")
    own = listing_row(id="env-1", connection_name="mine")
    assert find_own_row(iter([other, own]), listing_row()) == own
    assert find_own_row(iter([other]), listing_row()) is None


def test_a_daemon_that_knows_no_row_id_is_found_by_its_device() -> None:
    """Behind a Letta platform the daemon's own row id is its device id."""
    local = listing_row(id="dev-1", device_id="dev-1")
    remote = listing_row(id="env-9", device_id="dev-1")
    assert find_own_row(iter([listing_row(id="env-8", device_id="dev-2"), remote]), local) == remote


def test_rows_that_agree_have_no_differences_whatever_the_clocks_and_pod() -> None:
    local = listing_row(pod_id=None, last_seen_at=5)
    remote = listing_row(pod_id="host-1", last_seen_at=99, first_seen_at=7)
    assert differences(local, remote) == []


def test_each_differing_field_is_one_line() -> None:
    local = listing_row()
    remote = listing_row(
        connection_name="renamed",
        current_mode="unrestricted",
        user_id="user-b",
        metadata=Metadata(os="linux", git_branch="feature", working_directory="/srv"),
        connection_id=None,
    )
    assert differences(local, remote) == [
        "connectionId: local 'conn-1', platform None",
        "connectionName: local 'box', platform 'renamed'",
        "currentMode: local 'default', platform 'unrestricted'",
        "userId: local 'user-a', platform 'user-b'",
        "metadata.gitBranch: local 'main', platform 'feature'",
        "metadata.workingDirectory: local None, platform '/srv'",
        "online: local True, platform False",
    ]


def test_what_the_daemon_cannot_know_is_compared_only_when_it_knows_it() -> None:
    """Behind a Letta platform the daemon knows no organization, user or key owner."""
    local = listing_row(organization_id="", user_id=None, api_key_owner=None)
    assert differences(local, listing_row()) == []
    assert differences(listing_row(), local) == [
        "organizationId: local 'org-a', platform ''",
        "userId: local 'user-a', platform None",
        "apiKeyOwner: local 'Ann', platform None",
    ]


def test_a_stale_heartbeat_on_the_platform_is_an_online_difference() -> None:
    stale = now_ms() - 10 * 60_000
    assert differences(listing_row(), listing_row(last_heartbeat=stale)) == [
        "online: local True, platform False"
    ]
