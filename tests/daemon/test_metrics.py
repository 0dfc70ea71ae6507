"""Real daemons heartbeating against the real reference platform, both `/metrics` scraped over
HTTP and read with prometheus_client's parser; the process block of `envagent status`; and
that a daemon loads neither prometheus_client nor psutil until it is asked for them."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

import httpx
import pytest

from agent.support import exitcodes
from tests.conftest import StartPlatform
from tests.daemon_helpers import DaemonProcess, Spawn, cli, online
from tests.helpers import WAIT_S, Platform
from tests.metrics_helpers import Scrape, scrape

HEARTBEAT_S = 0.2
"""The `spawn` fixture's heartbeat period."""


async def _scrape(http: httpx.AsyncClient, daemon: DaemonProcess) -> Scrape:
    return await scrape(http, await daemon.local_url())


def _answered_often(status: dict[str, object]) -> bool:
    beats = status["heartbeats"]
    return online(status) and isinstance(beats, dict) and beats["answered"] >= 3


async def test_daemons_and_their_platform_agree_in_their_metrics(
    start_platform: StartPlatform, spawn: Spawn
) -> None:
    platform = await start_platform()
    daemons = [await spawn(platform.url, platform.key, state=name) for name in ("a", "b")]
    statuses = [await daemon.wait_status(_answered_often) for daemon in daemons]
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        before = [await _scrape(http, daemon) for daemon in daemons]
        seen = await scrape(http, platform.url)
        after = [await _scrape(http, daemon) for daemon in daemons]

    for status, own in zip(statuses, before, strict=True):
        assert own.value("envagent_state", state="online") == 1
        assert own.total("envagent_state") == 1
        assert {"starting", "registering", "reconnecting", "stopped"} <= own.labels(
            "envagent_state", "state"
        )
        answered = status["heartbeats"]["answered"]
        round_trips = own.value("envagent_heartbeat_rtt_seconds_count")
        assert answered <= round_trips == own.value("envagent_pongs_total")
        assert own.value("envagent_heartbeat_rtt_seconds_bucket", le="+Inf") == round_trips
        mean_rtt_s = own.value("envagent_heartbeat_rtt_seconds_sum") / round_trips
        assert 0 < mean_rtt_s < 1
        assert 0 <= own.value("envagent_last_pong_age_seconds") < 10 * HEARTBEAT_S
        assert own.value("envagent_heartbeat_period_seconds") == HEARTBEAT_S
        assert own.value("envagent_registration_attempts_total", outcome="ok") == 1
        assert own.value("envagent_registration_attempts_total", outcome="failed") == 0
        assert own.value("envagent_connects_total") == 1
        assert own.total("envagent_reconnects_total") == 0
        assert own.value("envagent_process_resident_memory_bytes") > 1024 * 1024
        assert own.value("envagent_process_cpu_seconds_total") > 0
        assert own.value("envagent_process_open_fds") > 0
        assert own.value("envagent_process_threads") >= 1

    assert seen.value("envagent_platform_sockets_open") == 2
    assert seen.value("envagent_platform_registrations_total", outcome="created") == 2
    assert seen.value("envagent_platform_sockets_silent") == 0
    # Every pong a daemon had counted was sent, for a ping received; every ping received had
    # been sent by the time the daemons were scraped again.
    pongs_received = sum(own.value("envagent_pongs_total") for own in before)
    pings_sent = sum(own.value("envagent_pings_total") for own in after)
    assert pongs_received <= seen.value("envagent_platform_pongs_total")
    assert seen.value("envagent_platform_pongs_total") <= seen.value(
        "envagent_platform_pings_total"
    )
    assert seen.value("envagent_platform_pings_total") <= pings_sent


async def test_reconnects_are_counted_by_cause_and_a_refused_key_on_the_platform(
    platform: Platform, spawn: Spawn
) -> None:
    daemon = await spawn(platform.url, platform.key)
    await daemon.wait_status(online)
    await platform.server.relay.close_all()  # 1001, going away: the daemon comes back
    await daemon.wait_status(lambda status: online(status) and status["connects"] == 2)
    refused = await spawn(platform.url, "envk_not_a_key", state="refused")
    assert await refused.wait_exit() == exitcodes.CREDENTIALS
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        own = await _scrape(http, daemon)
        seen = await scrape(http, platform.url)
    assert own.value("envagent_reconnects_total", cause="closed_normal") == 1
    assert own.value("envagent_reconnects_total", cause="dead_peer") == 0
    assert own.value("envagent_connects_total") == 2
    assert own.value("envagent_registration_attempts_total", outcome="ok") == 1
    assert seen.value("envagent_platform_registrations_total", outcome="refused_key") == 1
    assert seen.value("envagent_platform_registrations_total", outcome="created") == 1
    assert seen.value("envagent_platform_sockets_closed_total") == 1


async def test_status_shows_what_the_process_costs(platform: Platform, spawn: Spawn) -> None:
    daemon = await spawn(platform.url, platform.key)
    await daemon.wait_status(online)
    process = (await daemon.status())["process"]
    assert process["pid"] == daemon.process.pid
    assert process["rssBytes"] > 1024 * 1024 and process["cpuSeconds"] > 0
    assert process["openFiles"] > 0 and process["threads"] >= 1 and process["uptimeS"] > 0
    code, out, _ = await cli(daemon.env, "status")
    assert code == 0
    line = rf"^process\s+pid {daemon.process.pid}, up \d+ s, RSS \d+\.\d MiB, CPU \d+\.\d\d s, "
    assert re.search(line + r"\d+ open files, \d+ threads$", out, re.M), out
    code, out, _ = await cli(daemon.env, "status", "--json")
    assert code == 0
    shown = json.loads(out)["process"]
    assert set(shown) == {"pid", "rssBytes", "cpuSeconds", "openFiles", "threads", "uptimeS"}
    assert shown["pid"] == daemon.process.pid


RUN_AND_LOOK = """
import asyncio, json, sys
from agent.daemon.config import load_settings
from agent.daemon.core import Daemon

LIBRARIES = ("prometheus_client", "psutil")


async def main() -> None:
    daemon = Daemon(load_settings({}).settings)
    running = asyncio.create_task(daemon.run())
    async with asyncio.timeout(10):
        while not daemon.health().ok:  # online: registered, the socket open
            assert not running.done(), running.result()
            await asyncio.sleep(0.02)
    at_start = [name for name in LIBRARIES if name in sys.modules]
    scraped = daemon.metrics().body.decode()
    after_scrape = [name for name in LIBRARIES if name in sys.modules]
    daemon.stopping.set()
    await running
    print(json.dumps([at_start, after_scrape, 'envagent_state{state="online"} 1.0' in scraped]))


asyncio.run(main())
"""


@pytest.mark.parametrize("where", ["external", "embedded"])
async def test_a_daemon_loads_prometheus_client_and_psutil_only_when_scraped(
    platform: Platform, tmp_path: Path, where: str
) -> None:
    """Its memory and start-up budget: neither library until the first scrape, also with the
    platform embedded (whose metrics are counted from its start)."""
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LETTA_", "ENVAGENT_"))
    }
    if where == "external":
        environ |= {"LETTA_BASE_URL": platform.url, "LETTA_API_KEY": platform.key}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", RUN_AND_LOOK, stdout=-1, stderr=-1, env=environ, cwd=tmp_path
    )
    out, err = await asyncio.wait_for(process.communicate(), WAIT_S * 2)
    assert process.returncode == 0, err.decode()
    at_start, after_scrape, scraped = json.loads(out)
    assert at_start == []
    assert after_scrape == ["prometheus_client", "psutil"]
    assert scraped
