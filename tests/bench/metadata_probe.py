"""Run by `metadata_refresh` in a fresh process, so that "cold" really is the first read of a
daemon's life: `python -m tests.bench.metadata_probe MODE WORKDIR WARM` prints one JSON object.

MODE is `collect` (what the daemon runs, with its thread hops), `collect_now` (the synchronous
form of `envagent metadata`) or `parts` (each piece of a cold read on its own).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import __version__
from agent.daemon.commands import Commands
from agent.machine.metadata import MetadataCollector


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


def _collector(workdir: Path) -> MetadataCollector:
    return MetadataCollector(workdir, __version__, Commands.NAMES)


async def _collect(workdir: Path, warm: int) -> dict[str, Any]:
    collector = _collector(workdir)
    started = time.perf_counter()
    await collector.collect()
    cold = _ms(started)
    times = []
    for _ in range(warm):
        started = time.perf_counter()
        await collector.collect()
        times.append(_ms(started))
    return {"cold_ms": cold, "warm_ms": times}


def _collect_now(workdir: Path, warm: int) -> dict[str, Any]:
    collector = _collector(workdir)
    started = time.perf_counter()
    collector.collect_now()
    cold = _ms(started)
    times = []
    for _ in range(warm):
        started = time.perf_counter()
        collector.collect_now()
        times.append(_ms(started))
    return {"cold_ms": cold, "warm_ms": times}


def _parts(workdir: Path, warm: int) -> dict[str, Any]:
    """Each piece of a cold read, in the order a cold collect pays for them."""
    from agent.machine.git import git_branch
    from agent.machine.node import find_node
    from agent.machine.selfupdate import detect_self_update

    def timed(work: Callable[[], object]) -> float:
        started = time.perf_counter()
        work()
        return _ms(started)

    return {
        "import_git_ms": timed(lambda: __import__("git")),
        "first_git_branch_ms": timed(lambda: git_branch(workdir)),
        "warm_git_branch_ms": [timed(lambda: git_branch(workdir)) for _ in range(warm)],
        "find_node_ms": timed(find_node),
        "detect_self_update_ms": timed(detect_self_update),
    }


def main() -> None:
    mode, workdir, warm = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    if mode == "collect":
        result = asyncio.run(_collect(workdir, warm))
    elif mode == "collect_now":
        result = _collect_now(workdir, warm)
    else:
        result = _parts(workdir, warm)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
