"""The `execute_command` names this daemon runs, and running them.

Every command is answered, an unknown one with `success: false` naming the ones it knows. No
command reads the frame's `args`: the platform chooses what runs, never how.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

from agent.protocol.models import (
    DaemonStatus,
    ExecuteCommandFrame,
    ExecuteCommandResponseFrame,
    Metadata,
)

if TYPE_CHECKING:
    from agent.daemon.config import Settings
    from agent.upgrade.install import Result

log = logging.getLogger("envagent.commands")


class CommandHost(Protocol):
    @property
    def metadata(self) -> Metadata: ...

    @property
    def settings(self) -> Settings: ...

    async def refresh(self) -> bool: ...

    def status(self) -> DaemonStatus: ...

    def request_restart(self, why: str) -> None: ...


class CommandFailed(Exception):
    """A command ran and did not succeed; the message is its whole answer."""


class Commands:
    NAMES = ("refresh_metadata", "get_status", "upgrade")

    def __init__(self, host: CommandHost) -> None:
        self._host = host
        self._handlers: dict[str, Callable[[], Awaitable[str]]] = {
            "refresh_metadata": self._refresh_metadata,
            "get_status": self._get_status,
            "upgrade": self._upgrade,
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
        except CommandFailed as failed:
            log.warning("command %s: %s", frame.command_id, failed)
            return ExecuteCommandResponseFrame(
                request_id=frame.request_id, success=False, output=str(failed)
            )
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

    async def _upgrade(self) -> str:
        """Upgrade from the daemon's own package source, then restart into the new version.

        The answer reaches the platform before the daemon stops: `request_restart` only sets
        the stopping event, and nothing awaits between it and the session writing this answer
        to the socket, so the session sees the event only once the answer is on its way.
        """
        # Imported here: the installer is needed only when the platform asks for an upgrade.
        from agent.upgrade.install import upgrade

        work = asyncio.ensure_future(
            asyncio.to_thread(upgrade, self._host.settings.upgrade_find_links)
        )
        try:
            result = await asyncio.shield(work)
        except asyncio.CancelledError:
            # The session ended while the installer ran (which a thread cannot stop, nor
            # should): the answer has nowhere to go, but the daemon still restarts into what
            # was installed rather than run old code over new files.
            work.add_done_callback(self._restart_when_upgraded)
            raise
        if not result.ok:
            raise CommandFailed(result.message)
        self._restart_if_needed(result)
        return result.message

    def _restart_when_upgraded(self, work: asyncio.Future[Result]) -> None:
        if work.cancelled():  # only when the event loop itself is shutting down
            return
        failure = work.exception()
        if failure is not None:
            log.error("command upgrade failed", exc_info=failure)
            return
        log.info("command upgrade, finished after its session ended: %s", work.result().message)
        self._restart_if_needed(work.result())

    def _restart_if_needed(self, result: Result) -> None:
        if result.restart_needed:
            self._host.request_restart(result.message)
