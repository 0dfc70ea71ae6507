"""API keys (agent/platform/keys.py): made once, shown once, stored only as a hash; and the
development key a platform with no keys writes to a private file, never to its log."""

from __future__ import annotations

import hashlib
import logging
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.platform.access import ApiKey
from agent.platform.keys import (
    DEV_ORGANIZATION,
    DEV_OWNER,
    DEV_USER,
    create_key,
    ensure_dev_key,
    hash_key,
)
from agent.platform.store.base import Store, StoreError
from agent.platform.store.sqlite import SqliteStore

KEY_CHARACTERS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await SqliteStore.open(tmp_path / "platform.db")
    yield opened
    await opened.close()


def files_holding(folder: Path, text: str) -> list[str]:
    return [path.name for path in folder.iterdir() if text.encode() in path.read_bytes()]


def test_the_stored_hash_is_sha256_of_the_key() -> None:
    """Keys already handed out are checked against this: it can never change."""
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert hash_key("envk_é") == hashlib.sha256("envk_é".encode()).hexdigest()


async def test_a_new_key_is_random_prefixed_and_found_only_by_its_hash(
    store: Store, tmp_path: Path
) -> None:
    owner = ApiKey("org-a", "user-a", "Ann", "admin")
    keys = {await create_key(store, owner) for _ in range(20)}
    assert len(keys) == 20
    for key in keys:
        assert key.startswith("envk_") and len(key) == 5 + 43  # 32 random bytes
        assert set(key.removeprefix("envk_")) <= KEY_CHARACTERS
        assert await store.find_key(hash_key(key)) == owner
        assert await store.find_key(key) is None  # the key itself is not what is stored
    for key in keys:
        assert files_holding(tmp_path, key) == []
        assert files_holding(tmp_path, hash_key(key))  # the files that were searched hold it


async def test_with_no_keys_a_development_key_is_written_to_a_private_file_and_not_logged(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys" / "dev-api-key"
    with caplog.at_level(logging.INFO):
        assert await ensure_dev_key(store, path) is True
    key = path.read_text().removesuffix("\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert await store.find_key(hash_key(key)) == ApiKey(
        DEV_ORGANIZATION, DEV_USER, DEV_OWNER, "member"
    )
    assert key not in caplog.text and str(path) in caplog.text
    assert await ensure_dev_key(store, path) is False  # made once
    assert path.read_text() == key + "\n"


async def test_with_keys_no_development_key_is_made(store: Store, tmp_path: Path) -> None:
    await create_key(store, ApiKey("org-a", "user-a", None))
    assert await ensure_dev_key(store, tmp_path / "dev-api-key") is False
    assert not (tmp_path / "dev-api-key").exists()
    assert len(await store.list_keys()) == 1


async def test_a_symlink_planted_as_the_development_key_is_replaced_not_followed(
    store: Store, tmp_path: Path
) -> None:
    target = tmp_path / "attacker-reads-this"
    target.write_text("")
    target.chmod(0o644)
    path = tmp_path / "dev-api-key"
    path.symlink_to(target)
    assert await ensure_dev_key(store, path) is True
    assert not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert target.read_text() == ""


async def test_a_development_key_that_cannot_be_written_is_one_line_and_not_kept(
    store: Store, tmp_path: Path
) -> None:
    """Stored before being written, a key no one can read would stop every later start from
    making one, since keys exist."""
    path = tmp_path / "dev-api-key"
    path.mkdir()
    with pytest.raises(StoreError) as refused:
        await ensure_dev_key(store, path)
    assert str(refused.value) == f"cannot write the development key {path}: Is a directory"
    assert not await store.has_keys()
    path.rmdir()
    assert await ensure_dev_key(store, path) is True
    assert await store.find_key(hash_key(path.read_text().strip())) is not None
