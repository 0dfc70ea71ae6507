"""MetadataCollector on real repositories: every key, fresh git on each collect, cached node."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.machine.metadata import MetadataCollector, os_name
from agent.machine.node import NodeInfo
from tests.helpers import (
    git,
    git_identity,  # noqa: F401  # autouse: commits need an author
    make_repo,
)

NODE = NodeInfo("v22.19.0", "/opt/node/bin/node", "nvm")
COMMANDS = ("restart", "show_status")


class CountingFinder:
    """A node finder that counts its calls; optionally holds until released."""

    def __init__(self, hold: threading.Event | None = None) -> None:
        self.calls = 0
        self._hold = hold

    def __call__(self) -> NodeInfo:
        self.calls += 1
        if self._hold is not None:
            assert self._hold.wait(timeout=10), "the test never released the finder"
        return NODE


def collector(workdir: Path, finder: Callable[[], NodeInfo] | None = None) -> MetadataCollector:
    return MetadataCollector(workdir, "1.2.3", COMMANDS, node_finder=finder or CountingFinder())


async def test_every_key_is_sent(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    wire = (await collector(repo).collect()).to_wire()
    assert set(wire) == {
        "os",
        "nodeVersion",
        "lettaCodeVersion",
        "gitBranch",
        "workingDirectory",
        "self_update",
        "supported_commands",
    }
    assert wire["os"] == os_name()
    assert wire["nodeVersion"] == NODE.version
    assert wire["lettaCodeVersion"] == "1.2.3"
    assert wire["gitBranch"] == "main"
    assert wire["workingDirectory"] == str(repo)
    assert set(wire["self_update"]) >= {"supported", "writable", "install_path", "manual_command"}
    assert wire["supported_commands"] == list(COMMANDS)


async def test_null_values_are_sent_not_left_out(tmp_path: Path) -> None:
    """Outside a repository, with no node: the keys are there, as null."""
    plain = tmp_path / "plain"
    plain.mkdir()
    found = await collector(plain, lambda: NodeInfo(None, None, "none")).collect()
    wire = found.to_wire()
    assert (wire["gitBranch"], wire["nodeVersion"]) == (None, None)


async def test_branch_switch_shows_at_the_next_collect(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    metadata = collector(repo)
    assert (await metadata.collect()).git_branch == "main"
    git(repo, "checkout", "--quiet", "-b", "feature")
    assert (await metadata.collect()).git_branch == "feature"
    git(repo, "checkout", "--quiet", "--detach")
    assert (await metadata.collect()).git_branch is None


async def test_changed_workdir_shows_at_the_next_collect(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    plain = tmp_path / "plain"
    plain.mkdir()
    metadata = collector(repo)
    first = await metadata.collect()
    metadata.workdir = plain
    second = await metadata.collect()
    assert (first.git_branch, first.working_directory) == ("main", str(repo))
    assert (second.git_branch, second.working_directory) == (None, str(plain))


async def test_relative_workdir_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_repo(tmp_path / "repo")
    monkeypatch.chdir(tmp_path)
    found = await collector(Path("repo")).collect()
    assert found.working_directory == str(tmp_path / "repo")
    assert found.git_branch == "main"


async def test_node_is_found_once(tmp_path: Path) -> None:
    finder = CountingFinder()
    metadata = collector(tmp_path, finder)
    assert metadata.node is None
    await asyncio.gather(*(metadata.collect() for _ in range(3)))
    await metadata.collect()
    metadata.collect_now()
    assert finder.calls == 1
    assert metadata.node == NODE


async def test_self_update_is_worked_out_once(tmp_path: Path) -> None:
    metadata = collector(tmp_path)
    first = await metadata.collect()
    second = await metadata.collect()
    assert first.self_update is not None
    assert first.self_update is second.self_update


async def test_node_search_does_not_block_the_loop(tmp_path: Path) -> None:
    """While the finder is stuck in its thread, the event loop keeps running other tasks."""
    release = threading.Event()
    finder = CountingFinder(hold=release)
    pending = asyncio.create_task(collector(tmp_path, finder).collect())
    ticks = 0
    while finder.calls == 0 or ticks < 10:
        await asyncio.sleep(0.001)
        ticks += 1
        assert ticks < 5000, "the finder never started"
    assert not pending.done()
    release.set()
    assert (await asyncio.wait_for(pending, timeout=10)).node_version == NODE.version


def test_collect_now_matches_collect(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    metadata = collector(repo)
    assert metadata.collect_now() == asyncio.run(metadata.collect())


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        ("linux", "linux"),
        ("darwin", "darwin"),
        ("win32", "win32"),
        ("cygwin", "win32"),
        ("freebsd14", "freebsd"),
    ],
)
def test_os_name_uses_nodes_words(platform: str, expected: str) -> None:
    assert os_name(platform) == expected


def test_os_name_of_this_machine() -> None:
    assert os_name() in ("linux", "darwin", "win32")
    assert os_name() == os_name(sys.platform)
