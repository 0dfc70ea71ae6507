"""`envagent service`: the four kinds of service files, as the real CLI renders them.

Units are checked by the real `systemd-analyze verify`, plists by `plistlib` and a type check of
every launchd key. Dry runs must list every file, mode and command and write nothing; `--root`
writes the real files into a temporary folder and prints the commands instead of running them,
so nothing here needs (or touches) a running service manager.
"""

from __future__ import annotations

import os
import plistlib
import pwd
import shutil
import stat
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.daemon.restart import FINAL_EXIT_CODES
from agent.support import exitcodes

KEY = "sk-test-0123456789abcdef"
USER = pwd.getpwuid(os.geteuid()).pw_name
UID = os.geteuid()
ENVAGENT = Path(sys.executable).parent / "envagent"
CLI_TIMEOUT_S = 30.0
REPO = Path(__file__).resolve().parents[2]  # tests/service/ is two below the checkout


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


def service(home: Path, *args: str, key: str | None = KEY) -> Done:
    """`envagent service ARGS` with `home` as HOME and the XDG folders left to their defaults."""
    home.mkdir(exist_ok=True)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("LETTA_", "ENVAGENT_", "XDG_", "SUDO_"))
    }
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


@pytest.mark.parametrize("name", KINDS)
def test_dry_run_lists_everything_and_writes_nothing(name: str, tmp_path: Path) -> None:
    kind, home = KINDS[name], tmp_path / "home"
    system_paths = [Path(p) for p in (kind.service_file, kind.secrets_file, *kind.folders)]
    existed = {path for path in system_paths if path.is_absolute() and path.exists()}

    done = service(home, "install", "--dry-run", *kind.flags, "--workdir", str(tmp_path))

    assert done.code == exitcodes.OK, done.err
    assert done.err == ""
    lines = done.out.splitlines()
    assert lines[0] == "dry run: nothing is written and nothing is run"
    service_file, secrets_file = real(kind.service_file, home), real(kind.secrets_file, home)
    assert f"write {service_file} (mode 0644):" in lines
    owner = ", owner " + USER if name == "launchd-daemon" else ""
    assert f"write {secrets_file} (mode 0600{owner}):" in lines
    for folder in kind.folders:
        assert any(line.startswith(f"mkdir {real(folder, home)} (mode 0700") for line in lines)
    commands = [line.removeprefix("run ") for line in lines if line.startswith("run ")]
    assert commands == [command.replace("~", str(home)) for command in kind.commands]
    assert KEY not in done.out
    assert any(line.strip() in ("LETTA_API_KEY=****", 'api_key = "****"') for line in lines)
    assert files_in(home) == []
    assert {path for path in system_paths if path.is_absolute() and path.exists()} == existed


@pytest.mark.parametrize("name", ["systemd-user", "systemd-system"])
def test_units_pass_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    kind, home, root = KINDS[name], tmp_path / "home", tmp_path / "root"
    done = service(
        home,
        "install",
        "--root",
        str(root),
        *kind.flags,
        "--workdir",
        str(tmp_path),
        "--name",
        'box "one" 5%Q $HOME',
        "--mode",
        "acceptEdits",
        "--base-url",
        "https://api.example.com",
    )

    assert done.code == exitcodes.OK, done.err
    unit = under(root, real(kind.service_file, home))
    env_file = under(root, real(kind.secrets_file, home))
    for command in kind.commands:
        assert f"would run: {command}" in done.out
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert f'LETTA_API_KEY="{KEY}"' in env_file.read_text().splitlines()
    assert 'LETTA_BASE_URL="https://api.example.com"' in env_file.read_text().splitlines()
    text = unit.read_text()
    assert KEY not in text
    assert f"EnvironmentFile=-{real(kind.secrets_file, home)}" in text
    assert f'ExecStart="{ENVAGENT}" "run" "--workdir" "{tmp_path}"' in text
    final = " ".join(str(code) for code in sorted(FINAL_EXIT_CODES))
    assert f"\nRestartPreventExitStatus={final}\n" in text  # the same codes launchd sees as 0

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit was rendered but not verified")
    runtime = tmp_path / "runtime"  # a user-scope verify wants XDG_RUNTIME_DIR, nothing more
    runtime.mkdir(mode=0o700)
    scope = [] if name == "systemd-system" else ["--user"]
    verify = subprocess.run(
        [analyze, *scope, "verify", "--man=no", "--generators=no", str(unit)],
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert (verify.returncode, verify.stdout, verify.stderr) == (0, "", "")


LAUNCHD_KEYS: dict[str, type] = {
    "Label": str,
    "ProgramArguments": list,
    "EnvironmentVariables": dict,
    "RunAtLoad": bool,
    "KeepAlive": dict,
    "ThrottleInterval": int,
    "StandardOutPath": str,
    "StandardErrorPath": str,
}


@pytest.mark.parametrize("name", ["launchd-agent", "launchd-daemon"])
def test_plists_parse_with_launchd_types(name: str, tmp_path: Path) -> None:
    kind, home, root = KINDS[name], tmp_path / "home", tmp_path / "root"
    config = home / ".config" / "envagent" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("heartbeat_ms = 5000\n")
    odd_name = "a & <b> 'c'"

    done = service(
        home,
        "install",
        "--root",
        str(root),
        *kind.flags,
        "--workdir",
        str(tmp_path),
        "--name",
        odd_name,
    )

    assert done.code == exitcodes.OK, done.err
    plist_file = under(root, real(kind.service_file, home))
    settings_file = under(root, real(kind.secrets_file, home))
    plist: dict[str, Any] = plistlib.loads(plist_file.read_bytes())
    expected = {**LAUNCHD_KEYS, **({"UserName": str} if name == "launchd-daemon" else {})}
    assert {key: type(value) for key, value in plist.items()} == expected
    assert plist["Label"] == "org.envagent"
    arguments = plist["ProgramArguments"]
    assert all(isinstance(argument, str) for argument in arguments)
    assert arguments == [str(ENVAGENT), "run", "--workdir", str(tmp_path), "--name", odd_name]
    assert Path(arguments[0]).is_absolute() and os.access(arguments[0], os.X_OK)
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ThrottleInterval"] >= 10
    for key in ("StandardOutPath", "StandardErrorPath"):
        assert Path(plist[key]).is_absolute()
        assert Path(plist[key]).parent == real(kind.folders[0], home)
    environment = plist["EnvironmentVariables"]
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in environment.items())
    assert environment["PATH"] == os.environ["PATH"]
    assert environment["HOME"] == str(home)
    assert environment["ENVAGENT_CONFIG"] == str(real(kind.secrets_file, home))
    if name == "launchd-daemon":
        assert plist["UserName"] == USER

    assert KEY not in plist_file.read_text()
    assert stat.S_IMODE(settings_file.stat().st_mode) == 0o600
    settings = tomllib.loads(settings_file.read_text())
    assert settings == {"api_key": KEY, "heartbeat_ms": 5000}
    assert f"are copied into {real(kind.secrets_file, home)}" in done.out


@pytest.mark.parametrize("name", ["systemd-user", "launchd-agent"])
def test_reinstall_replaces_and_uninstall_leaves_nothing(name: str, tmp_path: Path) -> None:
    kind, home, root = KINDS[name], tmp_path / "home", tmp_path / "root"
    service_file = real(kind.service_file, home)
    secrets_file = real(kind.secrets_file, home)
    first = service(home, "install", "--root", str(root), *kind.flags)
    assert first.code == exitcodes.OK, first.err
    assert under(root, secrets_file).exists()

    again = service(home, "install", "--root", str(root), *kind.flags, key=None)

    assert again.code == exitcodes.OK, again.err
    assert f"note: {service_file} exists: it is replaced and the service restarted" in again.out
    assert "note: no API key and no platform URL: the service runs the embedded" in again.out
    assert f"removed {under(root, secrets_file)}" in again.out
    restart = {
        "systemd-user": "systemctl --user restart envagent.service",
        "launchd-agent": f"launchctl bootout gui/{UID}/org.envagent",
    }[name]
    assert f"would run: {restart}" in again.out
    assert not under(root, secrets_file).exists()

    gone = service(home, "uninstall", "--root", str(root), *kind.flags)

    assert gone.code == exitcodes.OK, gone.err
    assert f"removed {under(root, service_file)}" in gone.out
    assert "are kept" in gone.out
    stop = {
        "systemd-user": "systemctl --user disable --now envagent.service",
        "launchd-agent": f"launchctl bootout gui/{UID}/org.envagent",
    }[name]
    assert f"would run: {stop}" in gone.out
    assert files_in(root) == []
    twice = service(home, "uninstall", "--root", str(root), *kind.flags)
    assert twice.code == exitcodes.OK
    assert (
        twice.out.startswith("no envagent service is installed") and str(service_file) in twice.out
    )


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or Path("/run/systemd/system").exists(),
    reason="needs a Linux machine where systemd is not running (a container): elsewhere a real "
    "install would really install",
)
@pytest.mark.parametrize(
    "args",
    [("install",), ("install", "--system", "--run-as", USER), ("status",), ("logs",)],
    ids=["install", "install-system", "status", "logs"],
)
def test_no_usable_manager_is_one_line(args: tuple[str, ...], tmp_path: Path) -> None:
    home = tmp_path / "home"

    done = service(home, *args)

    assert done.code == exitcodes.UNAVAILABLE
    assert done.out == ""
    assert done.err.count("\n") == 1
    assert done.err.startswith("envagent: no usable service manager: systemd is installed but ")
    assert files_in(home) == []


def test_every_package_and_template_ships_in_the_wheel() -> None:
    """The package list in pyproject.toml is explicit (the templates live outside agent/), so a
    new package under agent/ must be added there, and every template must match package-data."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in (REPO / "agent").rglob("__init__.py")
    }
    assert set(setuptools["packages"]) == found | {"agent.service_files"}
    assert setuptools["package-dir"] == {"agent.service_files": "service_files"}
    patterns = setuptools["package-data"]["agent.service_files"]
    templates = {p for p in (REPO / "service_files").iterdir() if p.suffix not in (".py", ".md")}
    assert templates
    assert all(any(template.match(pattern) for pattern in patterns) for template in templates)
