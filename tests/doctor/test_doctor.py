"""`envagent doctor` against real platforms and a real daemon: each failure named, with its fix,
and a healthy setup passing without disturbing the daemon it checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import StartPlatform
from tests.daemon_helpers import DaemonProcess, Spawn, cli, online
from tests.helpers import free_port


async def doctor(env: dict[str, str], *args: str) -> tuple[int, dict[str, dict[str, Any]]]:
    """Run `envagent doctor --json`; its exit code and its checks by name."""
    code, out, err = await cli(env, "doctor", "--json", *args)
    assert "Traceback" not in err, err
    report = json.loads(out)
    assert report["ok"] == (code == 0)
    return code, {check["name"]: check for check in report["checks"]}


def with_platform(daemon: DaemonProcess, url: str, key: str) -> dict[str, str]:
    """The daemon's environment (its state and config folders), pointed at `url` with `key`."""
    return daemon.env | {"LETTA_BASE_URL": url, "LETTA_API_KEY": key}


async def test_a_healthy_setup_passes_every_check_and_leaves_the_daemon_alone(
    start_platform: StartPlatform, spawn: Spawn
) -> None:
    platform = await start_platform()
    daemon = await spawn(platform.url, platform.key)
    before = await daemon.wait_status(online)

    code, checks = await doctor(daemon.env)

    assert code == 0, checks
    for name in ("settings", "state", "dns", "tcp", "proxy", "registration", "websocket", "clock"):
        assert checks[name]["verdict"] == "pass", checks[name]
    assert checks["tls"]["verdict"] == "skip"  # an http:// platform
    assert checks["state"]["summary"] == f"device id {before['deviceId']}"
    assert checks["lock"]["verdict"] == "pass"
    assert (
        checks["lock"]["summary"] == f"pid {daemon.process.pid} serves this identity and is online"
    )
    assert "127.0.0.1" in checks["dns"]["summary"]
    assert checks["proxy"]["details"] == ["HTTP (registration): direct", "WebSocket: direct"]
    settings = "\n".join(checks["settings"]["details"])
    assert "(env LETTA_BASE_URL)" in settings and platform.key not in settings
    # The doctor registered and connected as an identity of its own: the daemon kept its socket.
    after = await daemon.status()
    assert after["connectionId"] == before["connectionId"] and after["connects"] == 1
    rows = {row["connectionName"]: row for row in await platform.rows()}
    doctor_row = next(row for name, row in rows.items() if name.endswith("(envagent doctor)"))
    assert doctor_row["deviceId"] == before["deviceId"] and doctor_row["connectionId"] is None


async def test_a_wrong_key_fails_registration_naming_the_key(
    start_platform: StartPlatform, spawn: Spawn
) -> None:
    platform = await start_platform()
    daemon = await spawn(platform.url, platform.key)
    await daemon.wait_status(online)

    code, checks = await doctor(with_platform(daemon, platform.url, "sk-not-a-key"))

    assert code == 1
    registration = checks["registration"]
    assert registration["verdict"] == "fail"
    assert "refused the API key (HTTP 401" in registration["summary"]
    assert "check the API key (env LETTA_API_KEY)" in registration["fix"]
    assert checks["websocket"]["verdict"] == "skip"
    assert checks["tcp"]["verdict"] == "pass"


async def test_an_unreachable_platform_fails_at_the_first_hop_that_fails(spawn: Spawn) -> None:
    daemon = await spawn(None, None)  # any daemon: its folders are what the doctor reads
    await daemon.wait_status(online)
    closed = f"http://127.0.0.1:{free_port()}"

    code, checks = await doctor(with_platform(daemon, closed, "sk-any"))

    assert code == 1
    assert checks["dns"]["verdict"] == "pass"
    assert checks["tcp"]["verdict"] == "fail"
    assert "cannot connect to the platform 127.0.0.1" in checks["tcp"]["summary"]
    assert "nothing listens there" in checks["tcp"]["fix"]
    for later in ("proxy", "tls", "registration", "websocket", "clock"):
        assert checks[later] == {
            "name": later, "verdict": "skip", "summary": "needs tcp (failed above)",
            "fix": None, "details": [],
        }  # fmt: skip
    # No daemon serves that platform's identity: the lock check says so.
    assert checks["lock"]["verdict"] == "fail"
    assert checks["lock"]["summary"] == "no daemon serves this identity (no lock holder)"


async def test_a_host_that_does_not_resolve_fails_dns(spawn: Spawn) -> None:
    daemon = await spawn(None, None)
    await daemon.wait_status(online)

    code, checks = await doctor(with_platform(daemon, "http://no-such-host.invalid", "sk-any"))

    assert code == 1
    assert checks["dns"]["verdict"] == "fail"
    assert checks["dns"]["summary"].startswith("cannot resolve no-such-host.invalid: ")
    assert checks["tcp"]["summary"] == "needs dns (failed above)"


async def test_bad_settings_fail_the_first_check_and_skip_the_rest(
    spawn: Spawn, tmp_path: Path
) -> None:
    daemon = await spawn(None, None)
    env = daemon.env | {"ENVAGENT_MODE": "yolo"}

    code, checks = await doctor(env)

    assert code == 1
    assert checks["settings"]["verdict"] == "fail"
    assert "mode from env ENVAGENT_MODE" in checks["settings"]["summary"]
    assert {check["verdict"] for name, check in checks.items() if name != "settings"} == {"skip"}


async def test_the_embedded_platform_skips_the_network_and_finds_its_daemon(spawn: Spawn) -> None:
    daemon = await spawn(None, None)
    await daemon.wait_status(online)

    code, out, _ = await cli(daemon.env, "doctor")

    assert code == 0, out
    assert "PASS lock" in out and f"pid {daemon.process.pid} serves this identity" in out
    assert "SKIP registration  no base URL: the daemon starts its own reference platform" in out
    assert "checks: 0 failed" in out.splitlines()[-1]
