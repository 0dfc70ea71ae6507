"""agent/service/launchd.py: the LaunchAgent and LaunchDaemon plists, the 0600 settings file
that holds the key, and the launchctl and tail command lines.

Every plist is parsed by plistlib (expat underneath: a plist that is not well-formed XML fails),
every settings file by tomllib, the reader the daemon itself uses.
"""

from __future__ import annotations

import os
import plistlib
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest

from agent.service.launchd import LABEL, Launchd
from agent.service.plan import MakeDir, RemoveFile, Run, Step, WriteFile
from agent.service.target import ServiceError, ServiceSpec, Target, TomlValue
from agent.support import exitcodes
from tests.service.service_helpers import (
    ENVAGENT,
    KEY,
    KINDS,
    UID,
    USER,
    everything_present,
    nothing_present,
    real,
    service,
    spec,
    target,
    under,
)

ODD = "a & <b> ]]> \"c\" 'd' $HOME %h \\ \n\ttab\r é🚀 &amp;"
"""What XML escapes, what it normalizes (a carriage return), and what other formats treat
specially, in one value."""


def written(steps: list[Step], path: Path) -> WriteFile:
    files = [step for step in steps if isinstance(step, WriteFile) and step.path == path]
    assert len(files) == 1, steps
    return files[0]


def plist_of(target_: Target, spec_: ServiceSpec) -> dict[str, Any]:
    manager = Launchd(target_)
    plist = written(manager.install(spec_, nothing_present).steps, manager.plist_path)
    parsed: dict[str, Any] = plistlib.loads(plist.content.encode())
    return parsed


def settings_of(target_: Target, spec_: ServiceSpec) -> tuple[WriteFile, dict[str, Any]]:
    manager = Launchd(target_)
    settings = written(manager.install(spec_, nothing_present).steps, manager.settings_path)
    return settings, tomllib.loads(settings.content)


def test_files_and_domains_of_an_agent_and_a_daemon(tmp_path: Path) -> None:
    home = tmp_path / "home"
    agent = Launchd(target(tmp_path, "launchd"))
    daemon = Launchd(target(tmp_path, "launchd", system=True))

    assert agent.files == (
        home / "Library/LaunchAgents/org.envagent.plist",
        home / ".config/envagent/service.toml",
    )
    assert agent.log_path == home / "Library/Logs/envagent/envagent.log"
    assert (agent.domain, agent.service) == (f"gui/{UID}", f"gui/{UID}/org.envagent")
    assert daemon.files == (
        Path("/Library/LaunchDaemons/org.envagent.plist"),
        home / ".config/envagent/service.toml",  # the user's: the daemon reads it as that user
    )
    assert daemon.log_path == Path("/Library/Logs/envagent/envagent.log")
    assert (daemon.domain, daemon.service) == ("system", "system/org.envagent")


@pytest.mark.parametrize("system", [False, True], ids=["agent", "daemon"])
def test_install_plan(tmp_path: Path, system: bool) -> None:
    target_ = target(tmp_path, "launchd", system=system)
    manager = Launchd(target_)
    owner = target_.account if system else None

    plan = manager.install(spec(tmp_path), nothing_present)

    settings = written(plan.steps, manager.settings_path)
    plist = written(plan.steps, manager.plist_path)
    assert plan.steps == [
        MakeDir(manager.log_path.parent, 0o700, owner),  # launchd does not create it
        MakeDir(manager.settings_path.parent, 0o700, owner),
        WriteFile(manager.settings_path, 0o600, settings.content, settings.shown, owner),
        WriteFile(manager.plist_path, 0o644, plist.content, plist.content),
        Run(("launchctl", "enable", manager.service)),
        Run(("launchctl", "bootstrap", manager.domain, str(manager.plist_path))),
        Run(("launchctl", "print", manager.service)),
    ]
    assert plan.notes == []


def test_a_replaced_plist_is_booted_out_first_and_a_stale_settings_file_removed(
    tmp_path: Path,
) -> None:
    manager = Launchd(target(tmp_path, "launchd"))

    plan = manager.install(spec(tmp_path, api_key=None), everything_present)

    assert plan.steps[1:3] == [
        RemoveFile(manager.settings_path),
        Run(("launchctl", "bootout", manager.service), may_fail=True),
    ]
    assert isinstance(plan.steps[3], WriteFile) and plan.steps[3].path == manager.plist_path
    assert plan.notes == [f"{manager.plist_path} exists: it is replaced and the service restarted"]


def test_uninstall_plan(tmp_path: Path) -> None:
    target_ = target(tmp_path, "launchd")
    manager = Launchd(target_)

    plan = manager.uninstall(lambda path: path == manager.plist_path)

    assert plan.steps == [
        Run(("launchctl", "bootout", manager.service), may_fail=True),
        RemoveFile(manager.plist_path),
    ]
    assert plan.notes == [
        f"the state in {target_.state_dir} and the logs in {manager.log_path.parent} are kept"
    ]


def test_status_and_logs_command_lines(tmp_path: Path) -> None:
    manager = Launchd(target(tmp_path, "launchd", system=True))
    log = "/Library/Logs/envagent/envagent.log"

    assert manager.status() == ("launchctl", "print", "system/org.envagent")
    assert manager.logs(False, 20) == ("tail", "-n", "20", log)
    assert manager.logs(True, 5) == ("tail", "-n", "5", "-F", log)


@pytest.mark.parametrize("system", [False, True], ids=["agent", "daemon"])
def test_odd_values_come_back_exactly_from_the_plist(tmp_path: Path, system: bool) -> None:
    home = tmp_path / f"home {ODD}"
    target_ = target(tmp_path, "launchd", system=system, home=home)
    flags = ("--workdir", str(tmp_path / ODD), "--name", ODD)
    spec_ = spec(tmp_path, run_flags=flags, path=f"/opt/{ODD}:/usr/bin")

    plist = plist_of(target_, spec_)

    assert plist["Label"] == LABEL
    assert plist["ProgramArguments"] == [str(ENVAGENT), "run", *flags]
    assert plist["EnvironmentVariables"] == {
        "PATH": spec_.path,
        **target_.environment,
        "ENVAGENT_CONFIG": str(target_.config_dir / "service.toml"),
    }
    assert plist["StandardOutPath"] == plist["StandardErrorPath"] == str(Launchd(target_).log_path)
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ThrottleInterval"] == 30
    assert plist.get("UserName") == (target_.account.name if system else None)


def test_the_config_file_is_not_passed_the_settings_file_replaces_it(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"

    plist = plist_of(target(tmp_path, "launchd"), spec(tmp_path, config_file=config))

    assert "--config" not in plist["ProgramArguments"]
    assert plist["EnvironmentVariables"]["ENVAGENT_CONFIG"].endswith("/service.toml")


def test_without_settings_there_is_no_settings_file_and_no_envagent_config(
    tmp_path: Path,
) -> None:
    manager = Launchd(target(tmp_path, "launchd"))

    plan = manager.install(spec(tmp_path, api_key=None), nothing_present)

    plist = plistlib.loads(written(plan.steps, manager.plist_path).content.encode())
    assert "ENVAGENT_CONFIG" not in plist["EnvironmentVariables"]
    paths = [step.path for step in plan.steps if not isinstance(step, Run)]
    assert paths == [manager.log_path.parent, manager.plist_path]


@pytest.mark.parametrize(
    "odd",
    ["\x1b[31m", "nul\x00", "\x0c", "\udcff"],
    ids=["escape", "nul", "form-feed", "surrogate"],
)
def test_what_xml_cannot_hold_is_refused(tmp_path: Path, odd: str) -> None:
    """Control characters other than tab and line ends cannot be in XML 1.0, even as a
    reference; nor can a lone surrogate (an argument that was not UTF-8)."""
    with pytest.raises(ServiceError) as refused:
        Launchd(target(tmp_path, "launchd")).install(
            spec(tmp_path, run_flags=("--name", f"box {odd}")), nothing_present
        )

    assert refused.value.code == exitcodes.CONFIG
    assert (
        str(refused.value)
        == f"{f'box {odd}'!r}: a control character cannot go into a launchd plist"
    )


def test_the_key_is_only_in_the_0600_settings_file(tmp_path: Path) -> None:
    target_ = target(tmp_path, "launchd")
    manager = Launchd(target_)

    plan = manager.install(spec(tmp_path, base_url="https://api.example.com"), nothing_present)

    settings = written(plan.steps, manager.settings_path)
    assert (settings.mode, settings.owner) == (0o600, None)
    assert tomllib.loads(settings.content) == {
        "api_key": KEY,
        "base_url": "https://api.example.com",
    }
    assert tomllib.loads(settings.shown) == {
        "api_key": "****",
        "base_url": "https://api.example.com",
    }
    assert [step for step in plan.steps if isinstance(step, WriteFile) and KEY in step.shown] == []
    assert KEY not in written(plan.steps, manager.plist_path).content


# The network variables: in the plist, but never a proxy password.


@pytest.mark.parametrize("system", [False, True], ids=["agent", "daemon"])
def test_network_variables_without_a_password_go_into_the_plist(
    tmp_path: Path, system: bool
) -> None:
    target_ = target(tmp_path, "launchd", system=system)
    network = {
        "https_proxy": "http://alice@proxy.corp:3128",  # a user alone is shown everywhere
        "NO_PROXY": "localhost,.internal.corp",
        "SSL_CERT_FILE": f"/etc/ssl/{ODD}.pem",
    }

    settings, parsed = settings_of(target_, spec(tmp_path, network=network))

    environment = plist_of(target_, spec(tmp_path, network=network))["EnvironmentVariables"]
    assert environment == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        **target_.environment,
        **network,
        "ENVAGENT_CONFIG": str(settings.path),
    }
    assert parsed == {"api_key": KEY}


@pytest.mark.parametrize("system", [False, True], ids=["agent", "daemon"])
@pytest.mark.parametrize(
    ("name", "password"), [("HTTPS_PROXY", "s3cret"), ("all_proxy", "")], ids=["upper", "empty"]
)
def test_a_proxy_password_is_refused(
    tmp_path: Path, system: bool, name: str, password: str
) -> None:
    """launchd takes a service's environment from its plist alone, which is not private."""
    network = {"NO_PROXY": ".corp", name: f"alice:{password}@proxy.corp:3128"}

    with pytest.raises(ServiceError) as refused:
        Launchd(target(tmp_path, "launchd", system=system)).install(
            spec(tmp_path, network=network), nothing_present
        )

    assert refused.value.code == exitcodes.CONFIG
    assert str(refused.value) == (
        f"{name}=http://alice:***@proxy.corp:3128: launchd passes a service's environment only "
        "in its plist, which is not private, so a proxy password cannot go there: point "
        f"{name} at a proxy that needs none, such as a local cntlm or px, and install again"
    )


@pytest.mark.parametrize(
    "value",
    [
        "box 🚀",  # JSON would write a surrogate pair, which TOML refuses
        "é ü 中",
        'quote " backslash \\ dollar $',
        "line\nbreak\ttab\rreturn",
        "delete \x7f and \x01",
        "\u2028 and \ufeff",
    ],
    ids=["emoji", "accents", "quotes", "line-ends", "control", "unicode-separators"],
)
def test_settings_come_back_exactly_from_toml(tmp_path: Path, value: str) -> None:
    file_settings: dict[str, TomlValue] = {"name": value, "heartbeat_ms": 5000, "debug": True}

    key = f"fake-key-{value}"
    settings, parsed = settings_of(
        target(tmp_path, "launchd"), spec(tmp_path, api_key=key, file_settings=file_settings)
    )

    assert parsed == {"api_key": key, "debug": True, "heartbeat_ms": 5000, "name": value}
    assert list(parsed) == sorted(parsed)
    assert tomllib.loads(settings.shown) == {**parsed, "api_key": "****"}


def test_file_settings_are_copied_with_a_note(tmp_path: Path) -> None:
    manager = Launchd(target(tmp_path, "launchd"))

    plan = manager.install(
        spec(tmp_path, api_key=None, file_settings={"debug": False}), nothing_present
    )

    assert tomllib.loads(written(plan.steps, manager.settings_path).content) == {"debug": False}
    assert plan.notes == [
        f"the settings of the config file are copied into {manager.settings_path}, which the "
        "service reads instead: install again after changing them"
    ]


# Moved from test_install.py: the real CLI's plists.

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
