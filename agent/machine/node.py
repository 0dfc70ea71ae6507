"""Find Node.js the way a person's shell would, even from a service whose PATH is bare.

systemd and launchd start services with a minimal PATH, so after PATH the usual version-manager
folders are searched (nvm, fnm, volta, asdf), each manager's default version first, then the
highest installed one. A candidate counts only if `node --version` answers like `v22.19.0`
within the timeout.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from agent.protocol.models import parse_json
from agent.support import proc

FoundVia = Literal["PATH", "nvm", "fnm", "volta", "asdf", "none"]

_VERSION_OUTPUT = re.compile(r"v\d+\.\d+\.\d+(?:-[0-9A-Za-z.]+)?")
_VERSION_PREFIX = re.compile(r"v?(\d+)(?:\.(\d+))?(?:\.(\d+))?")
_MAX_ALIAS_HOPS = 5


@dataclass(frozen=True)
class NodeInfo:
    """The node that was found, or `NodeInfo(None, None, "none")`."""

    version: str | None
    path: str | None
    found_via: FoundVia


def find_node(
    path_env: str | None = None, home: Path | None = None, timeout_s: float = 2.0
) -> NodeInfo:
    """Find a working node on `path_env` (default: $PATH), else under `home`'s version managers.

    Blocking; never raises. A candidate that hangs, crashes, fails or prints something else than
    a version is skipped.
    """
    if path_env is None:
        path_env = os.environ.get("PATH", os.defpath)
    seen: set[str] = set()
    for found_via, candidate in _candidates(path_env, home):
        real = os.path.realpath(candidate)
        if real in seen:
            continue
        seen.add(real)
        version = _node_version(candidate, timeout_s)
        if version is not None:
            return NodeInfo(version, str(candidate), found_via)
    return NodeInfo(None, None, "none")


def _candidates(path_env: str, home: Path | None) -> Iterator[tuple[FoundVia, Path]]:
    """Executable node files in search order: PATH, then each version manager."""
    on_path = shutil.which("node", path=path_env)
    if on_path:
        yield "PATH", Path(on_path)
    home = _home() if home is None else home
    if home is None:
        return
    managers: tuple[tuple[FoundVia, Callable[[Path, Mapping[str, str]], list[Path]]], ...] = (
        ("nvm", _nvm),
        ("fnm", _fnm),
        ("volta", _volta),
        ("asdf", _asdf),
    )
    for found_via, binaries in managers:
        for binary in binaries(home, os.environ):
            # os.path's checks answer False where Path's raise (an unreadable folder).
            if os.path.isfile(binary) and os.access(binary, os.X_OK):
                yield found_via, binary


def _home() -> Path | None:
    try:
        return Path.home()
    except RuntimeError:  # no $HOME and no password entry: nothing to search
        return None


def _nvm(home: Path, env: Mapping[str, str]) -> list[Path]:
    root = Path(env.get("NVM_DIR") or home / ".nvm")
    return _binaries(root / "versions" / "node", "bin/node", _nvm_default(root / "alias"))


def _nvm_default(alias_dir: Path) -> str | None:
    """What `nvm alias default` names, following chains such as default -> lts/* -> lts/iron."""
    value = "default"
    for _ in range(_MAX_ALIAS_HOPS):
        try:
            value = (alias_dir / value).read_text(errors="replace").strip()
        except (OSError, ValueError):
            break
    return None if value == "default" else value


def _fnm(home: Path, env: Mapping[str, str]) -> list[Path]:
    data_home = Path(env.get("XDG_DATA_HOME") or home / ".local" / "share")
    roots = [
        *([Path(env["FNM_DIR"])] if env.get("FNM_DIR") else []),
        data_home / "fnm",
        home / ".local" / "share" / "fnm",
        home / "Library" / "Application Support" / "fnm",
        home / ".fnm",
    ]
    found: list[Path] = []
    for root in roots:
        # aliases/default is a symlink to the default version's installation folder.
        found.append(root / "aliases" / "default" / "bin" / "node")
        found.extend(_binaries(root / "node-versions", "installation/bin/node", None))
    return found


def _volta(home: Path, env: Mapping[str, str]) -> list[Path]:
    root = Path(env.get("VOLTA_HOME") or home / ".volta")
    images = _binaries(root / "tools" / "image" / "node", "bin/node", _volta_default(root))
    # The shim runs volta itself, which may be missing; real images come first.
    return [*images, root / "bin" / "node"]


def _volta_default(root: Path) -> str | None:
    """The `node.runtime` that `volta install node` recorded in platform.json."""
    try:
        platform = parse_json((root / "tools" / "user" / "platform.json").read_bytes())
    except (OSError, ValueError):
        return None
    node = platform.get("node") if isinstance(platform, dict) else None
    runtime = node.get("runtime") if isinstance(node, dict) else None
    return runtime if isinstance(runtime, str) else None


def _asdf(home: Path, env: Mapping[str, str]) -> list[Path]:
    root = Path(env.get("ASDF_DATA_DIR") or home / ".asdf")
    tool_versions = home / env.get("ASDF_DEFAULT_TOOL_VERSIONS_FILENAME", ".tool-versions")
    return _binaries(root / "installs" / "nodejs", "bin/node", _asdf_default(tool_versions))


def _asdf_default(tool_versions: Path) -> str | None:
    """The first nodejs version of the global .tool-versions file."""
    try:
        lines = tool_versions.read_text(errors="replace").splitlines()
    except (OSError, ValueError):
        return None
    for line in lines:
        words = line.split("#", 1)[0].split()
        if len(words) >= 2 and words[0] == "nodejs":
            return words[1]
    return None


def _binaries(versions_dir: Path, relative: str, preferred: str | None) -> list[Path]:
    """`<version>/<relative>` for each version folder: `preferred` first, then highest first.

    Versions compare as numbers (v20 above v9); `preferred` may be partial ("20" or "20.11").
    """
    try:
        folders = [folder for folder in versions_dir.iterdir() if os.path.isdir(folder)]
    except OSError:
        return []
    wanted = _version_key(preferred) if preferred else ()

    def order(folder: Path) -> tuple[bool, tuple[int, ...]]:
        key = _version_key(folder.name)
        return bool(wanted) and key[: len(wanted)] == wanted, key

    return [folder / relative for folder in sorted(folders, key=order, reverse=True)]


def _version_key(name: str) -> tuple[int, ...]:
    """(20, 11, 1) for "v20.11.1" or "20.11.1"; () when `name` is not a version."""
    match = _VERSION_PREFIX.match(name)
    if match is None:
        return ()
    return tuple(int(part) for part in match.groups() if part is not None)


def _node_version(node: Path, timeout_s: float) -> str | None:
    """`node --version`, or None when it hangs, crashes, fails or prints something unexpected."""
    ran = proc.run([str(node), "--version"], timeout_s=timeout_s, output="stdout")
    if not ran.ok:
        return None
    text = ran.output.strip()
    return text if _VERSION_OUTPUT.fullmatch(text) else None
