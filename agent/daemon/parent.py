"""Stop when the process that started us exits (`--parent-pid`), without ticking while idle.

On Linux a pidfd becomes readable when the process exits, so the wait costs nothing. Elsewhere
the process is looked at every few seconds with psutil, which knows it by pid and start time:
a pid reused by another process after the parent's end, or a parent that has exited and not
been reaped yet (a zombie), does not keep the daemon running.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil

POLL_S = 2.0


class ParentWatch:
    def __init__(self, pid: int, on_exit: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._pid = pid
        self._on_exit = on_exit
        self._fd: int | None = None
        self._poller: asyncio.Task[None] | None = None
        self._gone: asyncio.Handle | None = None
        try:
            self._fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._gone = self._loop.call_soon(on_exit)
        except (AttributeError, OSError):  # not Linux, or an old kernel
            self._poller = asyncio.create_task(self._poll())
        else:
            self._loop.add_reader(self._fd, self._exited)

    def _exited(self) -> None:
        self.cancel()
        self._on_exit()

    async def _poll(self) -> None:
        import psutil  # only where there is no pidfd: nowhere else does the daemon pay for it

        try:
            watched: psutil.Process | None = psutil.Process(self._pid)
        except psutil.NoSuchProcess:
            watched = None
        while watched is not None and _running(watched):  # noqa: ASYNC110  # no event exists
            await asyncio.sleep(POLL_S)
        self._on_exit()

    def cancel(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
        if self._poller is not None:
            self._poller.cancel()
        if self._gone is not None:
            self._gone.cancel()


def _running(process: psutil.Process) -> bool:
    """The very process that was watched, and not a zombie; another user's counts as alive."""
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # macOS hides another user's process details: it exists
        return True
