"""What the CLI asks of the running daemon (agent/localapi/client.py): found through the address
file it writes, changed with the token file it writes, against a real daemon; and every way
those files or that address can be wrong as one line, planted files never followed."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from aiohttp import web

from agent.localapi.client import LocalClient, address_file, token_file
from agent.protocol.httpapi import ClientError
from agent.protocol.models import LocalApiAddress
from agent.support.files import write_private
from agent.support.paths import state_dir
from tests.daemon_helpers import Spawn, online
from tests.helpers import AS_ROOT, NOBODY, Platform, free_port

T = TypeVar("T")


async def off_the_loop(call: Callable[[], T]) -> T:
    """The client is synchronous, as the CLI is; servers of this test run on the event loop."""
    return await asyncio.to_thread(call)


async def refusal(call: Callable[[], object]) -> str:
    with pytest.raises(ClientError) as raised:
        await off_the_loop(call)
    return str(raised.value)


def write_address(url: str, instance: str | None = None) -> Path:
    path = address_file(instance)
    write_private(path, LocalApiAddress(url=url).model_dump_json().encode())
    return path


async def test_status_listing_and_mode_of_a_real_daemon(platform: Platform, spawn: Spawn) -> None:
    daemon = await spawn(platform.url, platform.key, state="state")  # this test's XDG folder
    status = await daemon.wait_status(online)
    client = await off_the_loop(lambda: LocalClient(None))
    assert client.url == await daemon.local_url()
    assert (await off_the_loop(client.status))["pid"] == daemon.process.pid
    for online_only in (False, True):
        listed = await off_the_loop(lambda: client.listing(online_only))  # noqa: B023
        assert [row["deviceId"] for row in listed["connections"]] == [status["deviceId"]]
    assert await off_the_loop(client.get_mode) == "default"
    assert await off_the_loop(lambda: client.set_mode("acceptEdits")) == "acceptEdits"
    assert (await daemon.status())["mode"] == "acceptEdits"

    # A token file that is not the daemon's: refused with the daemon's reason, nothing changed.
    token = token_file(None)
    write_private(token, (secrets.token_urlsafe(32) + "\n").encode())
    assert await refusal(lambda: client.set_mode("unrestricted")) == (
        "the daemon refused the mode: changing the mode needs the local API token: "
        "Authorization: Bearer <token>"
    )
    token.unlink()
    assert await refusal(lambda: client.set_mode("unrestricted")) == (
        f"cannot read the local API token {token}: no such file"
    )
    assert (await daemon.status())["mode"] == "acceptEdits"


def test_no_address_file_means_no_daemon() -> None:
    for instance, name in ((None, "local-api.json"), ("work", "local-api-work.json")):
        with pytest.raises(ClientError) as raised:
            LocalClient(instance)
        path = state_dir() / name
        assert str(raised.value) == f"no daemon is running (no {path}); start one: envagent run"


@pytest.mark.parametrize(
    "content",
    [b"", b"{}", b"not json", b'{"url": 5}', b'{"url": ' + b"[" * 3000 + b"]" * 3000 + b"}"],
    ids=["empty", "no-url", "not-json", "url-not-text", "deep"],
)
def test_a_damaged_address_file_is_one_line(content: bytes) -> None:
    path = address_file(None)
    write_private(path, content)
    with pytest.raises(ClientError) as raised:
        LocalClient(None)
    assert str(raised.value) == f"{path} is damaged; restart the daemon"


def plant_symlink(path: Path, attacker: Path) -> None:
    path.symlink_to(attacker)


def plant_foreign(path: Path, attacker: Path) -> None:
    path.write_bytes(attacker.read_bytes())
    os.chown(path, NOBODY, NOBODY)


def plant_folder(path: Path, attacker: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize(
    ("plant", "problem"),
    [
        pytest.param(plant_symlink, "a symlink, which is never followed", id="symlink"),
        pytest.param(plant_foreign, f"owned by uid {NOBODY}, not by this user", id="foreign",
                     marks=AS_ROOT),
        pytest.param(plant_folder, "is a folder, not a file: remove it", id="folder"),
    ],
)  # fmt: skip
def test_an_address_file_the_daemon_did_not_write_is_not_used(
    tmp_path: Path, plant: Callable[[Path, Path], None], problem: str
) -> None:
    """An address planted by someone else would send the mode, and the token with it, to their
    server: the client refuses before any request."""
    attacker = tmp_path / "attacker.json"
    attacker.write_text(LocalApiAddress(url="http://127.0.0.1:1").model_dump_json())
    path = address_file(None)
    path.parent.mkdir(parents=True, exist_ok=True)
    plant(path, attacker)
    with pytest.raises(ClientError) as raised:
        LocalClient(None)
    assert str(raised.value).endswith(problem)
    assert str(raised.value).startswith(f"{path}")


def test_a_token_file_that_is_a_symlink_is_not_read(tmp_path: Path) -> None:
    write_address(f"http://127.0.0.1:{free_port()}")
    target = tmp_path / "elsewhere"
    target.write_text(secrets.token_urlsafe(32) + "\n")
    token_file(None).symlink_to(target)
    with pytest.raises(ClientError) as raised:
        LocalClient(None).set_mode("standard")
    assert str(raised.value) == (
        f"{token_file(None)}: not using it as the local API token: "
        "a symlink, which is never followed"
    )


async def test_an_address_nothing_answers_at_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    write_address(url)
    message = await refusal(lambda: LocalClient(None).status())
    assert message.startswith(f"the daemon at {url} does not answer: ConnectionRefusedError(")


async def test_another_program_at_the_address_is_one_line_not_a_traceback(
    platform: Platform,
) -> None:
    """A daemon killed without cleaning up leaves its address, and another program may answer
    there since: whatever it answers is one line, not a pydantic traceback."""
    write_address(platform.url)  # the reference platform: a real server, and no daemon
    client = LocalClient(None)
    assert await refusal(client.status) == (
        f"the daemon at {platform.url} refused GET /v1/status: GET /v1/status: Not Found"
    )
    assert (await refusal(lambda: client.listing(False))).startswith(
        f"the daemon at {platform.url} refused GET /v1/environments: missing Authorization"
    )

    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"mode": "turbo", "pid": "x", "connections": 3})

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        url = f"http://{host}:{port}"
        write_address(url)
        write_private(token_file(None), (secrets.token_urlsafe(32) + "\n").encode())
        client = LocalClient(None)
        for call, what in (
            (client.status, "GET /v1/status"),
            (client.get_mode, "GET /v1/mode"),
            (lambda: client.listing(True), "GET /v1/environments"),
            (lambda: client.set_mode("standard"), "PUT /v1/mode"),
        ):
            assert await refusal(call) == (
                f"the answer of {url} to {what} is not an envagent daemon's; "
                "is another program at that address?"
            )
    finally:
        await runner.cleanup()


async def serving(answer: bytes, where: Path | None = None) -> tuple[asyncio.Server, str]:
    """A real server on 127.0.0.1 (or a Unix socket at `where`) that reads a request's head and
    writes `answer` as it is, then closes; its address as the daemon writes it."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    if where is not None:
        server = await asyncio.start_unix_server(handle, str(where))
        return server, f"unix:{where}"
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def http(body: bytes, status: str = "200 OK") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


async def test_a_unix_socket_address_is_used(tmp_path: Path) -> None:
    server, url = await serving(http(b'{"mode": "acceptEdits"}'), tmp_path / "api.sock")
    async with server:
        write_address(url)
        assert await off_the_loop(lambda: LocalClient(None).get_mode()) == "acceptEdits"


@pytest.mark.parametrize(
    "answer",
    [
        http(b"not json"),
        http(b'{"mode": "turbo"}'),
        http(b"[" * 5000 + b"]" * 5000),
        b"HTTP/1.1 200 OK\r\n\r\n" + b'{"mode": "standard", "more": 1}',  # ends at the close
    ],
    ids=["not-json", "unknown-mode", "deep", "no-length"],
)
async def test_a_malformed_answer_is_one_line(answer: bytes) -> None:
    server, url = await serving(answer)
    async with server:
        write_address(url)
        if answer.endswith(b"1}"):  # delimited by the close: a good answer after all
            assert await off_the_loop(lambda: LocalClient(None).get_mode()) == "standard"
            return
        assert await refusal(lambda: LocalClient(None).get_mode()) == (
            f"the answer of {url} to GET /v1/mode is not an envagent daemon's; "
            "is another program at that address?"
        )


@pytest.mark.parametrize(
    ("answer", "cause"),
    [
        (b"SSH-2.0-OpenSSH_9.6\r\n", "RemoteProtocolError("),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}", "RemoteProtocolError("),
        (b"", "RemoteProtocolError("),
    ],
    ids=["not-http", "cut-short", "closed"],
)
async def test_what_is_not_http_is_one_line(answer: bytes, cause: str) -> None:
    server, url = await serving(answer)
    async with server:
        write_address(url)
        message = await refusal(lambda: LocalClient(None).status())
        assert message.startswith(f"the daemon at {url} does not answer: {cause}")
        assert "\n" not in message


async def test_an_error_answer_gives_its_own_message() -> None:
    body = b'{"error": "busy", "message": "try later"}'
    server, url = await serving(http(body, "503 Service Unavailable"))
    async with server:
        write_address(url)
        assert await refusal(lambda: LocalClient(None).status()) == (
            f"the daemon at {url} refused GET /v1/status: try later"
        )


async def test_a_peer_that_never_answers_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.localapi.client.TIMEOUT_S", 0.3)
    accepted: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # never answers, never closes

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    async with server:
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        write_address(url)
        message = await refusal(lambda: LocalClient(None).status())
        assert message.startswith(f"the daemon at {url} does not answer: TimeoutError(")
        for writer in accepted:
            writer.close()


@pytest.mark.parametrize("url", ["https://127.0.0.1:1", "http://127.0.0.1", "unix:", "ftp://x:1"])
def test_an_address_that_is_neither_http_nor_unix_is_damaged(url: str) -> None:
    path = write_address(url)
    with pytest.raises(ClientError) as raised:
        LocalClient(None)
    assert str(raised.value) == f"{path} is damaged; restart the daemon"
