"""The state file: one device id per machine and user, 0600, atomic, never fatal when damaged."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import signal
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.daemon import state as state_module
from agent.daemon.state import DaemonState, LastConnection, StateStore, state_path
from agent.support.files import UnusableFile
from agent.support.paths import state_dir

NOW = 1_700_000_000_000
DEVICE_ID = "6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b"


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A fixed `now`, so that timestamps and the moved-aside file names are known; a test that
    needs time to pass sets `clock[0]`."""
    now = [NOW]
    monkeypatch.setattr(state_module, "now_ms", lambda: now[0])
    return now


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def state_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "envagent.state" and record.levelno == logging.WARNING
    ]


def test_state_path_is_in_the_xdg_state_dir(tmp_path: Path) -> None:
    assert state_path(None) == tmp_path / "state" / "envagent" / "state.json"
    assert state_path("work") == state_dir() / "state-work.json"


def test_first_load_creates_a_state_and_a_reload_keeps_it() -> None:
    path = state_path(None)
    created = StateStore(path).load()
    assert uuid.UUID(created.device_id).version == 4
    assert created.first_seen_at == NOW
    assert created.mode == "default"
    assert created.last_connection is None
    assert json.loads(path.read_bytes())["version"] == 1
    assert StateStore(path).load() == created


def test_the_file_is_private_and_is_made_private_again(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="envagent.state")
    path = state_path(None)
    created = StateStore(path).load()
    assert mode_of(path) == 0o600
    assert StateStore(path).load() == created
    assert caplog.messages == []  # already private: nothing to say
    path.chmod(0o644)
    assert StateStore(path).load() == created
    assert mode_of(path) == 0o600
    path.chmod(0o400)  # read-only is not 0600 either: the daemon writes it
    assert StateStore(path).load() == created
    assert caplog.messages == [
        f"state file {path} was mode 644; made it 0600",
        f"state file {path} was mode 400; made it 0600",
    ]


def test_the_file_is_indented_json_ending_with_a_newline() -> None:
    """Written for a person to read, as `envagent status` tells them where it is."""
    path = state_path(None)
    state = StateStore(path).load()
    document = {"version": 1, **state.model_dump(mode="json")}
    assert path.read_bytes() == json.dumps(document, indent=2).encode() + b"\n"


def test_the_state_s_bounds_at_both_ends() -> None:
    for device_id in ("d", "d" * 200):
        assert DaemonState(device_id=device_id, first_seen_at=0).device_id == device_id
    for bad in ({"device_id": ""}, {"device_id": "d" * 201}, {"first_seen_at": -1}):
        with pytest.raises(ValidationError):
            DaemonState.model_validate({"device_id": "d", "first_seen_at": 0, **bad})
    assert LastConnection.model_validate(connection_document(at=0)).at == 0
    with pytest.raises(ValidationError):
        LastConnection.model_validate(connection_document(at=-1))


def test_a_state_is_frozen() -> None:
    state = DaemonState(device_id=DEVICE_ID, first_seen_at=NOW)
    connection = LastConnection.model_validate(connection_document())
    with pytest.raises(ValidationError, match="frozen"):
        state.mode = "unrestricted"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        connection.at = 0  # type: ignore[misc]
    assert (state.mode, connection.at) == ("default", NOW)


def test_saves_leave_no_temporary_files() -> None:
    store = StateStore(state_path(None))
    store.load()
    store.update(mode="acceptEdits")
    store.update(mode="standard")
    assert os.listdir(state_dir()) == ["state.json"]


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Make the kernel refuse (EFBIG) any write past `limit` bytes, as a full disk would."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_failed_write_keeps_the_old_file_whole() -> None:
    path = state_path(None)
    store = StateStore(path)
    store.load()
    before = path.read_bytes()
    with file_size_limit(8), pytest.raises(UnusableFile) as raised:
        store.update(mode="unrestricted")
    assert path.read_bytes() == before
    assert os.listdir(state_dir()) == ["state.json"]
    assert str(path) in str(raised.value)
    assert StateStore(path).load().mode == "default"


def test_an_unusable_folder_is_one_line_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    path = blocker / "state.json"
    fresh = DaemonState(device_id=DEVICE_ID, first_seen_at=NOW)
    for action in (StateStore(path).load, lambda: StateStore(path).save(fresh)):
        with pytest.raises(UnusableFile) as raised:
            action()
        message = str(raised.value)
        assert str(path) in message
        assert "\n" not in message


def good_document(**changes: object) -> dict[str, object]:
    document: dict[str, object] = {
        "version": 1,
        "device_id": DEVICE_ID,
        "first_seen_at": 1_600_000_000_000,
        "mode": "acceptEdits",
        "last_connection": None,
    }
    return {**document, **changes}


def connection_document(**changes: object) -> dict[str, object]:
    connection: dict[str, object] = {
        "platform_url": "http://127.0.0.1:8283",
        "connection_id": "conn-1",
        "ws_url": "ws://127.0.0.1:8283/v1/listener/ws?connectionId=conn-1",
        "environment_id": "env-1",
        "at": NOW,
    }
    return {**connection, **changes}


def dumped(document: dict[str, object]) -> bytes:
    return json.dumps(document, indent=2).encode()


def truncated_after(marker: bytes) -> bytes:
    """A good file cut just after `marker`, as a crash in a non-atomic write would leave it."""
    text = dumped(good_document())
    return text[: text.index(marker) + len(marker)]


KEEPS_BOTH = (DEVICE_ID, 1_600_000_000_000)
KEEPS_ID = (DEVICE_ID, NOW)
KEEPS_NOTHING = (None, NOW)


@pytest.mark.parametrize(
    ("content", "kept", "problem"),
    [
        pytest.param(b"", KEEPS_NOTHING, "empty", id="empty"),
        pytest.param(b"  \n", KEEPS_NOTHING, "empty", id="blank"),
        pytest.param(b"\x00\xffgarbage{", KEEPS_NOTHING, "not JSON", id="garbage"),
        pytest.param(b"[1, 2]", KEEPS_NOTHING, "not an object", id="not-an-object"),
        pytest.param(
            truncated_after(b'"device_id": "6f1c'), KEEPS_NOTHING, "not JSON", id="cut-in-id"
        ),
        pytest.param(
            truncated_after(b'"first_seen_at": 16'), KEEPS_ID, "not JSON", id="cut-in-time"
        ),
        pytest.param(
            truncated_after(b'"first_seen_at": 1600000000000,'),
            KEEPS_BOTH,
            "not JSON",
            id="cut-after-time",
        ),
        pytest.param(truncated_after(b'"mode": "acc'), KEEPS_BOTH, "not JSON", id="cut-in-mode"),
        pytest.param(dumped(good_document(mode="auto")), KEEPS_BOTH, "mode", id="bad-mode"),
        pytest.param(dumped(good_document(version=2)), KEEPS_BOTH, "version 2", id="version-2"),
        pytest.param(dumped(good_document(version=None)), KEEPS_BOTH, "version", id="no-version"),
        pytest.param(
            dumped(good_document(first_seen_at="yesterday")),
            KEEPS_ID,
            "first_seen_at",
            id="bad-time",
        ),
        pytest.param(dumped(good_document(device_id=42)), KEEPS_NOTHING, "device_id", id="bad-id"),
        # Values that only strict validation refuses: "5" and 5.0 would pass as the number 5.
        pytest.param(
            dumped(good_document(first_seen_at="5")), KEEPS_ID, "first_seen_at", id="time-as-text"
        ),
        pytest.param(
            dumped(good_document(first_seen_at=5.0)), KEEPS_ID, "first_seen_at", id="time-as-float"
        ),
        pytest.param(
            dumped(good_document(first_seen_at=-1)), KEEPS_ID, "first_seen_at", id="negative-time"
        ),
        pytest.param(dumped(good_document(version=True)), KEEPS_BOTH, "version", id="version-true"),
        pytest.param(dumped(good_document(version=0)), KEEPS_BOTH, "version 0", id="version-0"),
        pytest.param(dumped(good_document(version=1.0)), KEEPS_BOTH, "version", id="version-float"),
        pytest.param(
            dumped(good_document(last_connection=connection_document(at="5"))),
            KEEPS_BOTH,
            "last_connection.at",
            id="connection-time-as-text",
        ),
        pytest.param(
            dumped({"version": 1, "first_seen_at": 1_600_000_000_000, "mode": "auto"}),
            KEEPS_NOTHING,
            "device_id",
            id="time-but-no-id",
        ),
        pytest.param(b"[" * 3000 + b"]" * 3000, KEEPS_NOTHING, "recursion", id="deep-nesting"),
        pytest.param(
            b'{"version": 1, "device_id": "6f1c\\q", "first_seen_at": 16',
            KEEPS_NOTHING,
            "not JSON",
            id="cut-after-an-id-with-a-bad-escape",
        ),
        pytest.param(
            b'{"device_id": "6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b", "x": ' + b"[" * 3000,
            KEEPS_ID,
            "not JSON",
            id="deep-nesting-after-the-id",
        ),
        pytest.param(
            dumped(good_document(last_connection={"at": "now"})),
            KEEPS_BOTH,
            "last_connection",
            id="bad-connection",
        ),
    ],
)
def test_a_damaged_file_is_moved_aside_logged_once_and_rebuilt(
    caplog: pytest.LogCaptureFixture,
    content: bytes,
    kept: tuple[str | None, int],
    problem: str,
) -> None:
    path = state_path(None)
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    kept_id, kept_first_seen = kept

    rebuilt = StateStore(path).load()

    if kept_id is None:
        assert uuid.UUID(rebuilt.device_id).version == 4
    else:
        assert rebuilt.device_id == kept_id
    assert rebuilt.first_seen_at == kept_first_seen
    assert rebuilt.mode == "default"
    aside = path.with_name(f"state.json.corrupt-{NOW}")
    assert aside.read_bytes() == content
    assert mode_of(aside) == 0o600
    assert mode_of(path) == 0o600
    [warning] = state_warnings(caplog)
    assert str(path) in warning
    assert problem in warning
    assert "\n" not in warning
    assert warning.endswith(
        f"device id {rebuilt.device_id} (recovered)"
        if kept_id
        else f"device id {rebuilt.device_id} (the old one was unreadable)"
    )
    caplog.clear()
    assert StateStore(path).load() == rebuilt
    assert state_warnings(caplog) == []


def test_a_damaged_file_stays_put_until_its_replacement_is_written() -> None:
    path = state_path(None)
    path.parent.mkdir(parents=True)
    damaged = dumped(good_document(mode="auto"))
    path.write_bytes(damaged)
    with file_size_limit(8), pytest.raises(UnusableFile):
        StateStore(path).load()
    assert path.read_bytes() == damaged
    assert StateStore(path).load().device_id == DEVICE_ID


def test_instances_share_the_device_id_of_the_default_file(clock: list[int]) -> None:
    work = StateStore(state_path("work")).load()
    default = StateStore(state_path(None)).load()
    clock[0] = NOW + 60_000  # a later instance: its first-seen time is still the default's
    other = StateStore(state_path("other/one")).load()
    assert work.device_id == default.device_id == other.device_id
    assert work.first_seen_at == default.first_seen_at == other.first_seen_at == NOW


def test_an_instance_keeps_its_own_mode() -> None:
    StateStore(state_path(None)).load()
    StateStore(state_path("work")).update(mode="bypassPermissions")
    assert StateStore(state_path(None)).load().mode == "default"
    assert StateStore(state_path("work")).load().mode == "bypassPermissions"


def test_a_damaged_instance_file_without_an_id_takes_the_default_one() -> None:
    default = StateStore(state_path(None)).load()
    path = state_path("work")
    path.write_bytes(b"{")
    assert StateStore(path).load().device_id == default.device_id


def test_a_restart_keeps_mode_and_last_connection() -> None:
    path = state_path(None)
    connection = LastConnection(
        platform_url="http://127.0.0.1:8283",
        connection_id="conn-1",
        ws_url="ws://127.0.0.1:8283/v1/listener/ws?connectionId=conn-1",
        environment_id="env-1",
        at=NOW,
    )
    running = StateStore(path)
    before = running.update(mode="acceptEdits", last_connection=connection)

    after = StateStore(path).load()

    assert after == before
    assert after.mode == "acceptEdits"
    assert after.last_connection == connection


def test_update_refuses_bad_changes_and_leaves_the_file_alone() -> None:
    path = state_path(None)
    store = StateStore(path)
    store.load()
    before = path.read_bytes()
    with pytest.raises(TypeError, match="mdoe"):
        store.update(mdoe="standard")
    with pytest.raises(ValidationError):
        store.update(mode="auto")
    assert path.read_bytes() == before


def test_a_symlinked_state_file_is_replaced_and_its_target_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = tmp_path / "someone-elses.json"
    target.write_bytes(dumped(good_document()))
    target.chmod(0o644)
    path = state_path(None)
    path.parent.mkdir(parents=True, mode=0o700)
    path.symlink_to(target)

    state = StateStore(path).load()

    assert state.device_id != DEVICE_ID  # nothing was read through the link
    assert not path.is_symlink() and mode_of(path) == 0o600
    assert mode_of(target) == 0o644
    assert target.read_bytes() == dumped(good_document())
    [warning] = state_warnings(caplog)
    assert "symlink" in warning and str(path) in warning


def test_a_fifo_in_place_of_the_state_file_is_replaced_without_blocking() -> None:
    path = state_path(None)
    path.parent.mkdir(parents=True, mode=0o700)
    os.mkfifo(path, 0o600)
    StateStore(path).load()
    assert stat.S_ISREG(path.lstat().st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_a_state_file_owned_by_another_user_is_replaced_unread() -> None:
    path = state_path(None)
    path.parent.mkdir(parents=True, mode=0o700)
    path.write_bytes(dumped(good_document()))
    path.chmod(0o600)
    os.chown(path, 65534, 65534)
    assert StateStore(path).load().device_id != DEVICE_ID
    assert path.stat().st_uid == os.geteuid()


def test_a_folder_in_place_of_the_state_file_is_one_line() -> None:
    path = state_path(None)
    path.mkdir(parents=True)
    with pytest.raises(UnusableFile) as raised:
        StateStore(path).load()
    assert str(raised.value) == f"{path} is a folder, not a file: remove it"
