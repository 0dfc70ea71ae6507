"""Whether this install may upgrade itself, and how a person would upgrade it (docs/protocol.md,
"Metadata").

Only installs that belong to this daemon alone are replaced: a virtual environment, a pipx
venv or a uv tool. A source checkout is its owner's work in progress, and a system package
belongs to the package manager; both are reported with the command a person would run instead.
"""

from __future__ import annotations

import importlib.metadata
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import agent
from agent.protocol.models import SelfUpdate, parse_json

DISTRIBUTION = "envagent"
_SITE_DIR_NAMES = frozenset({"site-packages", "dist-packages"})
_SYSTEM_PREFIXES = frozenset({Path("/usr"), Path("/usr/local")})


@dataclass(frozen=True)
class _Install:
    """Where the package lives, how to upgrade it, and why it must not upgrade itself."""

    path: Path
    manual_command: str | None
    unsupported_reason: str | None = None


def detect_self_update(package_dir: Path | None = None, prefix: Path | None = None) -> SelfUpdate:
    """Describe the install of the `agent` package at `package_dir` in the Python environment
    `prefix` (default: this running package and `sys.prefix`). Never raises.
    """
    package_dir = Path(agent.__file__).parent if package_dir is None else package_dir
    prefix = Path(sys.prefix) if prefix is None else prefix
    try:
        install = _classify(package_dir.resolve(), prefix.resolve())
        unwritable = _why_unwritable(install.path)
    except Exception as exc:  # an odd layout must not stop registration
        return SelfUpdate(
            supported=False,
            writable=False,
            install_path=str(package_dir),
            reason=f"The install at {package_dir} could not be inspected ({exc}).",
        )
    return SelfUpdate(
        supported=install.unsupported_reason is None,
        writable=unwritable is None,
        install_path=str(install.path),
        manual_command=install.manual_command,
        reason=install.unsupported_reason or unwritable,
    )


def _classify(package_dir: Path, prefix: Path) -> _Install:
    site_dir = package_dir.parent
    checkout = _editable_checkout(site_dir, prefix)
    if checkout is None and site_dir.name not in _SITE_DIR_NAMES:
        checkout = site_dir
    if checkout is not None:
        return _source_checkout(checkout, prefix)
    if site_dir.name == "dist-packages":
        return _system_package(package_dir)
    if not site_dir.is_relative_to(prefix):
        return _Install(
            package_dir,
            None,
            f"The package is in {site_dir}, outside the Python environment {prefix}, "
            "so it is unclear what owns it.",
        )
    if not (prefix / "pyvenv.cfg").is_file():
        if prefix in _SYSTEM_PREFIXES or any(prefix.glob("lib/python3*/EXTERNALLY-MANAGED")):
            return _system_package(package_dir)
        return _Install(
            package_dir,
            _pip_upgrade(prefix),
            f"It is installed into the Python installation {prefix} itself, "
            "not into a virtual environment of its own.",
        )
    if prefix.parent.name == "venvs" and (prefix / "pipx_metadata.json").is_file():
        return _Install(prefix, f"pipx upgrade {shlex.quote(prefix.name)}")
    if (prefix / "uv-receipt.toml").is_file():
        return _Install(prefix, f"uv tool upgrade {shlex.quote(prefix.name)}")
    return _Install(prefix, _pip_upgrade(prefix))


def _editable_checkout(site_dir: Path, prefix: Path) -> Path | None:
    """The source folder of an editable install, from the `direct_url.json` pip recorded.

    An installed package has its metadata beside it; an editable one has it in the
    environment's site-packages, while the package itself is in the source tree.
    """
    if site_dir.name in _SITE_DIR_NAMES:
        search = [str(site_dir)]
    else:
        search = [str(path) for path in prefix.glob("lib/python3*/site-packages")]
    for distribution in importlib.metadata.distributions(name=DISTRIBUTION, path=search):
        try:
            direct_url = parse_json(distribution.read_text("direct_url.json") or "{}")
        except ValueError:
            return None
        url = direct_url.get("url") if isinstance(direct_url, dict) else None
        dir_info = direct_url.get("dir_info") if isinstance(direct_url, dict) else None
        editable = isinstance(dir_info, dict) and dir_info.get("editable") is True
        if editable and isinstance(url, str) and url.startswith("file://"):
            return Path(unquote(urlparse(url).path))
        return None
    return None


def _source_checkout(checkout: Path, prefix: Path) -> _Install:
    if not any((folder / ".git").exists() for folder in (checkout, *checkout.parents)):
        return _Install(
            checkout,
            None,
            f"It runs from the source tree {checkout}, which is not a git checkout, "
            "so only its owner can update it.",
        )
    where = shlex.quote(str(checkout))
    return _Install(
        checkout,
        f"git -C {where} pull && {shlex.quote(str(_python(prefix)))} -m pip install -e {where}",
        "It runs from a source checkout (an editable install), which is updated with git, "
        "not replaced.",
    )


def _system_package(package_dir: Path) -> _Install:
    return _Install(
        package_dir,
        None,
        "It belongs to the system's package manager, which must be the one to upgrade it.",
    )


def _pip_upgrade(prefix: Path) -> str:
    return f"{shlex.quote(str(_python(prefix)))} -m pip install -U {DISTRIBUTION}"


def _python(prefix: Path) -> Path:
    """The environment's interpreter; a system prefix may only have `python3`."""
    names = (prefix / "bin" / "python", prefix / "bin" / "python3")
    return next((name for name in names if name.exists()), names[0])


def _why_unwritable(path: Path) -> str | None:
    """Why `path` or its parent cannot be replaced by this process, or None when both can.

    Root passes permission bits, but not a read-only mount or an immutable file (`chattr +i`),
    which `os.access` reports for root too; the mount flag is checked as well, to say why.
    """
    for target in (path, path.parent):
        try:
            read_only = bool(os.statvfs(target).f_flag & os.ST_RDONLY)
        except OSError as exc:
            return f"{target} cannot be inspected ({exc.strerror})."
        if read_only:
            return f"{target} is on a read-only file system."
        if not os.access(target, os.W_OK):
            return f"{target} is not writable by this user."
    return None
