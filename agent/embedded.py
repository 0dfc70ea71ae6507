"""The reference platform started inside the daemon when no platform is configured, so that
`envagent run` works on a machine with no account anywhere.

Each listener instance has a database of its own: a platform locks its database for its whole
life, so daemons of two instances sharing one would not both start.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from agent.daemon import Platform
from agent.files import write_private
from agent.paths import instance_file
from agent.platform.settings import PlatformSettings

if TYPE_CHECKING:
    from agent.platform.server import PlatformServer


def _settings(instance_id: str | None) -> PlatformSettings:
    folder = instance_file("embedded-platform", instance_id)
    return PlatformSettings(port=0, db=folder / "platform.db")


def embedded_key_file(instance_id: str | None) -> Path:
    """The development key of this listener instance's embedded platform."""
    return _settings(instance_id).dev_key_file


async def start_embedded(instance_id: str | None) -> tuple[PlatformServer, Platform]:
    """Start the platform of this listener instance on a free loopback port and return it
    with its development key."""
    # Imported here: a daemon with a platform of its own never loads the platform's code.
    from agent.platform.keys import DEV_ORGANIZATION, DEV_OWNER, DEV_USER, create_key, hash_key
    from agent.platform.server import PlatformServer
    from agent.platform.store import ApiKey

    server = PlatformServer(_settings(instance_id))
    await server.start()
    key_file = server.settings.dev_key_file
    key = key_file.read_text().strip() if key_file.exists() else ""
    if not key or server.store.find_key(hash_key(key)) is None:
        key = create_key(server.store, ApiKey(DEV_ORGANIZATION, DEV_USER, DEV_OWNER))
        write_private(key_file, (key + "\n").encode())
    return server, Platform(server.url, key, embedded=True)
