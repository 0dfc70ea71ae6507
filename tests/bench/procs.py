"""The processes a benchmark starts, and what the kernel says they cost.

Every child is started through a `Workspace`, which owns a temporary folder (databases, XDG
folders, logs, compiled bytecode) and stops every child it started when it closes, however the
benchmark ended. Children write their output to files rather than pipes, so that a chatty
platform can never block on a full pipe in the middle of a measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parents[2]
STOP_WAIT_S = 10.0
POLL_S = 0.01
PIPE_LINE_LIMIT = 64 * 1024 * 1024
"""A load generator's answer is one JSON line, which may list every connection attempt."""


class BenchError(RuntimeError):
    """A benchmark could not run (a process failed to start, a wait ran out)."""


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard one (children inherit it): a platform with
    10,000 sockets needs more descriptors than the usual 1,024. Returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    stdout_path: Path
    stderr_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    def tail(self, lines: int = 15) -> str:
        """The end of its stderr and stdout, to explain a failure."""
        parts = []
        for path in (self.stderr_path, self.stdout_path):
            with contextlib.suppress(OSError):
                parts += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(parts)

    async def stop(self, signum: int = signal.SIGTERM, wait_s: float = STOP_WAIT_S) -> int:
        """Send `signum`, wait at most `wait_s`, then kill; returns the exit code."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)
        try:
            async with asyncio.timeout(wait_s):
                return await self.process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            return await self.process.wait()


class Workspace:
    """A temporary folder and the children started in it; `async with` stops them all."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="envagent-bench-"))
        self._children: list[Child] = []
        self._counter = 0
        self.runtime: Path | None = None
        """The runtime-only venv that the measured daemons run from (`fixtures.install_runtime`)."""

    async def __aenter__(self) -> Workspace:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self.stop_all())
        shutil.rmtree(self.dir, ignore_errors=True)

    async def stop_all(self) -> None:
        await asyncio.gather(*(child.stop(wait_s=3.0) for child in self._children))
        self._children.clear()

    def path(self, name: str) -> Path:
        """A fresh folder in the workspace."""
        self._counter += 1
        folder = self.dir / f"{self._counter:03d}-{name}"
        folder.mkdir()
        return folder

    def env(
        self, state_home: Path | None = None, *, installed: bool = False, **extra: str
    ) -> dict[str, str]:
        """The environment of a child: no settings of the person running the benchmark, its
        own XDG folders, and bytecode cached in the workspace (see `fixtures.warm_up`). The
        project is on the path unless the child runs an `installed` envagent."""
        environ = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("LETTA_", "ENVAGENT_", "XDG_", "PYTHON"))
        }
        home = state_home or self.dir / "xdg"
        environ |= {
            "PYTHONPYCACHEPREFIX": str(self.dir / "pycache"),
            **({} if installed else {"PYTHONPATH": str(REPO)}),
            "XDG_STATE_HOME": str(home / "state"),
            "XDG_CONFIG_HOME": str(home / "config"),
            **extra,
        }
        return environ

    async def spawn(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        *,
        stdin: int | None = asyncio.subprocess.DEVNULL,
        stdout_pipe: bool = False,
    ) -> Child:
        """Start `args`; its stderr (and stdout unless piped) go to files in the workspace."""
        logs = self.path(name)
        stdout_path, stderr_path = logs / "stdout", logs / "stderr"
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            process = await asyncio.create_subprocess_exec(
                *args,
                stdin=stdin,
                stdout=asyncio.subprocess.PIPE if stdout_pipe else out,
                stderr=err,
                env=env,
                cwd=self.dir,
                limit=PIPE_LINE_LIMIT,
            )
        child = Child(name, process, stdout_path, stderr_path)
        self._children.append(child)
        return child

    async def run_to_end(
        self, name: str, args: list[str], env: dict[str, str], within_s: float
    ) -> Child:
        """Start `args` and wait for it to exit 0; any other end raises with its output."""
        child = await self.spawn(name, args, env)
        if await wait_exit(child, within_s) != 0:
            raise BenchError(f"{name} failed:\n{child.tail()}")
        return child

    def runtime_program(self, name: str) -> str:
        """A program (`python`, `envagent`) of the runtime-only install."""
        if self.runtime is None:
            raise BenchError("the runtime-only install is not made yet (fixtures.install_runtime)")
        return str(self.runtime / "bin" / name)


async def wait_exit(child: Child, within_s: float) -> int:
    try:
        async with asyncio.timeout(within_s):
            return await child.process.wait()
    except TimeoutError:
        await child.stop(signal.SIGKILL)
        raise BenchError(f"{child.name} did not finish within {within_s:g} s") from None


async def wait_for_output(child: Child, pattern: str, within_s: float) -> re.Match[str]:
    """Poll the child's stdout file until a line matches `pattern`; fail if it exits first."""
    compiled = re.compile(pattern)
    deadline = time.monotonic() + within_s
    while True:
        with contextlib.suppress(OSError):
            found = compiled.search(child.stdout_path.read_text(errors="replace"))
            if found:
                return found
        if not child.running:
            raise BenchError(
                f"{child.name} exited with {child.process.returncode}:\n{child.tail()}"
            )
        if time.monotonic() > deadline:
            raise BenchError(f"{child.name}: no {pattern!r} within {within_s:g} s:\n{child.tail()}")
        await asyncio.sleep(POLL_S)


@dataclass(frozen=True)
class Memory:
    rss_kib: int
    pss_kib: int


def memory(pid: int) -> Memory:
    """Resident and proportional set sizes from /proc/<pid>/smaps_rollup. PSS charges each
    shared page to the processes sharing it, so it is what the process really adds."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                values[key] = int(rest.split()[0])
    return Memory(values["Rss"], values["Pss"])


def _tasks(pid: int) -> list[Path]:
    try:
        return list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []


def cpu_seconds(pid: int) -> float:
    """Time on a CPU of every thread, from the scheduler's nanosecond counters
    (/proc/<pid>/task/*/schedstat): /proc/<pid>/stat counts in 10 ms ticks, too coarse for an
    idle budget of 18 ms a minute. A thread that exits takes its time with it, which the
    daemon's worker threads, kept by their pool, do not."""
    total = 0
    for task in _tasks(pid):
        with contextlib.suppress(OSError, ValueError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def context_switches(pid: int) -> int:
    """Voluntary and involuntary switches of every thread: each wake-up of an idle process
    costs at least one, so this counts the timers that tick while it waits."""
    total = 0
    for task in _tasks(pid):
        with contextlib.suppress(OSError, ValueError):
            for line in (task / "status").read_text().splitlines():
                if "ctxt_switches:" in line:
                    total += int(line.split(":")[1])
    return total


def thread_count(pid: int) -> int:
    return len(_tasks(pid))


def postgres_cpu_seconds(postmaster: int) -> float:
    """CPU time of a PostgreSQL server: its postmaster and every process it forked (backends,
    autovacuum...)."""
    total = cpu_seconds(postmaster)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            total += cpu_seconds(int(stat.parent.name))
    return total
