"""Where envagent keeps its files (agent/support/paths.py): the XDG base directory rules, and a
listener instance's file names, which must stay plain names inside the state folder whatever
the id."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.support.paths import config_dir, instance_file, platform_state_dir, state_dir


def test_absolute_xdg_folders_are_used(tmp_path: Path) -> None:
    assert state_dir() == tmp_path / "state" / "envagent"  # conftest's XDG_STATE_HOME
    assert config_dir() == tmp_path / "config" / "envagent"
    assert platform_state_dir() == tmp_path / "state" / "envagent" / "platform"


@pytest.mark.parametrize("value", ["", "relative/state", "./state", "~/state"])
def test_an_unset_or_relative_xdg_folder_is_ignored_for_the_home_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """The XDG spec: a relative value is invalid and must be ignored (it would depend on the
    folder the command happens to run in)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", value)
    monkeypatch.setenv("XDG_CONFIG_HOME", value)
    assert state_dir() == tmp_path / "home" / ".local" / "state" / "envagent"
    assert config_dir() == tmp_path / "home" / ".config" / "envagent"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert state_dir() == tmp_path / "home" / ".local" / "state" / "envagent"


def test_the_default_daemon_and_a_plain_instance_id_keep_readable_names() -> None:
    assert instance_file("local-api", None, ".json") == state_dir() / "local-api.json"
    assert instance_file("local-api-token", None) == state_dir() / "local-api-token"
    assert instance_file("local-api", "work", ".json") == state_dir() / "local-api-work.json"
    longest = "a" * 64
    assert instance_file("state", longest, ".json").name == f"state-{longest}.json"


def reduced(instance_id: str) -> str:
    """The name part `instance_file` gives an id that is not a plain file name."""
    return hashlib.sha256(instance_id.encode()).hexdigest()[:12]


@pytest.mark.parametrize(
    "instance_id",
    ["a" * 65, "../../etc/passwd", "a/b", "", "é", "x\x00y", "C:\\work", "name with spaces"],
    ids=["65-chars", "traversal", "slash", "empty", "non-ascii", "nul", "backslash", "spaces"],
)
def test_any_other_id_becomes_a_plain_name_in_the_state_folder_with_its_hash(
    instance_id: str,
) -> None:
    path = instance_file("state", instance_id, ".json")
    assert path.parent == state_dir()
    assert path.name.startswith("state-") and path.name.endswith(f"-{reduced(instance_id)}.json")
    assert all(character.isascii() and character not in "/\\\x00 " for character in path.name)


def test_a_huge_id_still_gives_a_short_name() -> None:
    """A file name over 255 bytes would fail every open with ENAMETOOLONG."""
    path = instance_file("local-api-token", "x" * 100_000)
    assert path.name == f"local-api-token-{'x' * 48}-{reduced('x' * 100_000)}"


def test_ids_that_reduce_alike_keep_apart() -> None:
    ids = ["a/b", "a:b", "a b", "a_b", "", "_"]
    names = {instance_file("state", instance_id, ".json") for instance_id in ids}
    assert len(names) == len(ids)
    assert instance_file("state", "", ".json") != instance_file("state", None, ".json")


@pytest.mark.parametrize("instance_id", [".", ".."])
def test_dot_ids_are_names_inside_the_state_folder(instance_id: str) -> None:
    path = instance_file("state", instance_id)
    assert path.parent == state_dir() and path.name == f"state-{instance_id}"
    assert path.resolve().parent == state_dir().resolve()
