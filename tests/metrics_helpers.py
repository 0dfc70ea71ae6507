"""Reading `/metrics` as Prometheus does: fetched over HTTP and parsed by prometheus_client's
own parser, never by hand."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


@dataclass(frozen=True)
class Scrape:
    samples: list[Sample]
    types: dict[str, str]
    """Each family's type, by its name."""

    def value(self, name: str, **labels: str) -> float:
        """The one sample named `name` whose labels include `labels`."""
        found = [
            sample.value
            for sample in self.samples
            if sample.name == name and labels.items() <= sample.labels.items()
        ]
        assert len(found) == 1, f"{name} {labels}: {len(found)} samples"
        return found[0]

    def total(self, name: str) -> float:
        """The sum of every sample named `name`, whatever its labels."""
        return sum(sample.value for sample in self.samples if sample.name == name)

    def labels(self, name: str, label: str) -> set[str]:
        """Every value of `label` among the samples named `name`."""
        return {sample.labels[label] for sample in self.samples if sample.name == name}


async def scrape(http: httpx.AsyncClient, base_url: str) -> Scrape:
    reply = await http.get(f"{base_url}/metrics")
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain; version="), reply.headers
    families = list(text_string_to_metric_families(reply.text))
    return Scrape(
        [sample for family in families for sample in family.samples],
        {family.name: family.type for family in families},
    )
