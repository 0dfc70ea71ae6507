"""Run the `envagent` command line with the garbage collector's pauses logged.

    python -m tests.bench.gc_probe LOG platform serve ...

A full collection walks every object the collector tracks, about 80 per open socket on the
platform, and stops the event loop meanwhile: at thousands of sockets that is the kind of stall
a pong p99 shows. The platform's `server.Collector` therefore collects every 2 s only what is
not frozen (logged as generation 2, a few ms) and walks everything only once a quarter of the
sockets have closed or the heap has grown by a quarter. The code run is the console script's
own `agent.cli.main.main`; the probe adds two clock reads per collection and writes one line
(`monotonic generation seconds`) for each collection that took at least a millisecond.
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path
from typing import Any

from agent.cli.main import main as envagent

LOGGED_FROM_S = 0.001


def install(path: Path) -> None:
    log = path.open("a", buffering=1)
    started = 0.0

    def callback(phase: str, info: dict[str, Any]) -> None:
        nonlocal started
        now = time.monotonic()
        if phase == "start":
            started = now
        elif now - started >= LOGGED_FROM_S:
            log.write(f"{now:.4f} {info['generation']} {now - started:.6f}\n")

    gc.callbacks.append(callback)


def pauses(path: Path, since: float, until: float) -> list[float]:
    """Durations (s) of the logged collections that ended between `since` and `until`."""
    found = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        ended, _generation, seconds = line.split()
        if since <= float(ended) <= until:
            found.append(float(seconds))
    return found


def main() -> int:
    install(Path(sys.argv[1]))
    return envagent(sys.argv[2:])


if __name__ == "__main__":
    raise SystemExit(main())
