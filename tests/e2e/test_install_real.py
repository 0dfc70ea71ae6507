"""What a real install says about itself: this project's wheel installed with the real pipx (with
each of its two backends), uv and pip, then `envagent metadata` run from the install
(docs/protocol.md, "Metadata"). tests/machine/test_selfupdate.py covers every layout with
hand-made copies; this file shows that the tools really produce the pipx, uv tool and venv
layouts detected there.

The installs fetch the dependencies from the package registry, as a person's would. They are
independent, so they all start when the first test needs one, and each test waits for its own.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from agent import __version__
from tests.install_helpers import INSTALL_TIMEOUT_S, copy_project, run

# Fixture set-up (the wheel and the installs) counts toward the first test's timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2 * INSTALL_TIMEOUT_S + 120)]


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This project's wheel, built from a copy of its files."""
    source = copy_project(tmp_path_factory.mktemp("source"))
    dist = tmp_path_factory.mktemp("dist")
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", dist, source],
        cwd=dist,
        timeout=INSTALL_TIMEOUT_S,
    )
    (built,) = dist.glob("envagent-*.whl")
    return built


@dataclass(frozen=True)
class Install:
    """A finished install: where `self_update` must point, and how to run the daemon."""

    install_path: Path
    daemon: Path  # the envagent script inside the install
    launcher: Path  # the envagent a person runs (the tool's bin folder)
    manual_command: str


def install_pipx(wheel: Path, root: Path, backend: str) -> Install:
    """`pipx install`. A pipx that finds uv (the test extra installs it) uses it as its backend
    for new venvs; the pip backend is what a pipx without uv uses. Both are forced here."""
    home, bin_dir = root / "pipx-home", root / "pipx-bin"
    env = {
        "PIPX_HOME": home,
        "PIPX_BIN_DIR": bin_dir,
        "PIPX_MAN_DIR": root / "pipx-man",
        "PIPX_DEFAULT_BACKEND": backend,
        "UV_CACHE_DIR": root.parent / "uv-cache",  # one for the session's installs
        "UV_PYTHON_DOWNLOADS": "never",
    }
    run([sys.executable, "-m", "pipx", "install", wheel], env, root, INSTALL_TIMEOUT_S)
    venv = (home / "venvs" / "envagent").resolve()
    recorded = json.loads((venv / "pipx_metadata.json").read_text()).get("backend")
    assert recorded == backend, f"pipx used the {recorded} backend, not {backend}"
    return Install(venv, venv / "bin" / "envagent", bin_dir / "envagent", "pipx upgrade envagent")


def install_uv_tool(wheel: Path, root: Path) -> Install:
    """`uv tool install`, with this interpreter, since uv must not download a Python. uv does
    not read pip's configuration: it uses PyPI, which this machine reaches and which holds every
    dependency, or the UV_INDEX_URL / UV_DEFAULT_INDEX of the environment."""
    tools, bin_dir = root / "uv-tools", root / "uv-bin"
    env = {
        "UV_TOOL_DIR": tools,
        "UV_TOOL_BIN_DIR": bin_dir,
        "UV_CACHE_DIR": root.parent / "uv-cache",  # one for the session's installs
        "UV_PYTHON_DOWNLOADS": "never",
    }
    uv = [sys.executable, "-m", "uv"]
    run([*uv, "tool", "install", "--python", sys.executable, wheel], env, root, INSTALL_TIMEOUT_S)
    venv = (tools / "envagent").resolve()
    assert (venv / "uv-receipt.toml").is_file()
    return Install(
        venv, venv / "bin" / "envagent", bin_dir / "envagent", "uv tool upgrade envagent"
    )


def install_venv(wheel: Path, root: Path) -> Install:
    """`python -m venv`, then the venv's own pip."""
    venv = root / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=root, timeout=INSTALL_TIMEOUT_S)
    run([venv / "bin" / "pip", "install", wheel], cwd=root, timeout=INSTALL_TIMEOUT_S)
    venv = venv.resolve()
    python = shlex.quote(str(venv / "bin" / "python"))
    daemon = venv / "bin" / "envagent"
    return Install(venv, daemon, daemon, f"{python} -m pip install -U envagent")


INSTALLS = {
    "pipx-pip": partial(install_pipx, backend="pip"),
    "pipx-uv": partial(install_pipx, backend="uv"),
    "uv-tool": install_uv_tool,
    "venv": install_venv,
}


@pytest.fixture(scope="session")
def installs(
    wheel: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[dict[str, Future[Install]]]:
    """The installs of the selected tests, started at once; a test waits for its own, whose
    failure is its own."""
    selected = {
        item.callspec.params["name"]
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.function is test_installed_daemon_reports_its_install
    }
    root = tmp_path_factory.mktemp("installs").resolve()
    with ThreadPoolExecutor(max_workers=len(INSTALLS)) as pool:
        futures = {}
        for name in sorted(selected):
            (root / name).mkdir()
            futures[name] = pool.submit(INSTALLS[name], wheel, root / name)
        yield futures


@pytest.mark.parametrize("name", list(INSTALLS))
def test_installed_daemon_reports_its_install(
    installs: dict[str, Future[Install]], name: str, tmp_path: Path
) -> None:
    install = installs[name].result()
    env = {"XDG_STATE_HOME": tmp_path / "state", "XDG_CONFIG_HOME": tmp_path / "config"}
    workdir = tmp_path / "work"
    workdir.mkdir()

    result = run([install.daemon, "metadata", "--workdir", workdir], env, tmp_path)
    metadata: dict[str, Any] = json.loads(result.stdout)
    assert metadata["workingDirectory"] == str(workdir.resolve())
    assert metadata["self_update"] == {
        "supported": True,
        "writable": True,
        "install_path": str(install.install_path),
        "manual_command": install.manual_command,
    }, result.stdout

    version = run([install.launcher, "--version"], env, tmp_path)
    assert version.stdout.split() == ["envagent", __version__], version.stdout
