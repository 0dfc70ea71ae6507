"""Import time of what `envagent run` really imports, and the heaviest imports named.

The daemon itself runs under `python -X importtime` until it is online, so the figure counts
the modules imported lazily during a run (gitpython at the first metadata read) as well as
those of the CLI; Python's own start-up (`-X importtime -c pass`) is left out. Bytecode is
compiled beforehand, as in an installed package.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

import aiohttp

from tests.bench.fixtures import make_repo, start_daemon, start_platform, wait_online
from tests.bench.plan import Plan
from tests.bench.procs import Workspace
from tests.bench.report import Figure, Section
from tests.bench.stats import median

_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")
HEAVIEST = 10
OWN_MODULES = 5


@dataclass(frozen=True)
class Import:
    module: str
    self_us: int
    cumulative_us: int
    depth: int


def parse(text: str) -> list[Import]:
    imports = []
    for line in text.splitlines():
        found = _LINE.match(line)
        if found:
            self_us, cumulative_us, indent, module = found.groups()
            imports.append(Import(module, int(self_us), int(cumulative_us), len(indent) // 2))
    return imports


def total_ms(imports: list[Import], baseline: set[str]) -> float:
    """The sum over top-level imports (each includes what it imported first)."""
    return (
        sum(
            item.cumulative_us
            for item in imports
            if item.depth == 0 and item.module not in baseline
        )
        / 1000
    )


def heaviest_packages(imports: list[Import], baseline: set[str]) -> dict[str, float]:
    """Cumulative ms of each package's own import (its dependencies imported first included),
    the project's own modules left out (they are listed by self time)."""
    found = {
        item.module: item.cumulative_us / 1000
        for item in imports
        if "." not in item.module and item.module not in baseline and item.module != "agent"
    }
    return dict(sorted(found.items(), key=lambda pair: -pair[1])[:HEAVIEST])


def own_modules(imports: list[Import]) -> dict[str, float]:
    """The project's modules by self time: what their own top-level code costs."""
    found = {
        item.module: item.self_us / 1000 for item in imports if item.module.startswith("agent")
    }
    return dict(sorted(found.items(), key=lambda pair: -pair[1])[:OWN_MODULES])


async def run(workspace: Workspace, plan: Plan) -> Section:
    section = Section("imports", "Import time of envagent run")
    baseline_child = await workspace.run_to_end(
        "importtime-baseline",
        [workspace.runtime_program("python"), "-X", "importtime", "-c", "pass"],
        workspace.env(installed=True),
        30.0,
    )
    baseline_imports = parse(baseline_child.stderr_path.read_text())
    baseline = {item.module for item in baseline_imports}
    platform = await start_platform(workspace, workspace.path("platform-imports") / "platform.db")
    repo = make_repo(workspace.path("repo-imports") / "work")
    totals: list[float] = []
    packages: dict[str, list[float]] = defaultdict(list)
    own: dict[str, list[float]] = defaultdict(list)
    async with aiohttp.ClientSession() as http:
        for index in range(plan.import_runs):
            daemon = await start_daemon(
                workspace,
                platform,
                name=f"bench-imports-{index}",
                state_home=workspace.path("daemon-imports"),
                workdir=repo,
                python_flags=("-X", "importtime"),
            )
            await wait_online(http, daemon)
            await daemon.child.stop()
            imports = parse(daemon.child.stderr_path.read_text(errors="replace"))
            totals.append(total_ms(imports, baseline))
            for name, ms in heaviest_packages(imports, baseline).items():
                packages[name].append(ms)
            for name, ms in own_modules(imports).items():
                own[name].append(ms)
    await platform.child.stop()
    section.add(
        Figure(
            "imports of a run, until online",
            "ms",
            totals,
            note="sum of top-level imports under -X importtime (which adds its own overhead)",
        )
    )
    section.add(
        Figure(
            "Python's own start-up imports (-c pass)",
            "ms",
            [total_ms(baseline_imports, set())],
        )
    )
    ranked = sorted(packages.items(), key=lambda pair: -median(pair[1]))[:HEAVIEST]
    for name, values in ranked:
        section.add(Figure(f"  import {name} (cumulative)", "ms", values))
    for name, values in sorted(own.items(), key=lambda pair: -median(pair[1])):
        section.add(Figure(f"  {name} (self)", "ms", values))
    section.notes.append(
        "a package's cumulative time includes the packages it imports first, so the lines "
        "overlap; self time is the module's own top-level code"
    )
    return section
