"""Fixtures of the service tests: stand-ins for the service managers' tools, and a systemd that
counts as running or not, without asking the real one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.service import detect
from tests.service.service_helpers import NETWORK_VARIABLES, FakeTools


@pytest.fixture
def tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeTools:
    """Fake service manager tools first on PATH (the real ones, if any, stay behind them)."""
    fake = FakeTools(tmp_path / "tools")
    monkeypatch.setenv("PATH", f"{fake.bin}{os.pathsep}{os.environ.get('PATH', os.defpath)}")
    return fake


@pytest.fixture
def only_tools(tools: FakeTools, monkeypatch: pytest.MonkeyPatch) -> FakeTools:
    """The fake tools and nothing else on PATH: a tool not added is not installed."""
    monkeypatch.setenv("PATH", str(tools.bin))
    return tools


@pytest.fixture
def systemd_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """systemd counts as the init system: the folder `sd_booted()` looks for exists (here)."""
    folder = tmp_path / "run-systemd-system"
    folder.mkdir()
    monkeypatch.setattr(detect, "SYSTEMD_RUNNING", folder)
    return folder


@pytest.fixture
def systemd_not_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """systemd is not the init system (a container): the folder it would make is missing."""
    folder = tmp_path / "no-run-systemd-system"
    monkeypatch.setattr(detect, "SYSTEMD_RUNNING", folder)
    return folder


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """None of the proxy and CA file variables set (this machine sets SSL_CERT_FILE and
    REQUESTS_CA_BUNDLE): a test sets those it wants with the monkeypatch returned."""
    for name in NETWORK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch
