"""Fixtures: reference platforms on ephemeral 127.0.0.1 ports, stopped after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.platform.server import PlatformServer
from agent.platform.settings import PlatformSettings
from tests.helpers import Platform

StartPlatform = Callable[..., Awaitable[Platform]]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing a test runs may touch the real XDG folders."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture
async def start_platform(tmp_path: Path) -> AsyncIterator[StartPlatform]:
    """Start a platform with settings overridden by keyword; `db` may be reused to restart."""
    servers: list[PlatformServer] = []
    async with httpx.AsyncClient(timeout=10) as http:

        async def start(**overrides: Any) -> Platform:
            settings = replace(PlatformSettings(db=tmp_path / "platform.db", port=0), **overrides)
            server = PlatformServer(settings)
            await server.start()
            servers.append(server)
            key = settings.dev_key_file.read_text().strip()
            return Platform(server, key, http)

        yield start
        for server in servers:
            await server.stop()


@pytest.fixture
async def platform(start_platform: StartPlatform) -> Platform:
    return await start_platform()
