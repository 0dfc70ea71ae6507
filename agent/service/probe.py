"""Whether envagent is installed as a service here, and whether it is enabled and running: what
`envagent doctor` reports, asked quietly of the manager (nothing is printed or changed)."""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass

from agent.service.detect import check_usable, default_manager
from agent.service.install import manager_for
from agent.service.target import ServiceError, Target, resolve_target
from agent.support import proc

PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ServiceState:
    target: Target
    installed: bool
    enabled: bool = False
    running: bool = False
    problem: str | None = None
    """Why the manager could not be asked (not running here, say), when it could not."""

    @property
    def scope(self) -> str:
        return "system" if self.target.system else "user"


def installed_services() -> list[ServiceState]:
    """The user and system services found installed (their unit or plist exists), each with
    what the manager says of it; empty when there is none, or no manager this envagent knows."""
    try:
        manager = default_manager()
    except ServiceError:
        return []
    me = pwd.getpwuid(os.geteuid()).pw_name
    states = []
    for system in (False, True):
        # The system scope's files are where they are whatever account runs the service.
        target = resolve_target(manager, system, me if system else None)
        service = manager_for(target)
        if not service.files[0].exists():
            continue
        try:
            check_usable(target)
        except ServiceError as exc:
            states.append(ServiceState(target, installed=True, problem=str(exc)))
            continue
        ran = proc.run(service.state_query(), timeout_s=PROBE_TIMEOUT_S, output="stdout")
        enabled, running = service.read_state(ran)
        states.append(ServiceState(target, installed=True, enabled=enabled, running=running))
    return states
