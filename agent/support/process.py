"""What this process costs now, read with psutil when asked: psutil is imported on the first
read, so that a process that is never asked (a daemon's usual life on Linux) never loads it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessFigures:
    pid: int
    rss_bytes: int
    cpu_seconds: float
    """User and system time since the process started."""
    open_files: int
    """Open file descriptors: files, sockets and pipes."""
    threads: int


def process_figures() -> ProcessFigures:
    import psutil

    process = psutil.Process()
    with process.oneshot():
        cpu = process.cpu_times()
        return ProcessFigures(
            pid=process.pid,
            rss_bytes=process.memory_info().rss,
            cpu_seconds=cpu.user + cpu.system,
            open_files=process.num_fds(),
            threads=process.num_threads(),
        )
