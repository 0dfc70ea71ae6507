"""The reference platform started inside the daemon when no platform is configured, so that
`envagent run` works on a machine with no account anywhere.

Each listener instance has a database of its own: a platform locks its database for its whole
life, so daemons of two instances sharing one would not both start.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from agent.daemon.config import Platform
from agent.platform.settings import PlatformSettings
from agent.support.files import Untrusted, read_private, write_private
from agent.support.paths import instance_file

if TYPE_CHECKING:
    from agent.platform.server import PlatformServer


class EmbeddedPlatformError(Exception):
    """The embedded platform cannot start (its database, say); the message is one line."""


def _settings(instance_id: str | None) -> PlatformSettings:
    folder = instance_file("embedded-platform", instance_id)
    return PlatformSettings(port=0, db=folder / "platform.db", loop_lag_probe=False)


def embedded_key_file(instance_id: str | None) -> Path:
    """The development key of this listener instance's embedded platform."""
    return _settings(instance_id).dev_key_file


async def start_embedded(instance_id: str | None) -> tuple[PlatformServer, Platform]:
    """Start the platform of this listener instance on a free loopback port and return it
    with its development key."""
    from agent.platform.access import ApiKey
    from agent.platform.keys import DEV_ORGANIZATION, DEV_OWNER, DEV_USER, create_key, hash_key
    from agent.platform.server import PlatformServer
    from agent.platform.store.base import StoreError

    server = PlatformServer(_settings(instance_id))
    try:
        await server.start()
    except StoreError as exc:
        raise EmbeddedPlatformError(str(exc)) from None
    key_file = server.settings.dev_key_file
    try:
        key = _read_key(key_file)
        if not key or await server.store.find_key(hash_key(key)) is None:
            key = await create_key(server.store, ApiKey(DEV_ORGANIZATION, DEV_USER, DEV_OWNER))
            write_private(key_file, (key + "\n").encode())
    except BaseException:
        await server.stop()  # or it would hold the database, and its port, until the process ends
        raise
    return server, Platform(server.url, key, embedded=True)


def _read_key(path: Path) -> str:
    """The development key written last, or "" when there is none to trust (a new one is made)."""
    try:
        return read_private(path).data.decode("ascii", errors="replace").strip()
    except (OSError, Untrusted):
        return ""
