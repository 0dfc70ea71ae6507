"""detect_self_update on real layouts: venvs made with `python -m venv`, holding a copy of the
`agent` package and the dist-info pip writes, plus the marker files that pipx and uv really
write (taken from pipx 1.18 and uv 0.13 installs of this project's wheel)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest

import agent
from agent.machine.selfupdate import detect_self_update
from agent.protocol.models import SelfUpdate

PACKAGE = Path(agent.__file__).resolve().parent
CHECKOUT = PACKAGE.parent
PYTHON_DIR = f"python{sys.version_info.major}.{sys.version_info.minor}"
WHEEL_URL = "file:///tmp/wheels/envagent-0.1.0-py3-none-any.whl"


def make_venv(prefix: Path) -> Path:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(prefix)],
        check=True,
        capture_output=True,
    )
    return prefix.resolve()


def site_packages(prefix: Path) -> Path:
    return prefix / "lib" / PYTHON_DIR / "site-packages"


def install_copy(site: Path, direct_url: dict[str, Any] | None = None) -> Path:
    """Put what pip leaves in a site folder there: the package and its dist-info."""
    shutil.copytree(PACKAGE, site / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    dist_info = site / "envagent-0.1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: envagent\nVersion: 0.1.0\n")
    (dist_info / "INSTALLER").write_text("pip\n")
    if direct_url is not None:
        (dist_info / "direct_url.json").write_text(json.dumps(direct_url))
    return site / "agent"


def check(
    result: SelfUpdate,
    *,
    supported: bool,
    writable: bool,
    install_path: Path,
    manual_command: str | None,
    reason: str | None,
) -> None:
    """All five keys; `reason` is a fragment of the expected sentence, or None for no key."""
    wire = result.to_wire()
    assert (result.supported, result.writable) == (supported, writable), result.reason
    assert result.install_path == str(install_path)
    assert result.manual_command == manual_command
    if reason is None:
        assert "reason" not in wire
    else:
        assert result.reason is not None
        assert reason in result.reason


def test_plain_venv(tmp_path: Path) -> None:
    venv = make_venv(tmp_path / "venv")
    package = install_copy(site_packages(venv))
    check(
        detect_self_update(package, venv),
        supported=True,
        writable=True,
        install_path=venv,
        manual_command=f"{venv}/bin/python -m pip install -U envagent",
        reason=None,
    )


def test_defaults_from_inside_a_venv(tmp_path: Path) -> None:
    """Run by the venv's own interpreter, the defaults (this package, sys.prefix) find the venv."""
    venv = make_venv(tmp_path / "venv")
    site = site_packages(venv)
    install_copy(site)
    # pydantic and friends come from the project's environment, after the venv's own folder.
    (site / "deps.pth").write_text(str(Path(pydantic.__file__).resolve().parent.parent) + "\n")
    code = (
        "from agent.machine.selfupdate import detect_self_update; "
        "print(detect_self_update().to_json())"
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    check(
        SelfUpdate.model_validate_json(result.stdout),
        supported=True,
        writable=True,
        install_path=venv,
        manual_command=f"{venv}/bin/python -m pip install -U envagent",
        reason=None,
    )


def pipx_metadata(venv: Path, name: str) -> dict[str, Any]:
    """The shape pipx 1.18 writes to <venv>/pipx_metadata.json (lists trimmed)."""
    app = {"__Path__": str(venv / "bin" / "envagent"), "__type__": "Path"}
    return {
        "backend": "uv",
        "environment": name,
        "exposure_enabled": True,
        "injected_packages": {},
        "main_package": {
            "app_paths": [app],
            "apps": ["envagent"],
            "include_apps": True,
            "include_dependencies": False,
            "package": "envagent",
            "package_or_url": WHEEL_URL,
            "package_version": "0.1.0",
            "pinned": False,
            "pip_args": [],
            "suffix": name.removeprefix("envagent"),
        },
        "pipx_metadata_version": "0.12",
        "python_version": f"Python {sys.version.split()[0]}",
        "source_interpreter": {"__Path__": sys.executable, "__type__": "Path"},
        "venv_args": [],
    }


@pytest.mark.parametrize("name", ["envagent", "envagent@2"])  # @2: `pipx install --suffix @2`
def test_pipx_install(tmp_path: Path, name: str) -> None:
    venv = make_venv(tmp_path / "pipx-home" / "venvs" / name)
    (venv / "pipx_metadata.json").write_text(json.dumps(pipx_metadata(venv, name), indent=4))
    package = install_copy(site_packages(venv), {"url": WHEEL_URL, "archive_info": {}})
    check(
        detect_self_update(package, venv),
        supported=True,
        writable=True,
        install_path=venv,
        manual_command=f"pipx upgrade {name}",
        reason=None,
    )


def test_uv_tool_install(tmp_path: Path) -> None:
    tools = tmp_path / "uv" / "tools"
    venv = make_venv(tools / "envagent")
    bin_dir = tmp_path / "uv" / "bin"
    (venv / "uv-receipt.toml").write_text(
        textwrap.dedent(f"""\
            [tool]
            requirements = [{{ name = "envagent", path = "{WHEEL_URL[7:]}" }}]
            entrypoints = [
                {{ name = "envagent", install-path = "{bin_dir}/envagent", from = "envagent" }},
            ]
        """)
    )
    package = install_copy(site_packages(venv), {"url": WHEEL_URL, "archive_info": {}})
    check(
        detect_self_update(package, venv),
        supported=True,
        writable=True,
        install_path=venv,
        manual_command="uv tool upgrade envagent",
        reason=None,
    )


def make_checkout(path: Path) -> Path:
    """A git checkout of the project: the package, pyproject.toml and a repository."""
    path.mkdir(parents=True)
    shutil.copytree(PACKAGE, path / "agent", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(CHECKOUT / "pyproject.toml", path / "pyproject.toml")
    subprocess.run(["git", "init", "--quiet", str(path)], check=True, capture_output=True)
    return path.resolve()


@pytest.mark.parametrize("mode", ["lenient", "strict"])
def test_editable_install(tmp_path: Path, mode: str) -> None:
    """`pip install -e`: the metadata is in the venv, the package in the checkout (lenient) or
    in a link tree under the checkout's build folder (setuptools' strict editable mode)."""
    checkout = make_checkout(tmp_path / "src" / "envagent")
    venv = make_venv(tmp_path / "venv")
    site = site_packages(venv)
    site.joinpath("envagent-0.1.0.dist-info").mkdir()
    site.joinpath("envagent-0.1.0.dist-info", "METADATA").write_text(
        "Metadata-Version: 2.1\nName: envagent\nVersion: 0.1.0\n"
    )
    site.joinpath("envagent-0.1.0.dist-info", "direct_url.json").write_text(
        json.dumps({"dir_info": {"editable": True}, "url": checkout.as_uri()})
    )
    package = checkout / "agent"
    if mode == "strict":
        link_tree = checkout / "build" / "__editable__.envagent-0.1.0-py3-none-any"
        shutil.copytree(package, link_tree / "agent")
        package = link_tree / "agent"
    (site / "__editable__.envagent-0.1.0.pth").write_text(str(package.parent) + "\n")
    check(
        detect_self_update(package, venv),
        supported=False,
        writable=True,
        install_path=checkout,
        manual_command=(
            f"git -C {checkout} pull && {venv}/bin/python -m pip install -e {checkout}"
        ),
        reason="source checkout",
    )


def test_this_checkout_by_default() -> None:
    """The tests run this project from its checkout, so the defaults must say so."""
    result = detect_self_update()
    assert (result.supported, result.install_path) == (False, str(CHECKOUT))
    assert result.manual_command is not None
    assert result.manual_command.startswith(f"git -C {CHECKOUT} pull && ")
    assert result.manual_command.endswith(f" -m pip install -e {CHECKOUT}")
    assert result.reason is not None
    assert result.writable == (os.access(CHECKOUT, os.W_OK) and os.access(CHECKOUT.parent, os.W_OK))


def test_source_tree_that_is_not_a_git_checkout(tmp_path: Path) -> None:
    tree = tmp_path / "unpacked"
    shutil.copytree(PACKAGE, tree / "agent")
    venv = make_venv(tmp_path / "venv")
    check(
        detect_self_update(tree / "agent", venv),
        supported=False,
        writable=True,
        install_path=tree,
        manual_command=None,
        reason="not a git checkout",
    )


@pytest.mark.parametrize("marker", ["EXTERNALLY-MANAGED", "dist-packages"])
def test_system_package(tmp_path: Path, marker: str) -> None:
    """A distribution's Python: an EXTERNALLY-MANAGED stdlib (PEP 668) or Debian's dist-packages."""
    prefix = tmp_path / "usr"
    if marker == "dist-packages":
        site = prefix / "lib" / "python3" / "dist-packages"
    else:
        site = prefix / "lib" / PYTHON_DIR / "site-packages"
        site.mkdir(parents=True)
        (site.parent / "EXTERNALLY-MANAGED").write_text("[externally-managed]\nError=apt\n")
    package = install_copy(site)
    check(
        detect_self_update(package, prefix),
        supported=False,
        writable=True,
        install_path=package,
        manual_command=None,
        reason="package manager",
    )


def test_python_installation_itself(tmp_path: Path) -> None:
    """pip install into an interpreter's own site-packages (e.g. a pyenv version), no venv."""
    prefix = tmp_path / "python"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "python3").symlink_to(sys.executable)
    package = install_copy(site_packages(prefix))
    check(
        detect_self_update(package, prefix),
        supported=False,
        writable=True,
        install_path=package,
        manual_command=f"{prefix}/bin/python3 -m pip install -U envagent",
        reason="not into a virtual environment",
    )


def test_package_outside_the_environment(tmp_path: Path) -> None:
    """`pip install --user`: the package sits in ~/.local, not in the interpreter's prefix."""
    venv = make_venv(tmp_path / "venv")
    package = install_copy(tmp_path / "home" / ".local" / "lib" / PYTHON_DIR / "site-packages")
    check(
        detect_self_update(package, venv),
        supported=False,
        writable=True,
        install_path=package,
        manual_command=None,
        reason="outside the Python environment",
    )


def test_unreadable_metadata_is_not_editable(tmp_path: Path) -> None:
    venv = make_venv(tmp_path / "venv")
    package = install_copy(site_packages(venv))
    (package.parent / "envagent-0.1.0.dist-info" / "direct_url.json").write_text("{not json")
    assert detect_self_update(package, venv).supported


def test_odd_layout_never_raises(tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    check(
        detect_self_update(loop / "agent", tmp_path),
        supported=False,
        writable=False,
        install_path=loop / "agent",
        manual_command=None,
        reason="could not be inspected",
    )


@pytest.mark.parametrize("target", ["install", "parent"])
def test_unwritable_install(
    tmp_path: Path, make_unwritable: Callable[[Path], None], target: str
) -> None:
    venv = make_venv(tmp_path / "envs" / "envagent")
    package = install_copy(site_packages(venv))
    locked = venv if target == "install" else venv.parent
    make_unwritable(locked)
    check(
        detect_self_update(package, venv),
        supported=True,
        writable=False,
        install_path=venv,
        manual_command=f"{venv}/bin/python -m pip install -U envagent",
        reason=f"{locked} is not writable by this user.",
    )


def test_read_only_mount(tmp_path: Path) -> None:
    """The venv bind-mounted read-only in a private mount namespace (root, or a user namespace)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare to make a private read-only mount")
    venv = make_venv(tmp_path / "venv")
    package = install_copy(site_packages(venv))
    code = (
        "import sys; from pathlib import Path; "
        "from agent.machine.selfupdate import detect_self_update; "
        "print(detect_self_update(Path(sys.argv[1]), Path(sys.argv[2])).to_json())"
    )
    shell = 'mount --bind -o ro "$1" "$1" || exit 77; shift; exec "$@"'
    namespace = ["unshare", "--mount", *([] if os.geteuid() == 0 else ["--map-root-user"])]
    python = [sys.executable, "-c", code, str(package), str(venv)]
    result = subprocess.run(
        [*namespace, "sh", "-c", shell, "sh", str(venv), *python],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode == 77 or result.stderr.startswith("unshare:"):
        pytest.skip(f"a private read-only mount is not possible here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    check(
        SelfUpdate.model_validate_json(result.stdout),
        supported=True,
        writable=False,
        install_path=venv,
        manual_command=f"{venv}/bin/python -m pip install -U envagent",
        reason=f"{venv} is on a read-only file system.",
    )
