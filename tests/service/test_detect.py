"""agent/service/detect.py: which service manager this machine has, and whether it can be used.

The real systemd is never asked: the folder that says it runs as init is one of the test's,
and systemctl, loginctl and launchctl are stand-ins on PATH (real programs that record their
arguments and answer as told), or are missing from it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from agent.service.detect import check_usable, default_manager, linger_off
from agent.service.target import ServiceError
from agent.support import exitcodes
from tests.service.service_helpers import USER, FakeTools, files_in, service, target

HINT = (
    "; `envagent service install --dry-run` shows what it would install, and `envagent run` "
    "works under any supervisor"
)


def unusable(tmp_path: Path, *, system: bool = False, manager: str = "systemd") -> str:
    with pytest.raises(ServiceError) as refused:
        check_usable(
            target(tmp_path, "launchd" if manager == "launchd" else "systemd", system=system)
        )
    assert refused.value.code == exitcodes.UNAVAILABLE
    message = str(refused.value)
    assert message.startswith("no usable service manager: ") and message.endswith(HINT)
    return message.removeprefix("no usable service manager: ").removesuffix(HINT)


def pid1() -> str:
    try:
        return Path("/proc/1/comm").read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@pytest.mark.parametrize(("platform", "manager"), [("linux", "systemd"), ("darwin", "launchd")])
def test_the_platform_picks_the_manager(
    platform: str, manager: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "platform", platform)

    assert default_manager() == manager


def test_another_platform_has_no_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "win32")

    with pytest.raises(ServiceError) as refused:
        default_manager()

    assert refused.value.code == exitcodes.UNAVAILABLE
    assert str(refused.value) == (
        "envagent service knows systemd (Linux) and launchd (macOS), not win32"
    )


def test_no_systemctl(tmp_path: Path, only_tools: FakeTools, systemd_running: Path) -> None:
    assert unusable(tmp_path) == "systemctl is not installed, and launchd is macOS only"


@pytest.mark.parametrize("system", [False, True], ids=["user", "system"])
def test_systemctl_without_systemd_running_as_init(
    tmp_path: Path, only_tools: FakeTools, systemd_not_running: Path, system: bool
) -> None:
    """A container: systemctl is installed, PID 1 is something else."""
    only_tools.add("systemctl")

    assert unusable(tmp_path, system=system) == (
        f"systemd is installed but is not the init system (PID 1 is {pid1()}, no "
        f"{systemd_not_running}), as in a container, and launchd is macOS only"
    )
    assert only_tools.calls() == []


def test_a_system_service_needs_only_systemd_running(
    tmp_path: Path, only_tools: FakeTools, systemd_running: Path
) -> None:
    only_tools.add("systemctl", code=1)

    check_usable(target(tmp_path, system=True))

    assert only_tools.calls() == []


def test_a_user_service_needs_the_user_instance(
    tmp_path: Path, only_tools: FakeTools, systemd_running: Path
) -> None:
    only_tools.add("systemctl")

    check_usable(target(tmp_path))

    assert only_tools.calls() == [("systemctl", "--user", "show-environment")]


def test_an_unreachable_user_instance_says_how_to_start_it(
    tmp_path: Path, only_tools: FakeTools, systemd_running: Path
) -> None:
    only_tools.add("systemctl", code=1, stdout="Failed to connect to bus: No medium found\n")

    assert unusable(tmp_path) == (
        f"the systemd user instance of {USER} cannot be reached (`systemctl --user "
        "show-environment` exited 1: Failed to connect to bus: No medium found); "
        f"log in as {USER} (not with su), or run `loginctl enable-linger {USER}` to start it "
        "without a login, or use --system"
    )


@pytest.mark.parametrize("system", [False, True], ids=["agent", "daemon"])
def test_launchd_needs_launchctl(tmp_path: Path, only_tools: FakeTools, system: bool) -> None:
    assert unusable(tmp_path, system=system, manager="launchd") == (
        "launchctl is not here (launchd is macOS only)"
    )

    only_tools.add("launchctl")
    check_usable(target(tmp_path, "launchd", system=system))
    assert only_tools.calls() == []  # being there is enough: nothing is run


@pytest.mark.parametrize(
    ("answer", "code", "off"),
    [("no\n", 0, True), ("yes\n", 0, False), ("", 1, False)],
    ids=["off", "on", "unknown-user"],
)
def test_linger_is_off_only_when_logind_says_so(
    tmp_path: Path, only_tools: FakeTools, answer: str, code: int, off: bool
) -> None:
    only_tools.add("loginctl", code=code, stdout=answer)
    account = target(tmp_path).account

    assert linger_off(account) is off
    assert only_tools.calls() == [
        ("loginctl", "show-user", account.name, "--property=Linger", "--value")
    ]


def test_without_loginctl_linger_is_unknown(tmp_path: Path, only_tools: FakeTools) -> None:
    assert linger_off(target(tmp_path).account) is False


# Moved from test_install.py: the real CLI on a machine where systemd does not run.


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
