"""The `envagent` command line: the daemon, the commands that inspect it, the platform."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from agent import __version__
from agent.cli import upgrade as cli_upgrade
from agent.cli.common import (
    SETTING_FLAGS,
    fail,
    port,
    positive_float,
    positive_int,
    process_id,
    settings_flags,
)
from agent.platform.access import ROLES
from agent.protocol.models import MODES
from agent.support import exitcodes


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line like every other refusal (exit 2, CONFIG);
    every subcommand's parser is one of these too."""

    def error(self, message: str) -> NoReturn:
        self.exit(exitcodes.CONFIG, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    # Typed as the base class: the subcommands' parsers are made with type(parser) all the same.
    parser: argparse.ArgumentParser = _Parser(
        prog="envagent", description="Make this machine visible to a coding platform."
    )
    parser.add_argument("--version", action="version", version=f"envagent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon")
    settings_flags(run, list(SETTING_FLAGS))
    run.add_argument("--foreground", action="store_true", help="human logs on the terminal")
    run.add_argument("--debug", action="store_true", default=None, help="show every frame")
    run.add_argument("--parent-pid", type=process_id, help="stop when this process exits")
    run.add_argument(
        "--attach",
        action="store_true",
        help="if a daemon already serves this identity, print its local API address and exit 0",
    )

    status = commands.add_parser("status", help="what the running daemon is doing")
    settings_flags(status, ["listener_instance_id", "base_url"])
    status.add_argument("--json", action="store_true", help="the status as JSON")
    status.add_argument(
        "--verify", action="store_true", help="compare the platform's row with the local one"
    )

    listing = commands.add_parser("list", help="the environments a listing shows")
    settings_flags(listing, ["listener_instance_id", "base_url"])
    where = listing.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="the daemon's own listing")
    where.add_argument("--platform", action="store_true", help="the platform's (default)")
    listing.add_argument("--online-only", action="store_true")
    listing.add_argument("--json", action="store_true")

    mode = commands.add_parser("mode", help="get or set the running daemon's mode")
    settings_flags(mode, ["listener_instance_id"])
    mode_commands = mode.add_subparsers(dest="mode_command")
    mode_commands.add_parser("get")
    mode_set = mode_commands.add_parser("set")
    mode_set.add_argument("value", metavar="MODE", help=", ".join(MODES))

    metadata = commands.add_parser("metadata", help="what this machine would report")
    settings_flags(metadata, ["workdir", "client_version"])

    config = commands.add_parser("config", help="the settings in effect")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_commands.add_parser("show", help="each setting and where it came from")
    settings_flags(show, list(SETTING_FLAGS))

    _platform_parser(commands)
    cli_upgrade.register(commands)
    from agent.cli.service import register as register_service

    register_service(commands)
    return parser


def _platform_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    platform = commands.add_parser("platform", help="the reference platform")
    platform_commands = platform.add_subparsers(
        dest="platform_command", required=True, metavar="ACTION"
    )

    serve = platform_commands.add_parser("serve", help="run the reference platform")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=port, default=8283, help="0 picks a free port")
    _database_flag(serve)
    serve.add_argument(
        "--heartbeat-ms", type=positive_int, default=30_000, help="period given to daemons"
    )
    serve.add_argument(
        "--online-window-ms",
        type=positive_int,
        default=120_000,
        help="a row is online while its last heartbeat is younger than this",
    )
    serve.add_argument(
        "--transport-ping-s",
        type=positive_float,
        default=30.0,
        help="WebSocket ping period; half-open sockets are dropped after 1.5 periods",
    )
    serve.add_argument(
        "--pod-id",
        help="this process's name among the pods sharing a PostgreSQL database "
        "(default: host-pid; keep it across restarts to free its rows at once)",
    )
    serve.add_argument(
        "--pod-heartbeat-s", type=positive_float, default=2.0, help="lease renewal period"
    )
    serve.add_argument(
        "--pod-fence-after-s",
        type=positive_float,
        default=10.0,
        help="a pod silent this long is fenced and its connections marked lost",
    )
    serve.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="pods to run on this one port (SO_REUSEPORT); needs a PostgreSQL database",
    )
    serve.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the port with other platform processes (what --workers does)",
    )
    serve.add_argument("--max-body-bytes", type=positive_int, default=64 * 1024)
    serve.add_argument("--max-frame-bytes", type=positive_int, default=64 * 1024)
    serve.add_argument("--debug", action="store_true", help="log every decision")
    serve.add_argument(
        "--log-format",
        choices=("auto", "human", "json"),
        default="auto",
        help="log lines on stderr: human or one JSON object each; auto (default): human on a "
        "terminal, JSON otherwise (a service's journal, a pipe)",
    )

    keys = platform_commands.add_parser("keys", help="API keys of the reference platform")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_commands.add_parser("create", help="make a key and print it, once")
    create.add_argument("--org", required=True, help="organization the key belongs to")
    create.add_argument("--user", required=True, help="user the key belongs to")
    create.add_argument("--owner", help="name shown as apiKeyOwner in the listing")
    create.add_argument(
        "--role",
        choices=ROLES,
        default="member",
        help="member (default): steers only its user's environments; "
        "admin: every environment of its organization",
    )
    _database_flag(create)
    listing = keys_commands.add_parser("list", help="every key's organization, user and role")
    _database_flag(listing)


def _database_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database",
        "--db",
        metavar="FILE_OR_URL",
        help="a SQLite file, or a postgresql:// URL shared by several platform processes "
        "(default: $ENVAGENT_DATABASE_URL, else a SQLite file in the XDG state dir)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not given:  # a bare `envagent` is someone asking what it does, not a usage error
        parser.print_help()
        return exitcodes.OK
    args = parser.parse_args(given)
    from agent.daemon.config import ConfigError
    from agent.protocol.httpapi import ClientError

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


def _daemon_command(args: argparse.Namespace) -> int:
    """The commands that run or look at the daemon, all in `agent.cli.daemon`."""
    from agent.cli import daemon

    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": daemon.run_command,
        "status": daemon.status_command,
        "list": daemon.list_command,
        "mode": daemon.mode_command,
        "metadata": daemon.metadata_command,
        "config": daemon.config_command,
    }
    return commands[args.command](args)


def _service(args: argparse.Namespace) -> int:
    from agent.cli.service import run

    return run(args)


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _daemon_command,
    "status": _daemon_command,
    "list": _daemon_command,
    "mode": _daemon_command,
    "metadata": _daemon_command,
    "config": _daemon_command,
    "platform": _platform,
    "service": _service,
    "upgrade": cli_upgrade.run,
}
"""Each command's handler. Each imports its module when called, so that a command loads only
what it needs (`--version` and `--help` load none of them)."""
