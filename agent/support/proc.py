"""Running an outside command: bounded in time, killed whole when it hangs or is interrupted,
and what went wrong told in one line, so that no caller words it again."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Output = Literal["merged", "stdout", "terminal"]
"""What is captured: stdout and stderr as one text, stdout alone (stderr dropped), or nothing
(both go to the terminal, for a command the person watches)."""

NOT_STARTED = 127
"""The exit code of a command that could not start, as a shell gives it."""
QUOTED_LINES = 3
"""Output lines a problem quotes: the last ones, where a traceback or pip says what failed."""

_STDERR = {"merged": subprocess.STDOUT, "stdout": subprocess.DEVNULL, "terminal": None}


@dataclass(frozen=True)
class Ran:
    """What a command did: `code` is None when it timed out, NOT_STARTED when it could not
    start (and `start_error` says why)."""

    argv: tuple[str, ...]
    timeout_s: float | None
    code: int | None
    output: str
    """What was captured; "" when it went to the terminal."""
    start_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.code == 0

    @property
    def problem(self) -> str:
        """How it ended, in one line with its last output lines: the message for a failure."""
        if self.start_error is not None:
            return self.start_error
        if self.code is None:
            ended = f"did not finish within {self.timeout_s:g} s"
        elif self.code < 0:
            ended = f"was killed by signal {-self.code}"
        else:
            ended = f"exited {self.code}"
        lines = [line.strip() for line in self.output.splitlines() if line.strip()]
        quoted = f": {' / '.join(lines[-QUOTED_LINES:])}" if lines else ""
        return f"`{shlex.join(self.argv)}` {ended}{quoted}"


def run(
    argv: Sequence[str],
    *,
    timeout_s: float | None,
    output: Output = "merged",
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Ran:
    """Run `argv` (no shell, no stdin). Only an interruption raises: a failure is in the Ran.

    `timeout_s` is None only for a command that the person stops (following a log). The
    command gets a process group of its own, killed whole on a timeout or an interruption, so
    that nothing it started (a wrapper script's child, a build backend holding the pipe) lives on.
    """
    argv = tuple(argv)
    try:
        process = subprocess.Popen(  # noqa: S603  # callers pass fixed tools and our own paths
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=None if output == "terminal" else subprocess.PIPE,
            stderr=_STDERR[output],
            start_new_session=True,
        )
    except OSError as exc:
        return Ran(argv, timeout_s, NOT_STARTED, "", _cannot_start(argv[0], exc))
    with process:
        try:
            captured, _ = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            captured, _ = process.communicate()
            return Ran(argv, timeout_s, None, _text(captured))
        except BaseException:  # Ctrl-C in the CLI
            _kill_group(process)
            raise
    return Ran(argv, timeout_s, process.returncode, _text(captured))


def _cannot_start(program: str, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError) and exc.filename == program and os.sep not in program:
        return f"{program} is not installed here (not on PATH)"
    other = f"{exc.filename}: " if exc.filename not in (None, program) else ""  # a missing cwd
    return f"cannot start {program}: {other}{exc.strerror or exc}"


def _text(captured: bytes | None) -> str:
    return captured.decode(errors="replace") if captured else ""


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group ended on its own meanwhile
        os.killpg(process.pid, signal.SIGKILL)
