"""Running under a service manager or a coding tool: sd_notify, the single-instance lock,
logs, and the API key kept out of everything but the config file."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
from pathlib import Path

from agent.platform.access import ApiKey
from agent.platform.keys import create_key
from agent.platform.store.sqlite import SqliteStore
from agent.support import exitcodes
from tests.conftest import StartPlatform
from tests.daemon_helpers import NotifySocket, Spawn, online, start_daemon
from tests.helpers import WAIT_S, Platform, free_port, wait_for


async def test_daemon_notifies_ready_before_the_platform_answers(
    notify_socket: NotifySocket, start_platform: StartPlatform, spawn: Spawn, tmp_path: Path
) -> None:
    port = free_port()
    platform_url = f"http://127.0.0.1:{port}"
    # A key that the platform will know once it starts.
    store = await SqliteStore.open(tmp_path / "platform.db")
    key = await create_key(store, ApiKey("org", "user", None))
    await store.close()
    daemon = await start_daemon(
        tmp_path / "daemon", "--heartbeat-ms", "200",
        env={
            "LETTA_BASE_URL": platform_url,
            "LETTA_API_KEY": key,
            "NOTIFY_SOCKET": notify_socket.address,
        },
    )  # fmt: skip
    try:
        ready = await notify_socket.until("READY")
        assert ready["MAINPID"] == str(daemon.process.pid)
        assert (await daemon.status())["state"] == "registering"  # ready without the platform
        await start_platform(port=port)
        online_status = await wait_for(
            notify_socket.receive, lambda m: m.get("STATUS", "").startswith("online")
        )
        assert "connection conn-" in online_status["STATUS"]
        await notify_socket.until("WATCHDOG")
        assert await daemon.stop() == exitcodes.OK
        await notify_socket.until("STOPPING")
    finally:
        if daemon.process.returncode is None:
            daemon.process.kill()
            await daemon.wait_exit()
    states = [m["STATUS"].split(":")[0] for m in notify_socket.messages if "STATUS" in m]
    assert states[0].startswith("started")
    assert "registering" in states and "online" in states and states[-1] in ("stopping", "stopped")


async def test_one_daemon_per_identity_and_attach(
    platform: Platform, spawn: Spawn, tmp_path: Path
) -> None:
    first = await spawn(platform.url, platform.key)
    status = await first.wait_status(online)
    second = await spawn(platform.url, platform.key)  # same XDG dirs: same identity
    assert await second.wait_exit() == exitcodes.ALREADY_RUNNING
    assert f"pid {first.process.pid}" in second.stderr()
    attach = await spawn(platform.url, platform.key, "--attach")
    assert await attach.wait_exit() == exitcodes.OK
    assert "".join(attach.stdout_lines).strip() == await first.local_url()
    # Another listener instance on the same device is another identity.
    other = await spawn(platform.url, platform.key, instance="second")
    other_status = await other.wait_status(online)
    assert other_status["deviceId"] == status["deviceId"]
    assert other_status["connectionId"] != status["connectionId"]
    assert online(await first.status())


async def test_a_lock_left_by_kill_9_is_reclaimed(platform: Platform, spawn: Spawn) -> None:
    first = await spawn(platform.url, platform.key)
    await first.wait_status(online)
    assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
    again = await spawn(platform.url, platform.key)
    await again.wait_status(online)  # only the new process's own status is accepted


async def test_debug_session_leaks_the_key_nowhere_but_the_config(
    platform: Platform, tmp_path: Path
) -> None:
    key = await create_key(platform.server.store, ApiKey("org-dev", "user-dev", None))
    state = tmp_path / "daemon"
    config = state / "config" / "envagent" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'api_key = "{key}"\nbase_url = "{platform.url}"\n')
    config.chmod(0o600)
    log_file = tmp_path / "logs" / "envagent.log"
    daemon = await start_daemon(
        state, "--debug", "--heartbeat-ms", "100", "--log-file", str(log_file), env={}
    )
    try:
        status = await daemon.wait_status(lambda s: online(s) and s["heartbeats"]["answered"] >= 3)
        # Exercise the paths that log: a platform command, a mode change, a sync.
        frames = f"{platform.url}/v1/environments/{status['connectionId']}/frames"
        for frame in (
            {"type": "sync", "request_id": "s"},
            {"type": "change_device_state", "payload": {"mode": "standard"}},
        ):
            await platform.http.post(frames, json=frame, headers=platform.auth())
        local_rows = (await daemon.get("/v1/environments")).text
        platform_rows = (await platform.list()).text
        local_status = (await daemon.get("/v1/status")).text
        cmdline = Path(f"/proc/{daemon.process.pid}/cmdline").read_bytes()
        assert await daemon.stop() == exitcodes.OK
    finally:
        if daemon.process.returncode is None:
            daemon.process.kill()
            await daemon.wait_exit()
    log_lines = daemon.stderr_lines + log_file.read_text().splitlines()
    assert any("→ " in line for line in log_lines), "--debug shows the frames"
    assert any("← " in line for line in log_lines)
    assert not [line for line in log_lines if key in line]
    assert key not in local_rows and key not in platform_rows and key not in local_status
    assert key.encode() not in cmdline
    holding = [
        path for path in tmp_path.rglob("*") if path.is_file() and key.encode() in path.read_bytes()
    ]
    assert holding == [config]  # the platform's database holds only the key's hash
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert {"time", "level", "logger", "message"} <= set(records[0])


async def test_journald_prefixes_when_stderr_is_the_journal(
    platform: Platform, tmp_path: Path
) -> None:
    """systemd sets JOURNAL_STREAM to stderr's device:inode; the daemon then writes
    `<priority>` lines without its own time."""
    log = tmp_path / "journal"
    with log.open("wb") as sink:
        info = os.fstat(sink.fileno())
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "run", "--heartbeat-ms", "100",
            stdin=-3, stdout=-3, stderr=sink,
            env=os.environ | {
                "XDG_STATE_HOME": str(tmp_path / "state"),
                "XDG_CONFIG_HOME": str(tmp_path / "config"),
                "LETTA_BASE_URL": platform.url,
                "LETTA_API_KEY": platform.key,
                "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}",
            },
        )  # fmt: skip
        try:

            async def journal() -> str:
                return log.read_text()

            await wait_for(journal, lambda text: "connected (" in text)
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), WAIT_S) == 0
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    lines = log.read_text().splitlines()
    assert lines and all(line[:3] in ("<6>", "<4>", "<3>", "<7>") for line in lines), lines
    assert any(line.startswith("<6>envagent.session: connected (") for line in lines)


async def test_final_exits_are_0_under_launchd_which_would_restart_on_anything_else(
    platform: Platform, spawn: Spawn, tmp_path: Path
) -> None:
    refused = await start_daemon(
        tmp_path / "launchd",
        env={
            "LETTA_BASE_URL": platform.url,
            "LETTA_API_KEY": "envk_refused",
            "XPC_SERVICE_NAME": "org.envagent",
        },
    )
    assert await refused.wait_exit() == exitcodes.OK
    assert "the platform refused the API key" in refused.stderr()
    plain = await spawn(platform.url, "envk_refused")
    assert await plain.wait_exit() == exitcodes.CREDENTIALS
