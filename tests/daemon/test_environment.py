"""What the platform is told about the machine: the persisted mode, the working directory the
platform may change, and knowing when the platform's picture is out of date."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.daemon.commands import Commands
from agent.daemon.environment import Environment
from agent.daemon.state import StateStore
from agent.machine.metadata import MetadataCollector
from agent.machine.node import NodeInfo
from agent.protocol.models import ChangeDeviceStateFrame, Mode


def _environment(tmp_path: Path, mode: Mode | None = None) -> Environment:
    collector = MetadataCollector(
        tmp_path, "1.0.0", Commands.NAMES, node_finder=lambda: NodeInfo(None, None, "none")
    )
    store = StateStore(tmp_path / "state.json")
    environment = Environment(store, store.load(), "box", collector)
    return environment


def _change(**payload: str) -> ChangeDeviceStateFrame:
    return ChangeDeviceStateFrame.model_validate(
        {"type": "change_device_state", "payload": payload}
    )


async def test_a_mode_from_the_settings_is_persisted_at_load(tmp_path: Path) -> None:
    collector = MetadataCollector(tmp_path, "1.0.0", Commands.NAMES)
    store = StateStore(tmp_path / "state.json")
    environment = await Environment.load(store, "acceptEdits", "box", collector)
    assert environment.mode == "acceptEdits"
    assert StateStore(tmp_path / "state.json").load().mode == "acceptEdits"
    unchanged = await Environment.load(StateStore(tmp_path / "state.json"), None, "box", collector)
    assert unchanged.mode == "acceptEdits", "no mode in the settings keeps the persisted one"


async def test_set_mode_persists_and_asks_for_a_report(tmp_path: Path) -> None:
    environment = _environment(tmp_path)
    assert environment.mode == "default"
    await environment.set_mode("bypassPermissions", "a test")
    assert environment.changed.is_set()
    assert StateStore(tmp_path / "state.json").load().mode == "bypassPermissions"
    environment.changed.clear()
    await environment.set_mode("bypassPermissions", "a test")
    assert environment.changed.is_set(), "the same mode is reported again: the last one wins"


async def test_refresh_is_true_only_while_the_platform_s_picture_is_out_of_date(
    tmp_path: Path,
) -> None:
    environment = _environment(tmp_path)
    assert await environment.refresh(), "nothing was reported yet"
    status = await environment.device_status("conn-1")
    assert status.current_connection_id == "conn-1" and status.connection_name == "box"
    assert status.current_permission_mode == environment.mode
    assert not await environment.refresh()
    (tmp_path / "elsewhere").mkdir()
    await environment.change_device_state(_change(cwd=str(tmp_path / "elsewhere")))
    assert environment.metadata.working_directory == str(tmp_path / "elsewhere")
    assert await environment.refresh()


async def test_the_platform_changes_mode_and_working_directory_in_one_frame(
    tmp_path: Path,
) -> None:
    environment = _environment(tmp_path)
    (tmp_path / "work").mkdir()
    await environment.change_device_state(_change(mode="acceptEdits", cwd=str(tmp_path / "work")))
    assert (environment.mode, environment.workdir) == ("acceptEdits", tmp_path / "work")


@pytest.mark.parametrize("where", ["relative/dir", "missing", "a-file"])
async def test_a_working_directory_that_is_not_an_absolute_folder_is_ignored(
    tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "envagent")
    (tmp_path / "a-file").write_text("not a folder")
    environment = _environment(tmp_path)
    cwd = where if where.startswith("relative") else str(tmp_path / where)
    await environment.change_device_state(_change(cwd=cwd))
    assert environment.workdir == tmp_path
    assert "ignored a working directory that is not an absolute folder" in caplog.text
