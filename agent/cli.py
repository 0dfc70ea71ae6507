"""The `envagent` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from agent import __version__

EXIT_OK = 0
EXIT_ERROR = 1


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {value}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text) if text != "0" else 0
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="envagent", description="Make this machine visible to a coding platform."
    )
    parser.add_argument("--version", action="version", version=f"envagent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    platform = commands.add_parser("platform", help="the reference platform")
    platform_commands = platform.add_subparsers(dest="platform_command", required=True)

    serve = platform_commands.add_parser("serve", help="run the reference platform")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8283, help="0 picks a free port")
    serve.add_argument("--db", type=Path, help="SQLite file (default: in the XDG state dir)")
    serve.add_argument(
        "--heartbeat-ms", type=_positive_int, default=30_000, help="period given to daemons"
    )
    serve.add_argument(
        "--online-window-ms",
        type=_positive_int,
        default=120_000,
        help="a row is online while its last heartbeat is younger than this",
    )
    serve.add_argument(
        "--transport-ping-s",
        type=_positive_float,
        default=30.0,
        help="WebSocket ping period; half-open sockets are dropped after 1.5 periods",
    )
    serve.add_argument("--max-body-bytes", type=_positive_int, default=64 * 1024)
    serve.add_argument("--max-frame-bytes", type=_positive_int, default=64 * 1024)
    serve.add_argument("--debug", action="store_true", help="log every decision")

    keys = platform_commands.add_parser("keys", help="API keys of the reference platform")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_commands.add_parser("create", help="make a key and print it, once")
    create.add_argument("--org", required=True, help="organization the key belongs to")
    create.add_argument("--user", required=True, help="user the key belongs to")
    create.add_argument("--owner", help="name shown as apiKeyOwner in the listing")
    create.add_argument("--db", type=Path, help="SQLite file (default: in the XDG state dir)")
    return parser


def _platform_serve(args: argparse.Namespace) -> int:
    from agent.platform.server import serve_forever
    from agent.platform.settings import PlatformSettings
    from agent.platform.store import StoreError

    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    settings = PlatformSettings(
        host=args.host,
        port=args.port,
        heartbeat_interval_ms=args.heartbeat_ms,
        online_window_ms=args.online_window_ms,
        transport_ping_s=args.transport_ping_s,
        max_body_bytes=args.max_body_bytes,
        max_frame_bytes=args.max_frame_bytes,
        **({"db": args.db.absolute()} if args.db else {}),
    )
    try:
        asyncio.run(serve_forever(settings))
    except StoreError as exc:
        print(f"envagent: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        print(
            f"envagent: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr
        )
        return EXIT_ERROR
    return EXIT_OK


def _platform_keys_create(args: argparse.Namespace) -> int:
    from agent.platform.keys import create_key
    from agent.platform.settings import PlatformSettings
    from agent.platform.store import ApiKey, Store, StoreError

    settings = PlatformSettings(**({"db": args.db.absolute()} if args.db else {}))
    try:
        store = Store(settings.db)
    except StoreError as exc:
        print(f"envagent: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        key = create_key(store, ApiKey(args.org, args.user, args.owner))
    finally:
        store.close()
    print(key)
    print(
        f"envagent: key for user {args.user} of {args.org} stored in {settings.db}; "
        "it is shown only this once",
        file=sys.stderr,
    )
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "platform" and args.platform_command == "serve":
        return _platform_serve(args)
    if args.command == "platform" and args.platform_command == "keys":
        return _platform_keys_create(args)
    raise AssertionError(f"unhandled command {args}")  # argparse only lets known ones through
