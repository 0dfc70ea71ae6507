"""Letta Code's own listener as the reference for the daemon: exec -> online in the platform's
listing and memory once online, for it and for `envagent run`, in the same run, alternating.

Letta Code (`@letta-ai/letta-code`, pinned below) is installed from the npm registry into the
workspace with `npm`, as its one file `letta.js` (a bundle whose only import outside Node's own
modules is `ws`) beside `ws` and Node 22 (the npm package `node@22`, whose install script puts
the node binary in place). Its other dependencies are left out: they are for features the
listener does not load, and one of them (`@janhapke/sharp-electron@0.35.3-electron.1`) is not
on the registry, so `npm install @letta-ai/letta-code@0.32.18` fails whole.

Its listener is `letta server` (`letta remote` is the same): it registers at
`$LETTA_BASE_URL/v1/environments/register` with `$LETTA_API_KEY`, then opens the WebSocket the
platform names, the protocol the reference platform speaks. For a base URL other than Letta's
own it needs IGNORE_SELF_HOSTED_LISTENER_ERROR=1 (without it, it stops with "Self-hosted
listener registration is not available"). Its telemetry and self-update are turned off
(DO_NOT_TRACK, LETTA_CODE_TELEM, DISABLE_AUTOUPDATER): they would call Letta's servers. Its HOME
is a folder of the workspace, where it keeps its settings and device id (~/.letta).

If it cannot be installed or started here, the benchmark says so in one line and puts the
daemon's start beside `python -c pass` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import tarfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from tests.bench.cli_speed import REFERENCE, launch
from tests.bench.fixtures import (
    PlatformProcess,
    make_repo,
    start_daemon,
    start_platform,
    wait_offline,
)
from tests.bench.plan import Plan
from tests.bench.procs import BenchError, Child, Memory, Workspace, memory
from tests.bench.report import Budget, Figure, Section
from tests.bench.stats import median

PACKAGE = "@letta-ai/letta-code"
VERSION = "0.32.18"
NODE_PACKAGE = "node@22"
INSTALL_WAIT_S = 300.0
ONLINE_WAIT_S = 30.0
STOP_WAIT_S = 10.0
SETTLE_S = 2.0
"""After online, before reading memory: as daemon_footprint does."""
POLL_S = 0.01
MIB = 1024.0
LETTA_NAME = "bench-letta-code"
ENVAGENT_NAME = "bench-envagent"
START_BUDGET = Budget(0.2, "budget: envagent exec -> online <= 0.2x Letta Code's")
LISTENER_ENV = {
    "IGNORE_SELF_HOSTED_LISTENER_ERROR": "1",
    "DO_NOT_TRACK": "1",
    "LETTA_CODE_TELEM": "0",
    "DISABLE_AUTOUPDATER": "1",
}


@dataclass(frozen=True)
class LettaCode:
    node: Path
    script: Path
    node_version: str
    engines_node: str
    """The Node versions its package.json asks for."""


Starter = Callable[[], Awaitable[Child]]


@dataclass(frozen=True)
class Start:
    online_ms: float
    memory: Memory
    processes: int


async def install(workspace: Workspace) -> LettaCode:
    """The pinned Letta Code, `ws` at the range it names and Node 22, in a folder of the
    workspace; BenchError when any step fails."""
    npm = shutil.which("npm")
    if npm is None:
        raise BenchError("npm is not on PATH")
    folder = workspace.path("letta-code-install")
    env = workspace.env(npm_config_update_notifier="false", npm_config_fund="false")
    quiet = ["--no-audit", "--no-fund", "--loglevel=error"]
    packed = await workspace.run_to_end(
        "npm-pack",
        [npm, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(folder), *quiet],
        env,
        INSTALL_WAIT_S,
    )
    tarball = folder / packed.stdout_path.read_text().split()[-1]
    with tarfile.open(tarball) as archive:
        member = archive.extractfile("package/package.json")
        if member is None:
            raise BenchError(f"{tarball.name} has no package.json")
        manifest = json.load(member)
    ws = manifest["dependencies"]["ws"]
    await workspace.run_to_end(
        "npm-install",
        [npm, "install", "--prefix", str(folder), *quiet, f"ws@{ws}", NODE_PACKAGE],
        env,
        INSTALL_WAIT_S,
    )
    # After `npm install`, which would remove a package it did not install itself.
    target = folder / "node_modules" / PACKAGE
    target.mkdir(parents=True)
    with tarfile.open(tarball) as archive:
        for item in archive.getmembers():
            item.name = item.name.removeprefix("package/")
        archive.extractall(target, filter="data")
    node = folder / "node_modules" / "node" / "bin" / "node"
    if not node.exists():
        raise BenchError(
            f"{NODE_PACKAGE} installed no node binary (its install script did not run)"
        )
    script = target / manifest["bin"]["letta"]
    node_version = (await _output(workspace, "node-version", [str(node), "--version"])).strip()
    if not node_version.startswith("v22."):
        raise BenchError(f"{NODE_PACKAGE} gave node {node_version}")
    said = await _output(workspace, "letta-version", [str(node), str(script), "--version"])
    if VERSION not in said:
        raise BenchError(f"letta --version said {said.strip()!r}, not {VERSION}")
    return LettaCode(node, script, node_version, manifest.get("engines", {}).get("node", "?"))


async def _output(workspace: Workspace, name: str, args: list[str]) -> str:
    child = await workspace.run_to_end(name, args, workspace.env(), ONLINE_WAIT_S)
    return child.stdout_path.read_text()


async def spawn_session(
    workspace: Workspace, name: str, args: list[str], env: dict[str, str], cwd: Path
) -> Child:
    """Start `args` in a session of its own (so that `stop_session` ends all it started),
    its output to files in the workspace."""
    logs = workspace.path(name)
    stdout_path, stderr_path = logs / "stdout", logs / "stderr"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
    return Child(name, process, stdout_path, stderr_path)


async def stop_session(child: Child) -> None:
    """SIGTERM, a bounded wait, then SIGKILL; and to its whole group if it leads one (what
    `spawn_session` starts), for whatever it started."""
    try:
        leader = os.getpgid(child.pid) == child.pid
    except ProcessLookupError:
        leader = False
    await child.stop(signal.SIGTERM, STOP_WAIT_S)
    if leader:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """`pid` and every process under it."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
    found, frontier = [pid], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def tree_memory(pid: int) -> tuple[Memory, int]:
    """RSS and PSS summed over the process and its descendants, and how many there are."""
    rss = pss = count = 0
    for each in descendants(pid):
        with contextlib.suppress(OSError, KeyError):
            used = memory(each)
            rss, pss, count = rss + used.rss_kib, pss + used.pss_kib, count + 1
    return Memory(rss, pss), count


async def listed_online(
    http: aiohttp.ClientSession, platform: PlatformProcess, name: str, child: Child
) -> float:
    """perf_counter() of the first listing that shows `name` online (polled every 10 ms)."""
    async with asyncio.timeout(ONLINE_WAIT_S):
        while True:
            page = await platform.listing(http, onlineOnly="true", limit="100")
            if any(row.connection_name == name for row in page.connections):
                return time.perf_counter()
            if not child.running:
                raise BenchError(f"{child.name} exited:\n{child.tail()}")
            await asyncio.sleep(POLL_S)


async def measure_start(
    http: aiohttp.ClientSession,
    platform: PlatformProcess,
    name: str,
    start: Starter,
) -> Start:
    """Exec -> online of what `start()` spawns, then its memory once settled; stopped after."""
    await wait_offline(http, platform, name, ONLINE_WAIT_S)
    started = time.perf_counter()
    child = await start()
    try:
        online = await listed_online(http, platform, name, child)
        await asyncio.sleep(SETTLE_S)
        used, processes = tree_memory(child.pid)
    finally:
        await stop_session(child)
    return Start((online - started) * 1000, used, processes)


async def run(workspace: Workspace, plan: Plan) -> Section:
    section = Section("letta_code", "Letta Code's listener beside envagent run")
    platform = await start_platform(workspace, workspace.path("platform-letta") / "platform.db")
    repo = make_repo(workspace.path("repo-letta") / "work")
    envagent_home = workspace.path("daemon-letta")

    async def start_envagent() -> Child:
        daemon = await start_daemon(
            workspace, platform, name=ENVAGENT_NAME, state_home=envagent_home, workdir=repo
        )
        return daemon.child

    letta: LettaCode | None = None
    unavailable = ""
    try:
        letta = await install(workspace)
    except (BenchError, OSError, ValueError, KeyError, tarfile.TarError) as exc:
        unavailable = f"could not install {PACKAGE}@{VERSION}: {_one_line(exc)}"
    ours: list[Start] = []
    theirs: list[Start] = []
    async with aiohttp.ClientSession() as http:
        if letta is not None:
            start_letta = listener(workspace, platform, letta, str(letta.node), LETTA_NAME)
            try:
                for index in range(plan.letta_code_runs):
                    # Alternating, and which goes first too, so that neither always follows.
                    pair = [(start_letta, theirs), (start_envagent, ours)]
                    for start, into in pair if index % 2 == 0 else pair[::-1]:
                        name = LETTA_NAME if into is theirs else ENVAGENT_NAME
                        into.append(await measure_start(http, platform, name, start))
            except (BenchError, TimeoutError, OSError, aiohttp.ClientError) as exc:
                unavailable = f"Letta Code's listener did not come online: {_one_line(exc)}"
            section.details["node"] = await _node_check(workspace, http, platform, letta)
        if not theirs:
            ours = [
                await measure_start(http, platform, ENVAGENT_NAME, start_envagent)
                for _ in range(plan.letta_code_runs)
            ]
    await platform.child.stop()
    _figures(section, ours, theirs)
    if unavailable:
        section.notes.append(f"Letta Code: {unavailable}")
        section.details["letta_code"] = {"available": False, "reason": unavailable}
        await _beside_python(workspace, plan, section, ours)
    else:
        assert letta is not None
        section.details["letta_code"] = {
            "available": True,
            "package": f"{PACKAGE}@{VERSION}",
            "command": "node letta.js server --computer-name NAME",
            "environment": sorted(["LETTA_BASE_URL", "LETTA_API_KEY", "HOME", *LISTENER_ENV]),
            "node": letta.node_version,
        }
        section.notes.append(
            f"Letta Code {VERSION} (`letta server`) on Node {letta.node_version} from npm; "
            f"{plan.letta_code_runs} starts each, alternating; memory {SETTLE_S:g} s after "
            "online, summed over the process and its children"
        )
        node = section.details.get("node", {})
        if "listener_on_path_node" in node:
            section.notes.append(
                f"Node on PATH {node['on_path']} (the package asks {node['engines']}): its "
                f"listener, started on it once, was {node['listener_on_path_node']}"
            )
    return section


def _figures(section: Section, ours: list[Start], theirs: list[Start]) -> None:
    if theirs:
        section.add(
            Figure("Letta Code listener: exec -> online", "ms", [s.online_ms for s in theirs])
        )
    section.add(
        Figure(
            "envagent run: exec -> online",
            "ms",
            [s.online_ms for s in ours],
            note="from spawning the envagent script (runtime-only install) to the first listing "
            "that shows the row online, polled every 10 ms; the first start is a new device",
        )
    )
    if theirs:
        reference = median([s.online_ms for s in theirs])
        section.add(
            Figure(
                "envagent / Letta Code, exec -> online",
                "x",
                [s.online_ms / reference for s in ours],
                budget=START_BUDGET,
                note="each envagent start over the median of Letta Code's",
            )
        )
        section.add(
            Figure("Letta Code listener: RSS once online", "MiB", [_rss(s) for s in theirs])
        )
        section.add(
            Figure("Letta Code listener: PSS once online", "MiB", [_pss(s) for s in theirs])
        )
    section.add(Figure("envagent run: RSS once online", "MiB", [_rss(s) for s in ours]))
    section.add(Figure("envagent run: PSS once online", "MiB", [_pss(s) for s in ours]))
    if theirs:
        reference_rss = median([_rss(s) for s in theirs])
        section.add(
            Figure(
                "envagent / Letta Code, RSS once online",
                "x",
                [_rss(s) / reference_rss for s in ours],
                note="for information",
            )
        )
        section.details["processes_once_online"] = {
            "letta_code": [s.processes for s in theirs],
            "envagent": [s.processes for s in ours],
        }


def _rss(start: Start) -> float:
    return start.memory.rss_kib / MIB


def _pss(start: Start) -> float:
    return start.memory.pss_kib / MIB


async def _beside_python(
    workspace: Workspace, plan: Plan, section: Section, ours: list[Start]
) -> None:
    """With no Letta Code: the daemon's start beside `python -c pass` of its interpreter."""
    python = workspace.runtime_program("python")
    result = await launch(
        workspace,
        python,
        "letta-fallback-python",
        {
            "rounds": plan.letta_code_runs,
            "warm_up": 1,
            "timeout_s": ONLINE_WAIT_S,
            "cwd": str(workspace.dir),
            "commands": [
                {
                    "label": REFERENCE,
                    "argv": [python, "-c", "pass"],
                    "env": workspace.env(installed=True),
                    "log": os.devnull,
                }
            ],
        },
    )
    reference = [ms for ms, _ in result["runs"][REFERENCE]]
    section.add(Figure(f"{REFERENCE}: exec -> exit", "ms", reference))
    section.add(
        Figure(
            f"envagent run: exec -> online / {REFERENCE}",
            "x",
            [s.online_ms / median(reference) for s in ours],
        )
    )


async def _node_check(
    workspace: Workspace,
    http: aiohttp.ClientSession,
    platform: PlatformProcess,
    letta: LettaCode,
) -> dict[str, Any]:
    """Which Node the package asks for, which one is on PATH, and whether the listener comes
    online on that one (it does not check its version itself)."""
    found: dict[str, Any] = {"engines": letta.engines_node, "used": letta.node_version}
    on_path = shutil.which("node")
    if on_path is None:
        found["on_path"] = None
        return found
    version = (await _output(workspace, "path-node-version", [on_path, "--version"])).strip()
    found["on_path"] = version
    if version.split(".")[0] == letta.node_version.split(".")[0]:
        return found
    name = f"{LETTA_NAME}-path-node"
    try:
        start_it = listener(workspace, platform, letta, on_path, name)
        start = await measure_start(http, platform, name, start_it)
        found["listener_on_path_node"] = f"online in {start.online_ms:.0f} ms"
    except (BenchError, TimeoutError, OSError, aiohttp.ClientError) as exc:
        found["listener_on_path_node"] = f"not online: {_one_line(exc)}"
    return found


def listener(
    workspace: Workspace, platform: PlatformProcess, letta: LettaCode, node: str, name: str
) -> Starter:
    """How to start Letta Code's listener as `name` on `node`: its own HOME (settings, device
    id) kept across its starts, and a git repository as its working directory."""
    home = workspace.path(f"home-{name}")
    repo = make_repo(workspace.path(f"repo-{name}") / "work")
    env = workspace.env() | {
        "HOME": str(home),
        "LETTA_BASE_URL": platform.url,
        "LETTA_API_KEY": platform.key,
        **LISTENER_ENV,
    }
    args = [node, str(letta.script), "server", "--computer-name", name]
    return lambda: spawn_session(workspace, name, args, env, repo)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
