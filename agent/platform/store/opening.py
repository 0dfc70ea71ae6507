"""Which backend a database location names: a `postgresql://` URL, or a SQLite file's path."""

from __future__ import annotations

from pathlib import Path

from agent.platform.store.base import Store, StoreError, is_postgres
from agent.platform.store.sqlite import SqliteStore


async def open_store(location: Path | str) -> Store:
    """Open and migrate the store; StoreError when it cannot be used."""
    if is_postgres(location):
        # Imported here: a platform on SQLite (the embedded one) never loads the driver.
        try:
            from agent.platform.store.postgres import PostgresStore
        except ImportError as exc:
            raise StoreError(
                f"PostgreSQL needs the driver this install lacks ({exc.name}): "
                "pip install 'envagent[postgres]'"
            ) from None

        return await PostgresStore.open(str(location))
    return await SqliteStore.open(Path(location))
