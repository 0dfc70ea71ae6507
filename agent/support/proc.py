"""Running a short outside command safely: bounded in time, and killed whole when it hangs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path


def run_bounded(
    argv: Sequence[str], *, timeout_s: float, cwd: Path | None = None, stderr: bool = True
) -> tuple[int | None, str]:
    """Run `argv` (no shell) and return (exit code, output); the code is None when it timed
    out, 127 when it could not start. The output has stderr too unless `stderr` is False.

    The command gets a process group of its own, killed whole on a timeout or an interruption,
    so that nothing it started (a wrapper script's child, a build backend holding the pipe)
    lives on.
    """
    try:
        process = subprocess.Popen(  # noqa: S603  # callers pass fixed tools and our own paths
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if stderr else subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        return 127, f"cannot start {argv[0]}: {exc.strerror}"
    with process:
        try:
            output, _ = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            output, _ = process.communicate()
            return None, output.decode(errors="replace")
        except BaseException:  # Ctrl-C in the CLI
            _kill_group(process)
            raise
    return process.returncode, output.decode(errors="replace")


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group ended on its own meanwhile
        os.killpg(process.pid, signal.SIGKILL)
