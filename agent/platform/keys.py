"""API keys: made once, shown once, stored only as a hash.

Keys carry 256 bits of randomness, so a plain SHA-256 is enough to make the stored hash
useless to a thief; a slow password hash would only slow down every request.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from pathlib import Path

from agent.platform.access import ApiKey
from agent.platform.store.base import Store, StoreError
from agent.support.clock import now_ms
from agent.support.files import write_private

KEY_PREFIX = "envk_"
DEV_ORGANIZATION = "org-dev"
DEV_USER = "user-dev"
DEV_OWNER = "development key"

log = logging.getLogger("envagent.platform")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def create_key(store: Store, owner: ApiKey) -> str:
    """Store a new key for `owner` and return it: the only time it exists in clear."""
    key = _new_key()
    await store.add_key(hash_key(key), owner, now_ms())
    return key


async def ensure_dev_key(store: Store, path: Path) -> bool:
    """With no keys at all, make a development key and write it to `path` (0600).

    Returns whether a key was made. The key goes to the file only, never to the log. It is
    stored only once written, so that a key no one can read never stops the next start from
    making one; StoreError when it cannot be written.
    """
    if await store.has_keys():
        return False
    key = _new_key()
    try:
        write_private(path, (key + "\n").encode())
    except OSError as exc:
        raise StoreError(
            f"cannot write the development key {path}: {exc.strerror or exc}"
        ) from None
    await store.add_key(hash_key(key), ApiKey(DEV_ORGANIZATION, DEV_USER, DEV_OWNER), now_ms())
    log.info("no API keys were configured: wrote a development key to %s", path)
    return True
