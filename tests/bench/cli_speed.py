"""The command line's start-up: how long the commands a coding tool calls take from exec to exit,
beside `python -c pass` of the same interpreter, and where the time of `envagent status` goes.

Each command is the `envagent` script of the runtime-only install (`fixtures.install_runtime`),
run as a tool runs it: its own process, stdout to a file, against a real daemon that is online
with a real platform. Bytecode is compiled beforehand and read from beside the sources, as an
installed package has it (pip compiles it at install; the children here do not get the
workspace's PYTHONPYCACHEPREFIX), and each command runs once unmeasured first.

The runs go round the commands in turn, `python -c pass` among them, so that a slower moment of
the machine falls on all of them alike. A command's ratio is each of its runs over the median of
`python -c pass` in the same benchmark: the ratio's median is the ratio of the medians.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.bench.fixtures import make_repo, start_daemon, start_platform, wait_online
from tests.bench.imports import Import, parse
from tests.bench.plan import Plan
from tests.bench.procs import BenchError, Workspace
from tests.bench.report import Budget, Figure, Section
from tests.bench.stats import median

LAUNCHER = Path(__file__).with_name("cli_launcher.py")
RUN_WAIT_S = 30.0
"""At most, for one run of one command (the launcher kills it then)."""
LAUNCHER_SLACK_S = 60.0
MIB = 1024.0
HEAVIEST = 8
REFERENCE = "python -c pass"
NAME = "bench-cli"


@dataclass(frozen=True)
class Command:
    label: str
    args: tuple[str, ...]
    """After the program: `envagent` for every command but the reference."""
    budget: Budget | None = None
    """On the ratio to `python -c pass`."""


def commands(repo: Path) -> list[Command]:
    """What is measured, the reference first; the budgets are the issue's, as ratios."""
    fast = Budget(3, "budget: --version <= 3x python -c pass")
    daemon = Budget(8, "budget: status, mode get, list --local <= 8x python -c pass")
    return [
        Command(REFERENCE, ("-c", "pass")),
        Command("envagent --version", ("--version",), fast),
        Command("envagent --help", ("--help",)),
        Command("envagent status", ("status",), daemon),
        Command("envagent status --json", ("status", "--json")),
        Command("envagent mode get", ("mode", "get"), daemon),
        Command("envagent list --local", ("list", "--local"), daemon),
        Command("envagent metadata", ("metadata", "--workdir", str(repo))),
    ]


async def launch(
    workspace: Workspace, python: str, name: str, spec: dict[str, Any]
) -> dict[str, Any]:
    """Run `spec` through `cli_launcher` (see there: the timing, the peak RSS and its floor);
    a command that fails raises with the end of its output."""
    folder = workspace.path(name)
    spec_file = folder / "spec.json"
    spec_file.write_text(json.dumps(spec))
    runs = (spec["rounds"] + spec["warm_up"]) * len(spec["commands"])
    child = await workspace.run_to_end(
        name,
        [python, "-I", "-S", str(LAUNCHER), str(spec_file)],
        workspace.env(installed=True),
        LAUNCHER_SLACK_S + runs * RUN_WAIT_S,
    )
    result: dict[str, Any] = json.loads(child.stdout_path.read_text())
    failed = result["failed"]
    if failed:
        output = Path(failed["log"]).read_text(errors="replace")[-2000:]
        raise BenchError(f"{failed['label']} exited with {failed['code']}:\n{output}")
    return result


async def run(workspace: Workspace, plan: Plan) -> Section:
    section = Section("cli", "Command line: exec -> exit, beside python -c pass")
    python = workspace.runtime_program("python")
    envagent = workspace.runtime_program("envagent")
    await _compile_installed(workspace, python)
    platform = await start_platform(workspace, workspace.path("platform-cli") / "platform.db")
    state_home = workspace.path("daemon-cli")
    repo = make_repo(workspace.path("repo-cli") / "work")
    daemon = await start_daemon(workspace, platform, name=NAME, state_home=state_home, workdir=repo)
    async with aiohttp.ClientSession() as http:
        await wait_online(http, daemon)
    env = workspace.env(state_home, installed=True)
    del env["PYTHONPYCACHEPREFIX"]  # the bytecode beside the sources, as installed
    measured = commands(repo)
    logs = workspace.path("cli-logs")
    result = await launch(
        workspace,
        python,
        "cli-runs",
        {
            "rounds": plan.cli_runs,
            "warm_up": 1,  # unmeasured: the page cache, and any bytecode not yet written
            "timeout_s": RUN_WAIT_S,
            "cwd": str(workspace.dir),
            "commands": [
                {
                    "label": command.label,
                    "argv": [python if command.label == REFERENCE else envagent, *command.args],
                    "env": env,
                    "log": str(logs / (command.label.replace(" ", "_") + "-{round}")),
                }
                for command in measured
            ],
        },
    )
    floor_mib = result["floor_kib"] / MIB
    seconds = {label: [ms for ms, _ in runs] for label, runs in result["runs"].items()}
    peak = {label: [kib / MIB for _, kib in runs] for label, runs in result["runs"].items()}
    reference = median(seconds[REFERENCE])
    for command in measured:
        section.add(Figure(f"{command.label}: exec -> exit", "ms", seconds[command.label]))
        if command.label != REFERENCE:
            section.add(
                Figure(
                    f"{command.label}: / {REFERENCE}",
                    "x",
                    [value / reference for value in seconds[command.label]],
                    budget=command.budget,
                )
            )
        section.add(Figure(f"{command.label}: max RSS", "MiB", peak[command.label]))
    await _status_imports(workspace, plan, section, python, envagent, env)
    await daemon.child.stop()
    await platform.child.stop()
    section.details["max_rss_floor_mib"] = round(floor_mib, 2)
    at_floor = [label for label, values in peak.items() if min(values) <= floor_mib]
    section.notes.append(
        f"wall clock from fork to reaping, {plan.cli_runs} rounds over the commands in turn; "
        f"ratios: each run over the median of {REFERENCE} ({reference:.1f} ms) of the same "
        f"interpreter; max RSS: the kernel's peak (wait4), exact above the launcher's "
        f"{floor_mib:.1f} MiB"
        + (f" (AT THE FLOOR, so unknown: {', '.join(at_floor)})" if at_floor else "")
    )
    section.notes.append(
        "status, mode get and list --local ask the daemon's local API (online, real platform); "
        "the script is the runtime-only install's, bytecode compiled beside the sources"
    )
    return section


async def _compile_installed(workspace: Workspace, python: str) -> None:
    """Bytecode for everything in the runtime venv, beside the sources (pip compiles at install;
    this makes sure), so that no measured run compiles."""
    code = "import sysconfig; print(sysconfig.get_path('purelib'))"
    child = await workspace.run_to_end(
        "cli-purelib", [python, "-c", code], workspace.env(installed=True), RUN_WAIT_S
    )
    purelib = child.stdout_path.read_text().strip()
    env = workspace.env(installed=True)
    del env["PYTHONPYCACHEPREFIX"]
    await workspace.run_to_end(
        "cli-compileall", [python, "-m", "compileall", "-q", "-j", "0", purelib], env, 300.0
    )


async def _status_imports(
    workspace: Workspace,
    plan: Plan,
    section: Section,
    python: str,
    envagent: str,
    env: dict[str, str],
) -> None:
    """`envagent status` under PYTHONPROFILEIMPORTTIME (what -X importtime sets): its heaviest
    imports by cumulative time, Python's own start-up (`-c pass`) left out, into the details."""
    profiled = {**env, "PYTHONPROFILEIMPORTTIME": "1"}
    logs = workspace.path("cli-importtime-logs")
    runs = max(1, plan.import_runs)
    await launch(
        workspace,
        python,
        "cli-importtime",
        {
            "rounds": runs,
            "warm_up": 0,
            "timeout_s": RUN_WAIT_S,
            "cwd": str(workspace.dir),
            "commands": [
                {
                    "label": REFERENCE,
                    "argv": [python, "-c", "pass"],
                    "env": profiled,
                    "log": str(logs / "baseline-{round}"),
                },
                {
                    "label": "envagent status",
                    "argv": [envagent, "status"],
                    "env": profiled,
                    "log": str(logs / "status-{round}"),
                },
            ],
        },
    )
    baseline = {item.module for item in parse((logs / "baseline-0").read_text())}
    cumulative: dict[str, list[float]] = defaultdict(list)
    own: dict[str, list[float]] = defaultdict(list)
    via: dict[str, str] = {}
    totals: list[float] = []
    for index in range(runs):
        imports = parse((logs / f"status-{index}").read_text(errors="replace"))
        parents = importers(imports)
        totals.append(
            sum(i.cumulative_us for i in imports if i.depth == 0 and i.module not in baseline)
            / 1000
        )
        for item in imports:
            if item.module in baseline:
                continue
            cumulative[item.module].append(item.cumulative_us / 1000)
            own[item.module].append(item.self_us / 1000)
            via[item.module] = parents.get(item.module, "")
    section.add(
        Figure(
            "envagent status: its imports (-X importtime)",
            "ms",
            totals,
            note="sum of its top-level imports, Python's own start-up left out; importtime adds "
            "its own overhead",
        )
    )
    ranked = sorted(cumulative, key=lambda module: -median(cumulative[module]))[:HEAVIEST]
    section.details["status_heaviest_imports"] = {
        "how": f"envagent status under PYTHONPROFILEIMPORTTIME=1, {runs} runs, medians; modules "
        f"that `{REFERENCE}` imports are left out; `via` is the module whose import line "
        "imported it (nested entries overlap: a module's cumulative time includes what it "
        "imports)",
        "total_ms": round(median(totals), 2),
        "top": [
            {
                "module": module,
                "cumulative_ms": round(median(cumulative[module]), 2),
                "self_ms": round(median(own[module]), 2),
                "via": via[module],
            }
            for module in ranked
        ],
        "top_by_self_ms": {
            module: round(median(own[module]), 2)
            for module in sorted(own, key=lambda module: -median(own[module]))[:HEAVIEST]
        },
    }
    heaviest = ", ".join(f"{m} {median(cumulative[m]):.1f}" for m in ranked[:4])
    section.notes.append(f"status's heaviest imports (cumulative ms): {heaviest}; top 8 in JSON")


def importers(imports: list[Import]) -> dict[str, str]:
    """Each module's importer. -X importtime prints a module after those it imported, one level
    deeper: the importer of an entry is the next entry one level up."""
    found: dict[str, str] = {}
    waiting: dict[int, list[str]] = defaultdict(list)
    for item in imports:
        for child in waiting.pop(item.depth + 1, []):
            found[child] = item.module
        waiting[item.depth].append(item.module)
    return found
