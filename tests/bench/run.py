"""Run every benchmark, print the table, write `tests/bench/results.json`.

    python -m tests.bench.run            # the full plan (about 16 minutes, on a quiet machine)
    python -m tests.bench.run --quick    # small fleets and short windows, for development
    python -m tests.bench.run --only daemon --only imports

`python tests/bench/run.py` works too. A benchmark that fails is reported and the others still
run; the exit code is then 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.bench.plan import Plan
    from tests.bench.procs import Workspace
    from tests.bench.report import Section

Benchmark = Callable[["Workspace", "Plan"], Awaitable["Section"]]

if not __package__:  # run as a script: make `tests.bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def _benchmarks() -> dict[str, Benchmark]:
    from tests.bench import (
        big_listing,
        cli_speed,
        daemon_footprint,
        dashboard,
        imports,
        letta_code,
        listing,
        metadata_refresh,
        platform_scale,
        pods,
        reconnect_storm,
    )

    return {
        "imports": imports.run,
        "metadata": metadata_refresh.run,
        "daemon": daemon_footprint.run,
        "scale": platform_scale.run,
        "listing": listing.run,
        "big_listing": big_listing.run,
        "storm": reconnect_storm.run,
        "pods": pods.run,
        "dashboard": dashboard.run,
        "cli": cli_speed.run,
        "letta_code": letta_code.run,
    }


def main(argv: Sequence[str] | None = None) -> int:
    benchmarks = _benchmarks()
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small N, short windows")
    parser.add_argument(
        "--only", action="append", choices=sorted(benchmarks), help="run only these (repeatable)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).resolve().with_name("results.json"),
        help="where to write the results (default: tests/bench/results.json)",
    )
    args = parser.parse_args(argv)
    chosen = {name: benchmarks[name] for name in benchmarks if not args.only or name in args.only}
    return asyncio.run(_run(chosen, args.quick, args.output))


async def _run(chosen: dict[str, Benchmark], quick: bool, output: Path) -> int:
    from tests.bench import machine
    from tests.bench.fixtures import warm_up
    from tests.bench.plan import FULL, QUICK
    from tests.bench.procs import Workspace, raise_open_files_limit
    from tests.bench.report import Section, render, write_results

    plan = QUICK if quick else FULL
    before, after = raise_open_files_limit()
    header: dict[str, Any] = {
        "date": machine.now_utc(),
        "git": machine.git_commit(),
        "plan": asdict(plan),
        "open_files_limit": {"before": before, "raised_to": after},
        "load_average_before": machine.load_average(),
    }
    print(
        f"envagent benchmarks, {plan.name} plan; load average {header['load_average_before']}; "
        f"open-files limit raised from {before} to {after}"
    )
    sections: list[Section] = []
    failed = 0
    started = time.monotonic()
    async with Workspace() as workspace:
        header["machine"] = machine.describe(workspace.dir)
        await warm_up(workspace)
        for name, benchmark in chosen.items():
            print(f"... {name}", end="", flush=True)
            began = time.monotonic()
            try:
                section = await benchmark(workspace, plan)
            except Exception as exc:  # one broken benchmark must not hide the others' figures
                failed += 1
                section = Section(name, f"{name}: FAILED")
                section.notes.append(f"{type(exc).__name__}: {exc}")
            finally:
                await workspace.stop_all()
            section.details["seconds"] = round(time.monotonic() - began, 1)
            sections.append(section)
            print(f" {section.details['seconds']:g} s", flush=True)
    header["load_average_after"] = machine.load_average()
    header["seconds"] = round(time.monotonic() - started, 1)
    write_results(output, header, sections)
    print(
        f"\n{render(sections)}\n\nmedian, min and max over repeated runs (runs: how many, "
        f"x samples in each); budgets for information\n"
        f"written to {output} ({header['seconds']:g} s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
