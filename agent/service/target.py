"""What a service install is about: which manager, whose service, and what it runs.

A user service runs as the person installing it, with the XDG folders of their shell, so that
it keeps the device id and state of `envagent run` there. A system service runs as one named
user (never root by default); when that user is not the one installing (`sudo`), its folders
are the XDG defaults under its home.
"""

from __future__ import annotations

import os
import pwd
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from agent.daemon.config import KEY_DEFAULT_SOURCE, LoadedSettings
from agent.machine.selfupdate import detect_self_update
from agent.service.managers import MANAGERS as MANAGERS
from agent.service.managers import Manager as Manager
from agent.support import exitcodes, paths, proxy
from agent.support.proc import Ran
from agent.support.tls import named_ca_files

RUN_FLAGS = ("name", "mode")
"""Settings passed on the daemon's command line when they were given as flags at install;
`--workdir` is always passed, since a service's own working directory means nothing."""

TomlValue = str | int | bool


class ServiceError(Exception):
    """One line saying what is wrong, and the exit code that goes with it."""

    def __init__(self, message: str, code: int = exitcodes.ERROR) -> None:
        super().__init__(message)
        self.code = code


def exit_code(ran: Ran, *, check: bool) -> int:
    """The exit code of a service manager's tool that ran to its end, and exited 0 if `check`;
    otherwise a ServiceError with the one-line problem (a missing tool, a hang, the failure)."""
    code = None if ran.start_error else ran.code
    if code is None or (check and code != 0):
        raise ServiceError(ran.problem)
    return code


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: Path


@dataclass(frozen=True)
class Target:
    """One kind of service: its manager, user or system scope, and the account it runs as."""

    manager: Manager
    system: bool
    account: Account
    xdg_state_home: Path
    xdg_config_home: Path

    @property
    def state_dir(self) -> Path:
        return self.xdg_state_home / "envagent"

    @property
    def config_dir(self) -> Path:
        return self.xdg_config_home / "envagent"

    @property
    def environment(self) -> dict[str, str]:
        """HOME and the XDG folders, set in the service so that it finds its state."""
        return {
            "HOME": str(self.account.home),
            "XDG_STATE_HOME": str(self.xdg_state_home),
            "XDG_CONFIG_HOME": str(self.xdg_config_home),
        }


def resolve_target(manager: Manager, system: bool, run_as: str | None) -> Target:
    """The account a service of this scope runs as, and its folders; ServiceError if unclear."""
    euid = os.geteuid()
    sudo_user = os.environ.get("SUDO_USER") if euid == 0 else None
    if not system:
        if run_as is not None:
            raise ServiceError(
                "--run-as is for --system; a user service runs as you", exitcodes.CONFIG
            )
        if sudo_user and sudo_user != "root":  # root's own sudo: root's service, as asked
            raise ServiceError(
                f"under sudo a user service would be root's, not {sudo_user}'s: "
                "run it without sudo, or use --system",
                exitcodes.CONFIG,
            )
    name = run_as or _default_user(system, euid, sudo_user)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ServiceError(f"no user {name!r} on this machine", exitcodes.CONFIG) from None
    if entry.pw_uid == euid:
        home, state, config = Path.home(), paths.state_dir().parent, paths.config_dir().parent
    else:
        home = Path(entry.pw_dir)
        state, config = home / ".local" / "state", home / ".config"
    account = Account(entry.pw_name, entry.pw_uid, entry.pw_gid, home)
    return Target(manager, system, account, state, config)


def _default_user(system: bool, euid: int, sudo_user: str | None) -> str:
    if not system or euid != 0:
        return pwd.getpwuid(euid).pw_name
    if sudo_user and sudo_user != "root":
        return sudo_user
    raise ServiceError(
        "a system service runs as a user, not root: pass --run-as USER", exitcodes.CONFIG
    )


@dataclass(frozen=True)
class ServiceSpec:
    """What the service runs, and the settings it is given, as seen by the install command."""

    program: tuple[str, ...]
    run_flags: tuple[str, ...]
    config_file: Path | None
    """The config file named with `--config` or ENVAGENT_CONFIG, passed on to the daemon."""
    path: str
    api_key: str | None
    base_url: str | None
    file_settings: dict[str, TomlValue]
    """The settings that came from the config file (launchd's settings file copies them)."""
    log_dir: Path | None
    """The folder of `--log-file`, which the daemon writes."""
    upgrade_dir: Path | None
    """The folder holding this install when it may upgrade itself (docs/protocol.md, "Metadata")."""
    network: dict[str, str]
    """The proxy and CA file variables of the install's environment (`network_environment`)."""

    @property
    def network_shown(self) -> dict[str, str]:
        """`network` as a plan prints it: a proxy's password as `***`."""
        return {name: proxy.shown_variable(name, value) for name, value in self.network.items()}

    def command(self, *, with_config: bool) -> tuple[str, ...]:
        config = ("--config", str(self.config_file)) if with_config and self.config_file else ()
        return (*self.program, "run", *self.run_flags, *config)


def service_spec(loaded: LoadedSettings, config_named: bool) -> ServiceSpec:
    """The service as the settings the install command sees describe it; `config_named`: the
    config file was named (`--config`, ENVAGENT_CONFIG), so the daemon must be told it too."""
    settings, sources = loaded.settings, loaded.sources
    flags = ["--workdir", str(settings.workdir)]
    for name in RUN_FLAGS:
        if sources[name].startswith("flag"):
            flags += [f"--{name}", str(getattr(settings, name))]
    update = detect_self_update()
    installed = update.install_path
    return ServiceSpec(
        program=daemon_program(),
        run_flags=tuple(flags),
        config_file=loaded.config_file if config_named else None,
        path=os.environ.get("PATH", os.defpath),
        api_key=settings.api_key.get_secret_value() if settings.api_key else None,
        # A URL implied by the key alone is not the person's: the daemon implies it again.
        base_url=None if sources["base_url"] == KEY_DEFAULT_SOURCE else settings.base_url,
        file_settings={
            name: _toml_value(getattr(settings, name))
            for name, source in sources.items()
            if source.startswith("file ")
        },
        log_dir=settings.log_file.parent if settings.log_file else None,
        upgrade_dir=Path(installed).parent if update.supported and installed else None,
        network=network_environment(os.environ),
    )


def network_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The proxy and CA file variables the daemon reads, as `environ` sets them, since a service
    does not inherit the installing shell's; each CA file made absolute (the service's folder and
    HOME are not the shell's). ServiceError when a CA file named is not a file."""
    ca_files = {name: _ca_file(name, value) for name, value in named_ca_files(environ).items()}
    return {**proxy.variables_in(environ), **ca_files}


def _ca_file(variable: str, value: str) -> str:
    path = Path(os.path.abspath(Path(value).expanduser()))
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise ServiceError(
            f"{variable}={value}: {path} {problem}: name a PEM file of CA certificates, or "
            "unset it, and install again",
            exitcodes.CONFIG,
        )
    return str(path)


def daemon_program() -> tuple[str, ...]:
    """The `envagent` script beside this interpreter (this very install), else `python -m
    agent`; never a lookup on PATH, which may find another install."""
    python = Path(os.path.abspath(sys.executable))
    script = python.parent / "envagent"
    if script.is_file() and os.access(script, os.X_OK):
        return (str(script),)
    return (str(python), "-m", "agent")


def _toml_value(value: object) -> TomlValue:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, bool | int | str):
        return value
    return str(value)
