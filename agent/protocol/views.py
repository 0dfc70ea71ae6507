"""The local API's answers as the command line reads them, without pydantic: a typed view
(TypedDict) of each wire model it reads, and one check of a parsed JSON value against a view.

The wire shapes stay the models' (agent.protocol.models, the one definition the daemon, the
platform and the tests use); a view only types the keys a client reads, spelt as on the wire.
tests/protocol/test_views.py holds each view's keys, required and optional, equal to its model's
wire keys, nested views included, so that the two cannot drift. The commands that coding tools
call often (`status`, `mode`, `list --local`) pay neither for pydantic nor for an HTTP library.

The annotations are real objects (no `from __future__ import annotations`): `parse_answer`
reads them.
"""

import json
import types
from typing import (
    Any,
    Literal,
    NotRequired,
    TypedDict,
    TypeVar,
    Union,
    cast,
    get_args,
    get_origin,
    is_typeddict,
)

from agent.protocol.constants import Mode, Source


class ClientError(Exception):
    """Something a client (the CLI) cannot do; the message is the one line it prints."""


class HeartbeatCountsView(TypedDict):
    sent: int
    answered: int
    unansweredNow: int


class NodeReportView(TypedDict):
    version: str | None
    path: str | None
    foundVia: str


class ProcessReportView(TypedDict):
    pid: int
    rssBytes: int
    cpuSeconds: float
    openFiles: int
    threads: int
    uptimeS: float


class DaemonStatusView(TypedDict):
    """`GET /v1/status` (models.DaemonStatus)."""

    state: str
    platformUrl: str
    embeddedPlatform: bool
    deviceId: str
    connectionName: str
    connectionId: str | None
    environmentId: str | None
    mode: Mode
    workingDirectory: str
    lastError: str | None
    heartbeatPeriodS: float
    heartbeats: HeartbeatCountsView
    registrations: int
    connects: int
    connectedAt: int | None
    lastPongAt: int | None
    pid: int
    startedAt: int
    uptimeS: float
    localApi: str
    logPath: str | None
    node: NodeReportView | None
    process: NotRequired[ProcessReportView | None]


class StoppedStatusView(TypedDict):
    """`envagent status --json` with no daemon (models.StoppedStatus)."""

    state: Literal["stopped"]
    reason: str


class SelfUpdateView(TypedDict):
    supported: bool
    writable: bool
    install_path: NotRequired[str | None]
    manual_command: NotRequired[str | None]
    reason: NotRequired[str | None]


class MetadataView(TypedDict):
    """A row's metadata (models.Metadata); other clients' keys are there too, unread."""

    os: NotRequired[str | None]
    nodeVersion: NotRequired[str | None]
    lettaCodeVersion: NotRequired[str | None]
    gitBranch: NotRequired[str | None]
    workingDirectory: NotRequired[str | None]
    self_update: NotRequired[SelfUpdateView | None]
    supported_commands: NotRequired[list[str] | None]


class EnvironmentRowView(TypedDict):
    """One row of a listing (models.EnvironmentRow)."""

    id: str
    connectedAt: int | None
    connectionId: str | None
    connectionName: str
    deviceId: str
    firstSeenAt: int
    lastHeartbeat: int | None
    lastSeenAt: int
    organizationId: str
    podId: str | None
    apiKeyOwner: NotRequired[str | None]
    currentMode: NotRequired[Mode | None]
    metadata: NotRequired[MetadataView | None]
    userId: NotRequired[str | None]
    source: NotRequired[Source | None]


class EnvironmentListView(TypedDict):
    """`GET /v1/environments` (models.EnvironmentList)."""

    connections: list[EnvironmentRowView]
    hasNextPage: bool


class ModeChangeView(TypedDict):
    """`GET /v1/mode`, and `PUT /v1/mode`'s body and answer (models.ModeChange)."""

    mode: Mode


class ErrorReplyView(TypedDict):
    """The body of every error answer (models.ErrorReply)."""

    error: str
    message: str


class LocalApiAddressView(TypedDict):
    """`local-api.json` (models.LocalApiAddress)."""

    url: str


View = TypeVar("View")


def parse_answer(content: bytes | str, view: type[View]) -> View:
    """`content` as JSON of the shape `view` describes, else ValueError saying where it is not.

    Keys the view does not name are kept and not checked (as the models ignore them); NaN and
    the infinities are refused, as is nesting too deep for the parser (ValueError too).
    """
    try:
        value = json.loads(content, parse_constant=_not_json)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    check(value, view, "body")
    return cast(View, value)


def explain(content: bytes, status: int) -> str:
    """An error answer's own one-line message, else its status."""
    try:
        return parse_answer(content, ErrorReplyView)["message"]
    except ValueError:
        return f"HTTP {status}"


def check(value: object, hint: Any, where: str) -> None:
    """ValueError unless `value` (parsed JSON) fits `hint`: a view, a list, a union, a Literal,
    str, int, float (an int is one too), bool, None, or Any."""
    origin = get_origin(hint)
    if hint is Any:
        return
    if is_typeddict(hint):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object")
        for key, annotation in hint.__annotations__.items():
            if key in value:
                check(value[key], _required_type(annotation), f"{where}.{key}")
            elif key in hint.__required_keys__:
                raise ValueError(f"{where}.{key}: missing")
        return
    if origin is Union or origin is types.UnionType:
        problems = []
        for option in get_args(hint):
            try:
                check(value, option, where)
            except ValueError as exc:
                problems.append(str(exc))
            else:
                return
        raise ValueError("; or ".join(problems))
    if origin is Literal:
        if not any(type(value) is type(allowed) and value == allowed for allowed in get_args(hint)):
            raise ValueError(f"{where}: not one of {', '.join(map(str, get_args(hint)))}")
        return
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list")
        (item,) = get_args(hint)
        for index, each in enumerate(value):
            check(each, item, f"{where}[{index}]")
        return
    if not _is_instance(value, hint):
        raise ValueError(f"{where}: expected {getattr(hint, '__name__', hint)}")


def _is_instance(value: object, hint: object) -> bool:
    if hint is None or hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    raise TypeError(f"a view cannot hold {hint!r}")  # a programming error, not bad input


def _required_type(annotation: Any) -> Any:
    """The type inside `NotRequired[...]`."""
    return get_args(annotation)[0] if get_origin(annotation) is NotRequired else annotation


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")
