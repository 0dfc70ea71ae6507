"""agent/service/install.py: `envagent service install` and `uninstall` carry out a plan.

The real CLI's dry runs must list every file, mode and command and write nothing; `--root`
writes the real files into a temporary folder and prints the commands instead of running them.
A real install (no --root) runs here too, into the test's folders, with stand-ins for
systemctl and loginctl on PATH, so nothing here needs (or touches) a running service manager.
How each unit or plist is rendered is in test_systemd.py and test_launchd.py.
"""

from __future__ import annotations

import os
import plistlib
import stat
from pathlib import Path

import pytest

from agent.service.install import install, uninstall
from agent.service.launchd import Launchd
from agent.service.systemd import Systemd
from agent.service.target import ServiceError
from agent.support import exitcodes
from tests.service.service_helpers import (
    KEY,
    KINDS,
    NETWORK_VARIABLES,
    UID,
    USER,
    FakeTools,
    files_in,
    real,
    service,
    spec,
    target,
    under,
)


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
    assert not any(variable in done.out for variable in NETWORK_VARIABLES)  # none set: none added
    assert files_in(home) == []
    assert {path for path in system_paths if path.is_absolute() and path.exists()} == existed


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


# The installing shell's network variables, through the real CLI.

PROXY = "http://alice:s3cret@proxy.corp:3128"


def shell_network(home: Path, proxy: str = PROXY) -> dict[str, str]:
    """A lower-case proxy with a password, NO_PROXY, and a CA file named relative to `home`,
    the install's working directory."""
    (home / "certs").mkdir(parents=True)
    (home / "certs" / "corp.pem").write_text("PEM")
    return {"https_proxy": proxy, "NO_PROXY": ".internal.corp", "SSL_CERT_FILE": "certs/corp.pem"}


@pytest.mark.parametrize("name", ["systemd-user", "systemd-system"])
def test_a_dry_run_shows_the_network_carried_with_the_password_hidden(
    name: str, tmp_path: Path
) -> None:
    kind, home = KINDS[name], tmp_path / "home"
    ca = home / "certs" / "corp.pem"

    done = service(home, "install", "--dry-run", *kind.flags, network=shell_network(home))

    assert done.code == exitcodes.OK, done.err
    assert "s3cret" not in done.out + done.err
    lines = done.out.splitlines()
    assert (
        "note: carried from this shell: https_proxy=http://alice:***@proxy.corp:3128, "
        f"NO_PROXY=.internal.corp, SSL_CERT_FILE={ca}; install again after changing them"
    ) in lines
    shown = [
        '    https_proxy="http://alice:***@proxy.corp:3128"',
        '    NO_PROXY=".internal.corp"',
        f'    SSL_CERT_FILE="{ca}"',
    ]
    start = lines.index(shown[0])
    assert lines[start : start + 3] == shown
    env_file = lines.index(f"write {real(kind.secrets_file, home)} (mode 0600):")
    assert env_file < start < lines.index(f"write {real(kind.service_file, home)} (mode 0644):")


@pytest.mark.parametrize("name", ["launchd-agent", "launchd-daemon"])
def test_launchd_refuses_a_proxy_password_in_one_line(name: str, tmp_path: Path) -> None:
    home = tmp_path / "home"

    done = service(home, "install", "--dry-run", *KINDS[name].flags, network=shell_network(home))

    assert (done.code, done.out) == (exitcodes.CONFIG, "")
    assert done.err == (
        "envagent: https_proxy=http://alice:***@proxy.corp:3128: launchd passes a service's "
        "environment only in its plist, which is not private, so a proxy password cannot go "
        "there: point https_proxy at a proxy that needs none, such as a local cntlm or px, and "
        "install again\n"
    )


@pytest.mark.parametrize("name", ["systemd-user", "launchd-agent"])
def test_the_network_is_installed_exactly_and_uninstalled_with_the_files(
    name: str, tmp_path: Path
) -> None:
    kind, home, root = KINDS[name], tmp_path / "home", tmp_path / "root"
    proxy = PROXY if name == "systemd-user" else "http://proxy.corp:3128"
    network = shell_network(home, proxy)
    service_file = under(root, real(kind.service_file, home))
    secrets_file = under(root, real(kind.secrets_file, home))

    done = service(home, "install", "--root", str(root), *kind.flags, network=network)

    assert done.code == exitcodes.OK, done.err
    expected = {**network, "SSL_CERT_FILE": str(home / "certs" / "corp.pem")}
    if name == "systemd-user":
        lines = secrets_file.read_text().splitlines()
        assert lines[-3:] == [f'{variable}="{value}"' for variable, value in expected.items()]
        assert "s3cret" not in service_file.read_text() + done.out
    else:
        environment = plistlib.loads(service_file.read_bytes())["EnvironmentVariables"]
        assert {variable: environment[variable] for variable in expected} == expected
        assert "proxy.corp" not in secrets_file.read_text()

    gone = service(home, "uninstall", "--root", str(root), *kind.flags)

    assert gone.code == exitcodes.OK, gone.err
    assert files_in(root) == []


def test_a_ca_file_that_does_not_exist_refuses_the_install(tmp_path: Path) -> None:
    home = tmp_path / "home"

    done = service(
        home, "install", "--root", str(tmp_path / "root"), network={"SSL_CERT_FILE": "~/ca.pem"}
    )

    assert (done.code, done.out) == (exitcodes.CONFIG, "")
    assert done.err == (
        f"envagent: SSL_CERT_FILE=~/ca.pem: {home / 'ca.pem'} does not exist: name a PEM file of "
        "CA certificates, or unset it, and install again\n"
    )
    assert not (tmp_path / "root").exists()


# In-process: the same functions the CLI calls, on targets under tmp_path.


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_real_user_install_writes_the_files_and_runs_systemctl(
    tmp_path: Path,
    tools: FakeTools,
    systemd_running: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tools.add("systemctl")
    tools.add("loginctl", stdout="no\n")
    target_ = target(tmp_path)
    manager = Systemd(target_)

    code = install(target_, spec(tmp_path), dry_run=False, root=None)

    assert code == exitcodes.OK
    assert (mode(manager.unit_path), mode(manager.env_path)) == (0o644, 0o600)
    assert f'LETTA_API_KEY="{KEY}"' in manager.env_path.read_text().splitlines()
    assert KEY not in manager.unit_path.read_text()
    assert tools.calls() == [
        ("systemctl", "--user", "show-environment"),  # usable?
        ("systemctl", "--user", "daemon-reload"),
        ("systemctl", "--user", "enable", "--now", "envagent.service"),
        ("loginctl", "show-user", USER, "--property=Linger", "--value"),
    ]
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"wrote {manager.env_path} (mode 0600)",
        f"wrote {manager.unit_path} (mode 0644)",
        "running: systemctl --user daemon-reload",
        "running: systemctl --user enable --now envagent.service",
        f"note: linger is off for {USER}: the service runs only while {USER} is logged in; "
        f"`loginctl enable-linger {USER}` keeps it running (a headless machine needs it)",
        "envagent service installed (systemd user unit); `envagent service status` shows it",
    ]


def test_a_failing_command_stops_the_install_with_its_problem(
    tmp_path: Path, tools: FakeTools, systemd_running: Path
) -> None:
    tools.add("systemctl", code=1, stdout="Failed to enable unit: bad setting\n", when="enable")
    target_ = target(tmp_path)

    with pytest.raises(ServiceError) as failed:
        install(target_, spec(tmp_path), dry_run=False, root=None)

    assert str(failed.value) == "`systemctl --user enable --now envagent.service` exited 1"
    assert failed.value.code == exitcodes.ERROR
    assert Systemd(target_).unit_path.exists()  # written before: install again fixes it


def test_an_expected_failure_is_ignored_and_its_output_hidden(
    tmp_path: Path,
    tools: FakeTools,
    systemd_running: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Uninstalling a service that is not running: `disable --now` fails, the rest goes on."""
    tools.add("systemctl", code=5, stdout="Unit envagent.service not loaded.\n", when="disable")
    target_ = target(tmp_path)
    manager = Systemd(target_)
    manager.unit_path.parent.mkdir(parents=True)
    manager.unit_path.write_text("[Unit]\n")

    assert uninstall(target_, dry_run=False, root=None) == exitcodes.OK

    assert not manager.unit_path.exists()
    assert [call[2] for call in tools.calls()[1:]] == ["disable", "daemon-reload", "reset-failed"]
    out = capfd.readouterr().out
    assert "not loaded" not in out
    assert out.endswith("envagent service uninstalled (systemd user unit)\n")


def test_a_system_service_needs_root(
    tmp_path: Path,
    tools: FakeTools,
    systemd_running: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tools.add("systemctl")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # the check is the euid's, as sudo sets it
    target_ = target(tmp_path, system=True)

    with pytest.raises(ServiceError) as refused:
        install(target_, spec(tmp_path), dry_run=False, root=None)

    assert refused.value.code == exitcodes.CONFIG
    assert str(refused.value) == (
        "a system service is installed by root: run it with sudo (systemd system unit)"
    )
    assert tools.calls() == []
    assert not (tmp_path / "home").exists()


def test_a_dry_run_needs_no_service_manager(
    tmp_path: Path, only_tools: FakeTools, capsys: pytest.CaptureFixture[str]
) -> None:
    """No systemctl at all: the dry run is printed, nothing is run or written."""
    code = install(target(tmp_path, system=True), spec(tmp_path), dry_run=True, root=None)

    assert code == exitcodes.OK
    assert capsys.readouterr().out.startswith("dry run: nothing is written and nothing is run\n")
    assert files_in(tmp_path) == []


def test_under_a_root_folders_get_mkdir_p_modes_and_commands_are_printed(
    tmp_path: Path, only_tools: FakeTools, capsys: pytest.CaptureFixture[str]
) -> None:
    """The state folder 0700, each parent it needed 0755 (as `mkdir -p`); nothing runs."""
    root = tmp_path / "root"
    target_ = target(tmp_path, system=True)
    (under(root, tmp_path / "home")).mkdir(parents=True)  # the home exists, not .local

    install(target_, spec(tmp_path, api_key=None), dry_run=False, root=root)

    state = under(root, target_.state_dir)
    assert [mode(folder) for folder in (state, state.parent, state.parent.parent)] == [
        0o700,
        0o755,
        0o755,
    ]
    out = capsys.readouterr().out.splitlines()
    created = [line for line in out if line.startswith("created ")]
    assert created == [
        f"created {state.parent.parent}",
        f"created {state.parent}",
        f"created {state}",
    ]
    assert "would run: systemctl daemon-reload" in out
    assert out[-1] == f"done under {root}; the commands above were not run"
    assert only_tools.calls() == []


def test_no_key_and_no_url_is_the_embedded_platform_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install(target(tmp_path, "launchd"), spec(tmp_path, api_key=None), dry_run=True, root=None)

    assert (
        "note: no API key and no platform URL: the service runs the embedded reference "
        "platform; set LETTA_API_KEY (and LETTA_BASE_URL) and install again to use another"
    ) in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("system", [False, True], ids=["agent", "daemon"])
def test_uninstalling_nothing_says_so(
    tmp_path: Path, only_tools: FakeTools, capsys: pytest.CaptureFixture[str], system: bool
) -> None:
    target_ = target(tmp_path, "launchd", system=system)

    assert uninstall(target_, dry_run=False, root=tmp_path / "root") == exitcodes.OK

    kind = "launchd system daemon" if system else "launchd user agent"
    plist = Launchd(target_).plist_path
    assert capsys.readouterr().out == f"no envagent service is installed ({kind}: no {plist})\n"
    assert only_tools.calls() == []
