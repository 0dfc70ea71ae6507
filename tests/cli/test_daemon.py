"""The CLI as a person uses it, against running daemons and platforms."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.platform.access import ApiKey
from agent.platform.keys import create_key
from agent.platform.store.sqlite import SqliteStore
from agent.protocol.models import MODES
from agent.support import exitcodes
from tests.conftest import StartPlatform
from tests.daemon_helpers import Spawn, cli, kill_all, online, start_daemon
from tests.helpers import WAIT_S, Platform, free_port, wait_for


async def test_make_run_default_embedded_platform(spawn: Spawn, tmp_path: Path) -> None:
    """No platform configured: the daemon starts the reference platform and is online at once."""
    daemon = await spawn(None, None, heartbeat_ms=None)

    async def printed() -> str:
        return "".join(daemon.stdout_lines)

    banner = await wait_for(printed, lambda text: "try: curl" in text)
    platform_url = re.search(r"platform listing: (\S+)", banner)
    local_url = re.search(r"local listing:\s+(\S+)", banner)
    key_file = re.search(r"\$\(cat (\S+)\)", banner)
    assert platform_url and local_url and key_file, banner
    assert stat.S_IMODE(os.stat(key_file[1]).st_mode) == 0o600
    key = Path(key_file[1]).read_text().strip()
    async with httpx.AsyncClient(timeout=WAIT_S) as http:

        async def platform_rows() -> list[dict[str, Any]]:
            reply = await http.get(platform_url[1], headers={"Authorization": f"Bearer {key}"})
            rows: list[dict[str, Any]] = reply.json()["connections"]
            return rows

        rows = await wait_for(platform_rows, lambda rows: bool(rows and rows[0]["connectionId"]))
        local = (await http.get(local_url[1])).json()["connections"]
    assert [row["id"] for row in local] == [row["id"] for row in rows]
    status = await daemon.status()
    assert status["embeddedPlatform"] is True and status["heartbeatPeriodS"] == 30
    assert key not in daemon.stderr() and key not in "".join(daemon.stdout_lines)
    assert await daemon.stop(signal.SIGINT) == exitcodes.OK


@pytest.mark.slow  # over 5 s
async def test_status_list_mode_metadata_and_config(
    platform: Platform, spawn: Spawn, repo: Path
) -> None:
    daemon = await spawn(platform.url, platform.key, "--name", "box", cwd=repo)
    status = await daemon.wait_status(online)

    code, out, _ = await cli(daemon.env, "status")
    assert code == 0
    assert re.search(r"^state\s+online$", out, re.M)
    assert re.search(rf"^device\s+{status['deviceId']}$", out, re.M)
    code, out, _ = await cli(daemon.env, "status", "--json")
    assert json.loads(out)["connectionId"] == status["connectionId"]
    assert json.loads(out)["state"] == "online"

    code, out, _ = await cli(daemon.env, "list")  # the platform's listing, as a table
    lines = out.splitlines()
    assert lines[0].split() == [
        "NAME", "ONLINE", "MODE", "OS", "BRANCH", "WORKDIR", "HEARTBEAT", "DEVICE",
    ]  # fmt: skip
    assert lines[1].split()[:6] == ["box", "yes", "default", "linux", "main", str(repo)]
    code, out, _ = await cli(daemon.env, "list", "--local", "--online-only", "--json")
    assert [row["deviceId"] for row in json.loads(out)] == [status["deviceId"]]

    assert (await cli(daemon.env, "mode"))[1].strip() == "default"
    code, out, _ = await cli(daemon.env, "mode", "set", "acceptEdits")
    assert (code, out.strip()) == (0, "acceptEdits")
    assert (await cli(daemon.env, "mode", "get"))[1].strip() == "acceptEdits"
    code, _, err = await cli(daemon.env, "mode", "set", "auto")
    assert code == exitcodes.CONFIG
    assert "argument MODE: invalid choice: 'auto'" in err and all(mode in err for mode in MODES)

    code, out, _ = await cli(daemon.env, "metadata", "--workdir", str(repo))
    metadata = json.loads(out)
    assert metadata["gitBranch"] == "main" and metadata["workingDirectory"] == str(repo)

    code, out, _ = await cli(daemon.env, "config", "show", "--mode", "standard")
    assert code == 0
    assert "mode = standard  (flag --mode)" in out
    assert f"base_url = {platform.url}  (env LETTA_BASE_URL)" in out
    assert f"api_key = ****{platform.key[-4:]}  (env LETTA_API_KEY)" in out
    assert platform.key not in out


async def test_commands_say_clearly_when_no_daemon_runs(tmp_path: Path) -> None:
    env = dict(os.environ) | {
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    code, _, err = await cli(env, "status")
    assert code == exitcodes.ERROR
    assert err.startswith("envagent: no daemon is running") and err.count("\n") == 1
    code, out, err = await cli(env, "status", "--json")  # still JSON, in the running one's shape
    assert (code, err) == (exitcodes.ERROR, "")
    assert set(json.loads(out)) == {"state", "reason"} and json.loads(out)["state"] == "stopped"
    assert json.loads(out)["reason"].startswith("no daemon is running")
    code, _, err = await cli(env, "run", "--mode", "turbo")
    assert code == exitcodes.CONFIG
    assert "argument --mode: invalid choice: 'turbo'" in err
    code, _, err = await cli(env | {"LETTA_BASE_URL": "http://127.0.0.1:9"}, "run")
    assert code == exitcodes.CONFIG and "no API key for http://127.0.0.1:9" in err
    damaged = tmp_path / "state" / "envagent" / "embedded-platform" / "platform.db"
    damaged.parent.mkdir(parents=True)
    damaged.write_text("not a database")
    code, _, err = await cli(env, "run")
    assert code == exitcodes.ERROR and err.count("\n") == 1
    assert f"cannot use the platform database {damaged}: file is not a database" in err


LETTA = "https://api.letta.com"


async def test_a_key_alone_means_letta_and_the_daemon_says_so(tmp_path: Path) -> None:
    """LETTA_API_KEY with no base URL: api.letta.com, said in one line at start, without the
    key. Every proxy variable names a closed port, so that nothing leaves the machine."""
    key = "envk_a_key_alone_0123456789"
    closed = f"http://127.0.0.1:{free_port()}"
    proxies = {name: closed for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")}
    env = {"LETTA_API_KEY": key, "NO_PROXY": "", "no_proxy": ""} | proxies
    daemon = await start_daemon(tmp_path / "state", env=env)
    try:
        status = await daemon.wait_status(lambda status: status["lastError"] is not None)
        assert (status["platformUrl"], status["embeddedPlatform"]) == (LETTA, False)
        said = [r["message"] for r in daemon.log_records() if r["logger"] == "envagent.config"]
        assert said == [f"an API key is set but no base URL: using {LETTA}"]
        assert await daemon.stop() == exitcodes.OK
        assert key not in daemon.stderr() and key not in "".join(daemon.stdout_lines)
    finally:
        await kill_all([daemon])


async def test_registration_retries_until_the_platform_appears(
    spawn: Spawn, start_platform: StartPlatform, tmp_path: Path
) -> None:
    store = await SqliteStore.open(tmp_path / "platform.db")  # the key exists before it runs
    key = await create_key(store, ApiKey("org-a", "user-a", None))
    await store.close()
    port = free_port()
    daemon = await spawn(f"http://127.0.0.1:{port}", key)
    status = await daemon.wait_status(lambda s: bool(s["lastError"]))
    assert status["state"] == "registering" and "cannot reach" in status["lastError"]
    health = await daemon.get("/healthz")
    assert health.status_code == 503
    assert health.json()["reason"].startswith("not connected (registering): cannot reach")
    await start_platform(port=port)
    status = await daemon.wait_status(online)
    assert status["registrations"] == 1 and status["lastError"] is None
    assert (await daemon.get("/healthz")).status_code == 200


async def test_parent_pid_stops_the_daemon_when_the_parent_exits(
    platform: Platform, spawn: Spawn
) -> None:
    parent = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        daemon = await spawn(platform.url, platform.key, "--parent-pid", str(parent.pid))
        status = await daemon.wait_status(online)
        parent.kill()
        await parent.wait()
        assert await daemon.wait_exit() == exitcodes.OK
        assert (await platform.row(status["deviceId"]))["connectionId"] is None
    finally:
        if parent.returncode is None:
            parent.kill()
            await parent.wait()


async def test_local_api_on_a_unix_socket(platform: Platform, spawn: Spawn, tmp_path: Path) -> None:
    path = tmp_path / "envagent.sock"
    daemon = await spawn(platform.url, platform.key, "--local-api-socket", str(path))
    assert (await daemon.local_url()) == f"unix:{path}"
    transport = httpx.AsyncHTTPTransport(uds=str(path))
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:

        async def status() -> dict[str, Any]:
            reply: dict[str, Any] = (await http.get("/v1/status")).json()
            return reply

        await wait_for(status, online)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    code, out, _ = await cli(daemon.env, "mode")
    assert (code, out.strip()) == (0, "default")
    assert await daemon.stop() == exitcodes.OK
    assert not path.exists()


async def test_the_platform_assigned_period_is_used(
    start_platform: StartPlatform, spawn: Spawn
) -> None:
    period_ms = 150
    platform = await start_platform(heartbeat_interval_ms=period_ms)
    daemon = await spawn(platform.url, platform.key, heartbeat_ms=None)
    status = await daemon.wait_status(lambda s: online(s) and s["heartbeats"]["answered"] >= 3)
    assert status["heartbeatPeriodS"] == period_ms / 1000
