"""The session's decisions, apart from any socket: backoff, heartbeats, close codes.

Everything here is a plain function or a small state machine. Time and randomness are passed
in, so that the rules of docs/protocol.md (registration, heartbeats, close codes) are tested
exactly and without waiting.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from agent.protocol.constants import REPLACED_REASON

Random = Callable[[], float]
"""Returns a float in [0, 1), like `random.random`."""

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0
BACKOFF_JITTER = 0.5
"""Up to this fraction of the delay is added at random, after the cap, so that many daemons
cut off at once do not come back in step."""
REREGISTER_AFTER_S = 300.0
MAX_UNANSWERED_PINGS = 3
HEARTBEAT_JITTER = 0.1
DEFAULT_HEARTBEAT_S = 30.0


def backoff_delay(attempt: int, rand: Random) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first retry)."""
    capped = min(BACKOFF_BASE_S * 2.0 ** min(attempt, 32), BACKOFF_CAP_S)
    return capped * (1 + BACKOFF_JITTER * rand())


def heartbeat_delay(period_s: float, rand: Random) -> float:
    """The period with ±10 % jitter, so that daemons started together drift apart."""
    return period_s * (1 + HEARTBEAT_JITTER * (2 * rand() - 1))


def heartbeat_period(override_ms: int | None, assigned_ms: int | None) -> float:
    """Seconds between pings: the local override, else the platform's, else 30 s."""
    chosen = override_ms or assigned_ms
    return chosen / 1000 if chosen else DEFAULT_HEARTBEAT_S


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """`Retry-After` as seconds from `now`: delta-seconds or an HTTP date; None if unusable."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


class CloseAction(enum.Enum):
    REREGISTER = "register again"
    STOP_REPLACED = "stop: replaced by another process"
    RECONNECT = "reconnect"


def close_action(code: int | None, reason: str | None) -> CloseAction:
    """What a socket's end means (docs/protocol.md, "Close codes")."""
    if code == 1008:
        return CloseAction.REREGISTER
    if code == 1000 and (reason or "") == REPLACED_REASON:
        return CloseAction.STOP_REPLACED
    return CloseAction.RECONNECT


class Tick(enum.Enum):
    PING = "ping"
    DEAD = "dead"


@dataclass
class Watchdog:
    """Counts pings without a pong. Counting pings, not wall time, means a laptop that wakes
    from sleep sends a ping and waits, instead of killing a socket that may be fine."""

    unanswered: int = 0
    sent: int = 0
    answered: int = 0

    def tick(self) -> Tick:
        """Called each heartbeat period: ping again, or give the peer up."""
        if self.unanswered >= MAX_UNANSWERED_PINGS:
            return Tick.DEAD
        self.unanswered += 1
        self.sent += 1
        return Tick.PING

    def pong(self) -> None:
        self.unanswered = 0
        self.answered += 1

    def new_connection(self) -> None:
        """Pings of an old socket say nothing about a new one; the totals go on."""
        self.unanswered = 0


@dataclass(frozen=True)
class Retry:
    delay_s: float
    register_again: bool


@dataclass
class ReconnectPolicy:
    """When to reconnect and when to register again after a socket is lost.

    The backoff starts over only once a connection has stayed up for `stable_after_s` (one
    heartbeat period), so a platform that accepts and drops at once still gets backed off.
    After `REREGISTER_AFTER_S` of failures in a row the daemon registers again.
    """

    stable_after_s: float
    rand: Random
    attempt: int = 0
    connected_at: float | None = None
    failing_since: float | None = field(default=None)

    def connected(self, now: float) -> None:
        self.connected_at = now

    def lost(self, now: float) -> Retry:
        """The socket ended or could not be opened: how long to wait, and whether to register."""
        if self.connected_at is not None and now - self.connected_at >= self.stable_after_s:
            self.attempt = 0
            self.failing_since = None
        self.connected_at = None
        if self.failing_since is None:
            self.failing_since = now
        register_again = now - self.failing_since >= REREGISTER_AFTER_S
        if register_again:
            self.failing_since = now
        delay = backoff_delay(self.attempt, self.rand)
        self.attempt += 1
        return Retry(delay, register_again)
