"""Figures counted in plain Python (agent/support/metrics.py) and their exposition through the
real prometheus_client, read back with its own parser."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from agent.support.metrics import Exposition, Histogram, histogram_family


def test_an_observation_on_a_bound_falls_in_that_bound_s_bucket() -> None:
    """Prometheus's buckets are `le`: a value equal to a bound counts under it."""
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    assert histogram.counts == [2, 2, 1]
    assert histogram.count == 5
    assert histogram.total == pytest.approx(8.65)


def test_timing_observes_a_block_even_when_it_raises() -> None:
    histogram = Histogram((10.0,))
    with histogram.timing():
        pass
    with pytest.raises(KeyError), histogram.timing():
        raise KeyError("x")
    assert histogram.counts == [2, 0]


def test_the_exposition_is_cumulative_text_that_the_library_parses_back() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.5, 0.7, 3.0):
        histogram.observe(value)
    calls = 0

    def families() -> Iterator[Metric]:
        nonlocal calls
        calls += 1
        yield CounterMetricFamily("things", "Things", value=calls)
        yield histogram_family("waits_seconds", "Waits", [(("a",), histogram)], labels=["kind"])

    exposition = Exposition(families)
    first, second = exposition.render(), exposition.render()
    assert first.content_type.startswith("text/plain")
    parsed = {
        family.name: family for family in text_string_to_metric_families(second.body.decode())
    }
    assert [
        sample.value for sample in parsed["things"].samples if sample.name == "things_total"
    ] == [2.0], "each render collects afresh"
    buckets = {
        sample.labels["le"]: sample.value
        for sample in parsed["waits_seconds"].samples
        if sample.name == "waits_seconds_bucket"
    }
    assert buckets == {"0.1": 1.0, "1.0": 3.0, "+Inf": 4.0}
    count = [s for s in parsed["waits_seconds"].samples if s.name == "waits_seconds_count"]
    assert count[0].value == 4.0 and count[0].labels == {"kind": "a"}


def test_two_expositions_in_one_process_share_nothing() -> None:
    """Each has a registry of its own: two platforms in one process must not collide."""

    def counted(value: float) -> Exposition:
        return Exposition(lambda: iter([CounterMetricFamily("same", "Same", value=value)]))

    one, two = counted(1).render().body.decode(), counted(2).render().body.decode()
    assert "same_total 1.0" in one and "same_total 2.0" in two
