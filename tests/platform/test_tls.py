"""The reference platform over TLS (`platform serve --tls-cert FILE --tls-key FILE`): HTTPS and
wss:// on one port, the register reply's wsUrl saying wss://, and files that cannot be used
refused in one line."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from pathlib import Path

import httpx
import pytest
import websockets

from agent.cli.workers import _pod_command
from agent.platform.server import TlsFilesError
from agent.support import exitcodes
from tests.conftest import StartPlatform
from tests.daemon_helpers import cli
from tests.helpers import WAIT_S
from tests.tls_helpers import TestAuthority, make_authority


@pytest.fixture
def authority(tmp_path: Path) -> TestAuthority:
    return make_authority(tmp_path / "ca")


async def test_https_and_wss_on_one_port(
    start_platform: StartPlatform, authority: TestAuthority
) -> None:
    platform = await start_platform(tls_cert=authority.cert_pem, tls_key=authority.key_pem)
    assert platform.url.startswith("https://127.0.0.1:")
    headers = {"Authorization": f"Bearer {platform.key}"}
    async with httpx.AsyncClient(verify=authority.client_context(), trust_env=False) as http:
        reply = await http.post(
            f"{platform.url}/v1/environments/register",
            json={"deviceId": "dev-1", "connectionName": "box"},
            headers=headers,
        )
        assert reply.status_code == 201, reply.text
        ws_url = reply.json()["wsUrl"]
        assert ws_url.startswith(f"wss://127.0.0.1:{platform.server.port}/v1/listener/ws?")
        async with websockets.connect(
            f"{ws_url}&deviceId=dev-1",
            ssl=authority.client_context(),
            additional_headers=headers,
            proxy=None,
            open_timeout=WAIT_S,
        ):
            row = (await http.get(f"{platform.url}/v1/environments/dev-1", headers=headers)).json()
            assert row["connectionId"] == reply.json()["connectionId"]
        # A client that does not trust the test CA is refused by its own TLS.
        async with httpx.AsyncClient(trust_env=False) as untrusting:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await untrusting.get(f"{platform.url}/v1/environments", headers=headers)


async def test_unusable_files_are_named_before_anything_starts(
    start_platform: StartPlatform, authority: TestAuthority, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(TlsFilesError, match=r"--tls-cert .*missing\.pem.*: cannot read them"):
        await start_platform(tls_cert=missing, tls_key=authority.key_pem)
    with pytest.raises(TlsFilesError, match="not a PEM certificate chain and its key"):
        await start_platform(tls_cert=authority.ca_pem, tls_key=authority.ca_pem)
    # The database was let go: a platform without TLS starts on it.
    await start_platform()


async def test_serve_over_tls_from_the_command_line(
    authority: TestAuthority, tmp_path: Path
) -> None:
    db = tmp_path / "platform.db"
    serving = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "platform", "serve", "--port", "0", "--db", str(db),
        "--tls-cert", str(authority.cert_pem), "--tls-key", str(authority.key_pem),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert serving.stdout is not None
        line = (await asyncio.wait_for(serving.stdout.readline(), WAIT_S)).decode()
        found = re.search(r"listening on (https://127\.0\.0\.1:\d+)", line)
        assert found, line
        key = (tmp_path / "platform.db.dev-api-key").read_text().strip()
        async with httpx.AsyncClient(verify=authority.client_context(), trust_env=False) as http:
            listing = await http.get(
                f"{found.group(1)}/v1/environments", headers={"Authorization": f"Bearer {key}"}
            )
        assert listing.status_code == 200, listing.text
    finally:
        serving.terminate()
        await asyncio.wait_for(serving.wait(), WAIT_S)


async def test_serve_refuses_half_a_pair_and_bad_files_in_one_line(
    authority: TestAuthority, tmp_path: Path
) -> None:
    code, _, err = await cli(
        dict(os.environ), "platform", "serve", "--tls-cert", str(authority.cert_pem)
    )
    assert (code, err) == (exitcodes.CONFIG, "envagent: --tls-cert and --tls-key go together\n")
    code, _, err = await cli(
        dict(os.environ), "platform", "serve", "--port", "0", "--db", str(tmp_path / "p.db"),
        "--tls-cert", str(authority.ca_pem), "--tls-key", str(authority.ca_pem),
    )  # fmt: skip
    assert code == exitcodes.CONFIG
    assert re.fullmatch(r"envagent: --tls-cert \S+, --tls-key \S+: not a PEM .*\n", err), err


def test_workers_pass_the_files_to_every_pod(tmp_path: Path) -> None:
    args = argparse.Namespace(
        host="127.0.0.1", heartbeat_ms=30_000, online_window_ms=120_000, transport_ping_s=30.0,
        max_body_bytes=65536, max_frame_bytes=65536, pod_heartbeat_s=2.0,
        pod_fence_after_s=10.0, log_format="json", debug=False,
        tls_cert=Path("cert.pem"), tls_key=Path("key.pem"),
    )  # fmt: skip
    command = _pod_command(args, 8283, "web-1")
    assert command[:3] == [sys.executable, "-m", "agent"]
    cert, key = command.index("--tls-cert"), command.index("--tls-key")
    assert command[cert + 1] == str(Path("cert.pem").absolute())
    assert command[key + 1] == str(Path("key.pem").absolute())
    plain = _pod_command(
        argparse.Namespace(**{**vars(args), "tls_cert": None, "tls_key": None}), 1, "p"
    )
    assert "--tls-cert" not in plain and "--tls-key" not in plain
