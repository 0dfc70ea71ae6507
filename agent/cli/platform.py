"""`envagent platform serve`, `envagent platform keys create` and `keys list`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path

from agent.cli.common import fail
from agent.platform.access import ApiKey
from agent.platform.dblock import DatabaseInUse
from agent.platform.keys import create_key
from agent.platform.server import serve_forever
from agent.platform.settings import PlatformSettings, default_db
from agent.platform.store import Store, StoredKey
from agent.support import exitcodes
from agent.support.logs import setup_logging


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
    except DatabaseInUse as exc:
        return fail(str(exc), exitcodes.ALREADY_RUNNING)
    except OSError as exc:
        return fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror}")
    return exitcodes.OK


def create_key_command(args: argparse.Namespace) -> int:
    db = _db(args)
    store = Store(db)
    try:
        key = create_key(store, ApiKey(args.org, args.user, args.owner, args.role))
    finally:
        store.close()
    print(key)
    print(
        f"envagent: {args.role} key for user {args.user} of {args.org} stored in {db}; "
        "it is shown only this once",
        file=sys.stderr,
    )
    return exitcodes.OK


KEY_COLUMNS = ("ORGANIZATION", "USER", "OWNER", "ROLE", "CREATED", "FINGERPRINT")


def list_keys_command(args: argparse.Namespace) -> int:
    """One line a key; never the key, only the first digits of its hash to tell keys apart."""
    store = Store(_db(args))
    try:
        rows = [KEY_COLUMNS, *(_key_columns(stored) for stored in store.list_keys())]
    finally:
        store.close()
    widths = [max(len(row[n]) for row in rows) for n in range(len(KEY_COLUMNS))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return exitcodes.OK


def _key_columns(stored: StoredKey) -> tuple[str, ...]:
    created = datetime.fromtimestamp(stored.created_at / 1000, UTC)
    key = stored.key
    return (
        key.organization_id,
        key.user_id,
        key.owner or "-",
        key.role,
        created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        stored.fingerprint,
    )
