"""What the tests of agent/service share: the real CLI run in a subprocess with a home of its own,
the four kinds of service and where their files go, targets and specs built by hand for the
unit-level tests, and stand-ins for the service managers' tools."""

from __future__ import annotations

import os
import pwd
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.service.target import Account, Manager, ServiceSpec, Target
from agent.support import proxy
from agent.support.tls import CA_FILE_VARIABLES

KEY = "fake-key-for-tests-0123"
USER = pwd.getpwuid(os.geteuid()).pw_name
UID = os.geteuid()
GID = os.getegid()
ENVAGENT = Path(sys.executable).parent / "envagent"
CLI_TIMEOUT_S = 30.0
NETWORK_VARIABLES = (
    *proxy.VARIABLES,
    *(name.upper() for name in proxy.VARIABLES),
    *CA_FILE_VARIABLES,
)
"""Every variable an install carries into the service, in each case it is read in."""


@dataclass(frozen=True)
class Kind:
    flags: tuple[str, ...]
    service_file: str
    """The unit or plist; `~` is the test's home."""
    secrets_file: str
    folders: tuple[str, ...]
    commands: tuple[str, ...]


KINDS = {
    "systemd-user": Kind(
        ("--manager", "systemd", "--user"),
        "~/.config/systemd/user/envagent.service",
        "~/.config/envagent/service.env",
        (),
        ("systemctl --user daemon-reload", "systemctl --user enable --now envagent.service"),
    ),
    "systemd-system": Kind(
        ("--manager", "systemd", "--system", "--run-as", USER),
        "/etc/systemd/system/envagent.service",
        "/etc/envagent/service.env",
        ("~/.local/state/envagent",),
        ("systemctl daemon-reload", "systemctl enable --now envagent.service"),
    ),
    "launchd-agent": Kind(
        ("--manager", "launchd", "--user"),
        "~/Library/LaunchAgents/org.envagent.plist",
        "~/.config/envagent/service.toml",
        ("~/Library/Logs/envagent", "~/.config/envagent"),
        (
            f"launchctl enable gui/{UID}/org.envagent",
            f"launchctl bootstrap gui/{UID} ~/Library/LaunchAgents/org.envagent.plist",
            f"launchctl print gui/{UID}/org.envagent",
        ),
    ),
    "launchd-daemon": Kind(
        ("--manager", "launchd", "--system", "--run-as", USER),
        "/Library/LaunchDaemons/org.envagent.plist",
        "~/.config/envagent/service.toml",
        ("/Library/Logs/envagent", "~/.config/envagent"),
        (
            "launchctl enable system/org.envagent",
            "launchctl bootstrap system /Library/LaunchDaemons/org.envagent.plist",
            "launchctl print system/org.envagent",
        ),
    ),
}


@dataclass(frozen=True)
class Done:
    code: int
    out: str
    err: str


def service(
    home: Path, *args: str, key: str | None = KEY, network: Mapping[str, str] | None = None
) -> Done:
    """`envagent service ARGS` with `home` as HOME and the XDG folders left to their defaults;
    of the proxy and CA file variables, only those in `network` (this machine sets some)."""
    home.mkdir(exist_ok=True)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("LETTA_", "ENVAGENT_", "XDG_", "SUDO_"))
        and name not in NETWORK_VARIABLES
    }
    env.update(network or {})
    env["HOME"] = str(home)
    if key is not None:
        env["LETTA_API_KEY"] = key
    done = subprocess.run(
        [sys.executable, "-m", "agent", "service", *args],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    return Done(done.returncode, done.stdout, done.stderr)


def real(path: str, home: Path) -> Path:
    return home / path[2:] if path.startswith("~/") else Path(path)


def under(root: Path, path: Path) -> Path:
    return root / path.relative_to("/")


def files_in(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if not path.is_dir())


def target(
    tmp_path: Path,
    manager: Manager = "systemd",
    *,
    system: bool = False,
    home: Path | None = None,
    state: Path | None = None,
    config: Path | None = None,
) -> Target:
    """A target for this test's user, with a home (`tmp_path/home` unless given) and the XDG
    folders under it unless given."""
    home = home or tmp_path / "home"
    account = Account(USER, UID, GID, home)
    return Target(
        manager, system, account, state or home / ".local" / "state", config or home / ".config"
    )


def spec(tmp_path: Path, **changes: Any) -> ServiceSpec:
    """What `envagent service install --workdir tmp_path` would run, with the test's key."""
    made = ServiceSpec(
        program=(str(ENVAGENT),),
        run_flags=("--workdir", str(tmp_path)),
        config_file=None,
        path="/usr/local/bin:/usr/bin:/bin",
        api_key=KEY,
        base_url=None,
        file_settings={},
        log_dir=None,
        upgrade_dir=None,
        network={},
    )
    return replace(made, **changes)


def nothing_present(path: Path) -> bool:
    return False


def everything_present(path: Path) -> bool:
    return True


class FakeTools:
    """Stand-ins for systemctl, journalctl, loginctl or launchctl in a folder put first on PATH:
    real executables (sh scripts) that record their arguments and exit as told."""

    def __init__(self, folder: Path) -> None:
        self.bin = folder / "bin"
        self.bin.mkdir(parents=True)
        self.log = folder / "calls"

    def add(self, name: str, *, code: int = 0, stdout: str = "", when: str | None = None) -> None:
        """`name` prints `stdout` and exits `code`; with `when`, only when that word is among
        its arguments (otherwise it prints nothing and exits 0)."""
        script = self.bin / name
        answer = f"printf '%s' {shlex.quote(stdout)}; exit {code}"
        if when is not None:
            answer = (
                f'for word in "$@"; do [ "$word" = {shlex.quote(when)} ] && {{ {answer}; }}; done'
            )
        script.write_text(
            "#!/bin/sh\n"
            f"{{ printf '%s\\037' {shlex.quote(name)} \"$@\"; printf '\\036'; }} "
            f">> {shlex.quote(str(self.log))}\n"
            f"{answer}\n"
            "exit 0\n"
        )
        script.chmod(0o755)

    def calls(self) -> list[tuple[str, ...]]:
        """Each run so far, in order: the tool's name and its arguments."""
        if not self.log.exists():
            return []
        records = self.log.read_text().split("\036")[:-1]
        return [tuple(record.split("\037")[:-1]) for record in records]
