"""The throwaway PostgreSQL of tests/postgres.py: psql reaches it, each test gets a database of
its own, and the server never runs as root (which PostgreSQL refuses, and CI is root)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.postgres import ROLE, PostgresServer


def _database(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def test_psql_reaches_the_server_of_the_binaries_found(postgres_server: PostgresServer) -> None:
    version = int(postgres_server.psql("SHOW server_version_num"))
    # The version of the binaries found (15 on this project's machines), and at least 13,
    # which DROP DATABASE ... WITH (FORCE) needs.
    assert version // 10000 == postgres_server.major_version
    assert version >= 13_0000
    assert postgres_server.dsn == f"postgresql://{ROLE}@127.0.0.1:{postgres_server.port}/postgres"
    assert postgres_server.psql("SELECT current_user") == ROLE


def test_each_postgres_url_is_a_new_database_of_its_own(
    postgres_server: PostgresServer, postgres_url: str
) -> None:
    mine = _database(postgres_url)
    assert mine.startswith("test_")
    postgres_server.psql("CREATE TABLE marker (x integer)", mine)
    other_url = postgres_server.create_database()
    other = _database(other_url)
    try:
        assert other != mine
        tables = "SELECT count(*) FROM pg_tables WHERE tablename = 'marker'"
        assert postgres_server.psql(tables, other) == "0"
        assert postgres_server.psql(tables, mine) == "1"
    finally:
        postgres_server.drop_database(other_url)
    named = f"SELECT count(*) FROM pg_database WHERE datname = '{other}'"
    assert postgres_server.psql(named) == "0"


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_the_server_does_not_run_as_root(postgres_server: PostgresServer) -> None:
    status = Path(f"/proc/{postgres_server.postmaster_pid()}/status").read_text()
    uids = next(
        [int(uid) for uid in line.split()[1:]]
        for line in status.splitlines()
        if line.startswith("Uid:")
    )
    assert 0 not in uids  # real, effective, saved and filesystem ids
    expected = postgres_server.user.pw_uid if postgres_server.user else os.geteuid()
    assert uids[0] == expected
