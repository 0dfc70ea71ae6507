"""agent/service/control.py: `envagent service status` and `logs`.

systemctl, journalctl and launchctl are stand-ins on PATH that record their arguments; `tail`
and `envagent status` are the real ones, run on the test's files and folders.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.service import control
from agent.service.launchd import Launchd
from agent.service.target import ServiceError
from agent.support import exitcodes
from tests.service.service_helpers import FakeTools, target

UNIT = "envagent.service"


@pytest.mark.parametrize("system", [False, True], ids=["user", "system"])
def test_status_asks_systemd_then_the_daemon_with_the_services_folders(
    tmp_path: Path,
    tools: FakeTools,
    systemd_running: Path,
    capfd: pytest.CaptureFixture[str],
    system: bool,
) -> None:
    """The manager's answer first; then `envagent status` finds (here: does not find) the
    daemon in the service's state folder, not in this shell's."""
    tools.add("systemctl", stdout="envagent.service - envagent\n   Active: active (running)\n")
    target_ = target(tmp_path, system=system)

    code = control.status(target_)

    scope = () if system else ("--user",)
    probe = [] if system else [("systemctl", "--user", "show-environment")]
    assert tools.calls() == [*probe, ("systemctl", *scope, "status", UNIT, "--no-pager")]
    out, err = capfd.readouterr()
    assert out.startswith("envagent.service - envagent\n   Active: active (running)\n\n")
    assert f"no daemon is running (no {target_.state_dir}/local-api.json)" in err
    assert code == exitcodes.ERROR  # the daemon's answer, systemctl having said 0


def test_status_passes_on_the_managers_failure_first(
    tmp_path: Path, tools: FakeTools, systemd_running: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    tools.add("systemctl", code=3)  # `systemctl status` of a stopped unit

    assert control.status(target(tmp_path, system=True)) == 3
    assert "no daemon is running" in capfd.readouterr().err  # asked all the same


def test_status_of_launchd_prints_the_job(
    tmp_path: Path, tools: FakeTools, capfd: pytest.CaptureFixture[str]
) -> None:
    tools.add("launchctl", stdout="system/org.envagent = {\n")

    control.status(target(tmp_path, "launchd", system=True))

    assert tools.calls() == [("launchctl", "print", "system/org.envagent")]
    assert capfd.readouterr().out.startswith("system/org.envagent = {\n")


@pytest.mark.parametrize(
    ("system", "follow", "code"),
    [(False, False, 0), (True, True, 1)],
    ids=["user", "system-follow-failing"],
)
def test_logs_run_journalctl(
    tmp_path: Path,
    tools: FakeTools,
    systemd_running: Path,
    system: bool,
    follow: bool,
    code: int,
) -> None:
    tools.add("systemctl")
    tools.add("journalctl", code=code)

    assert control.logs(target(tmp_path, system=system), follow=follow, lines=7) == code

    scope = () if system else ("--user",)
    journal = ("journalctl", *scope, "-u", UNIT, "--lines", "7", "--no-pager")
    assert tools.calls()[-1] == (*journal, *(("--follow",) if follow else ()))


def test_logs_of_launchd_are_the_tail_of_its_log_file(
    tmp_path: Path, tools: FakeTools, capfd: pytest.CaptureFixture[str]
) -> None:
    tools.add("launchctl")
    target_ = target(tmp_path, "launchd")
    log = Launchd(target_).log_path
    log.parent.mkdir(parents=True)
    log.write_text("".join(f"line {number}\n" for number in range(1, 6)))

    code = control.logs(target_, follow=False, lines=2)

    assert (code, capfd.readouterr().out) == (0, "line 4\nline 5\n")


def test_logs_of_launchd_without_a_log_file_fail_with_tails_code(
    tmp_path: Path, tools: FakeTools, capfd: pytest.CaptureFixture[str]
) -> None:
    tools.add("launchctl")
    target_ = target(tmp_path, "launchd")

    assert control.logs(target_, follow=False, lines=2) != exitcodes.OK
    assert str(Launchd(target_).log_path) in capfd.readouterr().err


def test_a_missing_journalctl_is_one_line(
    tmp_path: Path, only_tools: FakeTools, systemd_running: Path
) -> None:
    only_tools.add("systemctl")

    with pytest.raises(ServiceError) as failed:
        control.logs(target(tmp_path, system=True), follow=False, lines=1)

    assert str(failed.value) == "journalctl is not installed here (not on PATH)"


@pytest.mark.parametrize("command", ["status", "logs"])
def test_nothing_runs_without_a_usable_manager(
    tmp_path: Path, tools: FakeTools, systemd_not_running: Path, command: str
) -> None:
    tools.add("systemctl")
    tools.add("journalctl")
    target_ = target(tmp_path, system=True)

    with pytest.raises(ServiceError) as refused:
        if command == "status":
            control.status(target_)
        else:
            control.logs(target_, follow=False, lines=1)

    assert refused.value.code == exitcodes.UNAVAILABLE
    assert tools.calls() == []
