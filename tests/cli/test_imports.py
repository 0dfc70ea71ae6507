"""Each command imports only what it needs (coding tools call `status`, `mode` and `list` often,
and `--version` on every start): checked in a fresh interpreter by the modules loaded once the
command has run, with a module each group must load, so that the check cannot pass vacuously."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import WAIT_S, refusing_port

LOADED_AFTER = """
import json, sys
from agent.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)))
"""

NEVER_FOR_HELP = (
    "pydantic", "httpx", "h11", "websockets", "aiohttp", "psutil", "prometheus_client", "shtab",
    "truststore", "git", "logging", "dataclasses", "agent.daemon", "agent.localapi",
    "agent.upgrade", "agent.doctor", "agent.platform", "agent.service", "agent.support.files",
    "agent.cli.upgrade", "agent.cli.service", "agent.cli.inspection",
)  # fmt: skip
"""`--version`, `--help` and usage errors: the parser alone, from plain constants."""
NEVER_FOR_DAEMON_QUESTIONS = (
    "pydantic", "pydantic_core", "httpx", "httpcore", "anyio", "http.client", "email",
    "agent.daemon", "agent.platform", "agent.service", "agent.protocol.models",
    "agent.protocol.httpapi",
)  # fmt: skip
"""`status`, `status --json`, `mode get`, `mode set`, `list --local`: what coding tools call
often; the daemon's answer read with json and the typed views, over h11."""
NEVER_FOR_INSPECTION = (
    "websockets", "aiohttp", "psutil", "prometheus_client", "shtab", "truststore",
    "agent.daemon.core", "agent.daemon.link", "agent.daemon.session", "agent.daemon.embedded",
    "agent.platform.client", "agent.platform.server", "agent.platform.app",
    "agent.platform.store", "agent.service.target", "agent.service.install", "agent.upgrade",
    "agent.doctor",
)  # fmt: skip
"""`status`, `mode`, `list --local`, `metadata`: no run loop, platform or service code."""


def loaded_by(argv: list[str], tmp_path: Path) -> set[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("XDG_")}
    env |= {"XDG_STATE_HOME": str(tmp_path / "state"), "XDG_CONFIG_HOME": str(tmp_path / "c")}
    done = subprocess.run(
        [sys.executable, "-c", LOADED_AFTER, *argv],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def offending(loaded: set[str], never: tuple[str, ...]) -> list[str]:
    return sorted(m for m in loaded if any(m == n or m.startswith(n + ".") for n in never))


@pytest.mark.parametrize(
    "argv", [[], ["--help"], ["--version"], ["run", "--help"], ["status", "--help"], ["nosuch"]]
)
def test_help_version_and_usage_errors_load_the_parser_alone(
    argv: list[str], tmp_path: Path
) -> None:
    loaded = loaded_by(argv, tmp_path)
    assert "agent.cli.main" in loaded
    assert offending(loaded, NEVER_FOR_HELP) == []


@pytest.mark.parametrize(
    "argv", [["status"], ["status", "--json"], ["mode", "get"], ["list", "--local"], ["metadata"]]
)
def test_commands_that_look_load_no_run_loop_platform_or_service(
    argv: list[str], tmp_path: Path
) -> None:
    loaded = loaded_by(argv, tmp_path)
    assert "agent.cli.inspection" in loaded
    assert offending(loaded, NEVER_FOR_INSPECTION) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["status"],
        ["status", "--json"],
        ["mode", "get"],
        ["mode", "set", "standard"],
        ["list", "--local"],
        ["list", "--local", "--json", "--online-only"],
    ],
)
def test_commands_that_ask_the_daemon_load_no_pydantic_nor_http_library(
    argv: list[str], tmp_path: Path
) -> None:
    """Run against an address nothing answers at, so that the client's whole path is taken."""
    state = tmp_path / "state" / "envagent"
    state.mkdir(parents=True, mode=0o700)
    with refusing_port() as port:
        (state / "local-api.json").write_text(json.dumps({"url": f"http://127.0.0.1:{port}"}))
        (state / "local-api.json").chmod(0o600)
        loaded = loaded_by(argv, tmp_path)
    assert {"agent.localapi.client", "h11", "agent.protocol.views"} <= loaded
    assert offending(loaded, NEVER_FOR_DAEMON_QUESTIONS) == []


def test_the_check_sees_what_a_command_loads(tmp_path: Path) -> None:
    """`list --platform` does load the platform's client: the lists above would catch it."""
    with refusing_port() as port:
        base_url = f"http://127.0.0.1:{port}"
        loaded = loaded_by(["list", "--platform", "--base-url", base_url], tmp_path)
    assert offending(loaded, NEVER_FOR_INSPECTION) == ["agent.platform.client"]
    assert "pydantic" in offending(loaded, NEVER_FOR_DAEMON_QUESTIONS)
