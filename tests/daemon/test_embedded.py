"""The embedded platform: the reference platform the daemon starts inside itself when none is
configured, on 127.0.0.1 and an ephemeral port, with its database and development key in the
state folder. Real platforms in the test's event loop, real files, a real other process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from agent.daemon.embedded import EmbeddedPlatformError, embedded_key_file, start_embedded
from agent.platform.server import PlatformServer
from agent.support.files import UnusableFile
from agent.support.paths import state_dir
from tests.helpers import WAIT_S, Platform, mode_of

StartEmbedded = Callable[[], Awaitable[Platform]]


def database() -> Path:
    return state_dir() / "embedded-platform" / "platform.db"


@pytest.fixture
async def embedded() -> AsyncIterator[StartEmbedded]:
    """Start the default instance's embedded platform; each one started is stopped after the
    test (stopping twice is harmless, so a test may stop one itself)."""
    servers: list[PlatformServer] = []
    async with httpx.AsyncClient(timeout=WAIT_S) as http:

        async def start() -> Platform:
            server, platform = await start_embedded(None)
            servers.append(server)
            assert platform.embedded and platform.url == server.url
            return Platform(server, platform.api_key, http)

        yield start
        for server in servers:
            await server.stop()


async def accepted(platform: Platform, key: str | None = None) -> bool:
    reply = await platform.list(key)
    assert reply.status_code in (200, 401), reply.text
    return reply.status_code == 200


async def test_it_serves_on_loopback_with_a_key_it_accepts_and_private_files(
    embedded: StartEmbedded,
) -> None:
    platform = await embedded()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", platform.url) and platform.server.port
    assert await platform.rows() == []
    assert not await accepted(platform, "envk_" + "x" * 43)
    assert (await platform.http.get(f"{platform.url}/v1/environments")).status_code == 401

    key_file = embedded_key_file(None)
    assert platform.server.settings.db == database()
    assert key_file == platform.server.settings.dev_key_file
    assert key_file.read_text() == platform.key + "\n"
    assert mode_of(key_file) == mode_of(database()) == 0o600
    assert mode_of(database().parent) == 0o700


async def test_the_key_is_kept_from_one_start_to_the_next(embedded: StartEmbedded) -> None:
    first = await embedded()
    await first.server.stop()
    second = await embedded()
    assert second.key == first.key and await accepted(second)


async def test_a_key_the_database_does_not_know_is_replaced(embedded: StartEmbedded) -> None:
    """The file may be older than the database, or planted: a key the platform does not know
    would be refused, so a new one is made and written."""
    first = await embedded()
    await first.server.stop()
    planted = "envk_" + "p" * 43
    embedded_key_file(None).write_text(planted + "\n")
    second = await embedded()
    assert second.key not in (planted, first.key)
    assert await accepted(second) and not await accepted(second, planted)
    assert embedded_key_file(None).read_text() == second.key + "\n"


async def test_a_symlinked_key_file_is_replaced_never_followed(
    embedded: StartEmbedded, tmp_path: Path
) -> None:
    first = await embedded()
    await first.server.stop()
    precious = tmp_path / "precious"
    precious.write_text(first.key + "\n")  # even a target holding the right key is not read
    precious.chmod(0o644)
    key_file = embedded_key_file(None)
    key_file.unlink()
    key_file.symlink_to(precious)
    second = await embedded()
    assert second.key != first.key and await accepted(second)
    assert not key_file.is_symlink() and key_file.read_text() == second.key + "\n"
    assert mode_of(key_file) == 0o600
    assert precious.read_text() == first.key + "\n" and mode_of(precious) == 0o644


@pytest.mark.parametrize(
    ("database_exists", "error", "cause"),
    [
        (False, EmbeddedPlatformError, "cannot write the development key {}: Is a directory"),
        (True, UnusableFile, "{} is a folder, not a file: remove it"),
    ],
    ids=["new-database", "old-database"],
)
async def test_a_key_file_that_is_a_folder_is_one_line_and_the_platform_stopped(
    embedded: StartEmbedded, database_exists: bool, error: type[Exception], cause: str
) -> None:
    key_file = embedded_key_file(None)
    if database_exists:
        await (await embedded()).server.stop()
        key_file.unlink()
    key_file.mkdir(parents=True)
    with pytest.raises(error) as raised:
        await start_embedded(None)
    assert str(raised.value) == cause.format(key_file)
    # Nothing of it is left running: the database is free for the next start.
    key_file.rmdir()
    assert await accepted(await embedded())


async def test_a_database_another_process_serves_is_refused_naming_it(
    embedded: StartEmbedded,
) -> None:
    """A second platform on one database would take the first one's sockets offline."""
    other = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "platform", "serve", "--port", "0", "--db", str(database()),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert other.stdout is not None
    try:
        line = (await asyncio.wait_for(other.stdout.readline(), WAIT_S)).decode()
        assert line.startswith("envagent platform listening on "), line
        other_url = line.split()[-1]
        with pytest.raises(EmbeddedPlatformError) as raised:
            await start_embedded(None)
        assert str(raised.value) == (
            f"the platform database {database()} is in use by pid {other.pid} "
            f"(lock {database()}.lock); SQLite serves one platform process"
        )
        async with httpx.AsyncClient(timeout=WAIT_S) as http:  # the other one serves on
            assert (await http.get(f"{other_url}/v1/environments")).status_code == 401
        # Killed, not stopped: its SIGTERM handler may not be installed yet when it says it
        # listens; the kernel drops its lock either way.
        other.kill()
        assert await asyncio.wait_for(other.wait(), WAIT_S) == -signal.SIGKILL
    finally:
        if other.returncode is None:
            other.kill()
            await other.wait()
    platform = await embedded()  # free once the other has stopped; the key it wrote is used
    assert platform.key == embedded_key_file(None).read_text().strip()
    assert await accepted(platform)


async def test_each_listener_instance_has_its_own_embedded_platform() -> None:
    started = [await start_embedded(instance) for instance in (None, "a", "b/c")]
    try:
        databases = {server.settings.db for server, _ in started}
        assert len(databases) == 3
        for instance, (server, platform) in zip((None, "a", "b/c"), started, strict=True):
            assert embedded_key_file(instance) == server.settings.dev_key_file
            assert embedded_key_file(instance).read_text().strip() == platform.api_key
        with pytest.raises(EmbeddedPlatformError, match=f"in use by pid {os.getpid()}"):
            await start_embedded("a")
    finally:
        for server, _ in started:
            await server.stop()
    assert started[0][0].settings.db == state_dir() / "embedded-platform" / "platform.db"
