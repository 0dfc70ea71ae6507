"""`envagent service status` and `logs`: ask the service manager, then the daemon itself."""

from __future__ import annotations

import os

from agent.service.detect import check_usable
from agent.service.install import manager_for
from agent.service.target import Target, daemon_program, exit_code
from agent.support import exitcodes, proc

STATUS_TIMEOUT_S = 30.0
LOGS_TIMEOUT_S = 60.0


def status(target: Target) -> int:
    """The manager's view, then `envagent status` with the service's folders, so that it finds
    the daemon the service runs (a system service's state is in its user's home)."""
    check_usable(target)
    asked = proc.run(manager_for(target).status(), timeout_s=STATUS_TIMEOUT_S, output="terminal")
    manager = exit_code(asked, check=False)
    print(flush=True)
    environment = {**os.environ, **target.environment}
    asked = proc.run(
        (*daemon_program(), "status"),
        timeout_s=STATUS_TIMEOUT_S,
        output="terminal",
        env=environment,
    )
    return manager or exit_code(asked, check=False) or exitcodes.OK


def logs(target: Target, *, follow: bool, lines: int) -> int:
    check_usable(target)
    command = manager_for(target).logs(follow, lines)
    ran = proc.run(command, timeout_s=None if follow else LOGS_TIMEOUT_S, output="terminal")
    return exit_code(ran, check=False)
