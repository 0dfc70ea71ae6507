"""Starting again after an upgrade: the service manager does it, or the daemon re-executes."""

from __future__ import annotations

import logging
import os
import sys

from agent.support import exitcodes

log = logging.getLogger("envagent")


FINAL_EXIT_CODES = frozenset(
    {
        exitcodes.CONFIG,
        exitcodes.CREDENTIALS,
        exitcodes.REPLACED,
        exitcodes.ALREADY_RUNNING,
        exitcodes.FILES,
    }
)
"""Exits after which starting again cannot help (settings, a refused key, replaced, taken, an
unusable file)."""


def under_launchd() -> bool:
    return bool(os.environ.get("XPC_SERVICE_NAME"))


def under_service_manager() -> bool:
    """systemd sets INVOCATION_ID for every unit it runs; launchd sets XPC_SERVICE_NAME."""
    return bool(os.environ.get("INVOCATION_ID")) or under_launchd()


def service_exit_code(code: int) -> int:
    """The code to exit with, given who restarts us.

    systemd is told not to restart on the final codes (`RestartPreventExitStatus`); launchd's
    `KeepAlive {SuccessfulExit: false}` restarts on any non-zero exit and cannot be told
    otherwise, so under launchd those end with 0 (the log says why), lest a replaced daemon come
    back every throttle interval and take the slot again.
    """
    if code in FINAL_EXIT_CODES and under_launchd():
        log.info("exit code %d reported as 0 to launchd, which would restart on it", code)
        return 0
    return code


def restart_in_place() -> None:
    """Replace this process with the (new) daemon, same interpreter path and arguments.

    The pid stays, so a coding tool watching it sees no exit; the lock and sockets were closed
    (they are close-on-exec), so the new image takes them afresh.
    """
    # -P: no current folder on sys.path, or a folder holding its own `agent` package would run.
    argv = [sys.executable, "-P", "-m", "agent", *sys.argv[1:]]
    log.info("restarting in place: %s", " ".join(argv))
    logging.shutdown()
    os.execv(sys.executable, argv)  # noqa: S606  # our own interpreter, our own arguments
