"""The daemon's local API endpoints (agent/localapi/routes.py), served by the real `LocalApi` on
real sockets in front of a stand-in for the daemon: `DaemonView` is all the routes know of it,
and a stand-in can be unhealthy or fail on purpose. The Host check, the token, the mode's body,
the local listing's filters and what any failure answers; and the token file the token comes
from, which only this user may have written. (A real daemon's routes are checked
in tests/daemon/test_core.py.)"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from agent.localapi.routes import (
    MAX_BODY_BYTES,
    TOKEN_FORMAT,
    LocalApi,
    load_or_create_token,
    local_page,
)
from agent.protocol.constants import ONLINE_WINDOW_MS
from agent.protocol.httpapi import ApiError
from agent.protocol.models import (
    DaemonStatus,
    EnvironmentRow,
    Health,
    HeartbeatCounts,
    ListQuery,
    Mode,
)
from agent.support.clock import now_ms
from agent.support.files import UnusableFile
from agent.support.paths import state_dir
from tests.helpers import AS_ROOT, NOBODY, WAIT_S, daemon_folder, mode_of

TOKEN = secrets.token_urlsafe(32)
NOW = 1_700_000_000_000
REFUSED_MODE = "changing the mode needs the local API token: Authorization: Bearer <token>"


def own_row(**fields: object) -> EnvironmentRow:
    now = now_ms()
    values: dict[str, object] = {
        "id": "env-1", "connected_at": now, "connection_id": "conn-1", "connection_name": "box",
        "device_id": "dev-1", "first_seen_at": 1, "last_heartbeat": now, "last_seen_at": now,
        "organization_id": "org-a", "pod_id": None, "user_id": "user-a", "source": "local",
    }  # fmt: skip
    return EnvironmentRow.model_validate(values | fields)


@dataclass
class StandIn:
    """The daemon as the routes see it; `failure` makes every read raise it."""

    mode: Mode = "default"
    row: EnvironmentRow = field(default_factory=own_row)
    healthy: Health = field(default_factory=lambda: Health(ok=True, reason="online"))
    failure: Exception | None = None
    mode_changes: list[tuple[Mode, str]] = field(default_factory=list)

    def _check(self) -> None:
        if self.failure is not None:
            raise self.failure

    def listing_row(self) -> EnvironmentRow:
        self._check()
        return self.row

    def status(self) -> DaemonStatus:
        self._check()
        return DaemonStatus(
            state="online", platform_url="http://p", embedded_platform=False, device_id="dev-1",
            connection_name="box", connection_id="conn-1", environment_id="env-1",
            mode=self.mode, working_directory="/srv", last_error=None, heartbeat_period_s=30,
            heartbeats=HeartbeatCounts(sent=1, answered=1, unanswered_now=0), registrations=1,
            connects=1, connected_at=1, last_pong_at=1, pid=1, started_at=1, uptime_s=1,
            local_api="http://127.0.0.1:1", log_path=None, node=None,
        )  # fmt: skip

    def health(self) -> Health:
        self._check()
        return self.healthy

    async def set_mode(self, mode: Mode, origin: str) -> None:
        self.mode_changes.append((mode, origin))
        self.mode = mode


Serve = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start a LocalApi for a stand-in, on a free loopback port (or `socket`); a client for it."""
    apis: list[LocalApi] = []
    clients: list[httpx.AsyncClient] = []

    async def start(view: StandIn, socket: Path | None = None) -> httpx.AsyncClient:
        api = LocalApi(view, host="127.0.0.1", port=0, socket=socket, token=TOKEN)
        url = await api.start()
        apis.append(api)
        if socket is None:
            client = httpx.AsyncClient(base_url=url, timeout=WAIT_S)
        else:
            transport = httpx.AsyncHTTPTransport(uds=url.removeprefix("unix:"))
            client = httpx.AsyncClient(
                base_url="http://localhost", transport=transport, timeout=WAIT_S
            )
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.aclose()
    for api in apis:
        await api.stop()


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- the mode and its token ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "status"),
    [("Bearer ", 200), ("bearer\t", 200), ("BEARER  ", 200), ("", 401), ("Basic ", 401)],
)
async def test_put_mode_needs_the_bearer_scheme(serve: Serve, scheme: str, status: int) -> None:
    view = StandIn()
    http = await serve(view)
    reply = await http.put(
        "/v1/mode", json={"mode": "standard"}, headers={"Authorization": scheme + TOKEN}
    )
    assert reply.status_code == status, reply.text
    assert (await http.get("/v1/mode")).json()["mode"] == (
        "standard" if status == 200 else "default"
    )


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        bearer(secrets.token_urlsafe(32)),  # another daemon's token
        bearer(TOKEN[:-1]),
        bearer(TOKEN + "x"),
        bearer(TOKEN.swapcase()),
        {"X-Token": TOKEN},
        {"Cookie": f"token={TOKEN}"},
    ],
    ids=["none", "empty", "other", "prefix", "longer", "case", "other-header", "cookie"],
)
async def test_anything_but_the_token_changes_no_mode(
    serve: Serve, headers: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    view = StandIn()
    http = await serve(view)
    reply = await http.put("/v1/mode", json={"mode": "unrestricted"}, headers=headers)
    assert reply.status_code == 401
    assert reply.json() == {"error": "unauthorized", "message": REFUSED_MODE}
    assert view.mode_changes == []
    assert TOKEN not in caplog.text


async def test_the_token_is_checked_before_the_body_is_read(serve: Serve) -> None:
    """Without the token nothing learns what a body would have been told."""
    http = await serve(StandIn())
    reply = await http.put("/v1/mode", content=b"not json")
    assert reply.status_code == 401


async def test_a_mode_change_reaches_the_daemon_with_its_origin(serve: Serve) -> None:
    view = StandIn()
    http = await serve(view)
    reply = await http.put("/v1/mode", json={"mode": "acceptEdits"}, headers=bearer())
    assert (reply.status_code, reply.json()) == (200, {"mode": "acceptEdits"})
    assert view.mode_changes == [("acceptEdits", "local API")]
    assert (await http.get("/v1/mode")).json() == {"mode": "acceptEdits"}


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b'{"mode": "yolo"}', "mode: Input should be 'default', 'standard', 'acceptEdits'"),
        (b"{}", "mode: Field required"),
        (b'{"mode": 1}', "mode: Input should be 'default'"),
        (b"not json", "body: Invalid JSON"),
        (b'{"mode": ' + b"[" * 2000 + b"]" * 2000 + b"}", "body: Invalid JSON"),
        (b'{"mode": "default\\ud800"}', "body: Invalid JSON"),
    ],
    ids=["unknown", "missing", "number", "not-json", "deep", "lone-surrogate"],
)
async def test_a_bad_mode_body_is_422_naming_what_is_wrong(
    serve: Serve, body: bytes, named: str
) -> None:
    view = StandIn()
    http = await serve(view)
    reply = await http.put("/v1/mode", content=body, headers=bearer())
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"] == "invalid_body"
    assert reply.json()["message"].startswith(named), reply.json()["message"]
    assert view.mode_changes == []


async def test_the_mode_body_limit_at_both_ends(serve: Serve) -> None:
    view = StandIn()
    http = await serve(view)
    body = b'{"mode": "standard"}'
    padded = body[:-1] + b" " * (MAX_BODY_BYTES - len(body)) + b"}"
    assert len(padded) == MAX_BODY_BYTES
    assert (await http.put("/v1/mode", content=padded, headers=bearer())).status_code == 200
    over = await http.put("/v1/mode", content=padded + b" ", headers=bearer())
    assert over.status_code == 413
    assert over.json() == {
        "error": "too_large",
        "message": f"request body is over the {MAX_BODY_BYTES}-byte limit",
    }
    assert view.mode_changes == [("standard", "local API")]


# --- the token file --------------------------------------------------------------------------


def plant_symlink(path: Path, target: Path) -> None:
    path.symlink_to(target)


def plant_fifo(path: Path, target: Path) -> None:
    os.mkfifo(path, 0o600)


def plant_loose(path: Path, target: Path) -> None:
    path.write_text(secrets.token_urlsafe(32) + "\n")
    path.chmod(0o644)


def plant_foreign(path: Path, target: Path) -> None:
    path.write_text(secrets.token_urlsafe(32) + "\n")
    path.chmod(0o600)
    os.chown(path, NOBODY, NOBODY)


def plant_bytes(content: bytes) -> Callable[[Path, Path], None]:
    def plant(path: Path, target: Path) -> None:
        path.write_bytes(content)
        path.chmod(0o600)

    return plant


@pytest.mark.parametrize(
    ("plant", "problem"),
    [
        pytest.param(plant_symlink, "a symlink", id="symlink"),
        pytest.param(plant_fifo, "not a regular file", id="fifo"),
        pytest.param(plant_loose, "mode 0644", id="readable-by-others"),
        pytest.param(plant_foreign, "owned by uid", id="foreign", marks=AS_ROOT),
        pytest.param(plant_bytes(b"\xff\xfe"), "not a token", id="stray-bytes"),
        pytest.param(plant_bytes(b""), "not a token", id="empty"),
        pytest.param(plant_bytes(b"short\n"), "not a token", id="short"),
        pytest.param(plant_bytes(b"A" * 42 + b"!\n"), "not a token", id="bad-character"),
        pytest.param(plant_bytes(b"A" * 43 + b"\n\n"), "not a token", id="trailing-lines"),
    ],
)
def test_a_token_file_envagent_did_not_write_is_replaced(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    plant: Callable[[Path, Path], None],
    problem: str,
) -> None:
    target = tmp_path / "attacker"
    target.write_text("planted-token-planted-token-planted-token-pl\n")
    target.chmod(0o644)
    path = daemon_folder(tmp_path / "state") / "local-api-token"
    plant(path, target)
    before = path.read_bytes() if path.is_file() and not path.is_symlink() else b""

    token = load_or_create_token(path)

    assert TOKEN_FORMAT.fullmatch(token.encode())
    assert stat.S_ISREG(path.lstat().st_mode) and mode_of(path) == 0o600
    assert path.read_text() == token + "\n"
    assert before.strip() != token.encode()
    assert target.read_text() == "planted-token-planted-token-planted-token-pl\n"
    assert mode_of(target) == 0o644
    [warning] = [record.getMessage() for record in caplog.records]
    assert problem in warning and str(path) in warning
    assert token not in warning and "planted" not in warning
    assert load_or_create_token(path) == token  # kept from now on


def test_a_token_file_envagent_wrote_is_kept(caplog: pytest.LogCaptureFixture) -> None:
    path = state_dir() / "local-api-token"
    token = load_or_create_token(path)
    assert mode_of(path) == 0o600
    assert load_or_create_token(path) == token
    assert caplog.records == []


def test_a_folder_in_place_of_the_token_is_one_line() -> None:
    path = state_dir() / "local-api-token"
    path.mkdir(parents=True)
    with pytest.raises(UnusableFile) as raised:
        load_or_create_token(path)
    assert str(raised.value) == f"{path} is a folder, not a file: remove it"


# --- the Host check --------------------------------------------------------------------------


async def test_a_foreign_host_is_refused_before_any_route_and_logged_short(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """A web page reaching 127.0.0.1 through a rebound DNS name names its own host: it learns
    neither the endpoints (403, not 404) nor anything else, token or not."""
    view = StandIn()
    http = await serve(view)
    rebound = "attacker.example:" + "9" * 500
    for method, path in (("PUT", "/v1/mode"), ("GET", "/nothing"), ("GET", "/v1/status")):
        reply = await http.request(
            method, path, json={"mode": "unrestricted"}, headers={"Host": rebound, **bearer()}
        )
        assert reply.status_code == 403
        assert reply.json()["error"] == "forbidden"
        assert reply.json()["message"] == (
            f"Host {rebound!r} is not a loopback name; only those are answered"
        )
    assert view.mode_changes == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"refused a request for Host {rebound[:100]!r}: not a loopback name"] * 3


async def test_a_request_without_a_host_is_refused(serve: Serve) -> None:
    http = await serve(StandIn())
    url = str(http.base_url).removeprefix("http://").rstrip("/")
    host, port = url.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET /v1/status HTTP/1.0\r\n\r\n")  # HTTP/1.0 needs no Host
        answer = await asyncio.wait_for(reader.read(), WAIT_S)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert b"Host '' is not a loopback name" in answer


async def test_local_api_refuses_foreign_hosts_and_answers_errors_in_json(serve: Serve) -> None:
    http = await serve(StandIn())
    for host in ("evil.example", "127.0.0.1.evil.example", "192.168.1.5:80"):
        reply = await http.get("/v1/status", headers={"Host": host})
        assert reply.status_code == 403, host
        assert "not a loopback name" in reply.json()["message"]
    for host in ("localhost", "127.0.0.1:1234", "[::1]:80"):
        assert (await http.get("/v1/status", headers={"Host": host})).status_code == 200
    bad = await http.get("/v1/environments", params={"limit": "0"})
    assert bad.status_code == 400 and bad.json()["message"].startswith("limit")
    missing = await http.get("/v1/nothing")
    assert missing.status_code == 404 and "/v1/environments" in missing.json()["message"]
    wrong = await http.post("/v1/mode", content=b"{}")
    assert wrong.status_code == 405 and wrong.json()["message"].endswith("use GET, PUT")


async def test_on_a_unix_socket_the_host_is_not_checked(serve: Serve, tmp_path: Path) -> None:
    """Only processes allowed to open the 0600 socket reach it; a browser cannot."""
    view = StandIn()
    socket = tmp_path / "api.sock"
    http = await serve(view, socket)
    reply = await http.put(
        "/v1/mode", json={"mode": "standard"}, headers={"Host": "anything.example", **bearer()}
    )
    assert reply.status_code == 200
    assert view.mode_changes == [("standard", "local API")]


async def test_stopping_removes_the_unix_socket(tmp_path: Path) -> None:
    socket = tmp_path / "api.sock"
    api = LocalApi(StandIn(), host="127.0.0.1", port=0, socket=socket, token=TOKEN)
    assert await api.start() == f"unix:{socket}"
    assert socket.exists()
    await api.stop()
    assert not socket.exists()


async def test_an_ipv6_loopback_address_is_a_bracketed_url() -> None:
    api = LocalApi(StandIn(), host="::1", port=0, socket=None, token=TOKEN)
    try:
        url = await api.start()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        assert url.startswith("http://[::1]:")
        async with httpx.AsyncClient(base_url=url, timeout=WAIT_S) as http:
            assert (await http.get("/v1/mode")).json() == {"mode": "default"}
    finally:
        await api.stop()


# --- health, status and failures -------------------------------------------------------------


async def test_health_is_503_with_the_reason_while_not_ok(serve: Serve) -> None:
    view = StandIn(healthy=Health(ok=False, reason="2 pings unanswered"))
    http = await serve(view)
    reply = await http.get("/healthz")
    assert (reply.status_code, reply.json()) == (503, {"ok": False, "reason": "2 pings unanswered"})
    view.healthy = Health(ok=True, reason="online")
    assert (await http.get("/healthz")).status_code == 200


async def test_a_failure_of_the_daemon_is_a_json_500_that_tells_nothing_of_it(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    view = StandIn(failure=RuntimeError(f"state file unreadable; token {TOKEN}"))
    http = await serve(view)
    for path in ("/v1/status", "/healthz", "/v1/environments"):
        reply = await http.get(path)
        assert reply.status_code == 500
        assert reply.json() == {
            "error": "internal",
            "message": "the daemon failed to answer; see its log",
        }
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in logged] == [
        "unexpected error answering GET /v1/status",
        "unexpected error answering GET /healthz",
        "unexpected error answering GET /v1/environments",
    ]
    assert all(r.exc_info is not None for r in logged)
    view.failure = None
    assert (await http.get("/v1/status")).json()["deviceId"] == "dev-1"  # still serving


# --- the local listing -------------------------------------------------------------------------


def test_after_the_own_id_is_an_empty_page_and_any_other_id_a_400() -> None:
    row = own_row()
    empty = local_page(row, ListQuery(after="env-1"), NOW)
    assert (empty.connections, empty.has_next_page) == ([], False)
    with pytest.raises(ApiError) as refused:
        local_page(row, ListQuery(after="env-of-another-daemon"), NOW)
    assert (refused.value.status, refused.value.message) == (
        400,
        "after: no row with id 'env-of-another-daemon'",
    )


@pytest.mark.parametrize(
    ("heartbeat", "connection", "listed"),
    [
        (NOW - ONLINE_WINDOW_MS + 1, "conn-1", True),
        (NOW - ONLINE_WINDOW_MS, "conn-1", False),
        (NOW, None, False),
        (None, "conn-1", False),
    ],
    ids=["inside-the-window", "at-its-end", "no-socket", "no-heartbeat"],
)
def test_online_only_applies_the_platform_s_rule_at_both_ends(
    heartbeat: int | None, connection: str | None, listed: bool
) -> None:
    row = own_row(last_heartbeat=heartbeat, connection_id=connection)
    online = local_page(row, ListQuery(online_only=True), NOW)
    assert online.connections == ([row] if listed else [])
    assert local_page(row, ListQuery(), NOW).connections == [row]


@pytest.mark.parametrize(
    ("query", "listed"),
    [
        (ListQuery(source="remote"), True),
        (ListQuery(source="local"), False),
        (ListQuery(user_id="user-a"), True),
        (ListQuery(user_id="user-b"), False),
        (ListQuery(limit=1, source="remote", user_id="user-a"), True),
    ],
)
def test_source_and_user_filter_the_own_row(query: ListQuery, listed: bool) -> None:
    row = own_row(source="remote")
    page = local_page(row, query, NOW)
    assert page.connections == ([row] if listed else [])
    assert page.has_next_page is False


async def test_the_listing_is_served_with_the_query_parsed_as_the_platform_parses_it(
    serve: Serve,
) -> None:
    http = await serve(StandIn(row=own_row(source="remote")))
    listed = (await http.get("/v1/environments", params={"onlineOnly": "TRUE"})).json()
    assert [row["id"] for row in listed["connections"]] == ["env-1"]
    assert listed["hasNextPage"] is False
    assert (await http.get("/v1/environments", params={"source": "local"})).json() == {
        "connections": [],
        "hasNextPage": False,
    }
    bad = await http.get("/v1/environments", params={"after": ""})
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_query")
