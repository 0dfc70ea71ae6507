"""`envagent platform serve` and `envagent platform keys create`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from agent import exitcodes
from agent.cli import fail
from agent.logs import setup_logging
from agent.platform.keys import create_key
from agent.platform.server import serve_forever
from agent.platform.settings import PlatformSettings, default_db
from agent.platform.store import ApiKey, Store


def _db(args: argparse.Namespace) -> Path:
    return Path(args.db).absolute() if args.db else default_db()


def serve_command(args: argparse.Namespace) -> int:
    setup_logging(debug=args.debug, human=False)
    settings = PlatformSettings(
        db=_db(args),
        host=args.host,
        port=args.port,
        heartbeat_interval_ms=args.heartbeat_ms,
        online_window_ms=args.online_window_ms,
        transport_ping_s=args.transport_ping_s,
        max_body_bytes=args.max_body_bytes,
        max_frame_bytes=args.max_frame_bytes,
    )
    try:
        asyncio.run(serve_forever(settings))
    except OSError as exc:
        return fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror}")
    return exitcodes.OK


def create_key_command(args: argparse.Namespace) -> int:
    db = _db(args)
    store = Store(db)
    try:
        key = create_key(store, ApiKey(args.org, args.user, args.owner))
    finally:
        store.close()
    print(key)
    print(
        f"envagent: key for user {args.user} of {args.org} stored in {db}; "
        "it is shown only this once",
        file=sys.stderr,
    )
    return exitcodes.OK
