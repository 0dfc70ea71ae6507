"""The platform as a user runs it: `envagent platform …` in its own process, killed, restarted."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agent import __version__
from agent.daemon.embedded import EmbeddedPlatformError, embedded_key_file, start_embedded
from agent.platform.keys import hash_key
from agent.support.paths import state_dir
from tests.helpers import WAIT_S, FakeDaemon, open_socket, wait_for

LISTENING = "envagent platform listening on "


@dataclass
class PlatformProcess:
    process: asyncio.subprocess.Process
    url: str

    async def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        return await asyncio.wait_for(self.process.wait(), WAIT_S)

    async def stderr(self) -> str:
        assert self.process.stderr is not None
        return (await asyncio.wait_for(self.process.stderr.read(), WAIT_S)).decode()


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", *args, stdout=-1, stderr=-1, stdin=-3
    )
    out, err = await asyncio.wait_for(process.communicate(), WAIT_S)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[PlatformProcess]]]:
    started: list[asyncio.subprocess.Process] = []

    async def start(*extra: str) -> PlatformProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "platform", "serve", "--port", "0",
            "--db", str(tmp_path / "platform.db"), *extra,
            stdout=-1, stderr=-1, stdin=-3,
        )  # fmt: skip
        started.append(process)
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), WAIT_S)).decode()
        assert line.startswith(LISTENING), line
        return PlatformProcess(process, line.removeprefix(LISTENING).strip())

    yield start
    for process in started:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def register(http: httpx.AsyncClient, url: str, key: str, device: str) -> FakeDaemon:
    reply = await http.post(
        f"{url}/v1/environments/register",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "deviceId": device,
            "connectionName": "workstation",
            "currentMode": "default",
            "metadata": {"os": "linux", "nodeVersion": "v22.1.0", "gitBranch": "main"},
        },
    )
    assert reply.status_code == 201, reply.text
    registration = reply.json()
    return FakeDaemon(await open_socket(registration["wsUrl"], device, key), registration)


async def get_row(http: httpx.AsyncClient, url: str, key: str, device: str) -> dict[str, object]:
    reply = await http.get(
        f"{url}/v1/environments/{device}", headers={"Authorization": f"Bearer {key}"}
    )
    assert reply.status_code == 200, reply.text
    row: dict[str, object] = reply.json()
    return row


async def test_rows_survive_a_kill_and_restart(
    spawn: Callable[..., Awaitable[PlatformProcess]], tmp_path: Path
) -> None:
    first = await spawn()
    key_file = tmp_path / "platform.db.dev-api-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        daemon = await register(http, first.url, key, "dev-1")
        assert await daemon.ping(mode="bypassPermissions") == {"type": "pong"}
        before = await get_row(http, first.url, key, "dev-1")
        assert before["connectionId"] == daemon.connection_id

        assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
        await daemon.wait_closed()  # the kernel closed the socket, not the platform

        second = await spawn()
        assert key_file.read_text().strip() == key  # the development key is not remade
        after = await get_row(http, second.url, key, "dev-1")
        for field in ("id", "firstSeenAt", "metadata", "currentMode", "connectionName"):
            assert after[field] == before[field], field
        assert after["currentMode"] == "bypassPermissions"
        assert after["connectionId"] is None and after["podId"] is None
        assert after["connectedAt"] is None

        # The issued connection id survived too: the daemon comes back without registering.
        ws_url = str(daemon.registration["wsUrl"]).replace(first.url[7:], second.url[7:])
        back = FakeDaemon(await open_socket(ws_url, "dev-1", key), daemon.registration)
        assert await back.ping() == {"type": "pong"}
        online = await get_row(http, second.url, key, "dev-1")
        assert online["connectionId"] == daemon.connection_id

        assert await second.stop(signal.SIGTERM) == 0
        await back.wait_closed()
        assert back.ws.close_code == 1001
    log = await second.stderr() + await first.stderr()
    assert key not in log
    assert str(key_file) in log


async def test_keys_create_prints_the_key_once_and_stores_only_a_hash(
    spawn: Callable[..., Awaitable[PlatformProcess]], tmp_path: Path
) -> None:
    db = tmp_path / "platform.db"
    code, out, err = await run_cli(
        "platform", "keys", "create", "--org", "org-a", "--user", "u-1", "--owner", "Ann",
        "--db", str(db),
    )  # fmt: skip
    assert code == 0, err
    key = out.strip()
    assert key.startswith("envk_") and len(key) > 40
    assert "shown only this once" in err and key not in err
    server = await spawn()
    assert not (tmp_path / "platform.db.dev-api-key").exists()  # keys exist: no dev key
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        daemon = await register(http, server.url, key, "dev-1")
        row = await get_row(http, server.url, key, "dev-1")
        assert (row["organizationId"], row["userId"], row["apiKeyOwner"]) == ("org-a", "u-1", "Ann")
        await daemon.ws.close()
    await server.stop(signal.SIGTERM)
    for path in tmp_path.iterdir():
        assert key.encode() not in path.read_bytes(), path


async def test_version_and_usage_errors() -> None:
    assert await run_cli("--version") == (0, f"envagent {__version__}\n", "")
    code, _, err = await run_cli("platform", "serve", "--port", "99999")
    assert code == 2 and "a port is at most 65535" in err
    code, _, err = await run_cli("platform", "keys", "create", "--org", "o")
    assert code == 2 and "--user" in err


async def test_unusable_database_or_port_is_one_line_and_exit_1(tmp_path: Path) -> None:
    code, _, err = await run_cli("platform", "serve", "--port", "0", "--db", str(tmp_path))
    assert code == 1
    assert err.startswith(f"envagent: cannot use the platform database {tmp_path}")
    assert err.count("\n") == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = await run_cli(
            "platform", "serve", "--port", str(port), "--db", str(tmp_path / "p.db")
        )
    assert code == 1 and f"cannot listen on 127.0.0.1:{port}" in err
    assert err.strip().splitlines()[-1].startswith("envagent: cannot listen")


async def test_database_files_are_private(
    spawn: Callable[..., Awaitable[PlatformProcess]], tmp_path: Path
) -> None:
    server = await spawn()
    key = (tmp_path / "platform.db.dev-api-key").read_text().strip()
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        daemon = await register(http, server.url, key, "dev-1")
        await wait_for(
            lambda: get_row(http, server.url, key, "dev-1"), lambda r: bool(r["connectionId"])
        )
        await daemon.ws.close()
    for path in tmp_path.iterdir():
        if path.name.startswith("platform.db"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(os.stat(tmp_path / "platform.db").st_mode) == 0o600


async def test_one_platform_process_per_database(
    spawn: Callable[..., Awaitable[PlatformProcess]], tmp_path: Path
) -> None:
    db, lock = tmp_path / "platform.db", tmp_path / "platform.db.lock"
    first = await spawn()
    key = (tmp_path / "platform.db.dev-api-key").read_text().strip()
    assert lock.read_text() == f"{first.process.pid}\n"
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        daemon = await register(http, first.url, key, "dev-1")
        code, out, err = await run_cli("platform", "serve", "--port", "0", "--db", str(db))
        assert (code, out) == (5, "")
        assert err == (
            f"envagent: the platform database {db} is in use by pid {first.process.pid} "
            f"(lock {lock}); SQLite serves one platform process\n"
        )
        # The refused start changed nothing: the first platform's socket is still online.
        assert await daemon.ping() == {"type": "pong"}
        row = await get_row(http, first.url, key, "dev-1")
        assert row["connectionId"] == daemon.connection_id
        assert lock.read_text() == f"{first.process.pid}\n"

        # The kernel drops the lock of a killed holder: the next start takes it.
        await first.stop(signal.SIGKILL)
        await daemon.wait_closed()
        second = await spawn()
        assert lock.read_text() == f"{second.process.pid}\n"
        assert (await get_row(http, second.url, key, "dev-1"))["id"] == row["id"]
        assert await second.stop(signal.SIGTERM) == 0
    assert lock.exists() and lock.read_text() == ""  # kept: a new file would be a second lock


async def test_a_lock_file_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_text("")
    (tmp_path / "platform.db.lock").symlink_to(tmp_path / "elsewhere")
    code, _, err = await run_cli(
        "platform", "serve", "--port", "0", "--db", str(tmp_path / "platform.db")
    )
    assert code == 1 and err.startswith("envagent: cannot lock the platform database")
    assert not (tmp_path / "platform.db").exists()  # refused before the database was touched


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


async def test_keys_list_shows_roles_and_never_a_key(tmp_path: Path) -> None:
    db = str(tmp_path / "platform.db")
    keys = []
    for args in (("--user", "u1", "--owner", "Ann"), ("--user", "u3", "--role", "admin")):
        code, out, err = await run_cli(
            "platform", "keys", "create", "--org", "org-a", *args, "--db", db
        )
        assert code == 0, err
        keys.append(out.strip())
    assert "admin key for user u3 of org-a" in err
    code, out, _ = await run_cli("platform", "keys", "list", "--db", db)
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == ["ORGANIZATION", "USER", "OWNER", "ROLE", "CREATED", "FINGERPRINT"]
    assert [line.split()[:4] for line in lines] == [
        ["org-a", "u1", "Ann", "member"],
        ["org-a", "u3", "-", "admin"],
    ]
    for key, line in zip(keys, lines, strict=True):
        assert key not in out and hash_key(key) not in out
        assert line.split()[-1] == hash_key(key)[:12]
    code, _, err = await run_cli(
        "platform", "keys", "create", "--org", "o", "--user", "u", "--role", "root", "--db", db
    )
    assert code == 2 and "invalid choice: 'root'" in err
