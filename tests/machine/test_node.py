"""find_node against fake node executables laid out as PATH and the version managers lay them out.

Each fake node is a small shell script; versions such as v9.0.0 < v18.2.0 < v20.11.1 check that
versions are compared as numbers, not as strings.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agent.machine.node import NodeInfo, find_node

MANAGER_VARIABLES = (
    "NVM_DIR",
    "FNM_DIR",
    "VOLTA_HOME",
    "ASDF_DATA_DIR",
    "ASDF_DEFAULT_TOOL_VERSIONS_FILENAME",
    "XDG_DATA_HOME",
)


@pytest.fixture(autouse=True)
def _no_manager_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's own version-manager settings must not leak into a test."""
    for variable in MANAGER_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def empty_path(tmp_path: Path) -> str:
    """A PATH with no node on it."""
    path = tmp_path / "empty-bin"
    path.mkdir()
    return str(path)


def script(path: Path, body: str) -> Path:
    """An executable shell script at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def fake_node(path: Path, version: str) -> Path:
    return script(path, f"echo {version}")


def nvm_node(home: Path, version: str) -> Path:
    return fake_node(home / ".nvm" / "versions" / "node" / version / "bin" / "node", version)


def test_path_comes_first(tmp_path: Path, home: Path) -> None:
    on_path = fake_node(tmp_path / "bin" / "node", "v20.11.1")
    nvm_node(home, "v22.0.0")
    found = find_node(path_env=str(tmp_path / "bin"), home=home)
    assert found == NodeInfo("v20.11.1", str(on_path), "PATH")


def test_nvm_picks_the_highest_version_as_numbers(home: Path, empty_path: str) -> None:
    for version in ("v9.0.0", "v18.2.0", "v20.11.1"):
        nvm_node(home, version)
    highest = home / ".nvm" / "versions" / "node" / "v20.11.1" / "bin" / "node"
    assert find_node(path_env=empty_path, home=home) == NodeInfo("v20.11.1", str(highest), "nvm")


@pytest.mark.parametrize(
    ("aliases", "expected"),
    [
        ({"default": "18"}, "v18.2.0"),
        ({"default": "v9.0.0"}, "v9.0.0"),
        ({"default": "lts/*", "lts/*": "lts/hydrogen", "lts/hydrogen": "v18.2.0"}, "v18.2.0"),
        ({"default": "16"}, "v20.11.1"),  # not installed: the highest installed one
        ({"default": "node"}, "v20.11.1"),
    ],
)
def test_nvm_default_alias(
    home: Path, empty_path: str, aliases: dict[str, str], expected: str
) -> None:
    for version in ("v9.0.0", "v18.2.0", "v20.11.1"):
        nvm_node(home, version)
    for name, value in aliases.items():
        alias = home / ".nvm" / "alias" / name
        alias.parent.mkdir(parents=True, exist_ok=True)
        alias.write_text(value + "\n")
    found = find_node(path_env=empty_path, home=home)
    assert (found.version, found.found_via) == (expected, "nvm")


def test_nvm_dir_variable(
    tmp_path: Path, home: Path, empty_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    nvm_dir = tmp_path / "elsewhere" / "nvm"
    node = fake_node(nvm_dir / "versions" / "node" / "v18.2.0" / "bin" / "node", "v18.2.0")
    monkeypatch.setenv("NVM_DIR", str(nvm_dir))
    assert find_node(path_env=empty_path, home=home) == NodeInfo("v18.2.0", str(node), "nvm")


@pytest.mark.parametrize("root", [".local/share/fnm", ".fnm", "$FNM_DIR", "$XDG_DATA_HOME/fnm"])
def test_fnm_folders(
    tmp_path: Path, home: Path, empty_path: str, monkeypatch: pytest.MonkeyPatch, root: str
) -> None:
    if root.startswith("$"):
        variable, _, rest = root[1:].partition("/")
        monkeypatch.setenv(variable, str(tmp_path / "custom"))
        fnm_dir = tmp_path / "custom" / rest
    else:
        fnm_dir = home / root
    for version in ("v9.0.0", "v18.2.0"):
        fake_node(fnm_dir / "node-versions" / version / "installation" / "bin" / "node", version)
    found = find_node(path_env=empty_path, home=home)
    assert (found.version, found.found_via) == ("v18.2.0", "fnm")


def test_fnm_default_alias(home: Path, empty_path: str) -> None:
    versions = home / ".local" / "share" / "fnm" / "node-versions"
    for version in ("v9.0.0", "v18.2.0"):
        fake_node(versions / version / "installation" / "bin" / "node", version)
    aliases = versions.parent / "aliases"
    aliases.mkdir()
    (aliases / "default").symlink_to(versions / "v9.0.0" / "installation")
    found = find_node(path_env=empty_path, home=home)
    assert (found.version, found.found_via) == ("v9.0.0", "fnm")


def test_volta_images_highest_or_the_default(home: Path, empty_path: str) -> None:
    images = home / ".volta" / "tools" / "image" / "node"
    for version in ("9.0.0", "18.2.0", "20.11.1"):
        fake_node(images / version / "bin" / "node", f"v{version}")
    assert find_node(path_env=empty_path, home=home) == NodeInfo(
        "v20.11.1", str(images / "20.11.1" / "bin" / "node"), "volta"
    )
    platform = home / ".volta" / "tools" / "user" / "platform.json"
    platform.parent.mkdir(parents=True)
    platform.write_text(json.dumps({"node": {"runtime": "18.2.0", "npm": None}}))
    assert find_node(path_env=empty_path, home=home).version == "v18.2.0"


def test_volta_shim_when_there_is_no_image(
    tmp_path: Path, home: Path, empty_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOLTA_HOME", str(tmp_path / "volta"))
    shim = fake_node(tmp_path / "volta" / "bin" / "node", "v20.11.1")
    assert find_node(path_env=empty_path, home=home) == NodeInfo("v20.11.1", str(shim), "volta")


def test_asdf_installs_and_tool_versions(
    tmp_path: Path, home: Path, empty_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    installs = home / ".asdf" / "installs" / "nodejs"
    for version in ("9.0.0", "20.11.1"):
        fake_node(installs / version / "bin" / "node", f"v{version}")
    assert find_node(path_env=empty_path, home=home).version == "v20.11.1"
    (home / ".tool-versions").write_text("python 3.12.1\nnodejs 9.0.0  # old project\n")
    assert find_node(path_env=empty_path, home=home) == NodeInfo(
        "v9.0.0", str(installs / "9.0.0" / "bin" / "node"), "asdf"
    )
    monkeypatch.setenv("ASDF_DATA_DIR", str(tmp_path / "asdf-data"))
    moved = fake_node(
        tmp_path / "asdf-data" / "installs" / "nodejs" / "18.2.0" / "bin" / "node", "v18.2.0"
    )
    assert find_node(path_env=empty_path, home=home) == NodeInfo("v18.2.0", str(moved), "asdf")


def test_managers_are_searched_in_order(home: Path, empty_path: str) -> None:
    fake_node(home / ".asdf" / "installs" / "nodejs" / "22.0.0" / "bin" / "node", "v22.0.0")
    fake_node(home / ".volta" / "tools" / "image" / "node" / "21.0.0" / "bin" / "node", "v21.0.0")
    nvm_node(home, "v18.2.0")
    assert find_node(path_env=empty_path, home=home).found_via == "nvm"


def _gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie waiting for init counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_broken_candidates_are_skipped(tmp_path: Path, home: Path) -> None:
    """A hang (cut by the timeout, with its children), a failure, a crash, garbage output, a
    partial version and a file that is not executable are each passed over."""
    child_pid = tmp_path / "child.pid"
    script(tmp_path / "bin" / "node", f"sleep 3600 &\necho $! > {child_pid}\nwait")
    versions = home / ".nvm" / "versions" / "node"
    script(versions / "v22.0.0" / "bin" / "node", "echo v22.0.0; exit 1")
    script(versions / "v21.0.0" / "bin" / "node", "kill -SEGV $$")
    script(versions / "v20.0.0" / "bin" / "node", "echo 'node: command not found'")
    script(versions / "v19.0.0" / "bin" / "node", "echo v19.0")
    fake_node(versions / "v18.0.0" / "bin" / "node", "v18.0.0").chmod(0o644)
    works = fake_node(home / ".asdf" / "installs" / "nodejs" / "9.0.0" / "bin" / "node", "v9.0.0")

    # The hang outlasts pytest's own timeout: only the 0.5 s cut lets this call return.
    found = find_node(path_env=str(tmp_path / "bin"), home=home, timeout_s=0.5)

    assert found == NodeInfo("v9.0.0", str(works), "asdf")
    if Path("/proc/self/stat").exists():
        pid = int(child_pid.read_text())
        deadline = time.monotonic() + 5
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _gone(pid), "the hanging node's child was left running"


def test_nothing_found(home: Path, empty_path: str) -> None:
    assert find_node(path_env=empty_path, home=home) == NodeInfo(None, None, "none")


def test_only_broken_nodes_means_none(tmp_path: Path, home: Path) -> None:
    script(tmp_path / "bin" / "node", "exit 3")
    script(home / ".nvm" / "versions" / "node" / "v20.0.0" / "bin" / "node", "echo v20")
    assert find_node(path_env=str(tmp_path / "bin"), home=home) == NodeInfo(None, None, "none")


@pytest.mark.skipif(shutil.which("node") is None, reason="no node on this machine's PATH")
def test_the_machines_own_node() -> None:
    node = shutil.which("node")
    assert node is not None
    expected = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    found = find_node()
    assert found == NodeInfo(expected.stdout.strip(), node, "PATH")
