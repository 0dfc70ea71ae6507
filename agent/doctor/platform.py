"""What the platform says: registration, the WebSocket upgrade, and its clock.

Both go in under an identity of the doctor's own (this device, listener instance
`envagent-doctor`), so that the check never takes the live connection from a running daemon: a
second socket for the daemon's own identity would replace the daemon's (newest wins). The
doctor's row is then left with a `disconnect`, as a daemon that stops leaves its row: it shows
in the listing as left.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
import websockets
from websockets.exceptions import InvalidHandshake, InvalidStatus

from agent import __version__
from agent.daemon.config import Platform
from agent.daemon.session.connection import open_socket, socket_url
from agent.daemon.session.register import (
    RegistrationRefused,
    TransientRegistrationError,
    register_once,
)
from agent.daemon.session.route import Route
from agent.doctor.results import failed, passed, skipped, warned
from agent.protocol.doctor import CheckResult
from agent.protocol.models import (
    DisconnectFrame,
    Metadata,
    Mode,
    RegisterReply,
    RegisterRequest,
    Source,
)
from agent.support.proxy import shown

DOCTOR_INSTANCE = "envagent-doctor"
"""The listener instance id the checks register under, apart from any daemon's."""
SKEW_WARN_S = 10.0
SKEW_FAIL_S = 120.0
"""The online window: past it, a tool comparing `lastHeartbeat` with this machine's clock would
call a live machine lost."""


@dataclass
class Registered:
    """What registration gave the later checks."""

    reply: RegisterReply | None = None
    platform_date: datetime | None = None
    """The platform's `Date` header, and when it arrived by this machine's clock."""
    received_at: datetime | None = None
    details: list[str] = field(default_factory=list)


async def check_registration(
    platform: Platform,
    route: Route,
    request: RegisterRequest,
    key_source: str,
    found: Registered,
) -> CheckResult:
    async def remember_date(response: httpx.Response) -> None:
        found.received_at = datetime.now(UTC)
        date = response.headers.get("Date")
        if date:
            try:
                found.platform_date = parsedate_to_datetime(date)
            except (TypeError, ValueError):
                found.platform_date = None

    async with route.http_client(platform.url) as client:
        client.event_hooks = {"response": [remember_date]}
        try:
            found.reply = await register_once(
                client, platform.url, platform.api_key, request, route=route
            )
        except RegistrationRefused as exc:
            message = str(exc)
            if "API key" in message:
                fix = f"check the API key ({key_source}): it must be a key of this platform"
            else:
                fix = "check base_url: it must be a Letta platform's address"
            return failed("registration", message, fix)
        except TransientRegistrationError as exc:
            return failed(
                "registration",
                str(exc),
                "the daemon retries this by itself; if it lasts, the platform or the way to it "
                "is down (see the checks above)",
            )
    reply = found.reply
    return passed(
        "registration",
        f"accepted the key: connection {reply.connection_id}",
        [f"registered as listener instance {DOCTOR_INSTANCE}, apart from any daemon"],
    )


async def check_websocket(
    platform: Platform, route: Route, request: RegisterRequest, found: Registered
) -> CheckResult:
    if found.reply is None:
        return skipped("websocket", "needs a registration (failed above)")
    url = socket_url(found.reply.ws_url, request.device_id, request.connection_name)
    proxy = route.proxy(url)
    via = f" through {shown(proxy)}" if proxy else ""
    started = time.monotonic()
    try:
        ws = await open_socket(
            url, platform.api_key, route, client=f"envagent/{__version__} (doctor)"
        )
    except InvalidStatus as exc:
        return failed(
            "websocket",
            f"the upgrade{via} was refused with HTTP {exc.response.status_code}",
            "a proxy or load balancer in the way may not pass WebSocket upgrades: allow "
            "`Upgrade: websocket` to the platform",
        )
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        return failed(
            "websocket",
            f"cannot open the socket{via}: {route.failure(exc, url) or exc}",
            "check the proxy and TLS checks above; wsUrl is " + found.reply.ws_url,
        )
    elapsed = (time.monotonic() - started) * 1000
    try:
        await ws.send(DisconnectFrame(reason="envagent doctor").to_json())
        await ws.close()
    except websockets.ConnectionClosed:
        pass
    return passed(
        "websocket", f"upgraded{via} in {elapsed:.0f} ms", [f"wsUrl {found.reply.ws_url}"]
    )


def check_clock(found: Registered) -> CheckResult:
    if found.received_at is None:
        return skipped("clock", "needs an answer from the platform (none above)")
    if found.platform_date is None:
        return skipped("clock", "the platform's answer has no Date header to compare with")
    skew = (found.received_at - found.platform_date).total_seconds()
    # Date has whole seconds: up to one second of difference is the header's, not the clock's.
    direction = "ahead of" if skew > 0 else "behind"
    summary = f"this machine's clock is {abs(skew):.0f} s {direction} the platform's"
    fix = "turn on time synchronisation (`timedatectl set-ntp true`, or System Settings on macOS)"
    if abs(skew) > SKEW_FAIL_S:
        return failed("clock", summary, fix)
    if abs(skew) > SKEW_WARN_S:
        return warned("clock", summary, fix)
    return passed("clock", f"within {max(abs(skew), 1.0):.0f} s of the platform's")


def doctor_request(
    device_id: str, name: str, metadata: Metadata, mode: Mode, source: Source
) -> RegisterRequest:
    return RegisterRequest(
        device_id=device_id,
        listener_instance_id=DOCTOR_INSTANCE,
        connection_name=f"{name} (envagent doctor)"[:200],
        metadata=metadata,
        current_mode=mode,
        source=source,
    )
