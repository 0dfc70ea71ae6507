"""The session's rules, decided without sockets: time and randomness are given."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from agent.daemon.session.policy import (
    MIN_SILENCE_S,
    REREGISTER_AFTER_S,
    CloseAction,
    ReconnectPolicy,
    Retry,
    Tick,
    Watchdog,
    backoff_delay,
    close_action,
    close_cause,
    heartbeat_delay,
    heartbeat_period,
    parse_retry_after,
)


def test_backoff_doubles_from_one_second_to_a_thirty_second_cap() -> None:
    assert [backoff_delay(n, lambda: 0.0) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff_delay(10_000, lambda: 0.0) == 30  # no overflow however long it fails


def test_backoff_jitter_is_added_after_the_cap() -> None:
    # At the cap the delays still spread, from 30 s up to 45 s.
    assert backoff_delay(8, lambda: 0.999) == pytest.approx(44.985)
    assert backoff_delay(0, lambda: 0.5) == 1.25


def test_heartbeat_jitter_is_ten_percent_either_way() -> None:
    assert heartbeat_delay(30, lambda: 0.0) == pytest.approx(27)
    assert heartbeat_delay(30, lambda: 0.5) == pytest.approx(30)
    assert heartbeat_delay(30, lambda: 1.0) == pytest.approx(33)


def test_heartbeat_period_prefers_the_override_then_the_platform() -> None:
    assert heartbeat_period(None, None) == 30
    assert heartbeat_period(None, 5_000) == 5
    assert heartbeat_period(250, 5_000) == 0.25


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        (" 120 ", 120.0),
        ("Sun, 29 Nov 2026 12:00:30 GMT", 30.0),
        ("Sun, 29 Nov 2026 11:00:00 GMT", 0.0),  # in the past: no extra wait
        ("Sun, 29 Nov 2026 12:00:30 -0000", 30.0),  # no time zone given: UTC
        ("Sun, 29 Nov 2026 13:00:30 +0100", 30.0),  # another zone: the same instant
        ("soon", None),
        ("", None),
        (None, None),
        ("-5", None),
    ],
)
def test_retry_after_as_seconds_or_an_http_date(header: str | None, seconds: float | None) -> None:
    now = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after(header, now) == seconds


@pytest.mark.parametrize(
    ("code", "reason", "action"),
    [
        (1008, "unknown connection", CloseAction.REREGISTER),
        (1000, "Replaced by new connection", CloseAction.STOP_REPLACED),
        (1000, "bye", CloseAction.RECONNECT),
        (1000, "Going away", CloseAction.RECONNECT),  # sorts before the replaced reason
        (1000, None, CloseAction.RECONNECT),
        (1001, "platform shutting down", CloseAction.RECONNECT),
        (1011, "", CloseAction.RECONNECT),
        (1006, None, CloseAction.RECONNECT),
        (None, None, CloseAction.RECONNECT),
    ],
)
def test_close_codes(code: int | None, reason: str | None, action: CloseAction) -> None:
    assert close_action(code, reason) is action


def test_watchdog_gives_up_after_three_unanswered_pings_and_a_silence() -> None:
    now = [0.0]
    dog = Watchdog(clock=lambda: now[0])
    dog.new_connection()
    assert [dog.tick() for _ in range(3)] == [Tick.PING] * 3
    now[0] += 1.0
    dog.pong()  # any pong clears the count, and is heard at 1 s
    assert [dog.tick() for _ in range(3)] == [Tick.PING] * 3
    now[0] = 1.0 + MIN_SILENCE_S - 0.001
    assert dog.tick() is Tick.WAIT  # three out, but not silent long enough: no fourth ping
    now[0] = 1.0 + MIN_SILENCE_S
    assert dog.tick() is Tick.DEAD
    assert (dog.sent, dog.answered, dog.unanswered) == (6, 1, 3)


def test_a_period_far_below_the_round_trip_never_makes_a_dead_peer() -> None:
    """A platform assigning 1 ms: three pings go out in 3 ms, the pong comes 5 ms later."""
    now = [0.0]
    dog = Watchdog(clock=lambda: now[0])
    dog.new_connection()
    ticks = []
    for _ in range(1_000):
        ticks.append(dog.tick())
        now[0] += 0.001
        if len(ticks) % 8 == 0:  # a pong every 8 ms
            dog.pong()
    assert Tick.DEAD not in ticks and Tick.WAIT in ticks
    assert dog.answered == 125


def test_the_silence_needed_is_two_seconds_and_any_longer_one_will_do() -> None:
    now = [7_000.0]
    dog = Watchdog(clock=lambda: now[0])
    dog.new_connection()
    assert [dog.tick() for _ in range(3)] == [Tick.PING] * 3
    now[0] = 7_001.999
    assert dog.tick() is Tick.WAIT
    now[0] = 7_002.0
    assert dog.tick() is Tick.DEAD
    now[0] = 7_060.0
    assert dog.tick() is Tick.DEAD


def test_a_new_watchdog_pings_three_times_and_counts_the_silence_from_the_first() -> None:
    """Without `new_connection`: nothing was heard yet, so the silence starts at the first
    ping."""
    now = [300.0]
    dog = Watchdog(clock=lambda: now[0])
    ticks = []
    for _ in range(3):
        ticks.append(dog.tick())
        now[0] += 0.5
    assert ticks == [Tick.PING] * 3
    assert (dog.sent, dog.unanswered) == (3, 3)
    assert dog.tick() is Tick.WAIT  # 1.5 s since the first ping
    now[0] = 300.0 + MIN_SILENCE_S
    assert dog.tick() is Tick.DEAD


def test_a_new_connection_starts_the_count_and_the_silence_again() -> None:
    now = [40.0]
    dog = Watchdog(clock=lambda: now[0])
    dog.new_connection()
    assert [dog.tick() for _ in range(3)] == [Tick.PING] * 3
    now[0] = 45.0
    dog.new_connection()  # a new socket, 5 s later: nothing of the old one counts
    assert (dog.unanswered, dog.sent) == (0, 3)
    assert [dog.tick() for _ in range(3)] == [Tick.PING] * 3
    now[0] = 45.0 + MIN_SILENCE_S - 0.001
    assert dog.tick() is Tick.WAIT
    now[0] = 45.0 + MIN_SILENCE_S
    assert dog.tick() is Tick.DEAD


def test_the_watchdog_s_bookkeeping_is_not_a_field_to_give_or_show() -> None:
    with pytest.raises(TypeError):
        Watchdog(_heard_at=1.0)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Watchdog(_sent_at=[])  # type: ignore[call-arg]
    shown = repr(Watchdog(clock=lambda: 0.0))
    assert "unanswered=0" in shown
    assert "_sent_at" not in shown and "_heard_at" not in shown


def test_a_retry_decision_is_frozen() -> None:
    retry = ReconnectPolicy(stable_after_s=30, rand=lambda: 0.0).lost(10.0)
    assert retry == Retry(delay_s=1.0, register_again=False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        retry.delay_s = 0  # type: ignore[misc]


def test_round_trips_are_counted_in_the_documented_buckets() -> None:
    """docs/operations.md: buckets from 5 ms to 30 s; its alert on the 90th percentile over
    1 s needs the 1 s bound."""
    dog = Watchdog(clock=lambda: 0.0)
    assert dog.rtt.bounds == (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def test_the_silence_counts_from_the_socket_opening_when_no_pong_came() -> None:
    now = [50.0]
    dog = Watchdog(clock=lambda: now[0])
    dog.new_connection()
    assert [dog.tick() for _ in range(3)] == [Tick.PING] * 3
    now[0] = 50.0 + MIN_SILENCE_S
    assert dog.tick() is Tick.DEAD


def test_watchdog_times_each_pong_from_its_ping() -> None:
    now = [100.0]
    dog = Watchdog(clock=lambda: now[0])
    dog.tick()
    now[0] += 0.25
    dog.tick()  # still waiting for the first
    now[0] += 0.05
    dog.pong()  # the first ping's, 0.3 s on
    dog.pong()  # the second's, 0.05 s on
    assert (dog.rtt.count, dog.rtt.total, dog.answered) == (2, pytest.approx(0.35), 2)
    dog.tick()
    dog.new_connection()  # a ping of the old socket is never answered on the new one
    dog.pong()
    assert dog.rtt.count == 2


@pytest.mark.parametrize(
    ("code", "cause"),
    [
        (1000, "closed_normal"),
        (1001, "closed_normal"),
        (1008, "closed_policy"),
        (1012, "closed_restart"),
        (1013, "closed_restart"),
        (1006, "closed_abnormal"),
        (None, "closed_abnormal"),
        (1011, "closed_other"),
        (4000, "closed_other"),
    ],
)
def test_close_codes_are_counted_by_class(code: int | None, cause: str) -> None:
    assert close_cause(code) == cause


def test_reconnect_backoff_grows_while_connections_do_not_last() -> None:
    policy = ReconnectPolicy(stable_after_s=30, rand=lambda: 0.0)
    delays = []
    now = 1_000.0  # not 0: how long a connection lasted is now minus when it opened
    for _ in range(5):
        policy.connected(now)
        now += 1  # dropped after a second: not stable
        delays.append(policy.lost(now).delay_s)
    assert delays == [1, 2, 4, 8, 16]


def test_reconnect_backoff_resets_after_a_stable_connection() -> None:
    policy = ReconnectPolicy(stable_after_s=30, rand=lambda: 0.0)
    assert [policy.lost(float(n)).delay_s for n in range(3)] == [1, 2, 4]
    policy.connected(100.0)
    assert policy.lost(130.0).delay_s == 1  # stayed up one heartbeat period
    assert [policy.lost(131.0 + n).delay_s for n in range(2)] == [2, 4]
    policy.connected(200.0)
    assert policy.lost(229.999).delay_s == 8  # just short of a period: not stable
    policy.connected(300.0)
    assert policy.lost(900.0).delay_s == 1  # up ten minutes, far longer than a period


def test_a_stable_connection_restarts_the_count_towards_registering_again() -> None:
    policy = ReconnectPolicy(stable_after_s=30, rand=lambda: 0.0)
    assert policy.lost(5_000.0).register_again is False
    policy.connected(5_200.0)
    assert policy.lost(5_290.0).register_again is False  # up 90 s: failing since 5,290 now
    assert policy.lost(5_290.0 + REREGISTER_AFTER_S - 1).register_again is False
    assert policy.lost(5_290.0 + REREGISTER_AFTER_S).register_again is True


def test_registers_again_after_exactly_five_minutes_of_failures() -> None:
    policy = ReconnectPolicy(stable_after_s=30, rand=lambda: 0.0)
    assert REREGISTER_AFTER_S == 300
    assert policy.lost(2_000.0).register_again is False
    assert policy.lost(2_299.999).register_again is False
    assert policy.lost(2_300.0).register_again is True
    assert policy.lost(2_300.0 + 299.999).register_again is False  # counted again from there
    assert policy.lost(2_600.0).register_again is True


def test_registers_again_after_five_minutes_of_failures() -> None:
    policy = ReconnectPolicy(stable_after_s=30, rand=lambda: 0.0)
    now = 1_000.0
    decisions = []
    while now < 1_000 + 2 * REREGISTER_AFTER_S + 60:
        retry = policy.lost(now)
        decisions.append((now, retry.register_again))
        now += retry.delay_s
    again = [at - 1_000 for at, register in decisions if register]
    assert len(again) == 2
    assert REREGISTER_AFTER_S <= again[0] < REREGISTER_AFTER_S + 31
    assert REREGISTER_AFTER_S <= again[1] - again[0] < REREGISTER_AFTER_S + 31
