"""Metadata refresh, cold (the first read of a process: node, self-update, gitpython's import)
and warm (every heartbeat's read of the branch), each in a fresh process per run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.bench.fixtures import make_repo
from tests.bench.plan import Plan
from tests.bench.procs import Workspace
from tests.bench.report import Budget, Figure, Section
from tests.bench.stats import median, percentile

COLD_BUDGET = Budget(150, "budget: metadata refresh cold <= 150 ms")
WARM_BUDGET = Budget(20, "budget: metadata refresh warm <= 20 ms")


async def _probe(workspace: Workspace, mode: str, workdir: Path, warm: int) -> dict[str, Any]:
    child = await workspace.run_to_end(
        f"metadata-{mode}",
        [sys.executable, "-m", "tests.bench.metadata_probe", mode, str(workdir), str(warm)],
        workspace.env(),
        120.0,
    )
    result: dict[str, Any] = json.loads(child.stdout_path.read_text())
    return result


async def run(workspace: Workspace, plan: Plan) -> Section:
    section = Section("metadata", "Metadata refresh (agent.machine.metadata.MetadataCollector)")
    repo = make_repo(workspace.path("repo-metadata") / "work")
    warm = plan.warm_collects
    for mode in ("collect", "collect_now"):
        results = [await _probe(workspace, mode, repo, warm) for _ in range(plan.metadata_runs)]
        section.add(
            Figure(f"{mode}, cold", "ms", [r["cold_ms"] for r in results], budget=COLD_BUDGET)
        )
        section.add(
            Figure(
                f"{mode}, warm (median of {warm})",
                "ms",
                [median(r["warm_ms"]) for r in results],
                samples=warm,
                budget=WARM_BUDGET,
            )
        )
        section.add(
            Figure(
                f"{mode}, warm p99",
                "ms",
                [percentile(r["warm_ms"], 0.99) for r in results],
                samples=warm,
            )
        )
        section.add(
            Figure(
                f"{mode}, cold / warm",
                "x",
                [r["cold_ms"] / median(r["warm_ms"]) for r in results],
            )
        )
    parts = [await _probe(workspace, "parts", repo, warm) for _ in range(plan.metadata_runs)]
    for key, label in (
        ("import_git_ms", "import git (gitpython, runs `git version`)"),
        ("first_git_branch_ms", "first git_branch after the import"),
        ("find_node_ms", "find_node (runs `node --version`)"),
        ("detect_self_update_ms", "detect_self_update"),
    ):
        section.add(Figure(f"  cold part: {label}", "ms", [p[key] for p in parts]))
    section.add(
        Figure(
            "  warm part: git_branch alone",
            "ms",
            [median(p["warm_git_branch_ms"]) for p in parts],
            samples=warm,
        )
    )
    section.notes.append(
        "cold parts are timed one after another in their own process; `collect` runs git, node "
        "and self-update in parallel threads, so its cold time is less than their sum"
    )
    return section
