"""The wire models: exact keys out, unknown keys ignored in, one clear error for bad frames."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from agent.protocol.models import (
    MAX_NAME_CHARS,
    MODES,
    ChangeDeviceStateFrame,
    DeviceStatePayload,
    DeviceStatus,
    DisconnectFrame,
    EnvironmentList,
    EnvironmentRow,
    ExecuteCommandFrame,
    ExecuteCommandResponseFrame,
    FrameError,
    GitContext,
    ListQuery,
    ListQueryError,
    Metadata,
    PingFrame,
    PongFrame,
    RegisterReply,
    RegisterRequest,
    Runtime,
    SelfUpdate,
    SyncFrame,
    SyncResponseFrame,
    UpdateDeviceStatusFrame,
    WireModel,
    describe_validation_error,
    parse_daemon_frame,
    parse_mode,
    parse_platform_frame,
)

# The example body of `GET /v1/environments` in the Letta API reference: every field set.
LETTA_DOCS_EXAMPLE: dict[str, Any] = {
    "connections": [
        {
            "id": "id",
            "connectedAt": 0,
            "connectionId": "connectionId",
            "connectionName": "connectionName",
            "deviceId": "deviceId",
            "firstSeenAt": 0,
            "lastHeartbeat": 0,
            "lastSeenAt": 0,
            "organizationId": "organizationId",
            "podId": "podId",
            "apiKeyOwner": "apiKeyOwner",
            "currentMode": "default",
            "metadata": {
                "gitBranch": "gitBranch",
                "lettaCodeVersion": "lettaCodeVersion",
                "nodeVersion": "nodeVersion",
                "os": "os",
                "self_update": {
                    "supported": True,
                    "writable": True,
                    "install_path": "install_path",
                    "manual_command": "manual_command",
                    "reason": "reason",
                },
                "supported_commands": ["string"],
                "workingDirectory": "workingDirectory",
            },
            "userId": "userId",
        }
    ],
    "hasNextPage": True,
}

ALWAYS_PRESENT = {
    "id",
    "connectedAt",
    "connectionId",
    "connectionName",
    "deviceId",
    "firstSeenAt",
    "lastHeartbeat",
    "lastSeenAt",
    "organizationId",
    "podId",
}


def test_letta_docs_example_round_trips_unchanged() -> None:
    parsed = EnvironmentList.model_validate(LETTA_DOCS_EXAMPLE)
    assert parsed.connections[0].metadata is not None
    assert parsed.connections[0].metadata.self_update == SelfUpdate(
        supported=True,
        writable=True,
        install_path="install_path",
        manual_command="manual_command",
        reason="reason",
    )
    assert parsed.to_wire() == LETTA_DOCS_EXAMPLE
    assert json.loads(parsed.to_json()) == LETTA_DOCS_EXAMPLE


def test_row_keeps_the_always_present_keys_when_null_and_drops_empty_optional_ones() -> None:
    row = EnvironmentRow(
        id="env-1",
        connected_at=None,
        connection_id=None,
        connection_name="laptop",
        device_id="dev-1",
        first_seen_at=1,
        last_heartbeat=None,
        last_seen_at=2,
        organization_id="org-1",
        pod_id=None,
    )
    wire = row.to_wire()
    assert set(wire) == ALWAYS_PRESENT
    assert wire["connectedAt"] is None and wire["podId"] is None
    assert EnvironmentRow.model_validate(wire) == row


def test_row_requires_the_always_present_keys() -> None:
    wire = LETTA_DOCS_EXAMPLE["connections"][0] | {}
    del wire["connectedAt"]
    with pytest.raises(ValidationError, match="connectedAt"):
        EnvironmentRow.model_validate(wire)


def test_online_rule_needs_a_connection_and_a_fresh_heartbeat() -> None:
    row = EnvironmentList.model_validate(LETTA_DOCS_EXAMPLE).connections[0]
    fresh = row.model_copy(update={"last_heartbeat": 1_000})
    assert fresh.is_online(now_ms=1_000 + 119_999, window_ms=120_000)
    assert not fresh.is_online(now_ms=1_000 + 120_000, window_ms=120_000)
    assert not fresh.model_copy(update={"connection_id": None}).is_online(1_000, 120_000)
    assert not fresh.model_copy(update={"last_heartbeat": None}).is_online(1_000, 120_000)
    assert not fresh.is_online(now_ms=1_000 + 500_000, window_ms=120_000)  # long gone


def test_metadata_keeps_unknown_keys_and_only_the_keys_it_was_given() -> None:
    from_letta_code = {"os": "darwin", "environmentMessageProtocol": 2, "nodeVersion": None}
    assert Metadata.model_validate(from_letta_code).to_wire() == from_letta_code
    ours = Metadata(os="linux", git_branch=None, working_directory="/srv")
    assert ours.to_wire() == {"os": "linux", "gitBranch": None, "workingDirectory": "/srv"}


def test_self_update_reason_is_absent_when_there_is_none() -> None:
    assert SelfUpdate(supported=True, writable=True, install_path="/v").to_wire() == {
        "supported": True,
        "writable": True,
        "install_path": "/v",
    }


def test_register_request_round_trip_and_omitted_instance_id() -> None:
    request = RegisterRequest(
        device_id="dev-1",
        connection_name="laptop",
        metadata=Metadata(os="linux", supported_commands=["sync"]),
        current_mode="acceptEdits",
        source="remote",
    )
    wire = request.to_wire()
    assert wire == {
        "deviceId": "dev-1",
        "connectionName": "laptop",
        "metadata": {"os": "linux", "supported_commands": ["sync"]},
        "currentMode": "acceptEdits",
        "source": "remote",
    }
    assert RegisterRequest.model_validate(wire | {"unknownKey": 1}) == request
    with_instance = request.model_copy(update={"listener_instance_id": "b"})
    assert with_instance.to_wire()["listenerInstanceId"] == "b"


@pytest.mark.parametrize("field", ["deviceId", "connectionName", "listenerInstanceId"])
def test_register_request_ids_take_one_to_200_characters(field: str) -> None:
    base = {"deviceId": "d", "connectionName": "n"}
    for good in ("x", "x" * MAX_NAME_CHARS):
        assert RegisterRequest.model_validate(base | {field: good}).to_wire()[field] == good
    for bad in ("", "x" * (MAX_NAME_CHARS + 1)):
        with pytest.raises(ValidationError, match=field):
            RegisterRequest.model_validate(base | {field: bad})
    assert MAX_NAME_CHARS == 200


def test_register_reply_needs_ids_and_a_positive_period() -> None:
    base = {"connectionId": "c", "wsUrl": "w"}
    assert RegisterReply.model_validate(base).to_wire() == base  # one character will do
    assert RegisterReply.model_validate(base | {"heartbeatIntervalMs": 1}).heartbeat_interval_ms
    for bad in ({"connectionId": ""}, {"wsUrl": ""}, {"heartbeatIntervalMs": 0}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            RegisterReply.model_validate(base | bad)


def test_register_reply_parses_letta_and_ext_keys() -> None:
    wire = {
        "connectionId": "c-1",
        "wsUrl": "wss://example.invalid/ws",
        "supportsSplitStatusChannels": True,
        "heartbeatIntervalMs": 5000,
        "environment": LETTA_DOCS_EXAMPLE["connections"][0],
        "somethingNew": [1, 2],
    }
    reply = RegisterReply.model_validate(wire)
    assert reply.heartbeat_interval_ms == 5000
    assert reply.to_wire() == {k: v for k, v in wire.items() if k != "somethingNew"}
    with pytest.raises(ValidationError, match="wsUrl"):
        RegisterReply.model_validate({"connectionId": "c-1"})


FRAMES: list[tuple[BaseModel, dict[str, Any]]] = [
    (PingFrame(), {"type": "ping"}),
    (
        PingFrame(current_mode="unrestricted", sent_at=5),
        {"type": "ping", "current_mode": "unrestricted", "sent_at": 5},
    ),
    (
        UpdateDeviceStatusFrame(
            device_status=DeviceStatus(
                current_connection_id="c-1",
                connection_name="laptop",
                is_online=True,
                current_permission_mode="default",
                current_working_directory="/srv",
                git_context=GitContext(branch=None),
                letta_code_version="0.1.0",
                supported_commands=["sync"],
            )
        ),
        {
            "type": "update_device_status",
            "device_status": {
                "current_connection_id": "c-1",
                "connection_name": "laptop",
                "is_online": True,
                "current_permission_mode": "default",
                "current_working_directory": "/srv",
                "git_context": {"branch": None},
                "letta_code_version": "0.1.0",
                "supported_commands": ["sync"],
            },
        },
    ),
    (
        ExecuteCommandResponseFrame(request_id="r", success=False, output="no"),
        {"type": "execute_command_response", "request_id": "r", "success": False, "output": "no"},
    ),
    (
        SyncResponseFrame(request_id="r"),
        {"type": "sync_response", "request_id": "r", "success": True},
    ),
    (DisconnectFrame(reason="stop"), {"type": "disconnect", "reason": "stop"}),
    (PongFrame(), {"type": "pong"}),
    (
        ChangeDeviceStateFrame(
            runtime=Runtime(agent_id="a", conversation_id="c"),
            payload=DeviceStatePayload(mode="bypassPermissions", cwd="/tmp"),
        ),
        {
            "type": "change_device_state",
            "runtime": {"agent_id": "a", "conversation_id": "c"},
            "payload": {"mode": "bypassPermissions", "cwd": "/tmp"},
        },
    ),
    (
        ExecuteCommandFrame(command_id="refresh", request_id="r", args={"x": 1}),
        {"type": "execute_command", "command_id": "refresh", "request_id": "r", "args": {"x": 1}},
    ),
    (SyncFrame(), {"type": "sync"}),
]


@pytest.mark.parametrize(("frame", "wire"), FRAMES, ids=lambda v: getattr(v, "type", ""))
def test_frame_round_trip(frame: PingFrame, wire: dict[str, Any]) -> None:
    assert frame.to_wire() == wire
    parse = (
        parse_platform_frame
        if wire["type"] in {"pong", "change_device_state", "execute_command", "sync"}
        else parse_daemon_frame
    )
    assert parse(frame.to_json()) == frame
    assert parse(json.dumps(wire | {"unknown": True})) == frame


# Every key a model leaves off the wire when it is None, rather than sending null: each model,
# built with those keys None, and with each of them set.
OMITTED_WHEN_NONE: list[tuple[type[WireModel], dict[str, Any], dict[str, Any]]] = [
    (
        SelfUpdate,
        {"supported": True, "writable": False},
        {"install_path": "/p", "manual_command": "pipx upgrade envagent", "reason": "r"},
    ),
    (
        RegisterRequest,
        {"device_id": "d", "connection_name": "n"},
        {"listener_instance_id": "i", "current_mode": "standard", "source": "remote"},
    ),
    (
        EnvironmentRow,
        {
            "id": "e",
            "connected_at": None,
            "connection_id": None,
            "connection_name": "n",
            "device_id": "d",
            "first_seen_at": 1,
            "last_heartbeat": None,
            "last_seen_at": 2,
            "organization_id": "o",
            "pod_id": None,
        },
        {"api_key_owner": "Ann", "current_mode": "default", "metadata": {}, "user_id": "u"},
    ),
    (
        RegisterReply,
        {"connection_id": "c", "ws_url": "w"},
        {
            "supports_split_status_channels": False,
            "supports_paired_listener_generations": False,
            "heartbeat_interval_ms": 5_000,
            "environment": LETTA_DOCS_EXAMPLE["connections"][0],
        },
    ),
    (PingFrame, {}, {"current_mode": "default", "sent_at": 7}),
    (SyncResponseFrame, {}, {"request_id": "r"}),
    (DeviceStatePayload, {}, {"mode": "default", "cwd": "/srv"}),
    (ChangeDeviceStateFrame, {}, {"runtime": {"agent_id": "a"}}),
    (ExecuteCommandFrame, {"command_id": "c", "request_id": "r"}, {"args": []}),
    (SyncFrame, {}, {"request_id": "r"}),
]


@pytest.mark.parametrize(
    ("model", "required", "optional"), OMITTED_WHEN_NONE, ids=lambda v: getattr(v, "__name__", "")
)
def test_optional_keys_are_left_off_the_wire_when_none(
    model: type[WireModel], required: dict[str, Any], optional: dict[str, Any]
) -> None:
    bare = model.model_validate(required).to_wire()
    nulls = model.model_validate(required | dict.fromkeys(optional)).to_wire()
    assert nulls == bare
    assert None not in [bare.get(key) for key in bare if key not in ALWAYS_PRESENT]
    for name, value in optional.items():
        wire = model.model_validate(required | {name: value}).to_wire()
        assert set(wire) - set(bare) == {model.model_fields[name].alias or name}


def test_a_device_status_carries_only_the_keys_it_was_given() -> None:
    assert DeviceStatus(connection_name="laptop").to_wire() == {"connection_name": "laptop"}
    assert DeviceStatus(git_context=None).to_wire() == {"git_context": None}
    assert DeviceStatus().to_wire() == {}


def test_a_daemon_reports_its_metadata_under_the_frame_s_names() -> None:
    metadata = Metadata(
        git_branch="main",
        working_directory="/srv",
        letta_code_version="0.1.0",
        supported_commands=["sync"],
        os="linux",
    )
    status = DeviceStatus.report(
        metadata, connection_id="c-1", connection_name="laptop", mode="acceptEdits"
    )
    assert status.to_wire() == {
        "current_connection_id": "c-1",
        "connection_name": "laptop",
        "is_online": True,
        "current_permission_mode": "acceptEdits",
        "git_context": {"branch": "main"},
        "current_working_directory": "/srv",
        "letta_code_version": "0.1.0",
        "supported_commands": ["sync"],
    }
    with pytest.raises(TypeError):  # keyword-only: two strings are not to be swapped
        DeviceStatus.report(metadata, "c-1", "laptop", "acceptEdits")  # type: ignore[misc]


def test_metadata_changes_are_only_the_keys_a_report_carried() -> None:
    assert DeviceStatus(connection_name="laptop").metadata_changes() == {}
    assert DeviceStatus(
        current_working_directory="/srv", git_context=GitContext(branch="dev")
    ).metadata_changes() == {"workingDirectory": "/srv", "gitBranch": "dev"}
    assert DeviceStatus(git_context=None).metadata_changes() == {"gitBranch": None}
    versions = DeviceStatus(letta_code_version="0.2.0", supported_commands=[])
    assert versions.metadata_changes() == {"lettaCodeVersion": "0.2.0", "supported_commands": []}


def test_importing_the_models_builds_no_validator() -> None:
    """`defer_build`: a command that only reads a status pays for no frame and no listing."""
    probe = (
        "import agent.protocol.models as m\n"
        "print(m.RegisterRequest.__pydantic_complete__, m.EnvironmentList.__pydantic_complete__,"
        " m._DAEMON_FRAMES.pydantic_complete, m._PLATFORM_FRAMES.pydantic_complete)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.split() == ["False"] * 4, done.stderr


@pytest.mark.parametrize(
    ("count", "suffix"),
    [(1, ""), (2, ""), (3, ""), (4, " (and 1 more)"), (6, " (and 3 more)")],
)
def test_a_validation_error_names_three_problems_and_counts_the_rest(
    count: int, suffix: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        TypeAdapter(list[int]).validate_python(["x"] * count)
    shown = "; ".join(
        f"{n}: Input should be a valid integer, unable to parse string as an integer"
        for n in range(min(count, 3))
    )
    assert describe_validation_error(raised.value) == shown + suffix


@pytest.mark.parametrize(("length", "cut"), [(38, False), (39, True)])
def test_a_long_value_is_cut_to_40_characters_in_a_message(length: int, cut: bool) -> None:
    value = "x" * length  # its repr has two quotes more
    with pytest.raises(FrameError) as raised:
        parse_daemon_frame(json.dumps({"type": value}))
    shown = repr(value)[:40] + f"... ({length + 2} characters)" if cut else repr(value)
    assert str(raised.value) == f"unknown frame type {shown}"


def test_change_device_state_without_runtime_is_accepted() -> None:
    frame = parse_platform_frame('{"type": "change_device_state", "payload": {"mode": "default"}}')
    assert isinstance(frame, ChangeDeviceStateFrame)
    assert frame.runtime is None and frame.payload.mode == "default"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "frame is not JSON"),
        (b"\xff\xfe", "frame is not JSON"),
        ("[1, 2]", "frame is a JSON list, not an object"),
        ('"ping"', "frame is a JSON str, not an object"),
        ('{"no": "type"}', "frame has no 'type'"),
        ('{"type": "launch_rockets"}', "unknown frame type 'launch_rockets'"),
        ('{"type": "pong"}', "unknown frame type 'pong'"),
        ('{"type": "ping", "current_mode": "yolo"}', "bad 'ping' frame: ping.current_mode"),
        ('{"type": "execute_command_response"}', "request_id: Field required"),
        ("[" * 3000 + "]" * 3000, "frame is not JSON: recursion limit exceeded"),
        ('{"type": "ping", "sent_at": NaN}', "frame is not JSON"),
        ('{"type": "ping"}\x00', "frame is not JSON"),
        ('{"type": "' + "x" * 5000 + '"}', "unknown frame type 'xxxx.*characters"),
        (
            '{"type": "update_device_status", "device_status": {"connection_name": "'
            + "n" * 201
            + '"}}',
            "connection_name: String should have at most 200 characters",
        ),
    ],
)
def test_bad_daemon_frames_get_one_clear_line(text: str | bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message.replace("(", r"\(")) as caught:
        parse_daemon_frame(text)
    assert "\n" not in str(caught.value)
    assert len(str(caught.value)) < 300


@pytest.mark.parametrize(
    "text",
    [
        "[" * 3000 + "]" * 3000,
        '{"type": "sync", "request_id": ' + "[" * 5000 + "]" * 5000 + "}",
        '{"type": "execute_command", "command_id": "c", "request_id": "r", "args": '
        + '{"a":' * 2000
        + "1"
        + "}" * 2000
        + "}",
    ],
)
def test_deep_nesting_is_a_bad_frame_for_both_sides(text: str) -> None:
    """`json.loads` raised RecursionError here, which ended the session on either side."""
    with pytest.raises(FrameError, match="recursion limit exceeded"):
        parse_platform_frame(text)
    with pytest.raises(FrameError, match="recursion limit exceeded"):
        parse_daemon_frame(text.encode())


def test_the_name_cap_is_the_same_for_registration_and_device_status() -> None:
    name = "n" * MAX_NAME_CHARS
    status = DeviceStatus.model_validate({"connection_name": name})
    request = RegisterRequest(device_id="d" * MAX_NAME_CHARS, connection_name=name)
    assert status.connection_name == request.connection_name == name
    for model, key in ((DeviceStatus, "connection_name"), (RegisterRequest, "connectionName")):
        with pytest.raises(ValidationError, match="at most 200 characters"):
            model.model_validate({"deviceId": "d", key: name + "n"})


def test_modes() -> None:
    assert MODES == ("default", "standard", "acceptEdits", "bypassPermissions", "unrestricted")
    assert parse_mode("acceptEdits") == "acceptEdits"
    with pytest.raises(
        ValueError, match="default, standard, acceptEdits, bypassPermissions, unrestricted"
    ):
        parse_mode("auto")


def test_list_query_parses_strings() -> None:
    query = ListQuery.from_query(
        {"after": "env-1", "limit": "2", "onlineOnly": "true", "source": "remote", "userId": "u"}
    )
    assert query == ListQuery(
        after="env-1", limit=2, online_only=True, source="remote", user_id="u"
    )
    assert ListQuery.from_query({}) == ListQuery(limit=50, online_only=False) == ListQuery()
    assert ListQuery.from_query({"onlineOnly": "False"}).online_only is False


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "\u00b2"}, "limit"),  # `str.isdigit` is true for superscript two
        ({"limit": "\u0665"}, "limit"),  # Arabic-Indic five: `int()` reads it as 5
        ({"limit": " 1"}, "limit"),
        ({"limit": "1 "}, "limit"),
        ({"limit": "+1"}, "limit"),
        ({"limit": "1_0"}, "limit"),  # `int()` takes underscores
        ({"limit": "9" * 5000}, "limit"),  # past `int()`'s digit limit
        ({"limit": ""}, "limit"),
        ({"onlineOnly": "yes"}, "onlineOnly"),
        ({"source": "cloud"}, "source"),
        ({"after": ""}, "after"),
    ],
)
def test_list_query_errors_name_the_parameter(params: dict[str, str], named: str) -> None:
    with pytest.raises(ListQueryError, match=f"^{named} ") as caught:
        ListQuery.from_query(params)
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize(("text", "limit"), [("1", 1), ("100", 100), ("007", 7), ("50", 50)])
def test_list_query_limit_takes_ascii_digits_at_both_ends(text: str, limit: int) -> None:
    assert ListQuery.from_query({"limit": text}).limit == limit
