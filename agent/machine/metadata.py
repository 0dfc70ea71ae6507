"""What the machine is (docs/protocol.md, "Metadata"): os, node, client version, git branch,
directory, self-update and commands.

Node and the self-update answer do not change while the daemon runs, so each is worked out
once; the branch and the directory can, so they are read on every collect. All file and process
work happens in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from agent.machine.git import git_branch
from agent.machine.node import NodeInfo, find_node
from agent.machine.selfupdate import detect_self_update
from agent.protocol.models import Metadata, SelfUpdate

_T = TypeVar("_T")


def os_name(platform: str = sys.platform) -> str:
    """Node's `process.platform` word for `platform`: "linux", "darwin", "win32", ..."""
    if platform in ("win32", "cygwin", "msys"):
        return "win32"
    return re.sub(r"\d+$", "", platform)  # Python says "freebsd14" where Node says "freebsd"


class MetadataCollector:
    """Builds the registration metadata, caching what cannot change while the daemon runs."""

    def __init__(
        self,
        workdir: Path,
        client_version: str,
        supported_commands: Sequence[str],
        node_finder: Callable[[], NodeInfo] = find_node,
    ) -> None:
        self.workdir = workdir
        self._client_version = client_version
        self._supported_commands = list(supported_commands)
        self._node_finder = node_finder
        self._node: NodeInfo | None = None
        self._self_update: SelfUpdate | None = None
        self._node_lock = threading.Lock()
        self._self_update_lock = threading.Lock()

    @property
    def node(self) -> NodeInfo | None:
        """The node found by the first collect; None before it."""
        return self._node

    async def collect(self) -> Metadata:
        """The metadata now. The first call finds node and the self-update answer in parallel
        worker threads; every call reads git in one."""
        workdir = self._absolute_workdir()
        branch, node, self_update = await asyncio.gather(
            asyncio.to_thread(git_branch, workdir),
            _cached_or_in_thread(self._node, self._find_node_once),
            _cached_or_in_thread(self._self_update, self._detect_self_update_once),
        )
        return self._build(workdir, branch, node, self_update)

    def collect_now(self) -> Metadata:
        """`collect` for code without an event loop (the `envagent metadata` command)."""
        workdir = self._absolute_workdir()
        return self._build(
            workdir, git_branch(workdir), self._find_node_once(), self._detect_self_update_once()
        )

    def _absolute_workdir(self) -> Path:
        return Path(os.path.abspath(self.workdir))

    def _find_node_once(self) -> NodeInfo:
        with self._node_lock:
            if self._node is None:
                self._node = self._node_finder()
            return self._node

    def _detect_self_update_once(self) -> SelfUpdate:
        with self._self_update_lock:
            if self._self_update is None:
                self._self_update = detect_self_update()
            return self._self_update

    def _build(
        self, workdir: Path, branch: str | None, node: NodeInfo, self_update: SelfUpdate
    ) -> Metadata:
        return Metadata(
            os=os_name(),
            node_version=node.version,
            letta_code_version=self._client_version,
            git_branch=branch,
            working_directory=str(workdir),
            self_update=self_update,
            supported_commands=list(self._supported_commands),
        )


async def _cached_or_in_thread(cached: _T | None, compute: Callable[[], _T]) -> _T:
    """`cached` when there is one, so that a warm collect costs no thread hop for it."""
    return cached if cached is not None else await asyncio.to_thread(compute)
