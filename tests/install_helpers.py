"""Shared by the tests that build and install envagent for real (wheels, venvs, pipx, uv)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parent.parent
# The environment as pytest started, before any fixture changes it: the installs read this
# machine's pip and uv configuration, from the real XDG_CONFIG_HOME, as a person's would.
ENVIRON = {
    name: value
    for name, value in os.environ.items()
    if name not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
}
INSTALL_TIMEOUT_S = 300
RUN_TIMEOUT_S = 60


def copy_project(dest: Path) -> Path:
    """The project's files (git's tracked and untracked ones, less the ignored) copied into
    `dest`, to build a wheel from: setuptools leaves build/ and *.egg-info in the tree it
    builds."""
    listed = subprocess.run(
        ["git", "-C", str(PROJECT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        text=True,
        check=True,
        timeout=RUN_TIMEOUT_S,
    )
    for name in listed.stdout.split("\0"):
        if name and (PROJECT / name).is_file():  # a deleted file is still listed as tracked
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT / name, dest / name)
    return dest


def run(
    command: list[str | Path],
    env: Mapping[str, str | Path] | None = None,
    cwd: Path | None = None,
    timeout: float = RUN_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """Run `command` with `env` added to ENVIRON; fail the test with the command's output when
    it fails or times out."""
    __tracebackhide__ = True
    full_env = ENVIRON | {name: str(value) for name, value in (env or {}).items()}
    shown = shlex.join(str(part) for part in command)
    try:
        result = subprocess.run(
            [str(part) for part in command],
            env=full_env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"`{shown}` timed out after {timeout} s\n"
            f"--- stdout\n{_text(exc.stdout)}\n--- stderr\n{_text(exc.stderr)}"
        )
    if result.returncode != 0:
        pytest.fail(
            f"`{shown}` exited {result.returncode}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    return result


def _text(output: bytes | str | None) -> str:
    """TimeoutExpired carries the partial output as bytes, even for a text run."""
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""
