"""What the command modules share: the settings flags, the argument types, the one-line failure."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from agent.cli.completion import PathKind, complete_path
from agent.protocol.constants import MODES, SOURCES
from agent.support import exitcodes

SETTING_FLAGS = {
    "name": "connection name the platform shows (default: the hostname)",
    "workdir": "working directory the daemon serves (default: the current one)",
    "mode": "permission mode to start in: %(choices)s (default: the saved one)",
    "base_url": "platform URL (default: https://api.letta.com when only an API key is set; "
    "with neither, the reference platform embedded in the daemon)",
    "listener_instance_id": "one of several daemons on this device, each with its own state "
    "and local API",
    "source": "a person's machine (local) or a hosted sandbox or VM (remote) (default: local)",
    "client_version": "lettaCodeVersion to report, when a coding tool starts the daemon "
    "(default: envagent's version)",
    "local_api_port": "loopback port of the local API (default: a free one)",
    "local_api_socket": "serve the local API on this Unix socket (mode 0600) instead of a port",
    "heartbeat_ms": "heartbeat period in milliseconds, overriding the platform's (at least 100)",
    "log_file": "also write the log to this file as JSON lines (rotated at 10 MiB, 5 kept)",
    "ca_file": "trust only the CAs in this PEM file to reach the platform (default: "
    "$SSL_CERT_FILE, else $REQUESTS_CA_BUNDLE, else the system's trust store)",
}
"""Each setting a flag can give, and its help; the flag wins over the environment and the
config file."""
SETTING_CHOICES = {"mode": MODES, "source": SOURCES}
SUBCOMMANDS_HELP = "one of these; add --help after it for its own flags"
_METAVARS = {
    "name": "NAME",
    "workdir": "DIR",
    "mode": "MODE",
    "base_url": "URL",
    "listener_instance_id": "ID",
    "client_version": "VERSION",
    "local_api_port": "PORT",
    "local_api_socket": "PATH",
    "heartbeat_ms": "MS",
    "log_file": "PATH",
    "ca_file": "FILE",
}
_PATHS: dict[str, PathKind] = {
    "workdir": "directory",
    "local_api_socket": "file",
    "log_file": "file",
    "ca_file": "file",
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
    config_flag(parser)
    for name in names:
        action = parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            metavar=_METAVARS.get(name),
            choices=SETTING_CHOICES.get(name),
            help=SETTING_FLAGS[name],
        )
        if name in _PATHS:
            complete_path(action, _PATHS[name])


def config_flag(parser: argparse.ArgumentParser) -> None:
    from pathlib import Path  # only for the commands that take it, not for --help or --version

    action = parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML file of settings; flags and ENVAGENT_* variables win over it "
        "(default: $ENVAGENT_CONFIG, else envagent/config.toml in the XDG config dir)",
    )
    complete_path(action, "file")


def fail(message: str, code: int = exitcodes.ERROR) -> int:
    """Print `envagent: MESSAGE` on stderr as one line and return `code`. The message may quote
    a peer (a platform's error message) or a path: a newline, a terminal escape or any other
    character that is not printable is shown escaped (`\\n`, `\\x1b`), never acted on."""
    print(f"envagent: {printable(message)}", file=sys.stderr)
    return code


def printable(text: str) -> str:
    return "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in text
    )
