"""Figures counted in plain Python as things happen, and their Prometheus exposition on a scrape.

prometheus_client is imported only by `Exposition.render` and `histogram_family`, that is on
the first scrape: a process that is never scraped (a daemon's usual life) never pays for the
library, and counting costs an integer's increment.
"""

from __future__ import annotations

import bisect
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from prometheus_client.core import HistogramMetricFamily, Metric
    from prometheus_client.registry import CollectorRegistry


@dataclass
class Histogram:
    """Observations counted in fixed buckets, as a Prometheus histogram exposes them."""

    bounds: tuple[float, ...]
    """Upper bounds, ascending; `+Inf` is implied."""
    counts: list[int] = field(init=False)
    """Observations per bucket, not cumulative; the last is above every bound."""
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        """Observe the seconds the block takes, whichever way it ends."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.observe(time.perf_counter() - started)


class Rendered(NamedTuple):
    body: bytes
    content_type: str


class Exposition:
    """The Prometheus text of what `families` yields at each scrape, from a registry of its
    own: never the library's global one, which two servers in one process would share."""

    def __init__(self, families: Callable[[], Iterable[Metric]]) -> None:
        self._families = families
        self._registry: CollectorRegistry | None = None

    def collect(self) -> Iterable[Metric]:
        """What the registry asks its collector for: this is the one collector."""
        return self._families()

    def render(self) -> Rendered:
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
        from prometheus_client.registry import CollectorRegistry

        if self._registry is None:
            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(self)
        return Rendered(generate_latest(self._registry), CONTENT_TYPE_LATEST)


def histogram_family(
    name: str,
    documentation: str,
    series: Iterable[tuple[Sequence[str], Histogram]],
    labels: Sequence[str] = (),
) -> HistogramMetricFamily:
    """One Prometheus histogram of `series`: (label values, histogram) pairs."""
    from prometheus_client.core import HistogramMetricFamily
    from prometheus_client.utils import floatToGoString

    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, histogram in series:
        cumulative, buckets = 0, []
        for bound, count in zip((*histogram.bounds, float("inf")), histogram.counts, strict=True):
            cumulative += count
            le = floatToGoString(bound)  # type: ignore[no-untyped-call]  # the library's, untyped
            buckets.append((le, float(cumulative)))
        family.add_metric(values, buckets, histogram.total)
    return family
