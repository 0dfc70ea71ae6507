"""Registration (docs/protocol.md, "Registration"): one POST, retried by tenacity while the failure
is transient.

Network errors, 429 and 5xx are retried with exponential backoff and jitter, `Retry-After`
being a floor; any other 4xx, or a 2xx that is not a Letta reply, is final and explained in one
line.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import httpx
from pydantic import ValidationError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from agent import __version__
from agent.daemon.session.policy import Random, backoff_delay, parse_retry_after
from agent.daemon.session.route import Route, proxy_refused
from agent.protocol.models import ErrorReply, RegisterReply, RegisterRequest

log = logging.getLogger("envagent.session")

CLIENT_NAME = "envagent"
REGISTER_PATH = "/v1/environments/register"
TIMEOUT = httpx.Timeout(10.0, connect=5.0)


class RegistrationRefused(Exception):
    """A final answer: retrying would not help."""


class TransientRegistrationError(Exception):
    """Worth retrying: the network, a 429 or a 5xx."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def _server_message(response: httpx.Response) -> str:
    """The platform's own one-line explanation, when it gave one."""
    try:
        return ErrorReply.model_validate_json(response.content).message[:300]
    except ValidationError:
        return response.text.strip().splitlines()[0][:300] if response.text.strip() else ""


async def register_once(
    client: httpx.AsyncClient,
    base_url: str,
    api_key: str,
    request: RegisterRequest,
    *,
    route: Route | None = None,
) -> RegisterReply:
    """One attempt. `route`, how `client` reaches the platform, lets a failure of the proxy or
    of TLS be named as such; without it, the error is httpx's."""
    url = base_url + REGISTER_PATH
    try:
        response = await client.post(
            url,
            content=request.to_json(),
            headers={
                "Authorization": f"Bearer {api_key}",
                "Content-Type": "application/json",
                "X-Letta-Source": CLIENT_NAME,
                "User-Agent": f"{CLIENT_NAME}/{__version__}",
            },
            timeout=TIMEOUT,
        )
    except httpx.HTTPError as exc:
        cause = route.failure(exc, url) if route else None
        raise TransientRegistrationError(cause or f"cannot reach {url}: {exc!r}") from None
    status = response.status_code
    if status == 407:  # a proxy forwarding plain http:// answers for itself
        proxy = route.proxy(url) if route else None
        raise TransientRegistrationError(proxy_refused(proxy, f"407 {response.reason_phrase}"))
    detail = _server_message(response)
    suffix = f": {detail}" if detail else ""
    if status == 429 or status >= 500:
        retry_after = parse_retry_after(response.headers.get("Retry-After"), datetime.now(UTC))
        raise TransientRegistrationError(f"HTTP {status} from {url}{suffix}", retry_after)
    if status in (401, 403):
        raise RegistrationRefused(
            f"the platform refused the API key (HTTP {status} from {url}){suffix}"
        )
    if status == 404:
        raise RegistrationRefused(
            f"{base_url} does not offer environment registration (HTTP 404 from {url})"
        )
    if not 200 <= status < 300:
        raise RegistrationRefused(f"registration refused: HTTP {status} from {url}{suffix}")
    try:
        return RegisterReply.model_validate_json(response.content)
    except ValidationError:
        raise RegistrationRefused(
            f"the reply from {url} is not JSON with connectionId and wsUrl: "
            "is this a Letta platform?"
        ) from None


def _wait(rand: Random) -> Callable[[RetryCallState], float]:
    def wait(state: RetryCallState) -> float:
        delay = backoff_delay(state.attempt_number - 1, rand)
        failure = state.outcome.exception() if state.outcome else None
        if isinstance(failure, TransientRegistrationError) and failure.retry_after_s:
            delay = max(delay, failure.retry_after_s)
        return delay

    return wait


async def register(
    client: httpx.AsyncClient,
    base_url: str,
    api_key: str,
    request: RegisterRequest,
    *,
    route: Route | None = None,
    rand: Random,
    sleep: Callable[[float], Awaitable[None]],
    on_retry: Callable[[TransientRegistrationError, float], None],
) -> RegisterReply:
    """Register, retrying transient failures until success or a final answer (or cancel)."""

    def before_sleep(state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome else None
        delay = state.upcoming_sleep
        if isinstance(failure, TransientRegistrationError):
            on_retry(failure, delay)

    async for attempt in AsyncRetrying(
        sleep=sleep,
        wait=_wait(rand),
        retry=retry_if_exception_type(TransientRegistrationError),
        before_sleep=before_sleep,
        reraise=True,
    ):
        with attempt:
            return await register_once(client, base_url, api_key, request, route=route)
    raise AssertionError("tenacity stops only by returning or raising")  # pragma: no cover
