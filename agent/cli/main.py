"""The `envagent` command line: the daemon, the commands that inspect it, the platform."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from agent import __version__
from agent.cli import completion as cli_completion
from agent.cli.common import (
    SETTING_FLAGS,
    SUBCOMMANDS_HELP,
    fail,
    port,
    positive_float,
    positive_int,
    process_id,
    settings_flags,
)
from agent.cli.helpformat import HelpFormatter
from agent.protocol.constants import MODES, ROLES
from agent.support import exitcodes

Fill = Callable[[argparse.ArgumentParser], None]
"""Adds a command's own flags (and subcommands) to its parser."""

if TYPE_CHECKING:
    _SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    _SubParsers = argparse._SubParsersAction


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line like every other refusal (exit 2, CONFIG);
    every subcommand's parser is one of these too, with the same help formatter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(exitcodes.CONFIG, f"{self.prog}: {message} (see {self.prog} --help)\n")


class _Commands(_SubParsers):
    """The top level's commands, each with a function that adds its flags: called for the
    command given only, when it is parsed, unless the whole tree is asked for. Building every
    command's flags costs as much as Python's own start-up, and a command needs its own alone.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._fills: dict[str, Fill] = {}

    def add_command(self, name: str, fill: Fill, **kwargs: Any) -> argparse.ArgumentParser:
        parser = self.add_parser(name, **kwargs)
        self._fills[name] = fill
        return parser

    def fill(self, name: str) -> None:
        fill = self._fills.pop(name, None)
        if fill is not None:
            fill(self.choices[name])

    def fill_all(self) -> None:
        for name in list(self._fills):
            self.fill(name)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        if isinstance(values, list) and values:
            self.fill(values[0])
        super().__call__(parser, namespace, values, option_string)


def build_parser(lazy: bool = False) -> argparse.ArgumentParser:
    """The whole parser; `lazy`: each command's flags added only when that command is parsed
    (what `main` uses)."""
    # Typed as the base class: the subcommands' parsers are made with type(parser) all the same.
    parser: argparse.ArgumentParser = _Parser(
        prog="envagent", description="Make this machine visible to a coding platform."
    )
    parser.add_argument("--version", action="version", version=f"envagent {__version__}")
    parser.register("action", "parsers", _Commands)
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help=SUBCOMMANDS_HELP
    )
    assert isinstance(commands, _Commands)
    commands.add_command(
        "run",
        _run_flags,
        help="run the daemon",
        description="Run the daemon: register with the platform, keep its WebSocket open and "
        "serve the local API. Each setting comes from its flag, else its environment variable "
        "(ENVAGENT_<SETTING>, LETTA_API_KEY, LETTA_BASE_URL), else the config file.",
    )
    commands.add_command("status", _status_flags, help="what the running daemon is doing")
    commands.add_command("list", _list_flags, help="the environments a listing shows")
    commands.add_command("mode", _mode_flags, help="get or set the running daemon's mode")
    commands.add_command(
        "metadata",
        lambda metadata: settings_flags(metadata, ["workdir", "client_version"]),
        help="what this machine would report",
    )
    commands.add_command("config", _config_flags, help="the settings in effect")
    commands.add_command(
        "doctor",
        _doctor_flags,
        help="check everything this machine needs to show up on the platform",
        description="Check the settings, the way to the platform (DNS, TCP, proxy, TLS), "
        "registration, the WebSocket upgrade, the clock, node, git, self-update, the service "
        "and the running daemon; each with a verdict and the fix. Exits 0 when none fails.",
    )
    commands.add_command("platform", _platform_parser, help="the reference platform")
    commands.add_command(
        "upgrade",
        _upgrade_flags,
        help="upgrade this install to the newest release",
        description="Install the newest release into this envagent's own environment, with "
        "the environment's pip (or uv), and check that it starts. An editable, system or "
        "read-only install is refused with the reason, and nothing is changed.",
    )
    commands.add_command(
        "service", _service_flags, help="run envagent as a systemd or launchd service"
    )
    commands.add_command(
        "completion",
        cli_completion.add_flags,
        help="print a shell's completion script",
        description="Print the script that completes envagent's commands, flags and their "
        "values in SHELL. It is static: print it again after an upgrade. The README says "
        "where each shell looks for it.",
    )
    if not lazy:
        commands.fill_all()
    return parser


def _run_flags(run: argparse.ArgumentParser) -> None:
    settings_flags(run, list(SETTING_FLAGS))
    run.add_argument(
        "--foreground",
        action="store_true",
        help="log human lines on stderr even when it is not a terminal (without it: human "
        "lines on a terminal, JSON elsewhere)",
    )
    run.add_argument(
        "--debug",
        action="store_true",
        default=None,
        help="log at debug level: every frame sent and received",
    )
    run.add_argument(
        "--parent-pid",
        type=process_id,
        metavar="PID",
        help="send disconnect and exit 0 when this process exits (a coding tool's own pid)",
    )
    run.add_argument(
        "--attach",
        action="store_true",
        help="if a daemon already serves this identity, print its local API address and exit 0",
    )


def _status_flags(status: argparse.ArgumentParser) -> None:
    settings_flags(status, ["listener_instance_id", "base_url"])
    status.add_argument(
        "--json",
        action="store_true",
        help='the status as JSON; with no daemon, {"state": "stopped", "reason": ...} and exit 1',
    )
    status.add_argument(
        "--verify",
        action="store_true",
        help="compare the platform's row with the daemon's own; exit 1 on a difference",
    )


def _list_flags(listing: argparse.ArgumentParser) -> None:
    settings_flags(listing, ["listener_instance_id", "base_url"])
    where = listing.add_mutually_exclusive_group()
    where.add_argument(
        "--local", action="store_true", help="the daemon's own listing, from its local API"
    )
    where.add_argument(
        "--platform",
        action="store_true",
        help="the platform's listing (what it does without --local)",
    )
    listing.add_argument(
        "--online-only", action="store_true", help="only the environments online now"
    )
    listing.add_argument("--json", action="store_true", help="the rows as JSON, not a table")


def _mode_flags(mode: argparse.ArgumentParser) -> None:
    settings_flags(mode, ["listener_instance_id"])
    mode_commands = mode.add_subparsers(
        dest="mode_command", metavar="ACTION", help="get (what a bare `envagent mode` does) or set"
    )
    mode_commands.add_parser("get", help="print the running daemon's mode")
    mode_set = mode_commands.add_parser(
        "set", help="change the running daemon's mode; it is saved across restarts"
    )
    mode_set.add_argument("value", metavar="MODE", choices=MODES, help="%(choices)s")


def _config_flags(config: argparse.ArgumentParser) -> None:
    config_commands = config.add_subparsers(
        dest="config_command", required=True, metavar="ACTION", help=SUBCOMMANDS_HELP
    )
    show = config_commands.add_parser("show", help="each setting and where it came from")
    settings_flags(show, list(SETTING_FLAGS))


def _doctor_flags(doctor: argparse.ArgumentParser) -> None:
    settings_flags(doctor, list(SETTING_FLAGS))
    doctor.add_argument("--json", action="store_true", help="the report as JSON, for tools")
    doctor.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show every check's details, not only failures'",
    )


def _upgrade_flags(parser: argparse.ArgumentParser) -> None:
    from agent.cli.upgrade import add_flags

    add_flags(parser)


def _service_flags(parser: argparse.ArgumentParser) -> None:
    from agent.cli.service import add_flags

    add_flags(parser)


def _platform_parser(platform: argparse.ArgumentParser) -> None:
    from pathlib import Path

    platform_commands = platform.add_subparsers(
        dest="platform_command", required=True, metavar="ACTION", help=SUBCOMMANDS_HELP
    )

    serve = platform_commands.add_parser("serve", help="run the reference platform")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument(
        "--port", type=port, default=8283, help="port to listen on; 0 picks a free one"
    )
    tls_cert = serve.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="serve HTTPS and wss:// with this PEM certificate chain (needs --tls-key)",
    )
    tls_key = serve.add_argument(
        "--tls-key", type=Path, metavar="FILE", help="the PEM private key of --tls-cert"
    )
    cli_completion.complete_path(tls_cert, "file")
    cli_completion.complete_path(tls_key, "file")
    _database_flag(serve)
    serve.add_argument(
        "--heartbeat-ms",
        type=positive_int,
        default=30_000,
        metavar="MS",
        help="heartbeat period the daemons are given",
    )
    serve.add_argument(
        "--online-window-ms",
        type=positive_int,
        default=120_000,
        metavar="MS",
        help="a row is online while its last heartbeat is younger than this",
    )
    serve.add_argument(
        "--transport-ping-s",
        type=positive_float,
        default=30.0,
        metavar="S",
        help="WebSocket ping period in seconds; half-open sockets are dropped after 1.5 periods",
    )
    serve.add_argument(
        "--pod-id",
        metavar="ID",
        help="this process's name among the pods sharing a PostgreSQL database "
        "(default: host-pid; keep it across restarts to free its rows at once)",
    )
    serve.add_argument(
        "--pod-heartbeat-s",
        type=positive_float,
        default=2.0,
        metavar="S",
        help="seconds between renewals of this pod's lease in the database",
    )
    serve.add_argument(
        "--pod-fence-after-s",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="a pod silent this many seconds is fenced and its connections marked lost",
    )
    serve.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        metavar="N",
        help="pods to run on this one port (SO_REUSEPORT); needs a PostgreSQL database",
    )
    serve.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the port with other platform processes (what --workers does)",
    )
    serve.add_argument(
        "--max-body-bytes",
        type=positive_int,
        default=64 * 1024,
        metavar="N",
        help="largest HTTP request body taken; a larger one gets 413",
    )
    serve.add_argument(
        "--max-frame-bytes",
        type=positive_int,
        default=64 * 1024,
        metavar="N",
        help="largest WebSocket frame taken from a daemon; a larger one closes its socket",
    )
    serve.add_argument("--debug", action="store_true", help="log every decision")
    serve.add_argument(
        "--log-format",
        choices=("auto", "human", "json"),
        default="auto",
        help="log lines on stderr: human, one JSON object each, or auto: human on a "
        "terminal, JSON otherwise (a service's journal, a pipe)",
    )

    keys = platform_commands.add_parser("keys", help="API keys of the reference platform")
    keys_commands = keys.add_subparsers(
        dest="keys_command", required=True, metavar="ACTION", help=SUBCOMMANDS_HELP
    )
    create = keys_commands.add_parser("create", help="make a key and print it, once")
    create.add_argument("--org", required=True, help="organization the key belongs to")
    create.add_argument("--user", required=True, help="user the key belongs to")
    create.add_argument("--owner", help="a label for the key, shown as apiKeyOwner in the listing")
    create.add_argument(
        "--role",
        choices=ROLES,
        default="member",
        help="member: steers only its user's environments; "
        "admin: every environment of its organization",
    )
    _database_flag(create)
    listing = keys_commands.add_parser("list", help="every key's organization, user and role")
    _database_flag(listing)


def _database_flag(parser: argparse.ArgumentParser) -> None:
    database = parser.add_argument(
        "--database",
        "--db",
        metavar="FILE_OR_URL",
        help="a SQLite file, or a postgresql:// URL shared by several platform processes "
        "(default: $ENVAGENT_DATABASE_URL, else a SQLite file in the XDG state dir)",
    )
    cli_completion.complete_path(database, "file")


def main(argv: Sequence[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    if given == ["--version"]:  # what argparse prints, without its help formatter's imports
        print(f"envagent {__version__}")
        raise SystemExit(exitcodes.OK)
    parser = build_parser(lazy=True)
    if not given:  # a bare `envagent` is someone asking what it does, not a usage error
        parser.print_help()
        return exitcodes.OK
    args = parser.parse_args(given)
    from agent.protocol.views import ClientError
    from agent.support.settings import ConfigError

    handler = _HANDLERS[args.command]
    try:
        return handler(args)
    except ConfigError as exc:
        return fail(str(exc), exitcodes.CONFIG)
    except ClientError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        return exitcodes.OK


def _platform(args: argparse.Namespace) -> int:
    from agent.cli.platform import create_key_command, list_keys_command, serve_command
    from agent.platform.store.base import StoreError

    try:
        if args.platform_command == "serve":
            return serve_command(args)
        if args.keys_command == "list":
            return list_keys_command(args)
        return create_key_command(args)
    except StoreError as exc:
        return fail(str(exc))


def _run(args: argparse.Namespace) -> int:
    from agent.cli.daemon import run_command

    return run_command(args)


def _inspection(args: argparse.Namespace) -> int:
    """The commands that look at the daemon, the machine or the listing, in `cli.inspection`."""
    from agent.cli import inspection

    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "status": inspection.status_command,
        "list": inspection.list_command,
        "mode": inspection.mode_command,
        "metadata": inspection.metadata_command,
        "config": inspection.config_command,
    }
    return commands[args.command](args)


def _doctor(args: argparse.Namespace) -> int:
    from agent.cli.doctor import doctor_command

    return doctor_command(args)


def _service(args: argparse.Namespace) -> int:
    from agent.cli.service import run

    return run(args)


def _upgrade(args: argparse.Namespace) -> int:
    from agent.cli.upgrade import run

    return run(args)


def _completion(args: argparse.Namespace) -> int:
    print(cli_completion.script(build_parser(), args.shell).rstrip("\n"))
    return exitcodes.OK


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run,
    "status": _inspection,
    "list": _inspection,
    "mode": _inspection,
    "metadata": _inspection,
    "config": _inspection,
    "doctor": _doctor,
    "platform": _platform,
    "service": _service,
    "upgrade": _upgrade,
    "completion": _completion,
}
"""Each command's handler. Each imports its module when called, so that a command loads only
what it needs (`--version` and `--help` load none of them)."""
