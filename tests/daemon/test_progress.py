"""The daemon's health and own listing row, built from the session's progress alone."""

from __future__ import annotations

from agent.daemon.progress import UNHEALTHY_UNANSWERED, Progress
from agent.daemon.state import DaemonState
from agent.protocol.models import EnvironmentRow, Metadata, RegisterReply

STATE = DaemonState(device_id="dev-1", first_seen_at=1_000)
METADATA = Metadata(os="linux", working_directory="/srv")


def _row(progress: Progress) -> EnvironmentRow:
    return progress.own_row(
        STATE, name="laptop", mode="acceptEdits", metadata=METADATA, source="local"
    )


def _online(**fields: object) -> Progress:
    progress = Progress(
        state="online", connection_id="conn-1", connected_at=7_000, started_at=5_000
    )
    for name, value in fields.items():
        setattr(progress, name, value)
    return progress


def test_health_names_the_state_and_the_last_error_while_not_connected() -> None:
    health = Progress(state="backoff", last_error="platform said 503").health()
    assert not health.ok
    assert health.reason == "not connected (backoff): platform said 503"
    assert Progress().health().reason == "not connected (starting): no error yet"


def test_health_turns_bad_at_the_second_unanswered_ping_not_the_first() -> None:
    progress = _online()
    progress.watchdog.tick()
    assert progress.health().ok
    progress.watchdog.tick()
    assert progress.watchdog.unanswered == UNHEALTHY_UNANSWERED
    health = progress.health()
    assert not health.ok
    assert health.reason == "2 pings unanswered"
    progress.watchdog.pong()
    assert progress.health().ok


def test_own_row_without_a_platform_row_uses_what_the_daemon_knows() -> None:
    row = _row(_online(last_pong_at=9_000))
    assert row.id == "dev-1"
    assert row.organization_id == ""
    assert row.first_seen_at == 1_000
    assert (row.connection_id, row.connected_at) == ("conn-1", 7_000)
    assert (row.last_heartbeat, row.last_seen_at) == (9_000, 9_000)
    assert (row.connection_name, row.current_mode, row.metadata) == (
        "laptop",
        "acceptEdits",
        METADATA,
    )
    assert row.pod_id is None
    assert row.user_id is None and row.api_key_owner is None


def test_own_row_takes_identity_from_the_platform_row_when_there_is_one() -> None:
    platform_row = _row(_online()).model_copy(
        update={
            "id": "env-9",
            "organization_id": "org-1",
            "first_seen_at": 500,
            "user_id": "u1",
            "api_key_owner": "ada",
            "pod_id": "pod-a",
        }
    )
    reply = RegisterReply(connection_id="conn-1", ws_url="ws://x", environment=platform_row)
    row = _row(_online(reply=reply))
    assert (row.id, row.organization_id, row.first_seen_at) == ("env-9", "org-1", 500)
    assert (row.user_id, row.api_key_owner) == ("u1", "ada")
    assert row.pod_id is None, "the pod is the platform's to know"


def test_own_row_when_not_online_has_no_connection_and_falls_back_to_start_time() -> None:
    progress = Progress(state="backoff", connection_id="old", connected_at=7_000, started_at=5_000)
    row = _row(progress)
    assert row.connection_id is None and row.connected_at is None
    assert row.last_heartbeat is None
    assert row.last_seen_at == 5_000
