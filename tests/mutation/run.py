"""Mutation testing of the pure modules with cosmic-ray, each module against its own tests.

    python -m tests.mutation.run                     # every module, one after the other
    python -m tests.mutation.run policy state        # some of them
    python -m tests.mutation.run --survivors state   # test again only what survived last time
    python -m tests.mutation.run --report            # summarize the last run again

cosmic-ray changes the module on disk for each mutant, so the modules are mutated in a copy of
the tree, `build/mutation/tree`, made afresh at the start of every run: never in the working
tree, where others run tests. Everything runs at the lowest priority (`nice 19`), one mutant at
a time, each a pytest run of the module's own test file forked from a process that has already
imported the libraries (`forkserver.py`).

A mutant inside a function's signature (`x: int | None`, `-> float`) is skipped before the run:
every module here has `from __future__ import annotations`, so those are strings nothing
evaluates. The mutants that survive and cannot change behaviour are listed, each with its
reason, in `equivalent.toml` beside this file and in docs/mutation.md; they are left out of the
score, as are the few that cosmic-ray fails to make (its exception replacer cannot rewrite
`except (A, mod.B)`; listed as "not made"). The score of a module is killed / (killed +
survived).

Writes, under `build/mutation/`: `summary.md` and `summary.json` (the table, every survivor with
its diff), and per module `report.txt` (cosmic-ray's own report, `cr-report`). Exits 1 when a
module's tests fail before any mutation, or a module scores below 95 %.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

if not __package__:  # run as a script: make `tests.mutation` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.mutation import forkserver

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "mutation"
EQUIVALENT_FILE = Path(__file__).with_name("equivalent.toml")
BIN = Path(sys.executable).parent
COPIED = ("agent", "tests", "service_files", "pyproject.toml")
TIMEOUT_S = 300.0
"""Per mutant; pytest-timeout (60 s a test) stops a mutant that loops long before this."""
ANNOTATION = "annotation: a function signature's, never evaluated"
REQUIRED_SCORE = 0.95


@dataclass(frozen=True)
class Target:
    module: str
    pytest_args: tuple[str, ...] = ()

    @property
    def tests(self) -> tuple[str, ...]:
        """The module's own tests, where tests/ mirrors agent/: `agent/a/b.py`,
        `tests/a/test_b.py`."""
        path = Path(self.module)
        return (Path("tests", *path.parts[1:-1], f"test_{path.name}").as_posix(),)


MODULES = {
    "policy": Target("agent/daemon/session/policy.py"),
    "models": Target("agent/protocol/models.py"),
    "httpapi": Target("agent/protocol/httpapi.py"),
    "state": Target("agent/daemon/state.py"),
    "config": Target("agent/daemon/config.py"),
    # The rule alone, and on a platform on SQLite; PostgreSQL would only slow each run down.
    "access": Target("agent/platform/access.py", ("-k", "not postgres")),
}


@dataclass
class Mutant:
    job_id: str
    operator: str
    line: int
    before: str
    after: str
    outcome: str
    """killed, survived, equivalent, annotation, unmade (cosmic-ray failed to make it) or
    pending (not run: the run was cut short, counted as survived)."""
    diff: str = ""
    reason: str = ""


@dataclass
class ModuleResult:
    name: str
    module: str
    tests: list[str]
    mutants: list[Mutant] = field(default_factory=list)
    seconds: float = 0.0
    baseline_failed: bool = False

    def count(self, outcome: str) -> int:
        return sum(1 for mutant in self.mutants if mutant.outcome == outcome)

    @property
    def scored(self) -> int:
        return sum(self.count(outcome) for outcome in ("killed", "survived", "pending"))

    @property
    def score(self) -> float | None:
        return self.count("killed") / self.scored if self.scored else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", metavar="MODULE", help=", ".join(MODULES))
    parser.add_argument(
        "--survivors", action="store_true", help="test again only the mutants that survived"
    )
    parser.add_argument(
        "--report", action="store_true", help="run nothing: summarize the last run again"
    )
    args = parser.parse_args(argv)
    unknown = set(args.modules) - MODULES.keys()
    if unknown:
        parser.error(f"unknown modules {', '.join(sorted(unknown))}: expected {', '.join(MODULES)}")
    os.nice(19 - os.nice(0))  # the lowest priority, for this process and every child
    names = args.modules or list(MODULES)
    equivalents = _load_equivalents()
    if not args.report:
        _copy_tree(BUILD / "tree")  # once, so that every module is measured on the same files
    results = []
    for name in names:
        print(f"== {name}: {MODULES[name].module}", flush=True)
        if args.report:
            result = summarize_module(name, MODULES[name], equivalents)
        else:
            result = run_module(name, MODULES[name], equivalents, survivors_only=args.survivors)
        results.append(result)
        print(_table([result]), flush=True)
    summary = _summary(
        results, equivalents, " ".join(["python -m tests.mutation.run", *sys.argv[1:]])
    )
    BUILD.mkdir(parents=True, exist_ok=True)
    (BUILD / "summary.md").write_text(summary)
    (BUILD / "summary.json").write_text(
        json.dumps([asdict(result) for result in results], indent=2) + "\n"
    )
    print(f"\n{_table(results)}\n\nsummary: {BUILD / 'summary.md'}")
    failed = any(
        result.baseline_failed or result.score is None or result.score < REQUIRED_SCORE
        for result in results
    )
    return 1 if failed else 0


def run_module(
    name: str, target: Target, equivalents: list[dict[str, str]], *, survivors_only: bool
) -> ModuleResult:
    out, tree = BUILD / name, BUILD / "tree"
    session, config = out / "session.sqlite", out / "config.toml"
    started = time.monotonic()
    result = ModuleResult(name, target.module, list(target.tests))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mutation-") as folder:
        address = str(Path(folder) / "pytest.sock")  # short: a socket's path has 108 bytes
        config.write_text(_config(target, address))
        if survivors_only and session.exists():
            _forget_survivors(session)
        else:
            session.unlink(missing_ok=True)
            _cosmic("init", str(config), str(session), cwd=tree)
            _skip_annotations(session, tree / target.module)
        with _fork_server(address, target, tree):
            baseline = subprocess.run([BIN / "cosmic-ray", "baseline", str(config)], cwd=tree)
            if baseline.returncode:
                print(f"{name}: the tests fail with no mutation; nothing measured", file=sys.stderr)
                result.baseline_failed = True
                return result
            _cosmic("exec", str(config), str(session), cwd=tree)
    result = summarize_module(name, target, equivalents)
    result.seconds = round(time.monotonic() - started, 1)
    return result


def summarize_module(name: str, target: Target, equivalents: list[dict[str, str]]) -> ModuleResult:
    """The outcome of every mutant of the module's last run, and cosmic-ray's own report."""
    out, tree = BUILD / name, BUILD / "tree"
    session = out / "session.sqlite"
    report = subprocess.run(
        [BIN / "cr-report", "--show-diff", "--surviving-only", str(session)],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    (out / "report.txt").write_text(report.stdout)
    result = ModuleResult(name, target.module, list(target.tests))
    result.mutants = list(_mutants(session, tree / target.module, name, equivalents))
    return result


@contextlib.contextmanager
def _fork_server(address: str, target: Target, tree: Path) -> Iterator[None]:
    """`forkserver.serve` for this module's tests, until the block ends."""
    command = [sys.executable, "-m", "tests.mutation.forkserver", "serve", address]
    server = subprocess.Popen([*command, *_pytest_args(target)], cwd=tree)
    try:
        deadline = time.monotonic() + 300
        while not Path(address).exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the fork server did not start (exit {server.returncode})")
            time.sleep(0.1)
        yield
    finally:
        if server.poll() is None:
            forkserver.stop(address)
            server.wait(timeout=30)


def _copy_tree(tree: Path) -> None:
    """Copy the files to mutate and test, and note the commit they were copied at."""
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    (BUILD / "commit").write_text(_git("rev-parse", "--short", "HEAD") + "\n")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", "results*.json")
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=ignore)
        else:
            shutil.copy2(source, tree / name)


def _pytest_args(target: Target) -> list[str]:
    return ["-x", "-q", "-p", "no:cacheprovider", *target.tests, *target.pytest_args]


def _config(target: Target, address: str) -> str:
    command = [sys.executable, "-m", "tests.mutation.forkserver", "client", address]
    test_command = " ".join(_quote(part) for part in [*command, *_pytest_args(target)])
    return (
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(target.module)}\n"
        f"timeout = {TIMEOUT_S}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(test_command)}\n"
        "\n"
        "[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )


def _quote(part: str) -> str:
    """A word of the test command as `shlex.split` (cosmic-ray's) gives it back."""
    return part if part and all(c.isalnum() or c in "/._-:=" for c in part) else repr(part)


def _cosmic(*args: str, cwd: Path) -> None:
    subprocess.run([BIN / "cosmic-ray", *args], cwd=cwd, check=True)


def _annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(start, end) of every annotation in a function signature, as (line, column) in
    characters, cosmic-ray's positions."""
    lines = source.splitlines()

    def column(line: int, byte_offset: int) -> int:
        return len(lines[line - 1].encode()[:byte_offset].decode())

    spans = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        arguments = node.args
        every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
        every += [arg for arg in (arguments.vararg, arguments.kwarg) if arg is not None]
        annotations = [arg.annotation for arg in every if arg.annotation is not None]
        if node.returns is not None:
            annotations.append(node.returns)
        for note in annotations:
            assert note.end_lineno is not None and note.end_col_offset is not None
            start = (note.lineno, column(note.lineno, note.col_offset))
            end = (note.end_lineno, column(note.end_lineno, note.end_col_offset))
            spans.append((start, end))
    return spans


def _skip_annotations(session: Path, module: Path) -> None:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    spans = _annotation_spans(module.read_text())
    with use_db(session, WorkDB.Mode.open) as db:
        skipped = [
            item.job_id
            for item in db.pending_work_items
            for mutation in item.mutations
            if any(
                start <= tuple(mutation.start_pos) and tuple(mutation.end_pos) <= end
                for start, end in spans
            )
        ]
        skip = WorkResult(worker_outcome=WorkerOutcome.SKIPPED, output=ANNOTATION)
        db.set_multiple_results(skipped, skip)


def _forget_survivors(session: Path) -> None:
    """Make the survivors pending again, for `cosmic-ray exec` to test them again."""
    with sqlite3.connect(session) as db:
        db.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED'")


def _mutants(
    session: Path, module: Path, name: str, equivalents: list[dict[str, str]]
) -> Iterator[Mutant]:
    from cosmic_ray.mutating import mutate_code
    from cosmic_ray.plugins import get_operator
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    source = module.read_text()
    listed = [entry for entry in equivalents if entry["module"] == name]
    with use_db(session, WorkDB.Mode.open) as db:
        results = dict(db.results)
        items = sorted(db.work_items, key=lambda item: tuple(item.mutations[0].start_pos))
    for item in items:
        (mutation,) = item.mutations
        result = results.get(item.job_id)
        line = mutation.start_pos[0]
        diff = result.diff if result is not None and result.diff else ""
        if not diff:
            operator = get_operator(mutation.operator_name)()
            try:
                mutated = mutate_code(source, operator, mutation.occurrence) or source
            except Exception as exc:  # cosmic-ray's own failure: reported as "not made"
                mutated = source
                diff = f"-{source.splitlines()[line - 1]}\n+(not made: {exc!r})"
            diff = diff or "\n".join(_unified(source, mutated))
        before, after = _changed_lines(diff)
        mutant = Mutant(item.job_id, mutation.operator_name, line, before, after, "unmade", diff)
        if result is None:
            mutant.outcome = "pending"
        elif result.worker_outcome in (WorkerOutcome.EXCEPTION, WorkerOutcome.NO_TEST):
            mutant.outcome = "unmade"
        elif result.worker_outcome == WorkerOutcome.SKIPPED and result.output == ANNOTATION:
            mutant.outcome = "annotation"
        elif result.test_outcome == TestOutcome.KILLED:
            mutant.outcome = "killed"
        elif result.test_outcome == TestOutcome.SURVIVED:
            mutant.outcome = "survived"
            for entry in listed:
                if entry["line"] == before and entry["mutant"] == after:
                    mutant.outcome, mutant.reason = "equivalent", entry["reason"]
        yield mutant


def _unified(source: str, mutated: str) -> Iterator[str]:
    import difflib

    yield from difflib.unified_diff(source.split("\n"), mutated.split("\n"), lineterm="")


def _changed_lines(diff: str) -> tuple[str, str]:
    """The lines a mutant removes and the lines it adds, stripped, each joined by ` / `: what
    names a mutant in equivalent.toml, whatever line it is on."""
    removed, added = [], []
    for line in diff.splitlines():
        if line.startswith(("---", "+++")):
            continue
        if line.startswith("-"):
            removed.append(line[1:].strip())
        elif line.startswith("+"):
            added.append(line[1:].strip())
    return " / ".join(removed), " / ".join(added)


def _load_equivalents() -> list[dict[str, str]]:
    document = tomllib.loads(EQUIVALENT_FILE.read_text())
    entries: list[dict[str, str]] = document.get("equivalent", [])
    for entry in entries:
        missing = {"module", "line", "mutant", "reason"} - entry.keys()
        if missing or entry["module"] not in MODULES:
            raise SystemExit(f"{EQUIVALENT_FILE.name}: bad entry {entry!r}")
    return entries


def _table(results: Sequence[ModuleResult]) -> str:
    rows = [
        "| module | mutants | in signatures | not made | equivalent | killed | survived | score |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        score = "baseline failed" if result.baseline_failed else _percent(result.score)
        rows.append(
            f"| {result.module} | {len(result.mutants)} | {result.count('annotation')} | "
            f"{result.count('unmade')} | {result.count('equivalent')} | "
            f"{result.count('killed')} | {result.count('survived') + result.count('pending')} | "
            f"{score} |"
        )
    return "\n".join(rows)


def _percent(score: float | None) -> str:
    return "-" if score is None else f"{100 * score:.1f} %"


def _summary(
    results: Sequence[ModuleResult], equivalents: list[dict[str, str]], command: str
) -> str:
    commit = (BUILD / "commit").read_text().strip()
    paths = [path for result in results for path in (result.module, *result.tests)]
    changed = [path for path in paths if not _as_committed(commit, path)]
    parts = [
        "# Mutation testing: summary",
        "",
        f"- date: {datetime.now(UTC).date().isoformat()}",
        f"- commit: {commit}, when the tree was copied"
        + (f"; these files as they were uncommitted: {', '.join(changed)}" if changed else ""),
        f"- command: `{command}` (cosmic-ray {_cosmic_version()})",
        "",
        _table(results),
    ]
    for result in results:
        survivors = [m for m in result.mutants if m.outcome in ("survived", "pending", "unmade")]
        found = [mutant for mutant in result.mutants if mutant.outcome == "equivalent"]
        parts += ["", f"## {result.module}", "", f"tests: {' '.join(result.tests)}", ""]
        parts.append(f"{len(survivors)} survived or not made, {len(found)} equivalent.")
        for mutant in survivors:
            parts += ["", f"- {mutant.outcome}: line {mutant.line}, {mutant.operator}"]
            parts += ["", "```diff", *_hunk(mutant.diff), "```"]
        for mutant in found:
            parts.append(f"- equivalent: line {mutant.line}: `{mutant.after}`: {mutant.reason}")
        unused = [
            entry
            for entry in equivalents
            if entry["module"] == result.name
            and not any(m.before == entry["line"] and m.after == entry["mutant"] for m in found)
        ]
        for entry in unused:
            parts.append(f"- listed as equivalent, but no such survivor: `{entry['mutant']}`")
    return "\n".join(parts) + "\n"


def _as_committed(commit: str, path: str) -> bool:
    """Whether the copy of `path` that was measured is the one in `commit`."""
    done = subprocess.run(["git", "show", f"{commit}:{path}"], cwd=ROOT, capture_output=True)
    return done.returncode == 0 and done.stdout == (BUILD / "tree" / path).read_bytes()


def _hunk(diff: str) -> list[str]:
    return [line for line in diff.splitlines() if not line.startswith(("---", "+++"))]


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip()


def _cosmic_version() -> str:
    from importlib.metadata import version

    return version("cosmic-ray")


if __name__ == "__main__":
    sys.exit(main())
