"""Stop when the process that started us exits (`--parent-pid`), without ticking while idle.

On Linux a pidfd becomes readable when the process exits, so the wait costs nothing. Elsewhere
the pid is checked every few seconds.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

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
        while _alive(self._pid):  # noqa: ASYNC110  # no event exists for this; see docstring
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
