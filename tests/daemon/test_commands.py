"""The platform's commands: every one answered, an unknown one by name, a failure as an answer and
never as a crash, and no command reading the frame's arguments."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from agent.daemon.commands import Commands
from agent.daemon.config import Platform, Settings
from agent.daemon.environment import Environment
from agent.daemon.progress import Progress
from agent.daemon.state import StateStore
from agent.machine.metadata import MetadataCollector
from agent.machine.node import NodeInfo
from agent.protocol.models import DaemonStatus, ExecuteCommandFrame, Metadata


class Host:
    """A real environment, a status that may be made to fail, and restarts recorded."""

    def __init__(self, tmp_path: Path) -> None:
        collector = MetadataCollector(
            tmp_path, "1.0.0", Commands.NAMES, node_finder=lambda: NodeInfo(None, None, "none")
        )
        store = StateStore(tmp_path / "state.json")
        self.environment = Environment(store, store.load(), "box", collector)
        self.settings = Settings(workdir=tmp_path)
        self.status_failure: Exception | None = None
        self.restarts: list[str] = []

    @property
    def metadata(self) -> Metadata:
        return self.environment.metadata

    async def refresh(self) -> bool:
        return await self.environment.refresh()

    def status(self) -> DaemonStatus:
        if self.status_failure is not None:
            raise self.status_failure
        platform = Platform("http://127.0.0.1:1", "envk_x", embedded=False)
        return Progress().status(self.environment, platform, local_api="", log_file=None)

    def request_restart(self, why: str) -> None:
        self.restarts.append(why)


def _frame(command: str, **extra: object) -> ExecuteCommandFrame:
    return ExecuteCommandFrame.model_validate(
        {"type": "execute_command", "command_id": command, "request_id": "r-1", **extra}
    )


async def test_an_unknown_command_is_answered_with_the_ones_this_daemon_runs(
    tmp_path: Path,
) -> None:
    answer = await Commands(Host(tmp_path)).run(_frame("rm_rf"))
    assert (answer.request_id, answer.success) == ("r-1", False)
    assert answer.output == (
        "unknown command 'rm_rf': this daemon runs refresh_metadata, get_status, upgrade"
    )


async def test_get_status_answers_the_status_and_never_reads_the_arguments(
    tmp_path: Path,
) -> None:
    host = Host(tmp_path)
    answer = await Commands(host).run(
        _frame("get_status", args={"command": "rm -rf /", "path": "/etc/passwd"})
    )
    assert answer.success
    status = json.loads(answer.output)
    assert (status["deviceId"], status["connectionName"]) == (host.environment.device_id, "box")


async def test_refresh_metadata_reads_the_machine_again(tmp_path: Path) -> None:
    host = Host(tmp_path)
    assert host.metadata.working_directory is None, "nothing read before the command"
    answer = await Commands(host).run(_frame("refresh_metadata"))
    assert answer.success
    assert json.loads(answer.output)["workingDirectory"] == str(tmp_path)


async def test_a_command_that_breaks_is_a_failed_answer_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "envagent")
    host = Host(tmp_path)
    host.status_failure = RuntimeError("the disk vanished")
    answer = await Commands(host).run(_frame("get_status"))
    assert (answer.success, answer.output) == (False, "get_status failed: the disk vanished")
    assert "command get_status failed" in caplog.text


async def test_an_upgrade_this_install_refuses_is_a_failed_answer_without_a_restart(
    tmp_path: Path,
) -> None:
    host = Host(tmp_path)  # the test's own install is editable: it must not upgrade itself
    answer = await Commands(host).run(_frame("upgrade"))
    assert not answer.success
    assert "does not upgrade itself" in answer.output
    assert host.restarts == []
