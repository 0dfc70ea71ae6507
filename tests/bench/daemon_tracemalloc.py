"""What the daemon's Python allocations are once it is online: `envagent run`'s code path in
this process under tracemalloc, which starts before anything of the daemon is imported.

Run by `daemon_footprint` with the runtime-only install's Python, configured as `envagent run`
is (LETTA_BASE_URL, LETTA_API_KEY, SSL_CERT_FILE, XDG folders):

    python -P daemon_tracemalloc.py NAME WORKDIR

It starts `agent.daemon.core.Daemon` as `envagent run` does, waits until it is online and
SETTLE_S more, takes a snapshot, stops it with SIGTERM as a service manager would, and prints
JSON: the top allocations grouped by file, as tracemalloc groups them (the file of the frame
that allocated), and by package with what `<frozen ...>` frames allocate (importlib
unmarshalling a module's bytecode, abc making a class) charged to the first real file above
them, the one whose code caused it; and the traced total beside the process's RSS.
tracemalloc sees only Python's allocators: memory that C libraries take themselves (OpenSSL,
pydantic-core's Rust) is in the RSS and not here.
"""

import tracemalloc

FRAMES = 8
"""Enough to reach above importlib's frames in a nested import."""
tracemalloc.start(FRAMES)  # first: every import after this is traced

import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
from pathlib import Path  # noqa: E402

TOP = 15
ONLINE_WAIT_S = 30.0
SETTLE_S = 2.0
STOP_WAIT_S = 10.0


def short(filename: str) -> str:
    """A path without the install's prefix: `site-packages/pydantic/main.py`, `stdlib/ssl.py`."""
    for label, key in (("site-packages", "purelib"), ("site-packages", "platlib")):
        prefix = sysconfig.get_path(key) + os.sep
        if filename.startswith(prefix):
            return f"{label}/{filename.removeprefix(prefix)}"
    prefix = sysconfig.get_path("stdlib") + os.sep
    if filename.startswith(prefix):
        return f"stdlib/{filename.removeprefix(prefix)}"
    return filename


def package(name: str) -> str:
    """What a short file name belongs to: `pydantic`, `agent`, `stdlib/asyncio`, or the file
    itself (`stdlib/typing.py`, `<frozen importlib._bootstrap>`)."""
    parts = name.split("/")
    if parts[0] == "site-packages" and len(parts) > 2:
        return parts[1]
    if parts[0] == "site-packages":
        return parts[1].removesuffix(".py")
    if parts[0] == "stdlib" and len(parts) > 2:
        return f"stdlib/{parts[1]}"
    return name


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def online(name: str, workdir: str) -> tuple[tracemalloc.Snapshot, dict[str, float]]:
    """The snapshot once online and settled, and the memory figures of that moment."""
    from agent.daemon.config import load_settings
    from agent.daemon.core import Daemon
    from agent.support.logs import setup_logging

    loaded = load_settings({"name": name, "workdir": Path(workdir)})
    setup_logging(debug=False, human=True, log_file=None)
    ready = asyncio.Event()
    daemon = Daemon(loaded.settings, on_ready=lambda _: ready.set())
    running = asyncio.create_task(daemon.run())
    try:
        async with asyncio.timeout(ONLINE_WAIT_S):
            while not ready.is_set() or daemon.status(measure_process=False).state != "online":
                if running.done():
                    raise SystemExit(f"the daemon ended before online: {running.result()}")
                await asyncio.sleep(0.01)
        await asyncio.sleep(SETTLE_S)
        traced, peak = tracemalloc.get_traced_memory()
        figures = {
            "rss_kib": rss_kib(),
            "traced_kib": round(traced / 1024, 1),
            "traced_peak_kib": round(peak / 1024, 1),
            "tracemalloc_own_kib": round(tracemalloc.get_tracemalloc_memory() / 1024, 1),
        }
        snapshot = tracemalloc.take_snapshot()
        tracemalloc.stop()  # the snapshot stays; what follows is not the daemon's
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # the daemon's own handler: a clean stop
        async with asyncio.timeout(STOP_WAIT_S):
            await running
    return snapshot, figures


def main() -> int:
    name, workdir = sys.argv[1], sys.argv[2]
    snapshot, figures = asyncio.run(online(name, workdir))
    snapshot = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    by_file = snapshot.statistics("filename")
    packages: dict[str, list[int]] = {}
    for stat in snapshot.statistics("traceback"):
        frames = [frame.filename for frame in reversed(stat.traceback)]  # most recent first
        cause = next((name for name in frames if not name.startswith("<")), frames[0])
        totals = packages.setdefault(package(short(cause)), [0, 0])
        totals[0] += stat.size
        totals[1] += stat.count
    result = {
        **figures,
        "top_files": [
            {
                "file": short(stat.traceback[0].filename),
                "kib": round(stat.size / 1024, 1),
                "blocks": stat.count,
            }
            for stat in by_file[:TOP]
        ],
        "top_packages": [
            {"package": name, "kib": round(size / 1024, 1), "blocks": count}
            for name, (size, count) in sorted(packages.items(), key=lambda item: -item[1][0])[:TOP]
        ],
    }
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
