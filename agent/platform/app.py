"""The reference platform's HTTP surface: register, list, retrieve, the relay socket, metrics,
the live channel (`stream`) and the dashboard's files (`static`).

Every error is JSON (`ErrorReply`) with a 4xx status and a message naming what was wrong; an
unexpected exception is logged and answered 500 without taking the worker down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web
from pydantic import ValidationError

from agent.platform import static
from agent.platform.access import ApiKey, Forbidden, check_may_steer
from agent.platform.events import Events
from agent.platform.keys import hash_key
from agent.platform.metrics import PlatformMetrics, RegistrationOutcome
from agent.platform.relay import NoSocket, Relay
from agent.platform.settings import PlatformSettings
from agent.platform.store.base import Lease, Store, StoreUnavailable, UnknownCursor, is_postgres
from agent.platform.stream import event_stream
from agent.platform.web_errors import json_errors
from agent.protocol.httpapi import ApiError, bearer_token, list_query, unknown_cursor
from agent.protocol.models import (
    FrameError,
    RegisterReply,
    RegisterRequest,
    describe_validation_error,
    parse_platform_frame,
)
from agent.support.clock import now_ms
from agent.support.metrics import Exposition

log = logging.getLogger("envagent.platform")

SOCKET_PATH = "/v1/listener/ws"

STORE_KEY = web.AppKey("store", Store)
RELAY_KEY = web.AppKey("relay", Relay)
SETTINGS_KEY = web.AppKey("settings", PlatformSettings)
METRICS_KEY = web.AppKey("metrics", PlatformMetrics)
EXPOSITION_KEY = web.AppKey("exposition", Exposition)
EVENTS_KEY = web.AppKey("events", Events)


async def authenticate(request: web.Request) -> ApiKey:
    key = bearer_token(request.headers.get("Authorization", ""))
    if not key:
        raise ApiError(401, "unauthorized", "missing Authorization: Bearer <api key> header")
    found = await request.app[STORE_KEY].find_key(hash_key(key))
    if found is None:
        raise ApiError(401, "unauthorized", "the API key was not recognised")
    return found


async def register(request: web.Request) -> web.Response:
    """`_register`, each attempt counted by its outcome."""
    counted = request.app[METRICS_KEY].registrations
    try:
        response, created = await _register(request)
    except Exception as exc:
        counted[_refused_as(exc)] += 1
        raise
    counted["created" if created else "reused"] += 1
    return response


def _refused_as(exc: Exception) -> RegistrationOutcome:
    """The outcome a registration that raised `exc` is counted as."""
    if isinstance(exc, ApiError):
        return "refused_key" if exc.status == 401 else "invalid"
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return "invalid"
    if isinstance(exc, Forbidden):
        return "forbidden"
    if isinstance(exc, StoreUnavailable):
        return "unavailable"
    return "error"


async def _register(request: web.Request) -> tuple[web.Response, bool]:
    """The reply, and whether the row is new."""
    key = await authenticate(request)
    body = await request.read()
    try:
        registration = RegisterRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            detail = first["msg"].removeprefix("Invalid JSON: ")
            raise ApiError(
                400, "invalid_json", f"request body is not valid JSON: {detail}"
            ) from None
        raise ApiError(422, "invalid_body", describe_validation_error(exc)) from None
    store = request.app[STORE_KEY]
    settings = request.app[SETTINGS_KEY]
    owner = await store.find_owner(key.organization_id, registration)
    if owner is not None:
        check_may_steer(key, owner.user_id, owner.row_id)
    row_id, connection_id = await store.register(key, registration, now_ms())
    scheme = "wss" if request.secure else "ws"
    reply = RegisterReply(
        connection_id=connection_id,
        ws_url=f"{scheme}://{request.host}{SOCKET_PATH}?connectionId={connection_id}",
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        environment=await store.get(key.organization_id, row_id),
    )
    return web.json_response(reply.to_wire(), status=201), owner is None


async def list_environments(request: web.Request) -> web.Response:
    with request.app[METRICS_KEY].listing.timing():
        return await _list_environments(request)


async def _list_environments(request: web.Request) -> web.Response:
    key = await authenticate(request)
    query = list_query(request.query)
    settings = request.app[SETTINGS_KEY]
    try:
        page = await request.app[STORE_KEY].list(
            key.organization_id, query, now_ms(), settings.online_window_ms
        )
    except UnknownCursor:
        raise unknown_cursor(query.after) from None
    return web.json_response(page.to_wire())


async def retrieve_environment(request: web.Request) -> web.Response:
    """One row by its `id` (ext: the one way to name a row of a device with several listener
    instances), else by `deviceId`, as Letta's SDK asks for it."""
    key = await authenticate(request)
    name = request.match_info["device_id"]
    row = await request.app[STORE_KEY].get_by_name(key.organization_id, name)
    if row is None:
        raise ApiError(404, "not_found", f"no environment with id or deviceId {name!r}")
    return web.json_response(row.to_wire())


async def send_frame(request: web.Request) -> web.Response:
    """ext: relay a platform frame to a live connection; with a `request_id`, wait for the
    daemon's answer and return it."""
    key = await authenticate(request)
    connection_id = request.match_info["connection_id"]
    try:
        frame = parse_platform_frame(await request.read())
    except FrameError as exc:
        raise ApiError(422, "invalid_body", str(exc)) from None
    relay, wait_s = request.app[RELAY_KEY], request.app[SETTINGS_KEY].answer_wait_s
    try:
        answer = await relay.send(key, connection_id, frame, wait_s)
    except NoSocket:
        raise ApiError(
            404, "not_found", f"no live socket for connectionId {connection_id!r}"
        ) from None
    if answer is not None:
        return web.json_response(answer.to_wire())
    if getattr(frame, "request_id", None) is not None:
        raise ApiError(504, "no_answer", f"the daemon did not answer within {wait_s:g} s")
    return web.Response(status=204)


async def metrics(request: web.Request) -> web.Response:
    """The Prometheus text of this pod's figures: aggregates only, so no key is asked for."""
    rendered = request.app[EXPOSITION_KEY].render()
    return web.Response(body=rendered.body, headers={"Content-Type": rendered.content_type})


async def _probing_loop_lag(app: web.Application) -> AsyncIterator[None]:
    """The event-loop lag probe, while the app runs."""
    probe = asyncio.create_task(app[METRICS_KEY].probe_loop_lag())
    yield
    probe.cancel()
    await asyncio.gather(probe, return_exceptions=True)


async def listener_socket(request: web.Request) -> web.StreamResponse:
    key = await authenticate(request)
    if not request.query.get("connectionId"):
        raise ApiError(400, "invalid_query", "connectionId is required")
    return await request.app[RELAY_KEY].serve(request, key)


def build_app(store: Store, settings: PlatformSettings, lease: Lease) -> web.Application:
    app = web.Application(
        middlewares=[json_errors(settings.max_body_bytes)], client_max_size=settings.max_body_bytes
    )
    app[STORE_KEY] = store
    app[SETTINGS_KEY] = settings
    app[METRICS_KEY] = figures = PlatformMetrics()
    figures.time_store(store)
    app[RELAY_KEY] = relay = Relay(store, settings, lease, figures)
    app[EXPOSITION_KEY] = Exposition(lambda: figures.families(relay, settings))
    app[EVENTS_KEY] = events = Events(store, settings, figures, is_postgres(settings.database))
    app.on_shutdown.append(lambda _: events.end_all())  # before aiohttp waits for the handlers
    app.on_cleanup.append(lambda _: events.quiesce())  # after they have all ended
    if settings.loop_lag_probe:
        app.cleanup_ctx.append(_probing_loop_lag)
    app.router.add_post("/v1/environments/register", register)
    app.router.add_get("/v1/environments", list_environments)
    # Before `{device_id}`, which would take it: a device named `events` is not retrieved.
    app.router.add_get(
        "/v1/environments/events", event_stream(authenticate, events, settings, figures)
    )
    app.router.add_get("/v1/environments/{device_id}", retrieve_environment)
    app.router.add_post("/v1/environments/{connection_id}/frames", send_frame)
    app.router.add_get(SOCKET_PATH, listener_socket)
    app.router.add_get("/metrics", metrics)
    static.add_routes(app.router)
    return app
