"""The session's decisions, apart from any socket: backoff, heartbeats, close codes.

Everything here is a plain function or a small state machine. Time and randomness are passed
in, so that the rules of docs/protocol.md (registration, heartbeats, close codes) are tested
exactly and without waiting.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

from agent.protocol.constants import REPLACED_REASON
from agent.support.metrics import Histogram

Random = Callable[[], float]
"""Returns a float in [0, 1), like `random.random`."""

BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0
BACKOFF_JITTER = 0.5
"""Up to this fraction of the delay is added at random, after the cap, so that many daemons
cut off at once do not come back in step."""
REREGISTER_AFTER_S = 300.0
MAX_UNANSWERED_PINGS = 3
MIN_SILENCE_S = 2.0
"""The peer is given up only after this long without a pong too: at a period far below the round
trip (a platform assigning 1 ms), three pings go out before any pong can come back. At the usual
periods three unanswered pings take far longer than this, so it changes nothing there."""
HEARTBEAT_JITTER = 0.1
DEFAULT_HEARTBEAT_S = 30.0
RTT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""A pong's round trip: well under 10 ms on a LAN, seconds from a platform that struggles."""


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


EndCause = Literal[
    "dead_peer",
    "refused",
    "network",
    "internal",
    "stopped",
    "closed_normal",
    "closed_policy",
    "closed_restart",
    "closed_abnormal",
    "closed_other",
]
"""Why a session ended, in few enough values to count reconnects by (docs/operations.md,
"Metrics"): pings unanswered, the upgrade refused with an HTTP status, the socket not opened,
a bug of ours, the daemon stopping, or the platform's close code by class."""


def close_cause(code: int | None) -> EndCause:
    """The class of a close code: 1000/1001 normal (1001: the platform going away), 1008 the
    connection id or key refused, 1012/1013 the platform restarting or overloaded, none or 1006
    the socket cut without a close frame."""
    if code in (1000, 1001):
        return "closed_normal"
    if code == 1008:
        return "closed_policy"
    if code in (1012, 1013):
        return "closed_restart"
    if code in (None, 1006):
        return "closed_abnormal"
    return "closed_other"


class Tick(enum.Enum):
    PING = "ping"
    WAIT = "wait"
    """Three pings are out but the peer has not been silent long: send no more, wait."""
    DEAD = "dead"


@dataclass
class Watchdog:
    """Counts pings without a pong. Counting pings, not wall time, means a laptop that wakes
    from sleep sends a ping and waits, instead of killing a socket that may be fine. The peer
    must also have been silent for `MIN_SILENCE_S` (on the monotonic clock, which stands still
    while the machine sleeps), so that a very short period cannot make a slow pong a dead peer.
    """

    unanswered: int = 0
    sent: int = 0
    answered: int = 0
    rtt: Histogram = field(default_factory=lambda: Histogram(RTT_BUCKETS_S))
    """Seconds from each ping to its pong (pongs answer pings in order)."""
    clock: Callable[[], float] = time.monotonic
    _sent_at: deque[float] = field(
        default_factory=lambda: deque(maxlen=MAX_UNANSWERED_PINGS), init=False, repr=False
    )
    """When the pings still unanswered were sent, oldest first."""
    _heard_at: float | None = field(default=None, init=False, repr=False)
    """The last proof of life: a pong, or the socket opening."""

    def tick(self) -> Tick:
        """Called each heartbeat period, just before the ping: ping again, wait, or give the
        peer up."""
        now = self.clock()
        if self.unanswered >= MAX_UNANSWERED_PINGS:
            heard = self._heard_at if self._heard_at is not None else now
            return Tick.DEAD if now - heard >= MIN_SILENCE_S else Tick.WAIT
        if self._heard_at is None:
            self._heard_at = now
        self._sent_at.append(now)
        self.unanswered += 1
        self.sent += 1
        return Tick.PING

    def pong(self) -> None:
        now = self._heard_at = self.clock()
        if self._sent_at:
            self.rtt.observe(now - self._sent_at.popleft())
        self.unanswered = 0
        self.answered += 1

    def new_connection(self) -> None:
        """Pings of an old socket say nothing about a new one; the totals go on."""
        self.unanswered = 0
        self._sent_at.clear()
        self._heard_at = self.clock()


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
