"""Which backend a location opens, and a missing PostgreSQL driver said in one line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from agent.platform.store.base import StoreError
from agent.platform.store.opening import open_store
from agent.platform.store.postgres import PostgresStore
from agent.platform.store.sqlite import SqliteStore


async def test_a_path_opens_sqlite_and_a_url_postgresql(tmp_path: Path, postgres_url: str) -> None:
    for location, backend in ((tmp_path / "p.db", SqliteStore), (postgres_url, PostgresStore)):
        store = await open_store(location)
        try:
            assert type(store) is backend
        finally:
            await store.close()


async def test_a_missing_driver_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As in an install without the `postgres` extra: importing the driver fails."""
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    monkeypatch.delitem(sys.modules, "agent.platform.store.postgres")
    with pytest.raises(StoreError) as refused:
        await open_store("postgresql://u:secret@127.0.0.1:1/fleet")
    assert str(refused.value) == (
        "PostgreSQL needs the driver this install lacks (asyncpg): pip install 'envagent[postgres]'"
    )
