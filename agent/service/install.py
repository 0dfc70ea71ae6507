"""`envagent service install` and `uninstall`: make the plan, then show it, write it under
another root, or carry it out.

`--dry-run` needs no service manager and touches nothing. `--root DIR` writes the files under
DIR (as a package or an image build would) and prints the commands instead of running them.
Otherwise the manager must be usable here, and a system service needs root.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from agent.service.detect import check_usable, linger_off
from agent.service.launchd import Launchd
from agent.service.plan import (
    MakeDir,
    Plan,
    Present,
    RemoveFile,
    Run,
    ServiceManager,
    Step,
    WriteFile,
    describe,
)
from agent.service.systemd import Systemd
from agent.service.target import Account, ServiceError, ServiceSpec, Target, exit_code
from agent.support import exitcodes, proc
from agent.support.files import write_private

COMMAND_TIMEOUT_S = 120.0
"""`systemctl enable --now` waits for the start, which systemd itself gives up after 90 s."""


def manager_for(target: Target) -> ServiceManager:
    return Systemd(target) if target.manager == "systemd" else Launchd(target)


def install(target: Target, spec: ServiceSpec, *, dry_run: bool, root: Path | None) -> int:
    manager = manager_for(target)
    plan = manager.install(spec, _present(root))
    plan.notes += _spec_notes(spec)
    if _carry_out(target, plan, dry_run, root) and root is None:
        if target.manager == "systemd" and not target.system and linger_off(target.account):
            name = target.account.name
            print(
                f"note: linger is off for {name}: the service runs only while {name} is logged "
                f"in; `loginctl enable-linger {name}` keeps it running (a headless machine "
                "needs it)"
            )
        print(f"envagent service installed ({_kind(target)}); `envagent service status` shows it")
    return exitcodes.OK


def _spec_notes(spec: ServiceSpec) -> list[str]:
    """What the service is given that a person should know of: no platform, and what was
    carried from this shell's environment (a proxy's password hidden)."""
    notes = []
    if spec.api_key is None and spec.base_url is None:
        notes.append(
            "no API key and no platform URL: the service runs the embedded reference platform; "
            "set LETTA_API_KEY (and LETTA_BASE_URL) and install again to use another"
        )
    if spec.network:
        carried = ", ".join(f"{name}={value}" for name, value in spec.network_shown.items())
        notes.append(f"carried from this shell: {carried}; install again after changing them")
    return notes


def uninstall(target: Target, *, dry_run: bool, root: Path | None) -> int:
    manager = manager_for(target)
    present = _present(root)
    if not any(present(path) for path in manager.files):
        print(f"no envagent service is installed ({_kind(target)}: no {manager.files[0]})")
        return exitcodes.OK
    if _carry_out(target, manager.uninstall(present), dry_run, root) and root is None:
        print(f"envagent service uninstalled ({_kind(target)})")
    return exitcodes.OK


def _carry_out(target: Target, plan: Plan, dry_run: bool, root: Path | None) -> bool:
    """Print a dry run (False), or do the plan (True); ServiceError when it cannot be done."""
    if dry_run:
        print(describe(plan))
        return False
    if root is None:
        check_usable(target)
        if target.system and os.geteuid() != 0:
            raise ServiceError(
                f"a system service is installed by root: run it with sudo ({_kind(target)})",
                exitcodes.CONFIG,
            )
    for note in plan.notes:
        print(f"note: {note}")
    for step in plan.steps:
        _do(step, root)
    if root is not None:
        print(f"done under {root}; the commands above were not run")
    return True


def _do(step: Step, root: Path | None) -> None:
    match step:
        case MakeDir(path, mode, owner):
            for folder in _make_dirs(_under(root, path), mode):
                _chown(folder, owner, root)
                print(f"created {folder}")
        case WriteFile(path, mode, content, _, owner):
            written = _under(root, path)
            write_private(written, content.encode())
            os.chmod(written, mode)
            _chown(written, owner, root)
            print(f"wrote {written} (mode {mode:04o})")
        case RemoveFile(path):
            _under(root, path).unlink(missing_ok=True)
            print(f"removed {_under(root, path)}")
        case Run(argv, may_fail):
            _run(argv, may_fail, root)


def _chown(path: Path, owner: Account | None, root: Path | None) -> None:
    """Give a file to the service's user; not under another root, where that user means
    nothing (and the install need not be root)."""
    if owner is not None and root is None:
        os.chown(path, owner.uid, owner.gid)


def _run(argv: tuple[str, ...], may_fail: bool, root: Path | None) -> None:
    command = shlex.join(argv)
    if root is not None:
        print(f"would run: {command}")
        return
    print(f"running: {command}", flush=True)
    output: proc.Output = "merged" if may_fail else "terminal"  # an expected failure is hidden
    exit_code(proc.run(argv, timeout_s=COMMAND_TIMEOUT_S, output=output), check=not may_fail)


def _make_dirs(path: Path, mode: int) -> list[Path]:
    """Create `path` and its missing parents (0755, as `mkdir -p`); return those created."""
    missing = [folder for folder in (path, *path.parents) if not folder.exists()]
    for folder in reversed(missing):
        folder.mkdir()
        os.chmod(folder, mode if folder == path else 0o755)
    return list(reversed(missing))


def _under(root: Path | None, path: Path) -> Path:
    return path if root is None else root / path.relative_to(path.anchor)


def _present(root: Path | None) -> Present:
    return lambda path: _under(root, path).exists()


def _kind(target: Target) -> str:
    scope = "system" if target.system else "user"
    noun = "unit" if target.manager == "systemd" else ("daemon" if target.system else "agent")
    return f"{target.manager} {scope} {noun}"
