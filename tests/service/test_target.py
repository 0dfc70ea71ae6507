"""agent/service/target.py: whose service, with which folders (resolve_target), what it runs
(service_spec, daemon_program), and how a service manager's tool that fails becomes the
one-line ServiceError (exit_code, with real commands)."""

from __future__ import annotations

import os
import pwd
import shlex
import sys
from pathlib import Path

import pytest

from agent.daemon.config import load_settings
from agent.service.target import (
    Account,
    ServiceError,
    ServiceSpec,
    Target,
    daemon_program,
    exit_code,
    resolve_target,
    service_spec,
)
from agent.support import exitcodes, proc
from agent.support.proxy import proxy_for
from tests.service.service_helpers import ENVAGENT, GID, UID, USER, spec

TIMEOUT_S = 5.0


def exits(code: int) -> proc.Ran:
    return proc.run([sys.executable, "-c", f"raise SystemExit({code})"], timeout_s=TIMEOUT_S)


def test_an_exit_code_is_passed_on_unless_checked() -> None:
    assert exit_code(exits(0), check=True) == 0
    assert exit_code(exits(3), check=False) == 3  # `systemctl status` of a stopped unit
    with pytest.raises(ServiceError) as failed:
        exit_code(exits(3), check=True)
    assert str(failed.value).endswith("` exited 3")
    assert failed.value.code == exitcodes.ERROR


def test_a_missing_tool_or_a_hang_is_always_an_error() -> None:
    missing = proc.run(["envagent-no-such-tool", "status"], timeout_s=TIMEOUT_S)
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    hang = proc.run(sleep, timeout_s=0.5)

    for ran, message in (
        (missing, "envagent-no-such-tool is not installed here (not on PATH)"),
        (hang, f"`{shlex.join(sleep)}` did not finish within 0.5 s"),
    ):
        with pytest.raises(ServiceError) as failed:
            exit_code(ran, check=False)
        assert str(failed.value) == message


# A target's folders.


def test_a_targets_folders_and_environment(tmp_path: Path) -> None:
    account = Account("someone", 1234, 1234, tmp_path / "home")
    target = Target("systemd", True, account, tmp_path / "state", tmp_path / "config")

    assert target.state_dir == tmp_path / "state" / "envagent"
    assert target.config_dir == tmp_path / "config" / "envagent"
    assert target.environment == {
        "HOME": str(tmp_path / "home"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The installing shell: its HOME under tmp_path, its XDG folders the autouse fixture's,
    not under sudo."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SUDO_USER", raising=False)
    return home


@pytest.fixture
def as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the function sees under root (as sudo runs it): its decisions depend on that."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)


def other_account() -> pwd.struct_passwd:
    """An account on this machine that is not the one running the tests."""
    for entry in pwd.getpwall():
        if entry.pw_uid not in (os.geteuid(), 0):
            return entry
    pytest.skip("this machine has no account but the test's and root's")


@pytest.mark.parametrize("system", [False, True], ids=["user", "system"])
def test_my_own_service_keeps_my_shells_folders(tmp_path: Path, shell: Path, system: bool) -> None:
    """A user service, or a system one run as me (by root as root, or by me with --run-as me):
    HOME and the XDG folders of the installing shell, as `envagent run` there uses them."""
    target = resolve_target("systemd", system, USER if system else None)

    assert target == Target(
        "systemd",
        system,
        Account(USER, UID, GID, shell),
        tmp_path / "state",  # the autouse fixture's XDG_STATE_HOME
        tmp_path / "config",
    )


def test_another_users_system_service_gets_that_users_defaults(shell: Path) -> None:
    other = other_account()

    target = resolve_target("launchd", True, other.pw_name)

    home = Path(other.pw_dir)
    assert target == Target(
        "launchd",
        True,
        Account(other.pw_name, other.pw_uid, other.pw_gid, home),
        home / ".local" / "state",
        home / ".config",
    )


def test_under_sudo_a_system_service_runs_as_the_sudo_user(
    shell: Path, as_root: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = other_account()
    monkeypatch.setenv("SUDO_USER", other.pw_name)

    assert resolve_target("systemd", True, None).account.name == other.pw_name


@pytest.mark.parametrize("sudo_user", [None, "root"], ids=["root-itself", "sudo-by-root"])
def test_root_is_never_the_default_user_of_a_system_service(
    shell: Path, as_root: None, monkeypatch: pytest.MonkeyPatch, sudo_user: str | None
) -> None:
    if sudo_user:
        monkeypatch.setenv("SUDO_USER", sudo_user)

    with pytest.raises(ServiceError) as refused:
        resolve_target("systemd", True, None)

    assert refused.value.code == exitcodes.CONFIG
    assert str(refused.value) == "a system service runs as a user, not root: pass --run-as USER"


def test_under_sudo_a_user_service_is_refused(
    shell: Path, as_root: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUDO_USER", "alice")

    with pytest.raises(ServiceError) as refused:
        resolve_target("systemd", False, None)

    assert refused.value.code == exitcodes.CONFIG
    assert str(refused.value) == (
        "under sudo a user service would be root's, not alice's: run it without sudo, or use "
        "--system"
    )


def test_root_using_sudo_gets_roots_own_user_service(
    shell: Path, as_root: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SUDO_USER=root is root running sudo: no one else's service is at stake."""
    monkeypatch.setenv("SUDO_USER", "root")

    target = resolve_target("systemd", False, None)

    assert (target.account.uid, target.system) == (0, False)


def test_run_as_is_for_system_services_only(shell: Path) -> None:
    with pytest.raises(ServiceError) as refused:
        resolve_target("systemd", False, USER)

    assert refused.value.code == exitcodes.CONFIG
    assert str(refused.value) == "--run-as is for --system; a user service runs as you"


def test_an_unknown_user_is_refused(shell: Path) -> None:
    with pytest.raises(ServiceError) as refused:
        resolve_target("systemd", True, "envagent-no-such-user")

    assert refused.value.code == exitcodes.CONFIG
    assert str(refused.value) == "no user 'envagent-no-such-user' on this machine"


# What the service runs.


def test_the_command_names_the_config_file_only_when_asked(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    named = spec(tmp_path, config_file=config)

    assert named.command(with_config=True) == (
        str(ENVAGENT),
        "run",
        "--workdir",
        str(tmp_path),
        "--config",
        str(config),
    )
    assert named.command(with_config=False) == (str(ENVAGENT), "run", "--workdir", str(tmp_path))
    assert spec(tmp_path).command(with_config=True) == named.command(with_config=False)


def test_service_spec_from_flags_environment_and_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flags go on the command line (name and mode, the workdir always); the config file's
    settings are copied, typed, with the key unwrapped; the environment's are neither."""
    monkeypatch.setenv("PATH", "/opt/node/bin:/usr/bin")
    config = tmp_path / "config.toml"
    config.write_text(
        'api_key = "fake-key-from-file"\nmode = "acceptEdits"\nheartbeat_ms = 5000\ndebug = true\n'
        f'log_file = "{tmp_path}/logs/envagent.log"\n'
    )
    environ = {"ENVAGENT_LISTENER_INSTANCE_ID": "second", "LETTA_BASE_URL": "https://x.example"}
    flags = {"workdir": str(tmp_path), "name": "box one", "mode": None, "base_url": None}
    loaded = load_settings(flags, environ, config_path=config)

    made = service_spec(loaded, config_named=True)

    assert made.program == daemon_program()
    assert made.run_flags == ("--workdir", str(tmp_path), "--name", "box one")
    assert made.config_file == config
    assert made.path == "/opt/node/bin:/usr/bin"
    assert (made.api_key, made.base_url) == ("fake-key-from-file", "https://x.example")
    assert made.file_settings == {
        "api_key": "fake-key-from-file",
        "mode": "acceptEdits",
        "heartbeat_ms": 5000,
        "debug": True,
        "log_file": f"{tmp_path}/logs/envagent.log",
    }
    assert made.log_dir == tmp_path / "logs"
    assert service_spec(loaded, config_named=False).config_file is None


def test_service_spec_without_a_key_or_log_file(tmp_path: Path) -> None:
    loaded = load_settings({"workdir": str(tmp_path)}, {}, config_path=None)

    made = service_spec(loaded, config_named=False)

    assert (made.api_key, made.base_url, made.log_dir) == (None, None, None)
    assert made.file_settings == {}
    assert made.run_flags == ("--workdir", str(tmp_path))


def test_the_program_is_this_installs_envagent() -> None:
    assert daemon_program() == (str(ENVAGENT),)
    assert os.access(ENVAGENT, os.X_OK)


@pytest.mark.parametrize("script", [None, 0o644], ids=["no-script", "not-executable"])
def test_without_an_envagent_script_the_program_is_this_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: int | None
) -> None:
    """Never a lookup on PATH: an `envagent` found there may be another install's."""
    python = tmp_path / "bin" / "python3"
    python.parent.mkdir()
    if script is not None:
        (python.parent / "envagent").write_text("#!/bin/sh\n")
        (python.parent / "envagent").chmod(script)
    monkeypatch.setattr(sys, "executable", str(python))

    assert daemon_program() == (str(python), "-m", "agent")


# What the service is given of the shell's network environment.


def spec_here(tmp_path: Path) -> ServiceSpec:
    """The spec an install in this process's environment makes."""
    return service_spec(load_settings({"workdir": str(tmp_path)}, {}), config_named=False)


def test_the_proxy_variables_are_carried_by_the_names_the_daemon_read(
    tmp_path: Path, no_network: pytest.MonkeyPatch
) -> None:
    """Lower case first, as the daemon reads them; an empty one counts as unset, so its other
    case is the one read; the one not read is not carried."""
    no_network.setenv("https_proxy", "http://alice:s3cret@proxy.corp:3128")
    no_network.setenv("HTTPS_PROXY", "http://not-read.corp:3128")
    no_network.setenv("http_proxy", "")
    no_network.setenv("HTTP_PROXY", "proxy.corp:8080")
    no_network.setenv("NO_PROXY", "localhost,.internal.corp")

    made = spec_here(tmp_path)

    assert made.network == {
        "https_proxy": "http://alice:s3cret@proxy.corp:3128",
        "HTTP_PROXY": "proxy.corp:8080",
        "NO_PROXY": "localhost,.internal.corp",
    }
    hidden = {**made.network, "https_proxy": "http://alice:***@proxy.corp:3128"}
    assert made.network_shown == hidden
    for url in (
        "https://api.letta.com",
        "wss://api.letta.com/x",
        "http://a.example",
        "https://b.internal.corp",
    ):
        assert proxy_for(url, made.network) == proxy_for(url, os.environ), url


@pytest.mark.parametrize("empty", [False, True], ids=["unset", "empty"])
def test_with_no_network_variable_set_nothing_is_carried(
    tmp_path: Path, no_network: pytest.MonkeyPatch, empty: bool
) -> None:
    if empty:
        for name in ("HTTPS_PROXY", "no_proxy", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
            no_network.setenv(name, "")

    assert spec_here(tmp_path).network == {}


def test_a_relative_or_home_ca_file_is_made_absolute(
    tmp_path: Path, no_network: pytest.MonkeyPatch
) -> None:
    """The service's working directory and HOME are not the shell's."""
    home, work = tmp_path / "home", tmp_path / "work"
    (work / "certs").mkdir(parents=True)
    home.mkdir()
    (work / "certs" / "corp.pem").write_text("PEM")
    (home / "ca.pem").write_text("PEM")
    no_network.setenv("HOME", str(home))
    no_network.chdir(work)
    no_network.setenv("SSL_CERT_FILE", "certs/corp.pem")
    no_network.setenv("REQUESTS_CA_BUNDLE", "~/ca.pem")

    assert spec_here(tmp_path).network == {
        "SSL_CERT_FILE": str(work / "certs" / "corp.pem"),
        "REQUESTS_CA_BUNDLE": str(home / "ca.pem"),
    }


@pytest.mark.parametrize("folder", [False, True], ids=["missing", "folder"])
def test_a_ca_file_that_is_not_a_file_is_refused(
    tmp_path: Path, no_network: pytest.MonkeyPatch, folder: bool
) -> None:
    no_network.chdir(tmp_path)
    if folder:
        (tmp_path / "ca.pem").mkdir()
    no_network.setenv("REQUESTS_CA_BUNDLE", "ca.pem")

    with pytest.raises(ServiceError) as refused:
        spec_here(tmp_path)

    assert refused.value.code == exitcodes.CONFIG
    problem = "is not a file" if folder else "does not exist"
    assert str(refused.value) == (
        f"REQUESTS_CA_BUNDLE=ca.pem: {tmp_path / 'ca.pem'} {problem}: name a PEM file of CA "
        "certificates, or unset it, and install again"
    )
