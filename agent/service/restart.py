"""Starting again after an upgrade: the service manager does it, or the daemon re-executes."""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger("envagent")


def under_service_manager() -> bool:
    """systemd sets INVOCATION_ID for every unit it runs; launchd sets XPC_SERVICE_NAME."""
    return bool(os.environ.get("INVOCATION_ID") or os.environ.get("XPC_SERVICE_NAME"))


def restart_in_place() -> None:
    """Replace this process with the (new) daemon, same interpreter path and arguments.

    The pid stays, so a coding tool watching it sees no exit; the lock and sockets were closed
    (they are close-on-exec), so the new image takes them afresh.
    """
    argv = [sys.executable, "-m", "agent", *sys.argv[1:]]
    log.info("restarting in place: %s", " ".join(argv))
    logging.shutdown()
    os.execv(sys.executable, argv)  # noqa: S606  # our own interpreter, our own arguments
