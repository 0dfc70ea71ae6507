"""`envagent platform serve`, `envagent platform keys create` and `keys list`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from agent.cli.common import fail
from agent.cli.workers import run_workers
from agent.platform.access import ApiKey
from agent.platform.dblock import DatabaseInUse
from agent.platform.keys import create_key
from agent.platform.server import TlsFilesError, serve_forever
from agent.platform.settings import PlatformSettings, default_db
from agent.platform.store.base import Store, StoredKey, describe_location, is_postgres
from agent.platform.store.opening import open_store
from agent.support import exitcodes
from agent.support.logs import setup_logging

T = TypeVar("T")


DATABASE_URL_VARIABLE = "ENVAGENT_DATABASE_URL"


def _database(args: argparse.Namespace) -> Path | str:
    """`--database`, else $ENVAGENT_DATABASE_URL, else the default SQLite file."""
    given = args.database or os.environ.get(DATABASE_URL_VARIABLE)
    if not given:
        return default_db()
    return given if is_postgres(given) else Path(given).absolute()


LOG_FORMATS = {"auto": None, "human": True, "json": False}
"""`--log-format` as `setup_logging` takes it: None suits where stderr goes."""


def serve_command(args: argparse.Namespace) -> int:
    setup_logging(debug=args.debug, human=LOG_FORMATS[args.log_format])
    if (args.tls_cert is None) != (args.tls_key is None):
        return fail("--tls-cert and --tls-key go together", exitcodes.CONFIG)
    database = _database(args)
    if args.workers > 1:
        if not isinstance(database, str):
            return fail(
                "--workers needs a PostgreSQL database (--database postgresql://…): "
                "SQLite serves one platform process",
                exitcodes.CONFIG,
            )
        return run_workers(args, database)
    settings = PlatformSettings(
        db=database if isinstance(database, Path) else default_db(),
        database_url=database if isinstance(database, str) else None,
        host=args.host,
        port=args.port,
        heartbeat_interval_ms=args.heartbeat_ms,
        online_window_ms=args.online_window_ms,
        transport_ping_s=args.transport_ping_s,
        max_body_bytes=args.max_body_bytes,
        max_frame_bytes=args.max_frame_bytes,
        pod_heartbeat_s=args.pod_heartbeat_s,
        pod_fence_after_s=args.pod_fence_after_s,
        reuse_port=args.reuse_port,
        tls_cert=args.tls_cert and args.tls_cert.absolute(),
        tls_key=args.tls_key and args.tls_key.absolute(),
        **({"pod_id": args.pod_id} if args.pod_id else {}),
    )
    try:
        asyncio.run(serve_forever(settings))
    except DatabaseInUse as exc:
        return fail(str(exc), exitcodes.ALREADY_RUNNING)
    except TlsFilesError as exc:
        return fail(str(exc), exitcodes.CONFIG)
    except OSError as exc:
        return fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror}")
    return exitcodes.OK


def create_key_command(args: argparse.Namespace) -> int:
    database = _database(args)
    owner = ApiKey(args.org, args.user, args.owner, args.role)
    key = asyncio.run(_with_store(database, lambda store: create_key(store, owner)))
    print(key)
    print(
        f"envagent: {args.role} key for user {args.user} of {args.org} stored in "
        f"{describe_location(database)}; "
        "it is shown only this once",
        file=sys.stderr,
    )
    return exitcodes.OK


KEY_COLUMNS = ("ORGANIZATION", "USER", "OWNER", "ROLE", "CREATED", "FINGERPRINT")


def list_keys_command(args: argparse.Namespace) -> int:
    """One line a key; never the key, only the first digits of its hash to tell keys apart."""
    stored_keys = asyncio.run(_with_store(_database(args), lambda store: store.list_keys()))
    rows = [KEY_COLUMNS, *(_key_columns(stored) for stored in stored_keys)]
    widths = [max(len(row[n]) for row in rows) for n in range(len(KEY_COLUMNS))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return exitcodes.OK


async def _with_store(database: Path | str, work: Callable[[Store], Awaitable[T]]) -> T:
    store = await open_store(database)
    try:
        return await work(store)
    finally:
        await store.close()


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
