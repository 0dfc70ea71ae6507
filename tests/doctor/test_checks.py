"""The checks' verdicts from what they were given: thresholds and wordings, with no network."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.doctor.machine import check_node, check_self_update
from agent.doctor.platform import SKEW_FAIL_S, SKEW_WARN_S, Registered, check_clock
from agent.doctor.run import CHECKS, unusable_settings
from agent.machine.node import NodeInfo
from agent.protocol.models import SelfUpdate
from agent.service.launchd import Launchd
from agent.service.systemd import Systemd
from agent.support.proc import Ran

NOW = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)


def answered(skew_s: float) -> Registered:
    """The platform's Date `skew_s` behind this machine's clock."""
    return Registered(platform_date=NOW - timedelta(seconds=skew_s), received_at=NOW)


@pytest.mark.parametrize(
    ("skew_s", "verdict"),
    [
        (0, "pass"),
        (SKEW_WARN_S, "pass"),
        (SKEW_WARN_S + 1, "warn"),
        (-(SKEW_WARN_S + 1), "warn"),
        (SKEW_FAIL_S, "warn"),
        (SKEW_FAIL_S + 1, "fail"),
        (-(SKEW_FAIL_S + 1), "fail"),
    ],
)
def test_the_clock_verdict_follows_the_skew_both_ways(skew_s: float, verdict: str) -> None:
    assert check_clock(answered(skew_s)).verdict == verdict


def test_the_clock_says_which_way_it_is_off() -> None:
    assert (
        check_clock(answered(300)).summary
        == "this machine's clock is 300 s ahead of the platform's"
    )
    assert (
        check_clock(answered(-300)).summary == "this machine's clock is 300 s behind the platform's"
    )
    assert "timedatectl set-ntp true" in (check_clock(answered(300)).fix or "")


def test_the_clock_is_skipped_without_an_answer_or_a_date() -> None:
    assert check_clock(Registered()).verdict == "skip"
    no_date = check_clock(Registered(received_at=NOW))
    assert (no_date.verdict, no_date.summary) == (
        "skip",
        "the platform's answer has no Date header to compare with",
    )


def test_node_found_and_node_missing() -> None:
    found = check_node(NodeInfo("v22.19.0", "/home/u/.nvm/versions/node/v22.19.0/bin/node", "nvm"))
    assert found.verdict == "pass"
    assert (
        found.summary
        == "v22.19.0 at /home/u/.nvm/versions/node/v22.19.0/bin/node (found through nvm)"
    )
    missing = check_node(NodeInfo(None, None, "none"))
    assert missing.verdict == "warn" and "nodeVersion is reported as null" in missing.summary
    assert check_node(None).verdict == "warn"


def test_self_update_names_the_manual_command_when_it_cannot_upgrade_itself() -> None:
    able = SelfUpdate(supported=True, writable=True, install_path="/opt/venv")
    assert check_self_update(able).summary == "upgrades itself in place (/opt/venv)"
    unable = SelfUpdate(
        supported=True,
        writable=False,
        install_path="/opt/venv",
        manual_command="sudo /opt/venv/bin/pip install -U envagent",
        reason="/opt/venv is not writable by this user.",
    )
    result = check_self_update(unable)
    assert (result.verdict, result.summary) == ("warn", "/opt/venv is not writable by this user.")
    assert result.fix == "upgrade by hand: sudo /opt/venv/bin/pip install -U envagent"


def test_refused_settings_skip_every_other_check() -> None:
    report = unusable_settings("mode from env ENVAGENT_MODE: not a mode")
    assert not report.ok
    assert [check.name for check in report.checks] == list(CHECKS)
    assert report.checks[0].verdict == "fail"
    assert {check.verdict for check in report.checks[1:]} == {"skip"}


def ran(code: int, output: str) -> Ran:
    return Ran(("probe",), 5.0, code, output)


def test_systemd_state_is_read_from_its_properties() -> None:
    read = Systemd.read_state
    assert read(ran(0, "UnitFileState=enabled\nActiveState=active\n")) == (True, True)
    assert read(ran(0, "UnitFileState=disabled\nActiveState=inactive\n")) == (False, False)
    assert read(ran(0, "UnitFileState=enabled\nActiveState=failed\n")) == (True, False)
    assert read(ran(1, "")) == (False, False)


def test_launchd_state_is_read_from_launchctl_print() -> None:
    read = Launchd.read_state
    loaded = "org.envagent = {\n\tactive count = 1\n\tstate = running\n}\n"
    assert read(ran(0, loaded)) == (True, True)
    assert read(ran(0, loaded.replace("running", "not running"))) == (True, False)
    assert read(ran(113, "Could not find service")) == (False, False)
