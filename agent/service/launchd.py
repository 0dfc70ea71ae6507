"""launchd: a LaunchAgent (one user, while logged in) or LaunchDaemon (at boot, as a user).

A plist is readable by everyone, so the API key goes into a 0600 TOML settings file that the
plist names in ENVAGENT_CONFIG. That file then replaces the config file for the service, so it
holds a copy of the config file's settings too, taken at install. The installing shell's proxy
and CA file variables go into the plist, the only place launchd takes a service's environment
from; a proxy password is refused (service_files/README.md says why).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from xml.sax.saxutils import escape

from agent.service.plan import MakeDir, Plan, Present, RemoveFile, Run, WriteFile
from agent.service.target import ServiceError, ServiceSpec, Target, TomlValue
from agent.service.templates import render
from agent.support import exitcodes
from agent.support.proc import Ran
from agent.support.proxy import holds_password, shown

LABEL = "org.envagent"
_INDENT = "\t\t"
_NOT_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
"""What XML 1.0 cannot hold at all, not even as a character reference."""


class Launchd:
    def __init__(self, target: Target) -> None:
        self.target = target
        if target.system:
            plists, logs = Path("/Library/LaunchDaemons"), Path("/Library/Logs")
            self.domain = "system"
        else:
            library = target.account.home / "Library"
            plists, logs = library / "LaunchAgents", library / "Logs"
            self.domain = f"gui/{target.account.uid}"
        self.plist_path = plists / f"{LABEL}.plist"
        self.log_path = logs / "envagent" / "envagent.log"
        self.settings_path = target.config_dir / "service.toml"
        self.service = f"{self.domain}/{LABEL}"

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.plist_path, self.settings_path)

    def install(self, spec: ServiceSpec, present: Present) -> Plan:
        target, plan = self.target, Plan()
        owner = target.account if target.system else None
        # launchd does not create the folder of its log files.
        plan.steps.append(MakeDir(self.log_path.parent, 0o700, owner))
        settings = self._settings(spec, shown=False)
        if settings is not None:
            shown = self._settings(spec, shown=True) or ""
            plan.steps += [
                MakeDir(self.settings_path.parent, 0o700, owner),
                WriteFile(self.settings_path, 0o600, settings, shown, owner),
            ]
        elif present(self.settings_path):
            plan.steps.append(RemoveFile(self.settings_path))
        if spec.file_settings:
            plan.notes.append(
                f"the settings of the config file are copied into {self.settings_path}, which "
                "the service reads instead: install again after changing them"
            )
        if present(self.plist_path):
            plan.notes.append(f"{self.plist_path} exists: it is replaced and the service restarted")
            plan.steps.append(Run(("launchctl", "bootout", self.service), may_fail=True))
        plist = self._plist(spec, settings is not None)
        plan.steps += [
            WriteFile(self.plist_path, 0o644, plist, plist),
            # A job once disabled (`launchctl disable`) would refuse to load.
            Run(("launchctl", "enable", self.service)),
            Run(("launchctl", "bootstrap", self.domain, str(self.plist_path))),
            Run(("launchctl", "print", self.service)),
        ]
        return plan

    def uninstall(self, present: Present) -> Plan:
        plan = Plan()
        plan.steps.append(Run(("launchctl", "bootout", self.service), may_fail=True))
        plan.steps += [RemoveFile(path) for path in self.files if present(path)]
        plan.notes.append(
            f"the state in {self.target.state_dir} and the logs in {self.log_path.parent} are kept"
        )
        return plan

    def status(self) -> tuple[str, ...]:
        return ("launchctl", "print", self.service)

    def state_query(self) -> tuple[str, ...]:
        return ("launchctl", "print", self.service)

    @staticmethod
    def read_state(ran: Ran) -> tuple[bool, bool]:
        """(enabled, running): `launchctl print` knows the job only while it is loaded, and
        says `state = running` while its process runs."""
        running = any(line.strip() == "state = running" for line in ran.output.splitlines())
        return ran.ok, ran.ok and running

    def logs(self, follow: bool, lines: int) -> tuple[str, ...]:
        return ("tail", "-n", str(lines), *(("-F",) if follow else ()), str(self.log_path))

    def _plist(self, spec: ServiceSpec, with_settings: bool) -> str:
        target = self.target
        environment = {"PATH": spec.path, **target.environment, **_public(spec.network)}
        if with_settings:
            environment["ENVAGENT_CONFIG"] = str(self.settings_path)
        values = {
            "label": _xml(LABEL),
            "program_arguments": "\n".join(
                _element("string", arg) for arg in spec.command(with_config=False)
            ),
            "environment_variables": "\n".join(
                f"{_element('key', name)}\n{_element('string', value)}"
                for name, value in environment.items()
            ),
            "log_path": _xml(str(self.log_path)),
        }
        if not target.system:
            return render("launchd-agent.plist", **values)
        return render("launchd-daemon.plist", **values, user=_xml(target.account.name))

    @staticmethod
    def _settings(spec: ServiceSpec, *, shown: bool) -> str | None:
        """The service's settings file, None when there is nothing to put in it."""
        values: dict[str, TomlValue] = dict(spec.file_settings)
        if spec.api_key:
            values["api_key"] = "****" if shown else spec.api_key
        if spec.base_url:
            values["base_url"] = spec.base_url
        if not values:
            return None
        lines = (f"{name} = {_toml(value)}" for name, value in sorted(values.items()))
        return render("launchd-settings.toml", settings="\n".join(lines))


def _public(network: Mapping[str, str]) -> Mapping[str, str]:
    """The network variables, for the plist; ServiceError for a proxy password, which the
    daemon could not be given privately."""
    for name, value in network.items():
        if holds_password(name, value):
            raise ServiceError(
                f"{name}={shown(value)}: launchd passes a service's environment only in its "
                "plist, which is not private, so a proxy password cannot go there: point "
                f"{name} at a proxy that needs none, such as a local cntlm or px, and install "
                "again",
                exitcodes.CONFIG,
            )
    return network


def _element(tag: str, text: str) -> str:
    """One line of a plist's array or dict: a `<string>` or `<key>` with `text` escaped."""
    return f"{_INDENT}<{tag}>{_xml(text)}</{tag}>"


def _xml(text: str) -> str:
    """`text` as XML character data: `&`, `<` and `>` escaped, and a carriage return as a
    reference (a parser reads a raw one as a newline); ServiceError for what XML cannot hold."""
    if _NOT_XML.search(text):
        raise ServiceError(
            f"{text!r}: a control character cannot go into a launchd plist", exitcodes.CONFIG
        )
    return escape(text, {"\r": "&#13;"})


def _toml(value: TomlValue) -> str:
    """A TOML value. A JSON string is a TOML basic string, if written as UTF-8: TOML's `\\u`
    takes no surrogate pair (JSON's `\\ud83d\\ude80` for one emoji), and DEL must be escaped."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
