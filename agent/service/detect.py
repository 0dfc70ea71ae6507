"""Which service manager this machine has, and whether it can be used now.

systemd counts only when it is the running init system (`/run/systemd/system` exists, as
`sd_booted()` checks): in a container `systemctl` is often installed while PID 1 is something
else. A user service also needs the user's systemd instance, which runs while the user is
logged in, or always when "linger" is on.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from agent.service.target import Account, Manager, ServiceError, Target
from agent.support import exitcodes, proc

SYSTEMD_RUNNING = Path("/run/systemd/system")
PROBE_TIMEOUT_S = 5.0


def default_manager() -> Manager:
    if sys.platform == "darwin":
        return "launchd"
    if sys.platform.startswith("linux"):
        return "systemd"
    raise ServiceError(
        f"envagent service knows systemd (Linux) and launchd (macOS), not {sys.platform}",
        exitcodes.UNAVAILABLE,
    )


def check_usable(target: Target) -> None:
    """Raise ServiceError (UNAVAILABLE) saying why the target's manager cannot be used here."""
    if target.manager == "systemd":
        problem = _systemd_problem(target)
    elif shutil.which("launchctl") is None:
        problem = "launchctl is not here (launchd is macOS only)"
    else:
        return
    if problem:
        raise ServiceError(
            f"no usable service manager: {problem}; `envagent service install --dry-run` "
            "shows what it would install, and `envagent run` works under any supervisor",
            exitcodes.UNAVAILABLE,
        )


def _systemd_problem(target: Target) -> str | None:
    if shutil.which("systemctl") is None:
        return "systemctl is not installed, and launchd is macOS only"
    if not SYSTEMD_RUNNING.is_dir():
        return (
            f"systemd is installed but is not the init system (PID 1 is {_pid1()}, no "
            f"{SYSTEMD_RUNNING}), as in a container, and launchd is macOS only"
        )
    if target.system:
        return None
    probe = proc.run(["systemctl", "--user", "show-environment"], timeout_s=PROBE_TIMEOUT_S)
    if probe.ok:
        return None
    user = target.account.name
    return (
        f"the systemd user instance of {user} cannot be reached ({probe.problem}); "
        f"log in as {user} (not with su), or run `loginctl enable-linger {user}` to start it "
        "without a login, or use --system"
    )


def linger_off(account: Account) -> bool:
    """True when logind says the user's services stop at logout; False when unknown."""
    probe = proc.run(
        ["loginctl", "show-user", account.name, "--property=Linger", "--value"],
        timeout_s=PROBE_TIMEOUT_S,
        output="stdout",
    )
    return probe.ok and probe.output.strip() == "no"  # no loginctl, or a hang: no hint


def _pid1() -> str:
    try:
        return Path("/proc/1/comm").read_text().strip() or "unknown"
    except OSError:
        return "unknown"
