"""Wire and listing types: the one place where field names of the protocol (docs/protocol.md) live.

Every shape the daemon, the local API, the reference platform and the tests exchange is a model
here. Python attributes are snake_case; each model declares how its keys are spelt on the wire
(camelCase for the listing and registration, snake_case for frames), and serialising with
`to_wire` gives exactly the documented keys.

No `from __future__ import annotations` here: pydantic would then compile and evaluate every
field's annotation from its string when each class is made, which made importing this module
(every command and the daemon do) about a fifth slower (27 -> 21 ms, measured).
"""

import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    model_serializer,
)
from pydantic.alias_generators import to_camel
from pydantic_core import from_json

from agent.protocol.constants import MAX_NAME_CHARS as MAX_NAME_CHARS
from agent.protocol.constants import MODES as MODES
from agent.protocol.constants import SOURCES as SOURCES
from agent.protocol.constants import Mode as Mode
from agent.protocol.constants import Source as Source
from agent.protocol.constants import is_online

DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 100
_LIMIT_TEXT = re.compile(r"[0-9]{1,3}")
"""ASCII digits only, and few of them: `str.isdigit` takes `²` and Arabic-Indic digits, and
`int()` refuses (with an exception) numbers past its digit limit."""

Identifier = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]
ConnectionName = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]


def parse_mode(value: str) -> Mode:
    """Return `value` as a Mode, or raise ValueError naming the five accepted modes."""
    if value not in MODES:
        raise ValueError(f"unknown mode {value!r}: expected one of {', '.join(MODES)}")
    return value  # type: ignore[return-value]  # narrowed by the membership test above


class WireModel(BaseModel):
    """Base for wire shapes: aliases on the way out, names or aliases on the way in.

    `_omit_if_none` names optional keys that are left out when empty rather than sent as null;
    `_omit_if_unset` leaves out every key that was neither given nor parsed, so that a body
    from another client comes back with the keys it had and no others.
    """

    model_config = ConfigDict(
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
        defer_build=True,
    )
    _omit_if_none: ClassVar[frozenset[str]] = frozenset()
    _omit_if_unset: ClassVar[bool] = False

    @model_serializer(mode="wrap")
    def _leave_out_absent_keys(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if not isinstance(data, dict):
            return data
        for name, field in type(self).model_fields.items():
            unset = self._omit_if_unset and name not in self.model_fields_set
            empty = name in self._omit_if_none and getattr(self, name) is None
            if unset or empty:
                data.pop(field.alias or name, None)
                data.pop(name, None)
        return data

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict with exactly the documented keys."""
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return json.dumps(self.to_wire(), separators=(",", ":"))


class CamelModel(WireModel):
    model_config = ConfigDict(alias_generator=to_camel)


# --- §4 metadata -----------------------------------------------------------------------------


class SelfUpdate(WireModel):
    """Whether and how this install can upgrade itself; `reason` only when it cannot."""

    _omit_if_none = frozenset({"install_path", "manual_command", "reason"})

    supported: bool
    writable: bool
    install_path: str | None = None
    manual_command: str | None = None
    reason: str | None = None


class Metadata(CamelModel):
    """What the machine is. Unknown keys from other clients are kept as they came."""

    model_config = ConfigDict(extra="allow")
    _omit_if_unset = True

    os: str | None = None
    node_version: str | None = None
    letta_code_version: str | None = None
    git_branch: str | None = None
    working_directory: str | None = None
    self_update: SelfUpdate | None = Field(default=None, alias="self_update")
    supported_commands: list[str] | None = Field(default=None, alias="supported_commands")


# --- §1 registration -------------------------------------------------------------------------


class RegisterRequest(CamelModel):
    _omit_if_none = frozenset({"listener_instance_id", "current_mode", "source"})

    device_id: Identifier
    listener_instance_id: Identifier | None = None
    connection_name: ConnectionName
    metadata: Metadata = Field(default_factory=Metadata)
    current_mode: Mode | None = None
    source: Source | None = None


# --- §6 the listing --------------------------------------------------------------------------


class EnvironmentRow(CamelModel):
    """One connection row of `GET /v1/environments`.

    The first ten keys are always present (some may be null); the others appear only when they
    have a value. `source` is ext: the row's registered source, which the `source` query
    filters on; a Letta platform does not send it.
    """

    _omit_if_none = frozenset({"api_key_owner", "current_mode", "metadata", "user_id", "source"})

    id: str
    connected_at: int | None
    connection_id: str | None
    connection_name: str
    device_id: str
    first_seen_at: int
    last_heartbeat: int | None
    last_seen_at: int
    organization_id: str
    pod_id: str | None
    api_key_owner: str | None = None
    current_mode: Mode | None = None
    metadata: Metadata | None = None
    user_id: str | None = None
    source: Source | None = None

    def is_online(self, now_ms: int, window_ms: int) -> bool:
        """The Letta online rule (constants.is_online), on this row."""
        return is_online(self.connection_id, self.last_heartbeat, now_ms, window_ms)


class EnvironmentList(CamelModel):
    connections: list[EnvironmentRow]
    has_next_page: bool


class EventsReady(CamelModel):
    """ext: the first event of `GET /v1/environments/events`, `ready`: the subscription is live,
    and what a page needs to tell online from lost by itself between events."""

    online_window_ms: int
    heartbeat_interval_ms: int


class EventsHeartbeats(CamelModel):
    """ext: `heartbeats` on `GET /v1/environments/events`: the heartbeats one pod wrote in one
    flush, of the stream's organization, so that a page keeps ages and online rows true without
    reading the listing again. Each row's new `lastHeartbeat` (ms), by row id."""

    last_heartbeat: dict[str, int]


class RegisterReply(CamelModel):
    _omit_if_none = frozenset(
        {
            "supports_split_status_channels",
            "supports_paired_listener_generations",
            "heartbeat_interval_ms",
            "environment",
        }
    )

    connection_id: str = Field(min_length=1)
    ws_url: str = Field(min_length=1)
    supports_split_status_channels: bool | None = None
    supports_paired_listener_generations: bool | None = None
    heartbeat_interval_ms: int | None = Field(default=None, gt=0)
    environment: EnvironmentRow | None = None


class ErrorReply(WireModel):
    """The body of every 4xx/5xx the platform and the local API send."""

    error: str
    message: str


class ListQueryError(ValueError):
    """A listing query parameter is malformed; the message names it."""


class ListQuery(WireModel):
    """The listing's query parameters, parsed from the strings they arrive as."""

    after: str | None = None
    limit: int = DEFAULT_LIST_LIMIT
    online_only: bool = False
    source: Source | None = None
    user_id: str | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> "ListQuery":
        """Parse `after`, `limit`, `onlineOnly`, `source` and `userId`; other keys are ignored."""
        limit_text = query.get("limit")
        limit = DEFAULT_LIST_LIMIT
        if limit_text is not None:
            if not _LIMIT_TEXT.fullmatch(limit_text) or not 1 <= int(limit_text) <= MAX_LIST_LIMIT:
                raise ListQueryError(
                    f"limit must be a whole number from 1 to {MAX_LIST_LIMIT}, "
                    f"got {_shorten(limit_text)}"
                )
            limit = int(limit_text)
        online_text = query.get("onlineOnly")
        online_only = False
        if online_text is not None:
            if online_text.lower() not in ("true", "false"):
                raise ListQueryError(
                    f"onlineOnly must be true or false, got {_shorten(online_text)}"
                )
            online_only = online_text.lower() == "true"
        source = query.get("source")
        if source is not None and source not in SOURCES:
            raise ListQueryError(f"source must be local or remote, got {_shorten(source)}")
        after = query.get("after")
        if after == "":
            raise ListQueryError("after must be the id of a row, got an empty string")
        user_id = query.get("userId") or None
        return cls(
            after=after, limit=limit, online_only=online_only, source=source, user_id=user_id
        )


# --- §2 frames -------------------------------------------------------------------------------


class GitContext(WireModel):
    branch: str | None = None


class DeviceStatus(WireModel):
    """What `update_device_status` reports; every key is optional on the way in."""

    _omit_if_unset = True

    current_connection_id: str | None = None
    connection_name: ConnectionName | None = None
    is_online: bool | None = None
    current_permission_mode: Mode | None = None
    current_working_directory: str | None = None
    git_context: GitContext | None = None
    letta_code_version: str | None = None
    supported_commands: list[str] | None = None

    @classmethod
    def report(
        cls, metadata: Metadata, *, connection_id: str, connection_name: str, mode: Mode
    ) -> "DeviceStatus":
        """What a daemon says of itself: its metadata under the names the frame gives them."""
        return cls.model_validate(
            {
                "current_connection_id": connection_id,
                "connection_name": connection_name,
                "is_online": True,
                "current_permission_mode": mode,
                "git_context": GitContext(branch=metadata.git_branch),
                **{status: getattr(metadata, field) for status, field in _METADATA_FIELDS.items()},
            }
        )

    def metadata_changes(self) -> dict[str, Any]:
        """The metadata keys (as the listing spells them) this report changes: only those it
        carried, so that a report from another client leaves the rest as it was."""
        given = self.model_fields_set
        fields = {
            field: getattr(self, status)
            for status, field in _METADATA_FIELDS.items()
            if status in given
        }
        if "git_context" in given:
            fields["git_branch"] = self.git_context.branch if self.git_context else None
        return Metadata.model_validate(fields).to_wire()


_METADATA_FIELDS = {
    "current_working_directory": "working_directory",
    "letta_code_version": "letta_code_version",
    "supported_commands": "supported_commands",
}
"""`DeviceStatus` field -> the `Metadata` field it reports (the git branch is nested)."""


class PingFrame(WireModel):
    _omit_if_none = frozenset({"current_mode", "sent_at"})

    type: Literal["ping"] = "ping"
    current_mode: Mode | None = None
    sent_at: int | None = None


class UpdateDeviceStatusFrame(WireModel):
    type: Literal["update_device_status"] = "update_device_status"
    device_status: DeviceStatus


class ExecuteCommandResponseFrame(WireModel):
    type: Literal["execute_command_response"] = "execute_command_response"
    request_id: str
    success: bool
    output: str = ""


class SyncResponseFrame(WireModel):
    _omit_if_none = frozenset({"request_id"})

    type: Literal["sync_response"] = "sync_response"
    request_id: str | None = None
    success: bool = True


class DisconnectFrame(WireModel):
    type: Literal["disconnect"] = "disconnect"
    reason: str = ""


class PongFrame(WireModel):
    type: Literal["pong"] = "pong"


class Runtime(WireModel):
    agent_id: str | None = None
    conversation_id: str | None = None


class DeviceStatePayload(WireModel):
    _omit_if_none = frozenset({"mode", "cwd"})

    mode: Mode | None = None
    cwd: str | None = None


class ChangeDeviceStateFrame(WireModel):
    _omit_if_none = frozenset({"runtime"})

    type: Literal["change_device_state"] = "change_device_state"
    runtime: Runtime | None = None
    payload: DeviceStatePayload = Field(default_factory=DeviceStatePayload)


class ExecuteCommandFrame(WireModel):
    _omit_if_none = frozenset({"args"})

    type: Literal["execute_command"] = "execute_command"
    command_id: str
    request_id: str
    args: dict[str, Any] | list[Any] | None = None


class SyncFrame(WireModel):
    _omit_if_none = frozenset({"request_id"})

    type: Literal["sync"] = "sync"
    request_id: str | None = None


DaemonFrame = Annotated[
    PingFrame
    | UpdateDeviceStatusFrame
    | ExecuteCommandResponseFrame
    | SyncResponseFrame
    | DisconnectFrame,
    Field(discriminator="type"),
]
"""A frame the daemon sends to the platform."""

PlatformFrame = Annotated[
    PongFrame | ChangeDeviceStateFrame | ExecuteCommandFrame | SyncFrame,
    Field(discriminator="type"),
]
"""A frame the platform sends to the daemon."""

# Built when a frame is first parsed, as the models are (`defer_build`): a command that reads
# a status or a listing never pays for the frames.
_DAEMON_FRAMES: TypeAdapter[DaemonFrame] = TypeAdapter(
    DaemonFrame, config=ConfigDict(defer_build=True)
)
_PLATFORM_FRAMES: TypeAdapter[PlatformFrame] = TypeAdapter(
    PlatformFrame, config=ConfigDict(defer_build=True)
)


_Frame = TypeVar("_Frame")


class FrameError(ValueError):
    """A received frame cannot be used; the message says why in one line."""


def parse_json(text: str | bytes) -> Any:
    """Strict JSON with bounded nesting: ValueError for anything else, never RecursionError.

    `json.loads` recurses once per level and raises RecursionError on 6 KB of brackets; this
    parser (pydantic's) stops at 200 levels. NaN and infinities are not JSON and are refused.
    """
    try:
        return from_json(text, allow_inf_nan=False)
    except TypeError:  # a str holding lone surrogates, which no JSON text can
        raise ValueError("text is not valid Unicode") from None


def _parse_frame(text: str | bytes, adapter: TypeAdapter[_Frame]) -> _Frame:
    try:
        raw = parse_json(text)
    except ValueError as exc:
        raise FrameError(f"frame is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise FrameError(f"frame is a JSON {type(raw).__name__}, not an object")
    frame_type = raw.get("type")
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        if any(error["type"] == "union_tag_invalid" for error in exc.errors()):
            raise FrameError(f"unknown frame type {_shorten(frame_type)}") from None
        if any(error["type"] == "union_tag_not_found" for error in exc.errors()):
            raise FrameError("frame has no 'type'") from None
        problem = describe_validation_error(exc)
        raise FrameError(f"bad {_shorten(frame_type)} frame: {problem}") from None


def parse_daemon_frame(text: str | bytes) -> DaemonFrame:
    """Parse a frame sent by a daemon, or raise FrameError."""
    return _parse_frame(text, _DAEMON_FRAMES)


def parse_platform_frame(text: str | bytes) -> PlatformFrame:
    """Parse a frame sent by a platform, or raise FrameError."""
    return _parse_frame(text, _PLATFORM_FRAMES)


def _shorten(value: object, keep: int = 40) -> str:
    """`repr(value)`, cut to `keep` characters, so that a huge value cannot flood a message."""
    text = repr(value)
    return text if len(text) <= keep else f"{text[:keep]}... ({len(text)} characters)"


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each bad field, e.g. `metadata.os: Input should be a valid string`."""
    parts = []
    for error in exc.errors(include_url=False):
        location = ".".join(str(part) for part in error["loc"]) or "body"
        parts.append(f"{location}: {error['msg']}")
    shown = "; ".join(parts[:3])
    more = len(parts) - 3
    return shown + (f" (and {more} more)" if more > 0 else "")


# --- the daemon's local API ------------------------------------------------------------------


class ModeChange(CamelModel):
    """Body of `PUT /v1/mode` and its reply."""

    mode: Mode


class HeartbeatCounts(CamelModel):
    sent: int
    answered: int
    unanswered_now: int


class NodeReport(CamelModel):
    version: str | None
    path: str | None
    found_via: str


class ProcessReport(CamelModel):
    """What the daemon's process costs, measured when the status is asked for."""

    pid: int
    rss_bytes: int
    cpu_seconds: float
    """User and system time since the process started."""
    open_files: int
    """Open file descriptors: files, sockets and pipes."""
    threads: int
    uptime_s: float


class DaemonStatus(CamelModel):
    """`GET /v1/status`: what the daemon is doing and why, for people and coding tools."""

    state: str
    platform_url: str
    embedded_platform: bool
    device_id: str
    connection_name: str
    connection_id: str | None
    environment_id: str | None
    mode: Mode
    working_directory: str
    last_error: str | None
    heartbeat_period_s: float
    heartbeats: HeartbeatCounts
    registrations: int
    connects: int
    connected_at: int | None
    last_pong_at: int | None
    pid: int
    started_at: int
    uptime_s: float
    local_api: str
    log_path: str | None
    node: NodeReport | None
    process: ProcessReport | None = None
    """None when not measured: the start-up banner, which must not load psutil, or a daemon
    older than this field."""


class LocalApiAddress(BaseModel):
    """`local-api.json`, written beside the state while the daemon runs, so that the CLI finds
    the daemon's local API."""

    url: str


class StoppedStatus(CamelModel):
    """`envagent status --json` when no daemon runs: the running one's `state` key, so that a
    tool reads one shape, and why."""

    state: Literal["stopped"] = "stopped"
    reason: str


class Health(CamelModel):
    """`GET /healthz`: `ok` only while heartbeats are being answered."""

    ok: bool
    reason: str
