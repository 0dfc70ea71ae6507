"""systemd: the user or system unit, its 0600 environment file, and systemctl and journalctl.

A user unit goes in `$XDG_CONFIG_HOME/systemd/user/`, its environment file beside the config
file; a system unit in /etc/systemd/system/, its environment file in /etc/envagent/ (root's, read
by systemd before it switches to the service's user).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from agent.service.plan import MakeDir, Plan, Present, RemoveFile, Run, WriteFile
from agent.service.target import ServiceError, ServiceSpec, Target
from agent.service.templates import render
from agent.support import exitcodes
from agent.support.proc import Ran

UNIT = "envagent.service"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
SYSTEM_ENV_FILE = Path("/etc/envagent/service.env")
_ENV_FILE_SPECIAL = re.compile(r'(["\\`$])')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
"""Control characters: systemd ends a line at a newline and at a carriage return too."""
_C_ESCAPES = {"\n": r"\n", "\r": r"\r", "\t": r"\t"}


class Systemd:
    def __init__(self, target: Target) -> None:
        self.target = target
        if target.system:
            self.unit_path = SYSTEM_UNIT_DIR / UNIT
            self.env_path = SYSTEM_ENV_FILE
        else:
            self.unit_path = target.xdg_config_home / "systemd" / "user" / UNIT
            self.env_path = target.config_dir / "service.env"

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.unit_path, self.env_path)

    def install(self, spec: ServiceSpec, present: Present) -> Plan:
        target, plan = self.target, Plan()
        if target.system:
            # ReadWritePaths= needs them to exist, and the daemon cannot create them in a
            # read-only home.
            for folder in (target.state_dir, spec.log_dir):
                if folder is not None:
                    plan.steps.append(MakeDir(folder, 0o700, target.account))
        if spec.api_key or spec.base_url or spec.network:
            plan.steps.append(
                WriteFile(
                    self.env_path,
                    0o600,
                    self._env_file(_env_value(spec.api_key), spec.base_url, spec.network),
                    self._env_file(
                        "****" if spec.api_key else "", spec.base_url, spec.network_shown
                    ),
                )
            )
        elif present(self.env_path):
            plan.steps.append(RemoveFile(self.env_path))
        unit = self._unit(spec)
        plan.steps.append(WriteFile(self.unit_path, 0o644, unit, unit))
        plan.steps += [
            Run(self._systemctl("daemon-reload")),
            Run(self._systemctl("enable", "--now", UNIT)),
        ]
        if present(self.unit_path):
            plan.notes.append(f"{self.unit_path} exists: it is replaced and the service restarted")
            plan.steps.append(Run(self._systemctl("restart", UNIT)))
        return plan

    def uninstall(self, present: Present) -> Plan:
        plan = Plan()
        plan.steps.append(Run(self._systemctl("disable", "--now", UNIT), may_fail=True))
        plan.steps += [RemoveFile(path) for path in self.files if present(path)]
        plan.steps += [
            Run(self._systemctl("daemon-reload")),
            Run(self._systemctl("reset-failed", UNIT), may_fail=True),
        ]
        journal = " ".join(self._scoped("journalctl", "-u", UNIT))
        plan.notes.append(
            f"the state in {self.target.state_dir} and the logs (`{journal}`) are kept"
        )
        return plan

    def status(self) -> tuple[str, ...]:
        return self._systemctl("status", UNIT, "--no-pager")

    def state_query(self) -> tuple[str, ...]:
        return self._systemctl("show", UNIT, "--property=UnitFileState,ActiveState")

    @staticmethod
    def read_state(ran: Ran) -> tuple[bool, bool]:
        """(enabled, running) from `state_query`'s `KEY=value` lines."""
        values = dict(line.partition("=")[::2] for line in ran.output.splitlines())
        return values.get("UnitFileState") == "enabled", values.get("ActiveState") == "active"

    def logs(self, follow: bool, lines: int) -> tuple[str, ...]:
        tail = ("--follow",) if follow else ()
        return self._scoped("journalctl", "-u", UNIT, "--lines", str(lines), "--no-pager", *tail)

    def _systemctl(self, *args: str) -> tuple[str, ...]:
        return self._scoped("systemctl", *args)

    def _scoped(self, tool: str, *args: str) -> tuple[str, ...]:
        return (tool, *(() if self.target.system else ("--user",)), *args)

    def _unit(self, spec: ServiceSpec) -> str:
        target = self.target
        environment = {"PATH": spec.path, **target.environment}
        values = {
            "exec_start": " ".join(
                _word(arg, exec_line=True) for arg in spec.command(with_config=True)
            ),
            "environment_file": _specifiers(_path(self.env_path)),
            "path": _inner(environment["PATH"]),
            "home": _inner(environment["HOME"]),
            "xdg_state_home": _inner(environment["XDG_STATE_HOME"]),
            "xdg_config_home": _inner(environment["XDG_CONFIG_HOME"]),
        }
        if not target.system:
            return render("envagent-user.service", **values)
        writable = (path for path in (target.state_dir, spec.log_dir, spec.upgrade_dir) if path)
        return render(
            "envagent-system.service",
            **values,
            user=target.account.name,
            read_write_paths=" ".join(_word(_path(path)) for path in writable),
        )

    @staticmethod
    def _env_file(api_key: str, base_url: str | None, network: Mapping[str, str]) -> str:
        """`api_key` as it goes in the file: quoted, or `****` for a dry run; the network
        variables here too, not in the unit, since a proxy URL may hold a password."""
        return render(
            "envagent.env",
            api_key=api_key,
            base_url=_env_value(base_url),
            network="\n".join(f"{name}={_env_value(value)}" for name, value in network.items()),
        )


def _specifiers(value: str) -> str:
    """`%` starts a specifier (`%h`, `%u`) in most unit settings; `%%` is a plain one."""
    return value.replace("%", "%%")


def _path(path: Path) -> str:
    """A path for EnvironmentFile= or ReadWritePaths=, which take no C escapes: one with a
    control character cannot be written (a newline or carriage return would end the line, and
    the rest of the path would be read as a setting of its own)."""
    text = str(path)
    if _CONTROL.search(text):
        raise ServiceError(
            f"{text!r}: a path with a control character cannot go into a systemd unit",
            exitcodes.CONFIG,
        )
    return text


def _inner(value: str, *, exec_line: bool = False) -> str:
    """`value` for inside double quotes in a unit file: C escapes (for every control character,
    so that no newline or carriage return ends the line), specifiers, and (on an Exec line,
    where `$NAME` expands a variable) `$$` for a dollar sign."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = _CONTROL.sub(_c_escape, escaped)
    escaped = _specifiers(escaped)
    return escaped.replace("$", "$$") if exec_line else escaped


def _c_escape(found: re.Match[str]) -> str:
    char = found.group()
    return _C_ESCAPES.get(char) or f"\\x{ord(char):02x}"


def _word(value: str, *, exec_line: bool = False) -> str:
    return f'"{_inner(value, exec_line=exec_line)}"'


def _env_value(value: str | None) -> str:
    """A value of an EnvironmentFile= line, double-quoted with the characters systemd (and a
    shell) treat specially escaped; empty when unset, which the daemon reads as unset."""
    if value is None:
        return ""
    return '"' + _ENV_FILE_SPECIAL.sub(r"\\\1", value) + '"'
