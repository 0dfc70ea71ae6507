"""How the daemon runs here: as a service (installed, enabled, running), and which process holds
this identity's lock, with what that process says of itself."""

from __future__ import annotations

import psutil

from agent.daemon.lock import lock_path, read_holder
from agent.doctor.results import failed, passed, skipped, warned
from agent.localapi.client import LocalClient
from agent.protocol.doctor import CheckResult
from agent.protocol.views import ClientError
from agent.service.probe import installed_services


def check_service() -> CheckResult:
    services = installed_services()
    if not services:
        return warned(
            "service",
            "not installed as a service: nothing starts the daemon at boot or restarts it",
            "envagent service install (or let your coding tool start `envagent run`)",
        )
    details, problems = [], []
    for service in services:
        if service.problem is not None:
            problems.append(f"{service.scope} service: {service.problem}")
            continue
        enabled = "enabled" if service.enabled else "not enabled"
        running = "running" if service.running else "not running"
        details.append(f"{service.scope} service ({service.target.manager}): {enabled}, {running}")
        if not (service.enabled and service.running):
            problems.append(f"the {service.scope} service is {enabled} and {running}")
    if problems:
        return failed(
            "service",
            "; ".join(problems),
            "envagent service status shows why; envagent service install starts it again",
            details,
        )
    return passed("service", "installed, enabled and running", details)


def check_lock(platform_id: str, device_id: str, instance_id: str | None) -> CheckResult:
    """The process holding this identity's lock, and its own account of its state."""
    path = lock_path(platform_id, device_id, instance_id)
    holder = read_holder(path)
    start = "envagent run, or envagent service install"
    if holder is None:
        return failed(
            "lock", "no daemon serves this identity (no lock holder)", f"start one: {start}"
        )
    if not psutil.pid_exists(holder.pid):
        return failed(
            "lock",
            f"no daemon serves this identity: pid {holder.pid}, named in {path}, has exited",
            f"start one: {start} (the stale lock is taken over by itself)",
        )
    try:
        status = LocalClient(instance_id).status()
    except ClientError as exc:
        return failed(
            "lock",
            f"pid {holder.pid} holds the lock but its local API does not answer: {exc}",
            "it may be starting or stuck: envagent status; restart it if it stays so",
        )
    if status["pid"] != holder.pid:
        answers = status["pid"]
        return skipped("lock", f"pid {holder.pid} holds the lock; pid {answers} answers: retry")
    where = [f"local API {status['localApi']}", f"lock {path}"]
    if status["state"] != "online":
        why = f": {status['lastError']}" if status["lastError"] else ""
        return failed(
            "lock",
            f"pid {holder.pid} serves this identity but is {status['state']}{why}",
            "the checks above say where the way to the platform fails; envagent status follows it",
            where,
        )
    return passed("lock", f"pid {holder.pid} serves this identity and is online", where)
