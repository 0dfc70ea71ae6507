"""A whole session through a corporate network, end to end: the reference platform over TLS with
a certificate from a CA the test makes, Debian's real tinyproxy asking for a user and password,
and a real daemon process told of both only by the environment (HTTPS_PROXY, SSL_CERT_FILE) or
by its `ca_file` setting. Registration, the socket, heartbeats and a mode change all go through
the proxy, whose log shows a CONNECT for each; a missing CA, a refused password and NO_PROXY
each show in the daemon's log as one line naming the cause, and a CA file or proxy that cannot
be used stops the start in one line (exit 2)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.support import exitcodes
from agent.support.tls import OS_TRUST_STORE
from tests.conftest import StartPlatform
from tests.daemon_helpers import DaemonProcess, kill_all, online, start_daemon
from tests.helpers import Platform, wait_for
from tests.proxy_helpers import Tinyproxy
from tests.tls_helpers import TestAuthority, make_authority

PROXY_AUTH = ("envagent", "s3cret-proxy-pw")


@dataclasses.dataclass
class Network:
    """The platform over TLS, the proxy in front of it, and the daemons started on them."""

    platform: Platform
    authority: TestAuthority
    proxy: Tinyproxy
    folder: Path
    daemons: list[DaemonProcess]

    async def daemon(self, env: dict[str, str], *args: str) -> DaemonProcess:
        base = {"LETTA_BASE_URL": self.platform.url, "LETTA_API_KEY": self.platform.key}
        started = await start_daemon(
            self.folder / f"daemon-{len(self.daemons)}",
            "--heartbeat-ms", "200", *args,
            env=base | env, cwd=self.folder,
        )  # fmt: skip
        self.daemons.append(started)
        return started

    def connects(self) -> list[str]:
        return self.proxy.connects(self.platform.server.port)


@pytest.fixture
async def network(start_platform: StartPlatform, tmp_path: Path) -> AsyncIterator[Network]:
    authority = make_authority(tmp_path / "ca")
    served = await start_platform(tls_cert=authority.cert_pem, tls_key=authority.key_pem)
    proxy = Tinyproxy(tmp_path / "proxy", [served.server.port], PROXY_AUTH)
    async with httpx.AsyncClient(
        verify=authority.client_context(), trust_env=False, timeout=10
    ) as http:
        network = Network(
            dataclasses.replace(served, http=http), authority, await proxy.start(), tmp_path, []
        )
        try:
            yield network
        finally:
            await kill_all(network.daemons)
            await proxy.stop()


async def logged(daemon: DaemonProcess, accept: Callable[[str], bool]) -> str:
    """The first message of the daemon's log that `accept` likes, waiting for it."""

    async def probe() -> str | None:
        return next((r["message"] for r in daemon.log_records() if accept(r["message"])), None)

    found = await wait_for(probe, lambda message: message is not None)
    assert found is not None
    return found


def no_traceback_nor_password(daemon: DaemonProcess) -> None:
    assert "Traceback" not in daemon.stderr()
    assert PROXY_AUTH[1] not in daemon.stderr() + "".join(daemon.stdout_lines)


@pytest.mark.parametrize("trusted_by", ["SSL_CERT_FILE", "ca_file"])
async def test_a_whole_session_through_the_proxy(network: Network, trusted_by: str) -> None:
    ca = str(network.authority.ca_pem)
    env = {"HTTPS_PROXY": network.proxy.url()}
    if trusted_by == "SSL_CERT_FILE":
        env["SSL_CERT_FILE"] = ca
        source = f"SSL_CERT_FILE={ca}"
    else:
        config = network.folder / "config.toml"
        config.write_text(f'ca_file = "{ca}"\n')
        env["ENVAGENT_CONFIG"] = str(config)
        source = f"ca_file setting ({ca})"
    daemon = await network.daemon(env)
    status = await daemon.wait_status(lambda s: online(s) and s["heartbeats"]["answered"] >= 3)
    assert await logged(daemon, lambda m: m.startswith("reaching ")) == (
        f"reaching {network.platform.url} through the proxy "
        f"http://{PROXY_AUTH[0]}:***@127.0.0.1:{network.proxy.port}, TLS trusting {source}"
    )
    # A mode change on the local API reaches the platform's listing, over the socket.
    token = (daemon.state_dir / "envagent" / "local-api-token").read_text().strip()
    async with httpx.AsyncClient(base_url=await daemon.local_url(), trust_env=False) as local:
        changed = await local.put(
            "/v1/mode", json={"mode": "acceptEdits"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert changed.status_code == 200, changed.text

    async def platform_mode() -> Any:
        return (await network.platform.row(status["deviceId"]))["currentMode"]

    await wait_for(platform_mode, lambda mode: mode == "acceptEdits")
    # One CONNECT for the registration (httpx) and one for the socket (websockets).
    status = await daemon.status()
    assert (status["registrations"], status["connects"]) == (1, 1)
    assert len(network.connects()) == 2, network.proxy.log()
    assert await daemon.stop() == 0
    no_traceback_nor_password(daemon)


async def test_without_the_ca_the_log_names_the_tls_failure(network: Network) -> None:
    daemon = await network.daemon({"HTTPS_PROXY": network.proxy.url()})
    line = await logged(daemon, lambda m: m.startswith("registration failed: "))
    assert line.startswith(
        f"registration failed: TLS: the platform's certificate is not trusted by {OS_TRUST_STORE} "
        "(unable to get local issuer certificate); retrying in "
    )
    await logged(daemon, lambda m: m.startswith("registration failed: ") and m != line)  # again
    assert network.connects()  # the tunnel was open: the platform's certificate was the cause
    no_traceback_nor_password(daemon)


@pytest.mark.parametrize(
    ("auth", "status_line"),
    [
        # tinyproxy answers a missing Proxy-Authorization with 407, a wrong one with 401.
        (("", ""), "407 Proxy Authentication Required"),
        ((PROXY_AUTH[0], "wrong-password"), "401 Unauthorized"),
    ],
)
async def test_a_refusing_proxy_is_named_in_one_line(
    network: Network, auth: tuple[str, str], status_line: str
) -> None:
    proxy = network.proxy.url(auth)
    daemon = await network.daemon(
        {"HTTPS_PROXY": proxy, "SSL_CERT_FILE": str(network.authority.ca_pem)}
    )
    line = await logged(daemon, lambda m: m.startswith("registration failed: "))
    named = proxy.replace(":wrong-password@", ":***@")
    assert line.startswith(
        f"registration failed: the proxy {named} refused the tunnel: HTTP {status_line}; "
        "retrying in "
    )
    await logged(daemon, lambda m: m.startswith("registration failed: ") and m != line)  # again
    assert "wrong-password" not in daemon.stderr()
    no_traceback_nor_password(daemon)


async def test_no_proxy_connects_directly(network: Network) -> None:
    daemon = await network.daemon(
        {
            "HTTPS_PROXY": network.proxy.url(),
            "NO_PROXY": "127.0.0.1",
            "SSL_CERT_FILE": str(network.authority.ca_pem),
        }
    )
    await daemon.wait_status(online)
    assert await logged(daemon, lambda m: m.startswith("reaching ")) == (
        f"reaching {network.platform.url} directly, "
        f"TLS trusting SSL_CERT_FILE={network.authority.ca_pem}"
    )
    assert network.connects() == [], network.proxy.log()
    assert await daemon.stop() == 0


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"SSL_CERT_FILE": "{missing}"},
            "SSL_CERT_FILE={missing}: cannot read it: No such file or directory",
        ),
        (
            {"ENVAGENT_CA_FILE": "{folder}"},
            "ca_file setting ({folder}): cannot read it: Is a directory",
        ),
        (
            {"HTTPS_PROXY": "socks5://envagent:s3cret-proxy-pw@127.0.0.1:1080"},
            "the proxy socks5://envagent:***@127.0.0.1:1080 for https://127.0.0.1:9 is not an "
            "http:// or https:// proxy, the only kinds supported",
        ),
    ],
)
async def test_an_unusable_ca_file_or_proxy_stops_the_start_in_one_line(
    tmp_path: Path, env: dict[str, str], line: str
) -> None:
    paths = {"missing": str(tmp_path / "missing.pem"), "folder": str(tmp_path)}
    given = {name: value.format(**paths) for name, value in env.items()}
    base = {"LETTA_BASE_URL": "https://127.0.0.1:9", "LETTA_API_KEY": "envk_never_sent_0000"}
    daemon = await start_daemon(tmp_path / "daemon", env=base | given, cwd=tmp_path)
    try:
        assert await daemon.wait_exit() == exitcodes.CONFIG
    finally:
        await kill_all([daemon])
    assert [(r["level"], r["message"]) for r in daemon.log_records()] == [
        ("error", line.format(**paths))
    ]
    no_traceback_nor_password(daemon)
