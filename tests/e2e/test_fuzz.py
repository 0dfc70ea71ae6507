"""Property tests over every parser that takes input from a peer: the daemon's and the
platform's frame parsers, the registration body, the listing query, and the three HTTP surfaces
served for real (the platform's routes and socket, the daemon's local API).

The claim under test: no input ends a session, escapes as a 5xx, or leaves a traceback. The
examples are derandomized (the same inputs on every run) and bounded in number, so the suite is
deterministic and takes seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import string
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from websockets.exceptions import ConnectionClosed

from agent.protocol.models import (
    MODES,
    FrameError,
    ListQuery,
    ListQueryError,
    RegisterReply,
    RegisterRequest,
    parse_daemon_frame,
    parse_platform_frame,
)
from tests.conftest import Spawn, StartPlatform
from tests.daemon_helpers import online
from tests.helpers import WAIT_S, FakeDaemon, Platform

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
"""Pure parsers: many cheap examples."""
FUZZ_SERVED = settings(FUZZ, max_examples=120)
"""Through a real server: fewer, each a round trip. The fixture (one platform, one daemon) is
shared by the examples on purpose: they must not hurt it, which is the point."""

# --- what a hostile peer sends -----------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from([*MODES, "ping", "pong", "sync", "", "r-1", "local", "remote"])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
FRAME_TYPES = [
    "ping",
    "pong",
    "update_device_status",
    "execute_command_response",
    "execute_command",
    "sync_response",
    "sync",
    "disconnect",
    "change_device_state",
    "launch_rockets",
]
FRAME_FIELDS = [
    "current_mode",
    "sent_at",
    "request_id",
    "command_id",
    "args",
    "success",
    "output",
    "reason",
    "runtime",
]
device_status = st.fixed_dictionaries(
    {},
    optional={
        name: json_values | st.sampled_from(MODES) | st.text(max_size=300)
        for name in (
            "current_connection_id",
            "connection_name",
            "is_online",
            "current_permission_mode",
            "current_working_directory",
            "git_context",
            "letta_code_version",
            "supported_commands",
        )
    },
)
frame_objects = st.fixed_dictionaries(
    {"type": st.sampled_from(FRAME_TYPES) | json_values},
    optional={
        **{name: json_values for name in FRAME_FIELDS},
        "device_status": device_status | json_values,
        "payload": st.fixed_dictionaries(
            {}, optional={"mode": st.sampled_from(MODES) | json_values, "cwd": json_values}
        )
        | json_values,
    },
)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


frame_texts = (
    frame_objects.map(json.dumps)
    | json_values.map(json.dumps)
    | st.text(max_size=200)
    | st.integers(min_value=1, max_value=20_000).map(nested)
    | st.builds(lambda head, depth: head + nested(depth), st.text(max_size=5), st.integers(1, 9000))
)
frame_inputs = frame_texts | st.binary(max_size=200) | frame_texts.map(str.encode)


def one_line(message: str) -> None:
    assert "\n" not in message
    assert len(message) < 600, message


# --- the parsers -------------------------------------------------------------------------------


@FUZZ
@given(frame_inputs)
def test_the_daemon_s_frame_parser_takes_anything(text: str | bytes) -> None:
    try:
        frame = parse_platform_frame(text)
    except FrameError as exc:
        one_line(str(exc))
    else:
        assert frame.type in ("pong", "change_device_state", "execute_command", "sync")


@FUZZ
@given(frame_inputs)
def test_the_platform_s_frame_parser_takes_anything(text: str | bytes) -> None:
    try:
        frame = parse_daemon_frame(text)
    except FrameError as exc:
        one_line(str(exc))
    else:
        frame.to_json()  # what was accepted can be written back


register_bodies = (
    st.fixed_dictionaries(
        {},
        optional={
            "deviceId": json_values | st.text(min_size=1, max_size=250),
            "listenerInstanceId": json_values,
            "connectionName": json_values | st.text(min_size=1, max_size=250),
            "metadata": json_values,
            "currentMode": st.sampled_from(MODES) | json_values,
            "source": st.sampled_from(["local", "remote"]) | json_values,
        },
    ).map(json.dumps)
    | frame_texts
)


@FUZZ
@given(register_bodies)
def test_the_registration_body_parser_takes_anything(body: str) -> None:
    try:
        request = RegisterRequest.model_validate_json(body)
    except ValidationError:
        return
    assert 1 <= len(request.device_id) <= 200
    assert 1 <= len(request.connection_name) <= 200


@FUZZ
@given(frame_texts)
def test_the_daemon_s_registration_reply_parser_takes_anything(body: str) -> None:
    try:
        reply = RegisterReply.model_validate_json(body)
    except ValidationError:
        return
    assert reply.connection_id and reply.ws_url


query_values = st.text(max_size=20) | st.sampled_from(
    [
        "1",
        "100",
        "0",
        "101",
        "\u00b2",
        "\u0665",
        " 1",
        "true",
        "TRUE",
        "local",
        "remote",
        "9" * 5000,
    ]
)
queries = st.dictionaries(
    st.sampled_from(["after", "limit", "onlineOnly", "source", "userId", "other"]),
    query_values,
)


@FUZZ
@given(queries)
def test_the_listing_query_parser_takes_anything(query: dict[str, str]) -> None:
    try:
        parsed = ListQuery.from_query(query)
    except ListQueryError as exc:
        one_line(str(exc))
        assert str(exc).split(" ")[0] in query
    else:
        assert 1 <= parsed.limit <= 100


# --- the platform, served ----------------------------------------------------------------------


@pytest.fixture
async def platform(start_platform: StartPlatform) -> Platform:
    """A frame with a request id waits for the daemon's answer, which a fake daemon never
    sends: a short wait keeps such examples quick."""
    return await start_platform(answer_wait_s=0.05)


@pytest.fixture
async def connected(platform: Platform) -> AsyncIterator[FakeDaemon]:
    daemon = await platform.connect("fuzz-target")
    yield daemon
    await daemon.ws.close()


async def drain(daemon: FakeDaemon) -> None:
    """Read and drop what the platform relays, so that nothing backs up."""
    with contextlib.suppress(ConnectionClosed):
        async for _ in daemon.ws:
            pass


def no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    failures = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not failures, [r.getMessage() for r in failures]


@FUZZ_SERVED
@given(st.lists(frame_inputs, min_size=1, max_size=5))
async def test_no_frame_ends_a_platform_session(
    platform: Platform,
    connected: FakeDaemon,
    caplog: pytest.LogCaptureFixture,
    frames: list[str | bytes],
) -> None:
    for frame in frames:
        await connected.ws.send(frame)
    # A frame the platform took may have been a `disconnect`: it still answers pings, and
    # the socket is the same one.
    assert await connected.ping() == {"type": "pong"}
    no_traceback(caplog)


@FUZZ_SERVED
@given(register_bodies, frame_texts, queries)
async def test_no_request_gets_a_5xx_from_the_platform(
    platform: Platform,
    connected: FakeDaemon,
    caplog: pytest.LogCaptureFixture,
    body: str,
    frame: str,
    query: dict[str, str],
) -> None:
    draining = asyncio.create_task(drain(connected))
    register = await platform.http.post(
        f"{platform.url}/v1/environments/register", content=body, headers=platform.auth()
    )
    assert register.status_code in (201, 400, 422), register.text
    sent = await platform.http.post(
        f"{platform.url}/v1/environments/{connected.connection_id}/frames",
        content=frame,
        headers=platform.auth(),
        timeout=WAIT_S,
    )
    assert sent.status_code in (204, 422, 504), sent.text
    listing = await platform.list(**query)
    assert listing.status_code in (200, 400), listing.text
    for reply in (register, sent, listing):
        if reply.status_code >= 400:
            assert set(reply.json()) == {"error", "message"}
            one_line(reply.json()["message"])
    draining.cancel()
    no_traceback(caplog)


# --- the daemon's local API, served by a real daemon -------------------------------------------

header_names = st.sampled_from(
    ["Host", "Authorization", "Content-Type", "Expect", "Connection", "Transfer-Encoding", "X-A"]
) | st.text(alphabet=string.ascii_letters + "-", min_size=1, max_size=12)
header_values = st.sampled_from(
    ["localhost", "127.0.0.1:1", "[::1]", "evil.example", "Bearer x", "100-continue", "chunked"]
) | st.text(alphabet=string.printable.replace("\r", "").replace("\n", ""), max_size=40)
bodies = (
    st.binary(max_size=300)
    | st.sampled_from(MODES).map(lambda mode: json.dumps({"mode": mode}).encode())
    | st.integers(1, 9000).map(lambda depth: ('{"mode":' + nested(depth) + "}").encode())
)


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """A request as bytes: mostly well framed (so that it is answered, not timed out), with
    anything in its method, target, headers and body; sometimes plain garbage."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(min_size=1, max_size=200)) + b"\r\n\r\n"
    method = draw(st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD", "FOO"]))
    path = draw(
        st.sampled_from(["/v1/environments", "/healthz", "/v1/status", "/v1/mode", "/", "/%00"])
        | st.text(alphabet=string.ascii_letters + "/%?=&.", max_size=30).map(lambda p: "/" + p)
    )
    query = draw(queries)
    target = path + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=5))
    if draw(st.booleans()):
        headers.insert(0, ("Host", "localhost"))
    body = draw(bodies) if method in ("PUT", "POST") else b""
    lines = [f"{method} {target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in headers if name.lower() != "content-length"]
    lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines).encode("utf-8", errors="replace") + b"\r\n\r\n"
    return head + body


async def exchange(host: str, port: int, request: bytes) -> bytes:
    """Send `request`, close our side, and read all the daemon answers (bounded)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), WAIT_S)
    finally:
        writer.close()


@pytest.fixture
async def local_api(platform: Platform, spawn: Spawn) -> AsyncIterator[tuple[str, int]]:
    daemon = await spawn(platform.url, platform.key)
    await daemon.wait_status(online)
    url = httpx.URL(await daemon.local_url())
    assert url.host and url.port
    yield url.host, url.port
    assert (await daemon.get("/healthz")).status_code == 200
    assert "Traceback" not in daemon.stderr(), daemon.stderr()[-3000:]
    assert not [r for r in daemon.log_records() if r["level"] in ("error", "critical")]


@FUZZ_SERVED
@given(raw_requests())
async def test_no_request_gets_a_5xx_from_the_local_api(
    local_api: tuple[str, int], request: bytes
) -> None:
    answer = await exchange(*local_api, request)
    status_line = answer.split(b"\r\n", 1)[0]
    if not answer:
        return  # a request h11 could not even frame may be closed unanswered
    assert status_line.startswith(b"HTTP/1.1 "), answer[:200]
    status = int(status_line.split()[1])
    # 503: /healthz while not online; 501: a transfer coding other than chunked, which
    # RFC 9112 says to answer so (h11's choice, and a deliberate answer, not a failure).
    assert status < 500 or status in (501, 503), answer[:300]
    _, _, body = answer.partition(b"\r\n\r\n")
    if status >= 400 and not request.startswith(b"HEAD "):  # a HEAD answer has no body
        reply = json.loads(body)
        assert set(reply) == {"error", "message"}
        one_line(reply["message"])
