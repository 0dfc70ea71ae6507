"""What an install or uninstall does, step by step, before anything is done.

The same plan is printed by `--dry-run`, written under another root by `--root`, or carried
out; so what a dry run shows is exactly what an install does.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agent.service.target import Account, ServiceSpec, Target
from agent.support.proc import Ran


@dataclass(frozen=True)
class MakeDir:
    """Create the folder (and missing parents) if it does not exist; an existing one is left."""

    path: Path
    mode: int
    owner: Account | None = None
    """Who gets the folders created; None: whoever installs."""


@dataclass(frozen=True)
class WriteFile:
    path: Path
    mode: int
    content: str
    shown: str
    """The content as a dry run prints it: the API key as `****`."""
    owner: Account | None = None


@dataclass(frozen=True)
class RemoveFile:
    path: Path


@dataclass(frozen=True)
class Run:
    argv: tuple[str, ...]
    may_fail: bool = False
    """Its failure is expected at times (stopping what is not running): output hidden, ignored."""


Step = MakeDir | WriteFile | RemoveFile | Run


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


Present = Callable[[Path], bool]
"""Whether a target path exists now (under the `--root` in use)."""


class ServiceManager(Protocol):
    """What systemd and launchd each provide, so that the commands are written once."""

    target: Target

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file an install may write; the unit or plist first."""
        ...

    def install(self, spec: ServiceSpec, present: Present) -> Plan: ...

    def uninstall(self, present: Present) -> Plan: ...

    def status(self) -> tuple[str, ...]: ...

    def state_query(self) -> tuple[str, ...]:
        """A quiet command whose output `read_state` reads."""
        ...

    @staticmethod
    def read_state(ran: Ran) -> tuple[bool, bool]:
        """(enabled, running) from what `state_query` printed."""
        ...

    def logs(self, follow: bool, lines: int) -> tuple[str, ...]: ...


def describe(plan: Plan) -> str:
    """The dry run: every note, folder, file (path, mode, owner, whole content) and command."""
    lines = ["dry run: nothing is written and nothing is run"]
    lines += [f"note: {note}" for note in plan.notes]
    for step in plan.steps:
        match step:
            case MakeDir(path, mode, owner):
                lines.append(f"mkdir {path} (mode {mode:04o}{_owner(owner)}, if missing)")
            case WriteFile(path, mode, _, shown, owner):
                lines.append(f"write {path} (mode {mode:04o}{_owner(owner)}):")
                lines += [f"    {line}".rstrip() for line in shown.splitlines()]
            case RemoveFile(path):
                lines.append(f"remove {path}")
            case Run(argv, may_fail):
                lines.append(f"run {shlex.join(argv)}{' (may fail)' if may_fail else ''}")
    return "\n".join(lines)


def _owner(owner: Account | None) -> str:
    return f", owner {owner.name}" if owner else ""
