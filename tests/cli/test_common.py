"""What the command modules share (agent/cli/common.py): the argument types at both ends of
their ranges, the settings flags, and `fail`, the one line every refusal prints."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.cli.common import (
    PID_MAX,
    SETTING_FLAGS,
    fail,
    port,
    positive_float,
    positive_int,
    process_id,
    settings_flags,
)
from agent.cli.main import main
from agent.daemon.config import Settings
from agent.support import exitcodes

# --- argument types ----------------------------------------------------------------------------


def refusal(parse: Callable[[str], object], text: str) -> str:
    with pytest.raises(argparse.ArgumentTypeError) as refused:
        parse(text)
    return str(refused.value)


@pytest.mark.parametrize(
    ("text", "value"), [("1", 1), ("30000", 30_000), ("+7", 7), (str(2**64), 2**64)]
)
def test_positive_int_takes_whole_numbers_from_1(text: str, value: int) -> None:
    assert positive_int(text) == value


@pytest.mark.parametrize("text", ["0", "-0", "-1", str(-(2**64))])
def test_positive_int_refuses_0_and_below(text: str) -> None:
    assert refusal(positive_int, text) == f"expected a number above 0, got {int(text)}"


@pytest.mark.parametrize("text", ["", " ", "one", "1.5", "1e3", "0x10", "1,000", "9" * 5000])
def test_positive_int_refuses_what_is_not_a_whole_number(text: str) -> None:
    """5,000 digits is past what Python converts (4,300): refused, not a traceback."""
    assert refusal(positive_int, text) == f"expected a whole number, got {text!r}"


def test_a_process_id_ends_where_the_system_calls_stop_taking_one() -> None:
    """`--parent-pid` goes to os.kill and pidfd_open, which overflow above a C int: a larger
    number was a traceback at start, it is a usage error now."""
    with pytest.raises(ProcessLookupError):
        os.kill(PID_MAX, 0)  # the largest one is still a pid to the system: no such process
    with pytest.raises(OverflowError):
        os.kill(PID_MAX + 1, 0)
    assert process_id("1") == 1
    assert process_id(str(PID_MAX)) == PID_MAX
    assert refusal(process_id, str(PID_MAX + 1)) == (
        f"a process id is at most {PID_MAX}, got {PID_MAX + 1}"
    )
    assert refusal(process_id, "0") == "expected a number above 0, got 0"


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("1", 1), ("8283", 8283), ("65535", 65535)])
def test_a_port_is_0_to_65535(text: str, value: int) -> None:
    """0 asks the system for a free port."""
    assert port(text) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("65536", "a port is at most 65535, got 65536"),
        ("-1", "expected a number above 0, got -1"),
        ("http", "expected a whole number, got 'http'"),
    ],
)
def test_a_port_outside_the_range_is_refused(text: str, message: str) -> None:
    assert refusal(port, text) == message


@pytest.mark.parametrize(("text", "value"), [("0.001", 0.001), ("30", 30.0), ("1.5e3", 1500.0)])
def test_positive_float_takes_numbers_above_0(text: str, value: float) -> None:
    assert positive_float(text) == value


@pytest.mark.parametrize("text", ["0", "-0.0", "-1", "nan", "inf", "-inf", "1e400"])
def test_positive_float_refuses_0_below_and_what_is_not_finite(text: str) -> None:
    """An infinite `--transport-ping-s` was taken, and every daemon's socket then failed with
    an OverflowError in aiohttp's heartbeat timer."""
    assert refusal(positive_float, text) == f"expected a finite number above 0, got {text}"


def test_positive_float_refuses_what_is_not_a_number() -> None:
    assert refusal(positive_float, "soon") == "expected a number, got 'soon'"


def test_a_refused_argument_is_a_one_line_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Through the parser the type's message becomes one line naming the flag, exit 2."""
    for args, message in (
        (["run", "--parent-pid", str(PID_MAX + 1)], f"a process id is at most {PID_MAX}"),
        (["platform", "serve", "--heartbeat-ms", "0"], "expected a number above 0, got 0"),
        (["platform", "serve", "--transport-ping-s", "inf"], "expected a finite number above 0"),
        (["platform", "serve", "--port", "65536"], "a port is at most 65535, got 65536"),
    ):
        with pytest.raises(SystemExit) as exited:
            main(args)
        out, err = capsys.readouterr()
        assert (exited.value.code, out) == (exitcodes.CONFIG, "")
        flag = args[-2]
        assert err.startswith(f"envagent {' '.join(args[:-2])}: argument {flag}: {message}")
        assert err.count("\n") == 1


# --- the settings flags ------------------------------------------------------------------------


def test_every_settings_flag_is_a_setting() -> None:
    """The flags are passed to the settings by name: one that is not a setting would be refused
    at every start."""
    assert set(SETTING_FLAGS) <= set(Settings.model_fields)


def test_the_api_key_has_no_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """A flag is visible to every user in the process list: the key comes from the environment
    or the config file only."""
    assert "api_key" not in SETTING_FLAGS
    with pytest.raises(SystemExit) as exited:
        main(["run", "--api-key", "secret"])
    assert exited.value.code == exitcodes.CONFIG
    assert "unrecognized arguments: --api-key" in capsys.readouterr().err


def test_settings_flags_adds_the_named_flags_and_config_only() -> None:
    parser = argparse.ArgumentParser()
    settings_flags(parser, ["listener_instance_id", "base_url"])
    given = parser.parse_args(
        ["--listener-instance-id", "two", "--config", "my.toml", "--base-url", "http://x"]
    )
    assert vars(given) == {
        "config": Path("my.toml"),
        "listener_instance_id": "two",
        "base_url": "http://x",
    }
    with pytest.raises(SystemExit):
        parser.parse_args(["--name", "box"])  # not one of the names given


def test_a_settings_flag_not_given_is_none_so_that_the_next_source_counts() -> None:
    """None, not a default: the environment, the config file and the defaults come after."""
    parser = argparse.ArgumentParser()
    settings_flags(parser, list(SETTING_FLAGS))
    assert vars(parser.parse_args([])) == dict.fromkeys(["config", *SETTING_FLAGS])


def test_each_settings_flag_is_named_after_its_setting_and_says_what_it_is() -> None:
    parser = argparse.ArgumentParser()
    settings_flags(parser, list(SETTING_FLAGS))
    flags = {action.dest: action for action in parser._actions}
    for name, text in SETTING_FLAGS.items():
        assert flags[name].option_strings == [f"--{name.replace('_', '-')}"]
        assert flags[name].help == text
    assert flags["config"].option_strings == ["--config"]


# --- fail --------------------------------------------------------------------------------------


def test_fail_prints_one_line_on_stderr_and_returns_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert fail("no daemon is running") == exitcodes.ERROR == 1
    assert capsys.readouterr() == ("", "envagent: no daemon is running\n")


def test_fail_returns_the_code_it_is_given(capsys: pytest.CaptureFixture[str]) -> None:
    assert fail("bad mode", exitcodes.CONFIG) == exitcodes.CONFIG
    assert fail("in use", exitcodes.ALREADY_RUNNING) == exitcodes.ALREADY_RUNNING
    assert capsys.readouterr().err == "envagent: bad mode\nenvagent: in use\n"


def test_fail_keeps_a_message_from_a_peer_on_one_line_and_inert(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A platform's error message is quoted as it came: its newlines, terminal escapes and
    direction overrides are shown escaped, so that the line is one and says what it says."""
    fail("the platform refused: bad\nkey \x1b[2J\u202egnp.exe\r\x00")
    assert capsys.readouterr().err == (
        "envagent: the platform refused: bad\\nkey \\x1b[2J\\u202egnp.exe\\r\\x00\n"
    )


def test_fail_leaves_printable_text_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    fail("upgraded envagent 1.0 → 1.1 in /home/zoë: 'quoted' \\ \"twice\"")
    assert capsys.readouterr().err == (
        "envagent: upgraded envagent 1.0 → 1.1 in /home/zoë: 'quoted' \\ \"twice\"\n"
    )
