"""Upgrading this install in place: `envagent upgrade` and the platform's `upgrade` command.

Only an install that `detect_self_update` calls supported and writable is touched, from the
package index its installer is configured with, or from the `upgrade_find_links` folder of the
daemon's own settings: never from a source the platform names. The environment's own pip does
the work (a venv; pipx lends its venvs a shared pip), else uv (a uv tool, or pipx with its uv
backend, whose venvs have no pip). `uv tool upgrade` is not used: run with another
`UV_TOOL_BIN_DIR` than the one the tool was installed with, as a service's environment may be,
it moves the tool's executable. The new version must start before anyone restarts into it;
when it does not, the running process carries on and the message says how to go back.
"""

from __future__ import annotations

import contextlib
import enum
import importlib.util
import logging
import os
import shlex
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent import __version__
from agent.machine.selfupdate import DISTRIBUTION, detect_self_update
from agent.support import proc
from agent.support.files import UnusableFile, hold_flock

log = logging.getLogger("envagent.upgrade")

INSTALL_TIMEOUT_S = 300.0
CHECK_TIMEOUT_S = 30.0
"""`--version` imports little: this only bounds an interpreter that hangs."""
LOCK_FILE = ".envagent-upgrade.lock"


class Outcome(enum.Enum):
    UPGRADED = "upgraded"
    """A newer version is installed and starts: restart into it."""
    UP_TO_DATE = "up to date"
    REFUSED = "refused"
    """Nothing was changed: this install must not or cannot upgrade itself."""
    FAILED = "failed"
    """The installer failed, or the new version does not start; the message says what now."""


class Refused(Exception):
    """This install must not or cannot upgrade itself; the message is one line saying why."""


@dataclass(frozen=True)
class Plan:
    """The commands an upgrade of this environment runs: argv lists, never a shell."""

    prefix: Path
    installer: tuple[str, ...]
    """The installer and its package source, up to what to install."""
    upgrade_flags: tuple[str, ...]
    check: tuple[str, ...]
    """Starts the installed version as a restart will (same interpreter, `-m agent`)."""

    @property
    def upgrade(self) -> tuple[str, ...]:
        return (*self.installer, *self.upgrade_flags, DISTRIBUTION)

    def rollback(self, version: str) -> str:
        """The command a person runs to put `version` back."""
        return shlex.join((*self.installer, f"{DISTRIBUTION}=={version}"))


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    old_version: str
    """The version this process runs."""
    new_version: str | None
    """The version installed now, when it was found to start."""
    message: str
    """One paragraph for a person: old → new, or why not and what now."""

    @property
    def ok(self) -> bool:
        return self.outcome in (Outcome.UPGRADED, Outcome.UP_TO_DATE)

    @property
    def restart_needed(self) -> bool:
        return self.outcome is Outcome.UPGRADED


def plan(find_links: Path | None = None) -> Plan:
    """What an upgrade of this process's own environment runs; raises Refused.

    `find_links`: install only from the wheels in that folder (`--no-index --find-links`).
    """
    report = detect_self_update()
    if not (report.supported and report.writable):
        how = f" Upgrade it with: {report.manual_command}" if report.manual_command else ""
        raise Refused(f"this install does not upgrade itself. {report.reason}{how}")
    if find_links is not None and not find_links.is_dir():
        raise Refused(f"the wheel folder {find_links} is not a folder")
    source = ("--no-index", "--find-links", str(find_links)) if find_links else ()
    prefix, python = Path(sys.prefix), sys.executable
    check = (python, "-m", "agent", "--version")
    if importlib.util.find_spec("pip") is not None:
        return Plan(prefix, (python, "-m", "pip", "install", *source), ("--upgrade",), check)
    uv = shutil.which("uv")
    if uv is None:
        raise Refused(
            f"{prefix} has no pip and there is no uv on PATH to install with. "
            f"Upgrade it with: {report.manual_command}"
        )
    # --upgrade-package, not --upgrade: as with pip, dependencies change only when needed.
    return Plan(
        prefix,
        (uv, "pip", "install", "--python", python, *source),
        ("--upgrade-package", DISTRIBUTION),
        check,
    )


def upgrade(find_links: Path | None = None) -> Result:
    """Upgrade this process's own environment, then check that the new version starts.

    Blocking, for minutes at most (every command has a timeout): the daemon runs it in a
    thread. Never raises for a refusal or a failure: the Result says what happened.
    """
    try:
        steps = plan(find_links)
        with _one_at_a_time(steps.prefix):
            return _carry_out(steps, __version__)
    except Refused as refused:
        return Result(Outcome.REFUSED, __version__, None, str(refused))


def _carry_out(steps: Plan, old: str) -> Result:
    log.info("upgrading %s: %s", steps.prefix, shlex.join(steps.upgrade))
    # The messages quote the last lines of the output; the log has all of it.
    ran = proc.run(steps.upgrade, timeout_s=INSTALL_TIMEOUT_S, cwd=steps.prefix)
    if not ran.ok:
        log.info("the upgrade failed:\n%s", ran.output)
        message = (
            f"the upgrade of {steps.prefix} failed: {ran.problem}. This process still runs {old}."
        )
        if ran.code is None:
            message += f" The environment may be half upgraded; to go back: `{steps.rollback(old)}`"
        return Result(Outcome.FAILED, old, None, message)
    ran = proc.run(steps.check, timeout_s=CHECK_TIMEOUT_S, cwd=steps.prefix)
    words = (ran.output.strip().splitlines() or [""])[-1].split()  # warnings may come first
    if not ran.ok or len(words) != 2 or words[0] != DISTRIBUTION:
        log.info("the new version does not start:\n%s", ran.output)
        return Result(
            Outcome.FAILED,
            old,
            None,
            f"{steps.prefix} now holds the new release, but it does not start: {ran.problem}. "
            f"This process keeps running {old} and does not restart; "
            f"to go back: `{steps.rollback(old)}`",
        )
    new = words[1]
    if new == old:
        return Result(Outcome.UP_TO_DATE, old, new, f"{DISTRIBUTION} {old} is already up to date")
    log.info("upgraded %s → %s", old, new)
    return Result(Outcome.UPGRADED, old, new, f"upgraded {DISTRIBUTION} {old} → {new}")


@contextlib.contextmanager
def _one_at_a_time(prefix: Path) -> Iterator[None]:
    """Two installers at once can break an environment, and the CLI and the daemon (or two
    platform commands) may both start one: a lock file in the environment lets one through."""
    try:
        fd = hold_flock(prefix / LOCK_FILE, "the upgrade lock")
    except UnusableFile as exc:
        raise Refused(str(exc)) from None
    if fd is None:
        raise Refused(f"another upgrade of {prefix} is running")
    try:
        yield
    finally:
        os.close(fd)
