"""The typed views of agent/protocol/views.py: each one's keys are its wire model's, nested
views included, so that the CLI's pydantic-free reading cannot drift from the one definition;
and the check that stands in for pydantic's when a client reads an answer."""

from __future__ import annotations

import types
from typing import Any, NotRequired, Union, get_args, get_origin, is_typeddict

import pytest
from pydantic import BaseModel

from agent.protocol import models, views
from agent.protocol.constants import is_online

PAIRS: list[tuple[Any, type[BaseModel]]] = [
    (views.DaemonStatusView, models.DaemonStatus),
    (views.StoppedStatusView, models.StoppedStatus),
    (views.EnvironmentListView, models.EnvironmentList),
    (views.EnvironmentRowView, models.EnvironmentRow),
    (views.ModeChangeView, models.ModeChange),
    (views.ErrorReplyView, models.ErrorReply),
    (views.LocalApiAddressView, models.LocalApiAddress),
]


def _inner(annotation: Any, kind: str) -> list[Any]:
    """The views (kind "view") or models (kind "model") inside an annotation."""
    if get_origin(annotation) is NotRequired:
        return _inner(get_args(annotation)[0], kind)
    if get_origin(annotation) in (Union, types.UnionType, list):
        return [found for arg in get_args(annotation) for found in _inner(arg, kind)]
    if kind == "view" and is_typeddict(annotation):
        return [annotation]
    if kind == "model" and isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


def drift(view: Any, model: type[BaseModel], where: str) -> list[str]:
    problems = []
    wire = {(field.alias or name): field for name, field in model.model_fields.items()}
    keys = set(view.__annotations__)
    if keys != set(wire):
        problems.append(f"{where}: keys {sorted(keys ^ set(wire))} differ")
    required = {key for key, field in wire.items() if field.is_required()}
    if not required <= set(view.__required_keys__):  # a view may require a key always sent
        problems.append(f"{where}: {sorted(required - view.__required_keys__)} not required")
    for key in keys & set(wire):
        nested_views = _inner(view.__annotations__[key], "view")
        nested_models = _inner(wire[key].annotation, "model")
        if len(nested_views) != len(nested_models):
            problems.append(f"{where}.{key}: {nested_views} for {nested_models}")
        for nested_view, nested_model in zip(nested_views, nested_models, strict=False):
            problems += drift(nested_view, nested_model, f"{where}.{key}")
    return problems


@pytest.mark.parametrize(("view", "model"), PAIRS, ids=[model.__name__ for _, model in PAIRS])
def test_each_view_has_its_models_wire_keys_nested_ones_too(
    view: Any, model: type[BaseModel]
) -> None:
    assert drift(view, model, model.__name__) == []


def test_the_drift_check_sees_a_missing_key_and_a_nested_one() -> None:
    """The positive control: another model's keys, and a nested view that is not its model's."""
    assert drift(views.HeartbeatCountsView, models.HeartbeatCounts, "h") == []
    assert drift(views.ErrorReplyView, models.ModeChange, "m") != []
    assert drift(views.NodeReportView, models.ProcessReport, "p") != []
    assert any(".heartbeats" in line for line in drift_with_nested_swap())


def drift_with_nested_swap() -> list[str]:
    fake = dict(views.DaemonStatusView.__annotations__)
    fake["heartbeats"] = views.NodeReportView

    class FakeStatus:
        __annotations__ = fake
        __required_keys__ = views.DaemonStatusView.__required_keys__

    return drift(FakeStatus, models.DaemonStatus, "status")


def a_status() -> dict[str, Any]:
    return models.DaemonStatus(
        state="online",
        platform_url="http://127.0.0.1:8283",
        embedded_platform=True,
        device_id="dev",
        connection_name="box",
        connection_id="conn",
        environment_id=None,
        mode="default",
        working_directory="/w",
        last_error=None,
        heartbeat_period_s=30.0,
        heartbeats=models.HeartbeatCounts(sent=3, answered=2, unanswered_now=1),
        registrations=1,
        connects=1,
        connected_at=1,
        last_pong_at=2,
        pid=42,
        started_at=0,
        uptime_s=1.5,
        local_api="http://127.0.0.1:1",
        log_path=None,
        node=models.NodeReport(version="v22", path="/n", found_via="PATH"),
    ).to_wire()


def test_a_models_own_output_parses_as_its_view() -> None:
    wire = a_status()
    assert (
        views.parse_answer(
            models.DaemonStatus.model_validate(wire).to_json(), views.DaemonStatusView
        )
        == wire
    )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"pid": "x"}, "body.pid: expected int"),
        ({"pid": True}, "body.pid: expected int"),
        ({"mode": "turbo"}, "body.mode: not one of"),
        ({"heartbeats": {"sent": 1}}, "body.heartbeats.answered: missing"),
        ({"node": []}, "body.node: expected an object"),
        ({"process": {"pid": 1}}, "body.process.rssBytes: missing"),
    ],
)
def test_a_wrong_answer_is_a_value_error_naming_where(change: dict[str, Any], problem: str) -> None:
    import json

    body = json.dumps(a_status() | change)
    with pytest.raises(ValueError, match=problem.replace(".", r"\.")):
        views.parse_answer(body, views.DaemonStatusView)


@pytest.mark.parametrize(
    "content", [b"", b"not json", b"[]", b'{"mode": NaN}', b"[" * 5000 + b"]" * 5000, b"\xff"]
)
def test_what_is_not_json_of_the_shape_is_a_value_error(content: bytes) -> None:
    with pytest.raises(ValueError):
        views.parse_answer(content, views.ModeChangeView)


def test_unknown_keys_are_kept_and_not_checked() -> None:
    assert views.parse_answer(b'{"mode": "standard", "new": [1]}', views.ModeChangeView) == {
        "mode": "standard",
        "new": [1],
    }


@pytest.mark.parametrize(
    ("connection_id", "last_heartbeat", "now", "online"),
    [("c", 1_000, 1_000 + 119_999, True), ("c", 1_000, 1_000 + 120_000, False),
     (None, 1_000, 1_001, False), ("", 1_000, 1_001, False), ("c", None, 1, False)],
)  # fmt: skip
def test_the_online_rule_is_the_models(
    connection_id: str | None, last_heartbeat: int | None, now: int, online: bool
) -> None:
    row = models.EnvironmentRow(
        id="r", connected_at=None, connection_id=connection_id, connection_name="n",
        device_id="d", first_seen_at=0, last_heartbeat=last_heartbeat, last_seen_at=0,
        organization_id="o", pod_id=None,
    )  # fmt: skip
    assert is_online(connection_id, last_heartbeat, now, 120_000) is online
    assert row.is_online(now, 120_000) is online
