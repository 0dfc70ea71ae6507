"""Figures, the table a person reads and the `results.json` a program reads.

A figure keeps every run's value; the table shows the median with the min and max beside it. A
budget of the project (docs/performance.md) is shown next to the figure it bounds, as information:
nothing here fails because a number is high.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bench.stats import median


@dataclass(frozen=True)
class Budget:
    """An upper bound the project set, in the figure's unit."""

    limit: float
    source: str

    def verdict(self, values: list[float]) -> str:
        if not values or any(math.isnan(value) for value in values):
            return "no data"
        if max(values) <= self.limit:
            return "met"
        return "met at median" if median(values) <= self.limit else "NOT met"


@dataclass
class Figure:
    name: str
    unit: str
    runs: list[float]
    """One value per repeated run (a run may itself summarise many samples)."""
    samples: int | None = None
    """How many samples went into each run's value, when it summarises some (pongs, GETs)."""
    budget: Budget | None = None
    note: str = ""

    @property
    def median(self) -> float:
        return median(self.runs)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "unit": self.unit,
            "median": _finite(self.median),
            "min": _finite(min(self.runs)) if self.runs else None,
            "max": _finite(max(self.runs)) if self.runs else None,
            "runs": [_finite(value) for value in self.runs],
        }
        if self.samples is not None:
            data["samples_per_run"] = self.samples
        if self.budget is not None:
            data["budget"] = {
                "limit": self.budget.limit,
                "source": self.budget.source,
                "verdict": self.budget.verdict(self.runs),
            }
        if self.note:
            data["note"] = self.note
        return data


@dataclass
class Section:
    key: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    """Raw material for results.json (per-run lists, profiles), not shown in the table."""

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "figures": [figure.to_json() for figure in self.figures],
            "notes": self.notes,
            "details": self.details,
        }


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


def _number(value: float) -> str:
    if math.isnan(value):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def render(sections: list[Section]) -> str:
    """A plain-text table per section, with its notes under it."""
    lines: list[str] = []
    for section in sections:
        rows = [("figure", "median", "min", "max", "unit", "runs", "budget")]
        for figure in section.figures:
            runs = f"{len(figure.runs)}" + (f"x{figure.samples}" if figure.samples else "")
            budget = ""
            if figure.budget is not None:
                limit = _number(figure.budget.limit)
                budget = f"<= {limit}: {figure.budget.verdict(figure.runs)}"
            lowest = min(figure.runs) if figure.runs else math.nan
            highest = max(figure.runs) if figure.runs else math.nan
            rows.append(
                (
                    figure.name,
                    _number(figure.median),
                    _number(lowest),
                    _number(highest),
                    figure.unit,
                    runs,
                    budget,
                )
            )
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        lines += ["", f"== {section.title} =="]
        for row in rows:
            cells = [
                cell.ljust(width) if column in (0, 4, 5, 6) else cell.rjust(width)
                for column, (cell, width) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("  ".join(cells).rstrip())
        lines += [f"  - {note}" for note in section.notes]
    return "\n".join(lines)


def write_results(path: Path, header: dict[str, Any], sections: list[Section]) -> None:
    document = {**header, "benchmarks": {section.key: section.to_json() for section in sections}}
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
