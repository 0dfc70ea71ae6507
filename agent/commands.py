"""The `execute_command` names this daemon runs, and running them.

Every command is answered, an unknown one with `success: false` naming the ones it knows.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from agent.models import DaemonStatus, ExecuteCommandFrame, ExecuteCommandResponseFrame, Metadata

log = logging.getLogger("envagent.commands")


class CommandHost(Protocol):
    @property
    def metadata(self) -> Metadata: ...

    async def refresh(self) -> bool: ...

    def status(self) -> DaemonStatus: ...


class Commands:
    NAMES = ("refresh_metadata", "get_status")

    def __init__(self, host: CommandHost) -> None:
        self._host = host
        self._handlers: dict[str, Callable[[], Awaitable[str]]] = {
            "refresh_metadata": self._refresh_metadata,
            "get_status": self._get_status,
        }

    async def run(self, frame: ExecuteCommandFrame) -> ExecuteCommandResponseFrame:
        handler = self._handlers.get(frame.command_id)
        if handler is None:
            known = ", ".join(self.NAMES)
            output = f"unknown command {frame.command_id!r}: this daemon runs {known}"
            return ExecuteCommandResponseFrame(
                request_id=frame.request_id, success=False, output=output
            )
        try:
            output = await handler()
        except Exception as exc:
            log.exception("command %s failed", frame.command_id)
            return ExecuteCommandResponseFrame(
                request_id=frame.request_id,
                success=False,
                output=f"{frame.command_id} failed: {exc}",
            )
        return ExecuteCommandResponseFrame(request_id=frame.request_id, success=True, output=output)

    async def _refresh_metadata(self) -> str:
        """Read the machine again now; the session reports a change right after."""
        await self._host.refresh()
        return self._host.metadata.to_json()

    async def _get_status(self) -> str:
        return self._host.status().to_json()
