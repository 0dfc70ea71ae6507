"""The platform process's garbage collection (`server.Collector`): what it walks and frees,
never how long it takes."""

from __future__ import annotations

import gc
import logging
import sys
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import pytest

from agent.platform.relay import Relay
from agent.platform.server import Collector
from tests.helpers import Platform, wait_for


@dataclass
class Counts:
    """What the collector reads from the relay."""

    sockets_open: int = 0
    sockets_closed: int = 0


class Cycle:
    """Garbage only the cyclic collector frees."""

    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def counts() -> Iterator[Counts]:
    yield Counts()
    gc.unfreeze()  # the collector is process-wide: give pytest's process its collector back


@pytest.fixture
def collector(counts: Counts, caplog: pytest.LogCaptureFixture) -> Collector:
    caplog.set_level(logging.DEBUG, "envagent.platform")
    collector = Collector(cast(Relay, counts))
    collector.walk_all()
    return collector


def full_walks(caplog: pytest.LogCaptureFixture) -> int:
    """Full collections so far, the `collector` fixture's start-up walk included; each is a
    debug line (routine, not news for whoever runs the platform)."""
    records = caplog.get_records("setup") + caplog.get_records("call")
    walks = [record for record in records if "full garbage collection" in record.getMessage()]
    assert all(record.levelno == logging.DEBUG for record in walks)
    return len(walks)


def test_after_the_start_up_walk_a_steady_heap_is_never_walked_in_full(
    collector: Collector, caplog: pytest.LogCaptureFixture
) -> None:
    assert full_walks(caplog) == 1
    assert gc.get_freeze_count() > 0
    collector.step()
    collector.step()
    assert full_walks(caplog) == 1


def test_garbage_made_between_steps_is_freed_by_the_next(collector: Collector) -> None:
    cycle = Cycle()
    freed = weakref.ref(cycle)
    del cycle
    collector.step()
    assert freed() is None


def test_frozen_garbage_is_freed_once_a_quarter_of_the_sockets_have_closed(
    collector: Collector, counts: Counts, caplog: pytest.LogCaptureFixture
) -> None:
    counts.sockets_open = 2000
    cycle = Cycle()
    freed = weakref.ref(cycle)
    collector.step()  # frozen while alive, as a socket's objects are
    del cycle
    counts.sockets_closed = 499
    collector.step()
    assert freed() is not None, "frozen objects are walked only by a full collection"
    counts.sockets_closed = 500
    collector.step()
    assert freed() is None
    assert full_walks(caplog) == 2


def test_growth_by_a_quarter_calls_for_one_full_walk_and_no_more(
    collector: Collector, counts: Counts, caplog: pytest.LogCaptureFixture
) -> None:
    counts.sockets_open = 5000
    counts.sockets_closed = 300  # reconnections as the fleet grew: under a quarter
    small = [Cycle() for _ in range(sys.getallocatedblocks() // 20)]
    collector.step()
    assert full_walks(caplog) == 1, "a few percent more is no reason to walk everything"
    hoard = [Cycle() for _ in range(sys.getallocatedblocks() // 3)]  # garbage or not: unknown
    collector.step()
    assert full_walks(caplog) == 2
    collector.step()
    assert full_walks(caplog) == 2, "the next walk waits for another quarter"
    del small, hoard


async def test_the_relay_counts_open_and_ended_sockets(platform: Platform) -> None:
    relay = platform.server.relay

    async def counted() -> tuple[int, int]:
        return relay.sockets_open, relay.sockets_closed

    first = await platform.connect("dev-1")
    await wait_for(counted, lambda counts: counts == (1, 0))
    second = await platform.connect("dev-1")  # replaces the first
    await first.wait_closed()
    await wait_for(counted, lambda counts: counts == (1, 1))
    await second.ws.close()
    await wait_for(counted, lambda counts: counts == (0, 2))
