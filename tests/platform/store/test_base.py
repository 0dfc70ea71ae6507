"""The store's interface, one suite run against both backends (SQLite on a real file, and a real
PostgreSQL started by the test set-up), so that the two cannot drift apart: what a socket that
was replaced may no longer write, the online window at both ends, page boundaries, which row a
device lookup returns, registering again, hostile input, and the API keys and their roles."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.platform.access import ApiKey
from agent.platform.keys import create_key, hash_key
from agent.platform.store.base import (
    Beat,
    Heartbeat,
    Store,
    describe_location,
    is_postgres,
)
from agent.platform.store.opening import open_store
from agent.protocol.models import EnvironmentRow, ListQuery, RegisterRequest

ALICE = ApiKey("org-a", "user-alice", "Alice")
BOB = ApiKey("org-a", "user-bob", None)
STRANGER = ApiKey("org-b", "user-eve", "Eve", "admin")
WINDOW_MS = 120_000
NOW = 1_700_000_000_000


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    location: Path | str = tmp_path / "platform.db"
    if request.param == "postgres":
        location = request.getfixturevalue("postgres_url")
    opened = await open_store(location)
    yield opened
    await opened.close()


def request(device: str, instance: str | None = None, **fields: object) -> RegisterRequest:
    return RegisterRequest.model_validate(
        {"deviceId": device, "listenerInstanceId": instance, "connectionName": device, **fields}
    )


async def page(store: Store, key: ApiKey = ALICE, now: int = NOW, **query: Any) -> list[str]:
    listed = await store.list(key.organization_id, ListQuery(**query), now, WINDOW_MS)
    return [row.device_id for row in listed.connections]


async def row_of(store: Store, row_id: str, key: ApiKey = ALICE) -> EnvironmentRow:
    row = await store.get(key.organization_id, row_id)
    assert row is not None
    return row


async def test_a_replaced_socket_can_no_longer_write_the_row(store: Store) -> None:
    row_id, first = await store.register(ALICE, request("dev-1"), NOW)
    pod_1, pod_2 = await store.join("pod-1", NOW), await store.join("pod-2", NOW)
    await store.mark_connected(row_id, first, pod_1, None, NOW)
    again, second = await store.register(ALICE, request("dev-1"), NOW + 1)
    assert (again, await store.find_issued("org-a", first)) == (row_id, None)  # superseded
    await store.mark_connected(row_id, second, pod_2, None, NOW + 2)

    await store.record_heartbeat(row_id, first, "unrestricted", NOW + 3, pod_1)
    assert not await store.mark_disconnected(row_id, first, "pod-1", NOW, NOW + 4)
    row = await row_of(store, row_id)
    assert (row.connection_id, row.pod_id, row.last_heartbeat) == (second, "pod-2", NOW + 2)
    assert row.current_mode is None

    await store.record_heartbeat(row_id, second, "acceptEdits", NOW + 5, pod_2)
    assert (await row_of(store, row_id)).current_mode == "acceptEdits"
    assert await store.mark_disconnected(row_id, second, "pod-2", NOW + 2, NOW + 6)
    assert (await row_of(store, row_id)).connection_id is None


async def test_a_socket_s_end_leaves_the_row_to_a_newer_socket_with_the_same_connection_id(
    store: Store,
) -> None:
    """A daemon comes back with the connection id it holds: the end of its earlier socket (one
    that gave up during its upgrade, say) must not write the newer one's row offline, whether
    the newer one is on the same pod or on another."""
    row_id, connection_id = await store.register(ALICE, request("dev-1"), NOW)
    pod_1, pod_2 = await store.join("pod-1", NOW), await store.join("pod-2", NOW)
    await store.mark_connected(row_id, connection_id, pod_1, None, NOW)
    await store.mark_connected(row_id, connection_id, pod_1, None, NOW + 1)  # again, here
    assert not await store.mark_disconnected(row_id, connection_id, "pod-1", NOW, NOW + 2)
    await store.mark_connected(row_id, connection_id, pod_2, None, NOW + 3)  # on another pod
    assert not await store.mark_disconnected(row_id, connection_id, "pod-1", NOW + 1, NOW + 4)
    row = await row_of(store, row_id)
    assert (row.connection_id, row.pod_id, row.connected_at) == (connection_id, "pod-2", NOW + 3)
    assert await store.mark_disconnected(row_id, connection_id, "pod-2", NOW + 3, NOW + 5)
    assert (await row_of(store, row_id)).connection_id is None


async def test_a_connection_id_is_unknown_to_another_organization(store: Store) -> None:
    row_id, connection_id = await store.register(ALICE, request("dev-1"), NOW)
    issued = await store.find_issued("org-a", connection_id)
    assert issued is not None and (issued.row_id, issued.owner_user_id) == (row_id, "user-alice")
    assert await store.find_issued(STRANGER.organization_id, connection_id) is None
    assert await store.get(STRANGER.organization_id, row_id) is None
    assert await store.get_by_name(STRANGER.organization_id, "dev-1") is None


@pytest.mark.parametrize(
    ("age_ms", "online"), [(0, True), (WINDOW_MS - 1, True), (WINDOW_MS, False)]
)
async def test_the_online_window_at_both_ends_agrees_with_the_row_s_own_rule(
    store: Store, age_ms: int, online: bool
) -> None:
    row_id, connection_id = await store.register(ALICE, request("dev-1"), NOW)
    await store.mark_connected(
        row_id, connection_id, await store.join("pod", NOW), None, NOW - age_ms
    )
    assert await page(store, online_only=True) == (["dev-1"] if online else [])
    assert (await row_of(store, row_id)).is_online(NOW, WINDOW_MS) is online
    assert await page(store) == ["dev-1"]


async def test_a_row_without_a_socket_is_never_online_whatever_its_heartbeat(store: Store) -> None:
    row_id, connection_id = await store.register(ALICE, request("dev-1"), NOW)
    await store.mark_connected(row_id, connection_id, await store.join("pod", NOW), None, NOW)
    await store.mark_disconnected(row_id, connection_id, "pod", NOW, NOW)
    assert (await row_of(store, row_id)).last_heartbeat == NOW
    assert await page(store, online_only=True) == []


@pytest.mark.parametrize(("rows", "more"), [(2, False), (3, False), (4, True)])
async def test_a_page_says_there_is_more_only_when_there_is(
    store: Store, rows: int, more: bool
) -> None:
    for n in range(rows):
        await store.register(ALICE, request(f"dev-{n}"), NOW + n)
    first = await store.list("org-a", ListQuery(limit=3), NOW, WINDOW_MS)
    assert len(first.connections) == min(rows, 3) and first.has_next_page is more
    rest = await store.list(
        "org-a", ListQuery(limit=3, after=first.connections[-1].id), NOW, WINDOW_MS
    )
    assert [row.device_id for row in rest.connections] == [f"dev-{n}" for n in range(3, rows)]
    assert rest.has_next_page is False


async def test_a_user_s_pages_hold_their_rows_only_in_creation_order(store: Store) -> None:
    """`userId` pages read the index by user (version 5): the user's rows of this organization
    only, in creation order, page after page."""
    await store.register(ApiKey("org-b", ALICE.user_id, None), request("elsewhere"), NOW)
    for n in range(6):
        await store.register(ALICE if n % 2 else BOB, request(f"dev-{n}"), NOW + n)
    first = await store.list("org-a", ListQuery(limit=2, user_id=ALICE.user_id), NOW, WINDOW_MS)
    assert [row.device_id for row in first.connections] == ["dev-1", "dev-3"]
    assert first.has_next_page
    after = first.connections[-1].id
    assert await page(store, user_id=ALICE.user_id, after=after) == ["dev-5"]
    assert await page(store, user_id=BOB.user_id, after=after) == ["dev-4"]


async def test_a_device_lookup_returns_the_row_without_a_listener_instance_first(
    store: Store,
) -> None:
    for instance in ("b", "a"):
        await store.register(
            ALICE, request("dev-1", instance, connectionName=f"instance {instance}"), NOW
        )
    found = await store.get_by_name("org-a", "dev-1")
    assert found is not None and found.connection_name == "instance a"  # by id, not by age
    await store.register(ALICE, request("dev-1", connectionName="no instance"), NOW)  # the newest
    found = await store.get_by_name("org-a", "dev-1")
    assert found is not None and found.connection_name == "no instance"


async def test_a_row_s_id_names_that_row_before_any_device_of_that_name(store: Store) -> None:
    row_id, _ = await store.register(ALICE, request("dev-1", connectionName="by id"), NOW)
    await store.register(BOB, request(row_id, connectionName="a device named so"), NOW)
    found = await store.get_by_name("org-a", row_id)
    assert found is not None and (found.id, found.connection_name) == (row_id, "by id")
    assert await store.get_by_name(STRANGER.organization_id, row_id) is None


async def test_registering_again_keeps_who_and_when_and_a_mode_not_sent(store: Store) -> None:
    row_id, _ = await store.register(ALICE, request("dev-1", currentMode="acceptEdits"), NOW)
    await store.register(
        BOB, request("dev-1", source="remote", metadata={"os": "darwin"}), NOW + 1
    )  # whether Bob may is the caller's question; the row's owner stays
    row = await row_of(store, row_id)
    assert (row.user_id, row.api_key_owner, row.first_seen_at) == ("user-alice", "Alice", NOW)
    assert (row.current_mode, row.last_seen_at) == ("acceptEdits", NOW + 1)
    assert row.metadata is not None and row.metadata.os == "darwin"
    assert await page(store, source="remote") == ["dev-1"]
    assert await page(store, user_id="user-bob") == []


async def test_hostile_ids_and_filters_are_data_not_sql(store: Store) -> None:
    hostile = "x'; DROP TABLE environments; --"
    await store.register(ALICE, request(hostile), NOW)
    await store.register(BOB, request("dev-2"), NOW)
    assert await page(store, user_id="' OR '1'='1") == []
    assert await page(store, user_id="%") == []
    assert await page(store) == [hostile, "dev-2"]
    found = await store.get_by_name("org-a", hostile)
    assert found is not None and found.device_id == hostile


async def test_keys_carry_a_role_and_old_keys_are_members(store: Store) -> None:
    admin = await create_key(store, ApiKey("org-x", "u3", "Ops", "admin"))
    plain = await create_key(store, ApiKey("org-x", "u2", None))
    assert await store.find_key(hash_key(admin)) == ApiKey("org-x", "u3", "Ops", "admin")
    assert await store.find_key(hash_key(plain)) == ApiKey("org-x", "u2", None, "member")
    listed = [(k.key.user_id, k.key.role, k.fingerprint) for k in await store.list_keys()]
    assert ("u3", "admin", hash_key(admin)[:12]) in listed
    assert ("u2", "member", hash_key(plain)[:12]) in listed


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("postgresql://u:secret@db.example:5432/fleet", "postgresql://u@db.example:5432/fleet"),
        (
            "postgres://u:secret@[::1]/fleet?sslmode=require",
            "postgres://u@[::1]/fleet?sslmode=require",
        ),
        ("postgresql://u@db/fleet", "postgresql://u@db/fleet"),
        ("postgresql:///fleet", "postgresql:///fleet"),
        (Path("/var/lib/envagent/platform.db"), "/var/lib/envagent/platform.db"),
    ],
)
def test_a_location_is_shown_without_its_password(location: Path | str, shown: str) -> None:
    assert describe_location(location) == shown
    assert is_postgres(location) is isinstance(location, str)


async def test_heartbeats_in_one_batch_skip_rows_their_socket_no_longer_holds(
    store: Store,
) -> None:
    held, lease = [], await store.join("pod", NOW)
    for n in range(3):
        row_id, connection_id = await store.register(ALICE, request(f"dev-{n}"), NOW)
        await store.mark_connected(row_id, connection_id, lease, None, NOW)
        held.append(Heartbeat(row_id, connection_id, NOW + 10 + n))
    stale = Heartbeat(held[0].row_id, "conn-replaced", NOW + 99)
    told: list[list[Beat]] = []
    store.on_heartbeats = told.append
    assert await store.record_heartbeats([*held, stale], lease) == 3
    for beat in held:
        row = await row_of(store, beat.row_id)
        assert (row.last_heartbeat, row.last_seen_at) == (beat.at, beat.at)
    # The live channel is told of the rows written, with their values, once a batch.
    assert len(told) == 1
    assert sorted(told[0], key=lambda beat: beat.at) == [
        Beat("org-a", beat.row_id, beat.at) for beat in held
    ]
    assert await store.record_heartbeats([], lease) == 0
    assert len(told) == 1, "nothing written, nothing told"


async def test_a_pod_joining_again_supersedes_its_earlier_lease_and_frees_its_rows(
    store: Store,
) -> None:
    first = await store.join("pod-a", NOW)
    other = await store.join("pod-b", NOW)
    mine, mine_connection = await store.register(ALICE, request("dev-a"), NOW)
    theirs, their_connection = await store.register(ALICE, request("dev-b"), NOW)
    assert await store.mark_connected(mine, mine_connection, first, None, NOW)
    assert await store.mark_connected(theirs, their_connection, other, None, NOW)
    again = await store.join("pod-a", NOW + 1)  # a restart of pod-a
    assert (first.generation, again.generation) == (1, 2)
    assert (await row_of(store, mine)).connection_id is None, "its earlier life's rows"
    assert (await row_of(store, theirs)).connection_id == their_connection, "not another's"
    assert not await store.renew(first, NOW + 2)
    assert not await store.mark_connected(mine, mine_connection, first, None, NOW + 2)
    assert await store.renew(again, NOW + 2)


async def test_a_silent_pod_is_fenced_once_and_can_write_nothing_after(store: Store) -> None:
    silent = await store.join("pod-silent", NOW)
    alive = await store.join("pod-alive", NOW)
    row_id, connection_id = await store.register(ALICE, request("dev-1"), NOW)
    await store.mark_connected(row_id, connection_id, silent, None, NOW)
    assert await store.renew(alive, NOW + 5_000)
    assert await store.fence_silent(NOW + 1_000, NOW + 5_000) == ["pod-silent"]
    assert await store.fence_silent(NOW + 1_000, NOW + 6_000) == [], "fenced once"
    row = await row_of(store, row_id)
    assert (row.connection_id, row.pod_id) == (None, None)
    # It comes back and writes as if nothing happened: nothing changes.
    assert not await store.renew(silent, NOW + 7_000)
    assert not await store.mark_connected(row_id, connection_id, silent, None, NOW + 7_000)
    await store.record_heartbeat(row_id, connection_id, "acceptEdits", NOW + 7_000, silent)
    beat = Heartbeat(row_id, connection_id, NOW + 7_000)
    assert await store.record_heartbeats([beat], silent) == 0
    row = await row_of(store, row_id)
    assert (row.connection_id, row.current_mode, row.last_heartbeat) == (None, None, NOW)
    # Joined again, it may serve the daemon that comes back to it.
    back = await store.join("pod-silent", NOW + 8_000)
    assert await store.mark_connected(row_id, connection_id, back, None, NOW + 8_000)
