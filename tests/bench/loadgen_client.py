"""The benchmark's handle on a load generator process (`loadgen`): start it, send it a
command, read its answer, every wait bounded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import uuid
from typing import Any

from tests.bench.fixtures import PlatformProcess
from tests.bench.procs import BenchError, Child, Workspace

REPLY_SLACK_S = 30.0
"""Added to a command's own bound before the reply is given up on."""
QUIT_WAIT_S = 30.0


class LoadGen:
    def __init__(self, child: Child) -> None:
        self.child = child

    @classmethod
    async def start(
        cls, workspace: Workspace, platform: PlatformProcess, period_s: float
    ) -> LoadGen:
        """A generator whose daemons use `platform`, heartbeating every `period_s`; each
        generator gets its own device ids, so fleets never take each other's rows."""
        child = await workspace.spawn(
            "loadgen",
            [
                sys.executable,
                "-m",
                "tests.bench.loadgen",
                platform.url,
                str(period_s),
                f"sim-{uuid.uuid4().hex[:8]}",
            ],
            workspace.env(LETTA_API_KEY=platform.key),
            stdin=asyncio.subprocess.PIPE,
            stdout_pipe=True,
        )
        loadgen = cls(child)
        await loadgen._read("ready", REPLY_SLACK_S)
        return loadgen

    async def grow(self, size: int, within_s: float) -> dict[str, Any]:
        reply = await self.command({"op": "grow", "size": size, "within_s": within_s}, within_s)
        if not reply["complete"]:
            raise BenchError(f"only {reply['online']} of {size} simulated daemons came online")
        return reply

    async def measure(self, window_s: float, *, samples: bool = False) -> dict[str, Any]:
        message = {"op": "measure", "window_s": window_s, "samples": samples}
        return await self.command(message, window_s)

    async def command(self, message: dict[str, Any], within_s: float) -> dict[str, Any]:
        stdin = self.child.process.stdin
        assert stdin is not None
        stdin.write((json.dumps(message) + "\n").encode())
        await stdin.drain()
        return await self._read(message["op"], within_s + REPLY_SLACK_S)

    async def _read(self, op: str, within_s: float) -> dict[str, Any]:
        stdout = self.child.process.stdout
        assert stdout is not None
        try:
            async with asyncio.timeout(within_s):
                line = await stdout.readline()
        except TimeoutError:
            raise BenchError(
                f"the load generator did not answer {op!r} in {within_s:g} s"
            ) from None
        if not line:
            raise BenchError(f"the load generator exited:\n{self.child.tail()}")
        reply: dict[str, Any] = json.loads(line)
        if reply.get("op") != op:
            raise BenchError(f"the load generator answered {reply.get('op')!r} to {op!r}")
        return reply

    async def stop(self) -> None:
        """Ask it to quit (closing every socket), then make sure it did."""
        stdin = self.child.process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(b'{"op": "quit"}\n')
            stdin.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(QUIT_WAIT_S):
                await self.child.process.wait()
        await self.child.stop()
