"""`envagent doctor` on a corporate network: the reference platform over TLS with a CA the test
makes, behind Debian's real tinyproxy asking for a password. A healthy way through passes hop by
hop; a CA not trusted, a refused password and a proxy that is not there each fail at their own
check, with the fix."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.support.tls import OS_TRUST_STORE
from tests.conftest import StartPlatform
from tests.doctor.test_doctor import doctor
from tests.helpers import Platform, free_port
from tests.proxy_helpers import Tinyproxy
from tests.tls_helpers import TestAuthority, make_authority

PROXY_AUTH = ("envagent", "s3cret-proxy-pw")
NETWORK = ("dns", "tcp", "proxy", "tls", "registration", "websocket", "clock")


@dataclass
class Corporate:
    platform: Platform
    authority: TestAuthority
    proxy: Tinyproxy
    env: dict[str, str]
    """A clean environment with folders of its own, pointed at the platform with its key."""

    async def doctor(self, **env: str) -> tuple[int, dict[str, dict[str, Any]]]:
        return await doctor(self.env | env)


@pytest.fixture
async def corporate(start_platform: StartPlatform, tmp_path: Path) -> AsyncIterator[Corporate]:
    authority = make_authority(tmp_path / "ca")
    platform = await start_platform(tls_cert=authority.cert_pem, tls_key=authority.key_pem)
    proxy = await Tinyproxy(tmp_path / "proxy", [platform.server.port], PROXY_AUTH).start()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("LETTA_", "ENVAGENT_", "XDG_", "SSL_", "REQUESTS_"))
        and not key.lower().endswith("_proxy")
    }
    env |= {
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "LETTA_BASE_URL": platform.url,
        "LETTA_API_KEY": platform.key,
    }
    try:
        yield Corporate(platform, authority, proxy, env)
    finally:
        await proxy.stop()


async def test_the_way_through_the_proxy_and_the_ca_passes_hop_by_hop(corporate: Corporate) -> None:
    ca = str(corporate.authority.ca_pem)
    _, checks = await corporate.doctor(HTTPS_PROXY=corporate.proxy.url(), SSL_CERT_FILE=ca)

    for name in NETWORK:
        assert checks[name]["verdict"] == "pass", checks[name]
    shown = f"http://{PROXY_AUTH[0]}:***@127.0.0.1:{corporate.proxy.port}"
    port = corporate.platform.server.port
    assert checks["proxy"]["summary"] == f"{shown} opened a tunnel to 127.0.0.1:{port}"
    assert checks["proxy"]["details"] == [
        f"HTTP (registration): {shown}",
        f"WebSocket: {shown}",
    ]
    assert checks["dns"]["details"] == ["127.0.0.1 is resolved by the proxy"]
    assert checks["tls"]["summary"].endswith(f"verified by SSL_CERT_FILE={ca}")
    assert f"trusted: SSL_CERT_FILE={ca}" in checks["tls"]["details"]
    assert checks["websocket"]["summary"].startswith(f"upgraded through {shown} in ")
    # The proxy's log shows the doctor's tunnels: its own, TLS's, registration's and the socket's.
    assert len(corporate.proxy.connects(port)) == 4, corporate.proxy.log()
    assert PROXY_AUTH[1] not in str(checks)


async def test_a_ca_not_trusted_fails_tls_with_the_fix(corporate: Corporate) -> None:
    code, checks = await corporate.doctor(HTTPS_PROXY=corporate.proxy.url())

    assert code == 1
    assert checks["proxy"]["verdict"] == "pass"
    tls = checks["tls"]
    assert (tls["verdict"], tls["summary"]) == (
        "fail",
        "the certificate of 127.0.0.1 is not trusted: unable to get local issuer certificate",
    )
    assert "set ca_file in the config file (or SSL_CERT_FILE)" in tls["fix"]
    assert tls["details"] == [f"trusted now: {OS_TRUST_STORE}"]
    assert checks["registration"]["summary"] == "needs tls (failed above)"


@pytest.mark.parametrize(
    ("auth", "answer"),
    [
        (None, "asks for credentials: HTTP 407 Proxy Authentication Required"),
        ((PROXY_AUTH[0], "wrong-password"), "refused the credentials given: HTTP 401 Unauthorized"),
    ],
)
async def test_a_proxy_refusing_the_tunnel_fails_the_proxy_check(
    corporate: Corporate, auth: tuple[str, str] | None, answer: str
) -> None:
    proxy_url = corporate.proxy.url(auth or ("", ""))
    code, checks = await corporate.doctor(
        HTTPS_PROXY=proxy_url, SSL_CERT_FILE=str(corporate.authority.ca_pem)
    )

    assert code == 1
    assert checks["tcp"]["verdict"] == "pass"
    proxy = checks["proxy"]
    assert proxy["verdict"] == "fail"
    assert (
        proxy["summary"] == f"the proxy {proxy_url.replace(':wrong-password@', ':***@')} {answer}"
    )
    assert proxy["fix"] == (
        "put the proxy's user and password in HTTPS_PROXY: http://user:password@host:port"
    )
    assert checks["tls"]["summary"] == "needs proxy (failed above)"
    assert "wrong-password" not in str(checks)


async def test_a_proxy_that_is_not_there_fails_tcp_naming_the_proxy(corporate: Corporate) -> None:
    port = free_port()
    code, checks = await corporate.doctor(HTTPS_PROXY=f"http://127.0.0.1:{port}")

    assert code == 1
    assert checks["tcp"]["verdict"] == "fail"
    assert checks["tcp"]["summary"].startswith(f"cannot connect to the proxy 127.0.0.1:{port}: ")
    assert checks["proxy"]["summary"] == "needs tcp (failed above)"
