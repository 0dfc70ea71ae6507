"""Running the service manager's tools: always bounded, and a missing tool or a hang is one line."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping, Sequence

from agent.service.target import ServiceError


def run(
    argv: Sequence[str],
    *,
    timeout_s: float | None,
    capture: bool = False,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` (no shell), its output on the terminal unless captured.

    `timeout_s` is None only for a command that follows a log until the person interrupts it.
    """
    try:
        return subprocess.run(  # noqa: S603  # fixed tools and our own paths, no shell
            list(argv),
            capture_output=capture,
            text=True,
            timeout=timeout_s,
            env=env,
            check=False,
        )
    except FileNotFoundError:
        raise ServiceError(f"{argv[0]} is not installed here (not on PATH)") from None
    except subprocess.TimeoutExpired:
        raise ServiceError(f"`{shlex.join(argv)}` did not finish within {timeout_s:g} s") from None
