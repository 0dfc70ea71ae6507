"""How a service manager's tool that fails becomes the one-line ServiceError, with real commands."""

from __future__ import annotations

import shlex
import sys

import pytest

from agent.service.target import ServiceError, exit_code
from agent.support import exitcodes, proc

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
