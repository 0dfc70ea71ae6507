"""Real daemons (`python -m agent run`) against the real reference platform, on 127.0.0.1.

Heartbeats are shortened to 200 ms by configuration so that every rule shows within a second
or two; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from letta_client import AsyncLetta

from agent import __version__
from agent.platform.access import ApiKey
from agent.platform.keys import create_key
from agent.support import exitcodes
from tests.conftest import StartPlatform
from tests.daemon_helpers import Spawn, TcpProxy, online
from tests.helpers import WAIT_S, Platform, wait_for


async def platform_row(platform: Platform, device_id: str) -> dict[str, Any]:
    return await platform.row(device_id)


async def test_start_goes_online_with_the_machine_s_metadata(
    platform: Platform, spawn: Spawn, repo: Path
) -> None:
    daemon = await spawn(
        platform.url, platform.key, "--mode", "acceptEdits", "--name", "ci-box", cwd=repo
    )
    status = await daemon.wait_status(online)
    row = await platform_row(platform, status["deviceId"])
    assert row["connectionId"] == status["connectionId"]
    assert row["connectionName"] == "ci-box"
    assert row["currentMode"] == "acceptEdits"
    metadata = row["metadata"]
    assert metadata["os"] == {"linux": "linux", "darwin": "darwin"}.get(sys.platform, "win32")
    assert metadata["workingDirectory"] == str(repo)
    assert metadata["gitBranch"] == "main"
    assert metadata["lettaCodeVersion"] == __version__
    assert metadata["supported_commands"] == ["refresh_metadata", "get_status", "upgrade"]
    assert set(metadata["self_update"]) >= {"supported", "writable", "install_path"}
    node = shutil.which("node")
    if node:
        probe = await asyncio.create_subprocess_exec(node, "--version", stdout=-1)
        version, _ = await asyncio.wait_for(probe.communicate(), WAIT_S)
        assert metadata["nodeVersion"] == version.decode().strip()
    # The local listing shows the same row.
    local = (await daemon.get("/v1/environments")).json()["connections"]
    assert len(local) == 1
    assert local[0]["id"] == row["id"] and local[0]["metadata"] == metadata
    health = await daemon.get("/healthz")
    assert health.status_code == 200 and health.json()["ok"] is True
    assert await daemon.stop() == exitcodes.OK


async def test_mode_from_the_local_api_reaches_the_platform(
    platform: Platform, spawn: Spawn, tmp_path: Path
) -> None:
    daemon = await spawn(platform.url, platform.key)
    status = await daemon.wait_status(online)
    token = (tmp_path / "daemon" / "envagent" / "local-api-token").read_text().strip()
    async with httpx.AsyncClient(base_url=await daemon.local_url()) as http:
        refused = await http.put("/v1/mode", json={"mode": "unrestricted"})
        assert refused.status_code == 401
        bad = await http.put(
            "/v1/mode", json={"mode": "yolo"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert bad.status_code == 422 and "bypassPermissions" in bad.json()["message"]
        good = await http.put(
            "/v1/mode", json={"mode": "unrestricted"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert good.status_code == 200
    row = await wait_for(
        lambda: platform_row(platform, status["deviceId"]),
        lambda r: r["currentMode"] == "unrestricted",
        within=2.0,
    )
    assert row["connectionId"] == status["connectionId"]
    # Persisted: a restart comes back in the same mode.
    assert await daemon.stop() == exitcodes.OK
    again = await spawn(platform.url, platform.key)
    assert (await again.wait_status(online))["mode"] == "unrestricted"


async def test_change_device_state_from_the_platform_shows_locally(
    platform: Platform, spawn: Spawn, repo: Path, tmp_path: Path
) -> None:
    daemon = await spawn(platform.url, platform.key, cwd=tmp_path)
    status = await daemon.wait_status(online)
    frame = {
        "type": "change_device_state",
        "runtime": {"agent_id": "agent-1", "conversation_id": "conv-1"},
        "payload": {"mode": "bypassPermissions", "cwd": str(repo)},
    }
    sent = await platform.http.post(
        f"{platform.url}/v1/environments/{status['connectionId']}/frames",
        json=frame,
        headers=platform.auth(),
    )
    assert sent.status_code == 204

    async def local_row() -> dict[str, Any]:
        row: dict[str, Any] = (await daemon.get("/v1/environments")).json()["connections"][0]
        return row

    row = await wait_for(local_row, lambda r: r["currentMode"] == "bypassPermissions")
    assert row["metadata"]["workingDirectory"] == str(repo)
    assert row["metadata"]["gitBranch"] == "main"
    remote = await wait_for(
        lambda: platform_row(platform, status["deviceId"]),
        lambda r: r["metadata"].get("gitBranch") == "main",
    )
    assert remote["currentMode"] == "bypassPermissions"


async def test_sync_and_execute_command_are_answered(platform: Platform, spawn: Spawn) -> None:
    daemon = await spawn(platform.url, platform.key)
    status = await daemon.wait_status(online)
    url = f"{platform.url}/v1/environments/{status['connectionId']}/frames"

    async def ask(frame: dict[str, Any]) -> dict[str, Any]:
        reply = await platform.http.post(url, json=frame, headers=platform.auth())
        assert reply.status_code == 200, reply.text
        answer: dict[str, Any] = reply.json()
        return answer

    assert await ask({"type": "sync", "request_id": "s-1"}) == {
        "type": "sync_response",
        "request_id": "s-1",
        "success": True,
    }
    answer = await ask({"type": "execute_command", "command_id": "get_status", "request_id": "e-1"})
    assert answer["success"] is True
    assert json.loads(answer["output"])["deviceId"] == status["deviceId"]
    answer = await ask({"type": "execute_command", "command_id": "rm_rf", "request_id": "e-2"})
    assert answer["success"] is False
    assert "unknown command 'rm_rf'" in answer["output"]
    answer = await ask(
        {"type": "execute_command", "command_id": "refresh_metadata", "request_id": "e-3"}
    )
    assert json.loads(answer["output"])["os"] == "linux"


async def test_platform_killed_and_restarted(start_platform: StartPlatform, spawn: Spawn) -> None:
    platform = await start_platform()
    daemon = await spawn(platform.url, platform.key)
    status = await daemon.wait_status(online)
    before = await platform_row(platform, status["deviceId"])
    port = platform.server.port
    await platform.server.stop()
    await daemon.wait_status(lambda s: s["state"] != "online")
    restarted = await start_platform(port=port)
    status = await daemon.wait_status(lambda s: online(s) and s["connects"] >= 2)
    after = await platform_row(restarted, status["deviceId"])
    assert (after["id"], after["firstSeenAt"]) == (before["id"], before["firstSeenAt"])
    assert after["connectionId"] == status["connectionId"]
    assert status["registrations"] == 1  # the issued connection id survived the restart
    said = [r["message"] for r in daemon.log_records() if r["message"].startswith("online as ")]
    assert said == [  # once per process: a reconnect says nothing more
        f"online as {status['connectionName']}: "
        f"platform GET {platform.url}/v1/environments/{status['deviceId']}, "
        f"local GET {await daemon.local_url()}/v1/environments"
    ]


@pytest.mark.slow  # over 5 s
async def test_1008_makes_the_daemon_register_again(
    start_platform: StartPlatform, spawn: Spawn
) -> None:
    platform = await start_platform()
    daemon = await spawn(platform.url, platform.key)
    status = await daemon.wait_status(online)
    # Someone registers this identity meanwhile: the daemon's connection id is superseded.
    await platform.register(status["deviceId"], connectionName=status["connectionName"])
    port = platform.server.port
    await platform.server.stop()
    restarted = await start_platform(port=port)
    status = await daemon.wait_status(lambda s: online(s) and s["registrations"] >= 2)
    row = await platform_row(restarted, status["deviceId"])
    assert row["connectionId"] == status["connectionId"]


async def test_replaced_daemon_exits_with_its_code_and_the_other_keeps_the_slot(
    platform: Platform, spawn: Spawn, tmp_path: Path
) -> None:
    first = await spawn(platform.url, platform.key)
    status = await first.wait_status(online)
    # A second daemon with the same identity: its state is a copy of the first one's.
    (tmp_path / "second" / "envagent").mkdir(parents=True)
    shutil.copy(
        tmp_path / "daemon" / "envagent" / "state.json",
        tmp_path / "second" / "envagent" / "state.json",
    )
    second = await spawn(platform.url, platform.key, state="second")
    second_status = await second.wait_status(online)
    assert second_status["deviceId"] == status["deviceId"]
    assert await first.wait_exit() == exitcodes.REPLACED
    assert "another process took this identity" in first.stderr()
    row = await platform_row(platform, status["deviceId"])
    assert row["connectionId"] == second_status["connectionId"]
    assert online(await second.status())


async def test_sigterm_goes_offline_in_the_platform_at_once(
    platform: Platform, spawn: Spawn
) -> None:
    daemon = await spawn(platform.url, platform.key)
    status = await daemon.wait_status(online)
    assert await daemon.stop(signal.SIGTERM) == exitcodes.OK
    row = await platform_row(platform, status["deviceId"])
    assert row["connectionId"] is None  # "left", with no wait for the online window
    assert not daemon.address_file.exists()


async def test_a_silent_proxy_is_detected_and_the_daemon_reconnects(
    platform: Platform, spawn: Spawn
) -> None:
    proxy = TcpProxy(platform.server.port)
    daemon = await spawn(await proxy.start(), platform.key)
    status = await daemon.wait_status(online)
    proxy.freeze()  # every open connection now swallows data and never closes
    reconnected = await daemon.wait_status(lambda s: online(s) and s["connects"] >= 2)
    assert "3 pings unanswered: dropping the socket" in daemon.stderr()
    assert reconnected["registrations"] == 1
    row = await platform_row(platform, status["deviceId"])
    assert row["connectionId"] == reconnected["connectionId"]
    await proxy.stop()


async def test_refused_key_is_one_line_and_the_credentials_code(
    platform: Platform, spawn: Spawn
) -> None:
    proxy = TcpProxy(platform.server.port)
    daemon = await spawn(await proxy.start(), "envk_not-a-real-key")
    assert await daemon.wait_exit() == exitcodes.CREDENTIALS
    errors = [record for record in daemon.log_records() if record["level"] == "error"]
    assert len(errors) == 1
    assert "the platform refused the API key (HTTP 401" in errors[0]["message"]
    assert proxy.connections == 1  # no retry storm
    await proxy.stop()


async def test_letta_sdk_reads_the_local_listing(platform: Platform, spawn: Spawn) -> None:
    daemon = await spawn(platform.url, platform.key)
    status = await daemon.wait_status(online)
    client = AsyncLetta(
        base_url=await daemon.local_url(), api_key="unused", _strict_response_validation=True
    )
    listing = await client.environments.list(online_only="true", limit="5")
    assert [row.device_id for row in listing.connections] == [status["deviceId"]]
    row = listing.connections[0]
    assert row.connection_id == status["connectionId"]
    assert row.current_mode == "default"
    remote = await platform_row(platform, status["deviceId"])
    assert row.id == remote["id"] and row.first_seen_at == remote["firstSeenAt"]
    assert row.organization_id == remote["organizationId"]
    assert (await client.environments.list(source="remote")).connections == []
    assert (await client.environments.list(user_id="someone-else")).connections == []
    assert (await client.environments.list(after=row.id)).connections == []


async def test_status_verify_finds_differences(
    platform: Platform, spawn: Spawn, tmp_path: Path
) -> None:
    daemon = await spawn(platform.url, platform.key, "--name", "box")
    status = await daemon.wait_status(online)

    async def verify() -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "status", "--verify",
            stdout=-1, stderr=-1, env=daemon.env,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), WAIT_S)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    code, out, _ = await verify()
    assert code == 0 and "matches" in out
    # The platform's row now says something the daemon did not.
    other = await create_key(platform.server.store, ApiKey("org-dev", "user-dev", "x"))
    await platform.register(status["deviceId"], other, connectionName="renamed")
    code, out, err = await verify()
    assert code == 1
    assert "connectionName: local 'box', platform 'renamed'" in out
    assert "field(s) differ" in err


async def test_a_thousand_malformed_frames_do_not_end_the_session(
    spawn: Spawn,
) -> None:
    """A scripted platform (a real local server) floods the daemon with bad frames."""
    pongs_after_flood = asyncio.Event()
    received: list[dict[str, Any]] = []

    async def register(request: web.Request) -> web.Response:
        host = request.host
        return web.json_response(
            {"connectionId": "c-1", "wsUrl": f"ws://{host}/ws?connectionId=c-1"}, status=201
        )

    async def socket(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        bad = [
            "not json",
            "[]",
            "{}",
            '{"type": "nope"}',
            '{"type": "execute_command"}',
            "[" * 3000 + "]" * 3000,  # past any recursive parser's stack
            '{"type": "sync", "request_id": ' + "{" * 3000 + "}" * 3000 + "}",
        ]
        for n in range(1000):
            await ws.send_str(bad[n % len(bad)])
        await ws.send_bytes(b"\x00binary")
        await ws.send_bytes(b'{"type": "sync", "request_id": "sent-as-binary"}')
        await ws.send_str('{"type": "sync", "padding": "' + "x" * 300_000 + '"}')
        async for message in ws:
            received.append(json.loads(message.data))
            if received[-1]["type"] == "ping":
                await ws.send_str('{"type": "pong"}')
                pongs_after_flood.set()
        return ws

    app = web.Application()
    app.router.add_post("/v1/environments/register", register)
    app.router.add_get("/ws", socket)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        daemon = await spawn(f"http://{host}:{port}", "envk_any")
        await asyncio.wait_for(pongs_after_flood.wait(), WAIT_S)
        status = await daemon.wait_status(lambda s: s["heartbeats"]["answered"] >= 3)
        assert status["state"] == "online" and status["connects"] == 1
        assert (await daemon.get("/healthz")).status_code == 200
        assert "ignored a frame" in daemon.stderr()
        assert "ignored a binary frame" in daemon.stderr()
        # Frames are JSON text: a binary frame is not acted on, whatever it holds.
        assert not [frame for frame in received if frame.get("request_id") == "sent-as-binary"]
        assert await daemon.stop() == exitcodes.OK
    finally:
        await runner.cleanup()


async def test_a_branch_switch_reaches_the_platform_at_the_next_heartbeat(
    platform: Platform, spawn: Spawn, repo: Path
) -> None:
    daemon = await spawn(platform.url, platform.key, cwd=repo)
    status = await daemon.wait_status(online)
    switch = await asyncio.create_subprocess_exec(
        "git", "-C", str(repo), "symbolic-ref", "HEAD", "refs/heads/feature/x"
    )
    assert await asyncio.wait_for(switch.wait(), WAIT_S) == 0
    row = await wait_for(
        lambda: platform_row(platform, status["deviceId"]),
        lambda r: r["metadata"]["gitBranch"] == "feature/x",
    )
    assert row["connectionId"] == status["connectionId"]  # the same session told it
