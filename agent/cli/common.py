"""What the command modules share: the settings flags, the argument types, the one-line failure."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from agent.protocol.models import MODES
from agent.support import exitcodes

SETTING_FLAGS = {
    "name": "connection name (default: the hostname)",
    "workdir": "working directory the daemon serves (default: the current one)",
    "mode": f"permission mode at start: {', '.join(MODES)}",
    "base_url": "platform URL (default: start the reference platform on loopback)",
    "listener_instance_id": "to run several daemons on one device",
    "source": "local (a person's machine) or remote (a hosted sandbox or VM)",
    "client_version": "lettaCodeVersion to report, when a coding tool starts the daemon",
    "local_api_port": "loopback port of the local API (default: a free one)",
    "local_api_socket": "serve the local API on this Unix socket instead",
    "heartbeat_ms": "heartbeat period, overriding the platform's",
    "log_file": "also write the log to this file",
}


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {value}")
    return value


PID_MAX = 2**31 - 1
"""The largest process id a pid_t holds: a larger one overflows `os.kill` and `pidfd_open`."""


def process_id(text: str) -> int:
    value = positive_int(text)
    if value > PID_MAX:
        raise argparse.ArgumentTypeError(f"a process id is at most {PID_MAX}, got {value}")
    return value


def port(text: str) -> int:
    value = positive_int(text) if text != "0" else 0
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):  # NaN and inf too: timers cannot use them
        raise argparse.ArgumentTypeError(f"expected a finite number above 0, got {text}")
    return value


def settings_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    parser.add_argument("--config", type=Path, help="config file (default: XDG config dir)")
    for name in names:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, help=SETTING_FLAGS[name])


def fail(message: str, code: int = exitcodes.ERROR) -> int:
    """Print `envagent: MESSAGE` on stderr as one line and return `code`. The message may quote
    a peer (a platform's error message) or a path: a newline, a terminal escape or any other
    character that is not printable is shown escaped (`\\n`, `\\x1b`), never acted on."""
    print(f"envagent: {_printable(message)}", file=sys.stderr)
    return code


def _printable(text: str) -> str:
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )
