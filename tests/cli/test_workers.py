"""`envagent platform serve --workers N`: pods sharing one port and one PostgreSQL database,
frames reaching daemons whichever pod holds them, and a stop that ends every pod."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from pathlib import Path

from agent.support import exitcodes
from tests.conftest import StartPlatform
from tests.daemon_helpers import cli
from tests.helpers import WAIT_S
from tests.pod_helpers import pod_client, sync_through

DAEMONS = 40
"""Connections the kernel spreads over 2 pods: all on one has a chance of 2**-39."""


async def test_workers_share_the_port_and_answer_for_each_other(
    start_platform: StartPlatform, postgres_url: str
) -> None:
    keys = await pod_client(start_platform, postgres_url)
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "platform", "serve", "--workers", "2", "--port", "0",
        "--database", postgres_url, "--pod-id", "web",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,  # the pods too are killed at the end, whatever happens
    )  # fmt: skip
    try:
        assert supervisor.stdout is not None
        urls: list[str] = []
        while len(urls) < 2:  # one line a pod (they share the pipe: maybe on one line)
            line = (await asyncio.wait_for(supervisor.stdout.readline(), WAIT_S)).decode()
            assert line, "the workers exited before they listened"
            urls += re.findall(r"listening on (http://[\d.]+:\d+)", line)
        assert len(set(urls)) == 1, "every pod listens on the same port"
        web = keys.at(urls[0])
        daemons = [await web.connect(f"dev-{n}") for n in range(DAEMONS)]
        rows = await web.rows(limit="100")
        assert {row["podId"] for row in rows} == {"web-1", "web-2"}
        for daemon in daemons[:6]:  # asked of whichever pod the request reaches
            assert (await sync_through(web, daemon, "s")).status_code == 200
        supervisor.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(supervisor.wait(), WAIT_S) == exitcodes.OK
        for daemon in daemons:
            await daemon.wait_closed()
            assert daemon.ws.close_code == 1001
    finally:
        with contextlib.suppress(ProcessLookupError):  # the supervisor and its pods
            os.killpg(supervisor.pid, signal.SIGKILL)
        await supervisor.wait()


async def test_workers_on_sqlite_are_refused_in_one_line(tmp_path: Path) -> None:
    code, _, err = await cli(
        dict(os.environ),
        "platform",
        "serve",
        "--workers",
        "2",
        "--database",
        str(tmp_path / "p.db"),
    )
    assert code == exitcodes.CONFIG
    assert err == (
        "envagent: --workers needs a PostgreSQL database (--database postgresql://…): "
        "SQLite serves one platform process\n"
    )
