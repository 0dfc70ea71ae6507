"""What the figures were measured on: the machine, its load, the software and the commit.

A figure means little without these: the same code is twice as fast on a quiet machine, and
the load average before and after a run says whether anything else was competing.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.bench.procs import REPO

_PACKAGES = (
    "aiohttp",
    "websockets",
    "pydantic",
    "pydantic-core",
    "httpx",
    "h11",
    "GitPython",
    "tenacity",
)


def describe(workspace: Path) -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "memory_mib": _memory_mib(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in _PACKAGES},
        "workspace_filesystem": _filesystem(workspace),
    }


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def git_commit() -> dict[str, Any]:
    """HEAD and whether the working tree differs from it (figures of a dirty tree are not
    figures of that commit)."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30, check=False
        )
        return result.stdout.strip()

    changed = [line for line in git("status", "--porcelain").splitlines() if line]
    return {"commit": git("rev-parse", "HEAD"), "dirty_files": len(changed)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _memory_mib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _filesystem(path: Path) -> str:
    """The type of the filesystem holding `path`: SQLite's fsyncs cost nothing on tmpfs."""
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    for line in mounts:
        _device, mountpoint, fstype, *_ = line.split()
        inside = str(path) == mountpoint or str(path).startswith(mountpoint.rstrip("/") + "/")
        if inside and len(mountpoint) > len(best):
            best, kind = mountpoint, fstype
    return kind
