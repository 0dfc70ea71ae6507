"""The PostgreSQL backend's own rules, on a real server: pods starting together migrate once, a
version 4 database gets a new one's indexes, a newer schema is refused, connections the server
drops are replaced, and a URL's password never reaches an error."""

from __future__ import annotations

import asyncio
import logging
import sys

import asyncpg
import pytest

from agent.platform.access import ApiKey
from agent.platform.store.base import (
    SCHEMA_VERSION,
    Message,
    StoreError,
    StoreUnavailable,
    describe_location,
)
from agent.platform.store.opening import open_store
from agent.protocol.models import RegisterRequest
from tests.helpers import WAIT_S, free_port
from tests.postgres import PostgresServer

ALICE = ApiKey("org-a", "user-alice", "Alice")
NOW = 1_700_000_000_000


async def test_pods_starting_together_create_the_schema_once(postgres_url: str) -> None:
    stores = await asyncio.gather(*(open_store(postgres_url) for _ in range(6)))
    try:
        await stores[0].register(ALICE, RegisterRequest(device_id="d", connection_name="d"), NOW)
        assert await stores[5].get_by_name("org-a", "d") is not None
    finally:
        await asyncio.gather(*(store.close() for store in stores))
    connection = await asyncpg.connect(postgres_url)
    try:
        versions = await connection.fetch("SELECT version FROM envagent_schema")
    finally:
        await connection.close()
    assert [row["version"] for row in versions] == [SCHEMA_VERSION]


async def test_processes_starting_together_on_a_new_database_all_succeed(
    postgres_url: str,
) -> None:
    """Separate processes, as pods are: the advisory lock, not the event loop, orders them."""
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent",
            "platform",
            "keys",
            "list",
            "--database",
            postgres_url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(4)
    ]
    results = [await asyncio.wait_for(p.communicate(), WAIT_S * 3) for p in processes]
    assert [p.returncode for p in processes] == [0] * 4, [err for _, err in results]
    assert all(out.decode().startswith("ORGANIZATION") for out, _ in results)


async def test_a_newer_schema_is_refused(postgres_url: str) -> None:
    await (await open_store(postgres_url)).close()
    connection = await asyncpg.connect(postgres_url)
    try:
        await connection.execute("UPDATE envagent_schema SET version = $1", SCHEMA_VERSION + 1)
    finally:
        await connection.close()
    with pytest.raises(StoreError, match="newer than this envagent"):
        await open_store(postgres_url)


async def test_a_version_4_database_gets_the_index_by_user(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    await (await open_store(postgres_url)).close()
    await run(postgres_url, "DROP INDEX environments_by_user")  # what version 4 had
    await run(postgres_url, "UPDATE envagent_schema SET version = 4")
    await (await open_store(postgres_url)).close()
    new = postgres_server.create_database()
    try:
        await (await open_store(new)).close()
        migrated, created = await run(postgres_url, INDEXES), await run(new, INDEXES)
    finally:
        postgres_server.drop_database(new)
    assert "environments_by_user" in dict(migrated) and migrated == created
    assert await run(postgres_url, "SELECT version FROM envagent_schema") == [(SCHEMA_VERSION,)]


INDEXES = "SELECT indexname, indexdef FROM pg_indexes ORDER BY indexname"


async def run(url: str, sql: str) -> list[tuple[object, ...]]:
    """`sql`'s rows, on a connection of its own."""
    connection = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await connection.fetch(sql)]
    finally:
        await connection.close()


async def test_connections_the_server_drops_are_replaced_and_nothing_is_lost(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "envagent.platform")
    store = await open_store(postgres_url)
    try:
        row_id, _ = await store.register(
            ALICE, RegisterRequest(device_id="d", connection_name="d"), NOW
        )
        admin = await asyncpg.connect(postgres_url)
        try:
            ended = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        assert ended >= 1
        for _ in range(3):  # at most the statements already on their way fail, each a 503
            try:
                found = await store.get("org-a", row_id)
                break
            except StoreUnavailable:
                continue
        else:
            raise AssertionError("the store never came back")
        assert found is not None and found.device_id == "d"
    finally:
        await store.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_connection_goes_back_to_the_pool_without_a_reset_round_trip(
    postgres_url: str,
) -> None:
    """Pool connections hold no session state, so the last statement each ran is the store's
    own, not asyncpg's reset query (`… UNLISTEN *; RESET ALL`)."""
    store = await open_store(postgres_url)
    admin = await asyncpg.connect(postgres_url)
    try:
        await store.register(ALICE, RegisterRequest(device_id="d", connection_name="d"), NOW)
        assert await store.list_keys() == []
        last = await admin.fetch(
            "SELECT query FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await admin.close()
        await store.close()
    assert last, "the store's connections are not in pg_stat_activity"
    assert not [row["query"] for row in last if "RESET ALL" in row["query"]]
    assert any("api_keys" in row["query"] for row in last)


async def test_an_unreachable_database_is_one_line_without_the_password() -> None:
    url = f"postgresql://envagent:hunter2@127.0.0.1:{free_port()}/fleet"
    with pytest.raises(StoreError) as refused:
        await open_store(url)
    message = str(refused.value)
    assert "hunter2" not in message and "\n" not in message
    assert message.startswith(f"cannot use the platform database {describe_location(url)}: ")
    assert describe_location(url) == url.replace(":hunter2", "")


async def test_messages_left_for_a_fenced_pod_are_dropped(postgres_url: str) -> None:
    store = await open_store(postgres_url)
    try:
        await store.join("pod-gone", NOW)
        alive = await store.join("pod-alive", NOW)
        await store.post("pod-gone", Message("replace", "env-1", "conn-1"))
        await store.post("pod-alive", Message("replace", "env-2", "conn-2"))
        assert await store.renew(alive, NOW + 5_000)
        assert await store.fence_silent(NOW + 1_000, NOW + 5_000) == ["pod-gone"]
        assert await store.take("pod-gone") == []
        assert await store.take("pod-alive") == [Message("replace", "env-2", "conn-2")]
    finally:
        await store.close()
