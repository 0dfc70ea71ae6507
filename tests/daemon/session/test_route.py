"""How the daemon reaches the platform: the proxy and trust both clients are given, and the one
line naming a proxy or TLS failure, from the real errors httpx and websockets raise against
real sockets on 127.0.0.1 (a proxy that refuses every request, a port nothing listens on, a
server whose certificate no store trusts)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets

from agent.daemon.session.register import TransientRegistrationError, register_once
from agent.daemon.session.route import Route, UnusableProxy
from agent.protocol.models import RegisterRequest
from agent.support.tls import client_trust
from tests.helpers import free_port
from tests.tls_helpers import closing_tls_server, make_authority

REQUEST = RegisterRequest(device_id="dev-1", connection_name="box")
REFUSAL = b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"


@pytest.fixture
async def refusing_proxy() -> AsyncIterator[int]:
    """A proxy that answers every request, CONNECT or not, with 407."""

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(REFUSAL)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.fixture
async def untrusted_port(tmp_path: Path) -> AsyncIterator[int]:
    """A TLS server whose certificate comes from a CA no store holds."""
    async with closing_tls_server(make_authority(tmp_path / "ca")) as port:
        yield port


@pytest.fixture
def route(monkeypatch: pytest.MonkeyPatch) -> Route:
    for variable in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        for name in (variable, variable.lower()):
            monkeypatch.delenv(name, raising=False)
    return Route(lambda: client_trust(None, {}))


def test_the_embedded_platform_is_reached_directly(
    route: Route, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.corp:3128")
    assert route.proxy("http://127.0.0.1:8283") == "http://proxy.corp:3128"
    assert Route(route.trust_for, proxied=False).proxy("http://127.0.0.1:8283") is None


def test_only_http_proxies_and_the_password_is_not_shown(
    route: Route, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "socks5://user:hunter2@proxy.corp:1080")
    with pytest.raises(UnusableProxy) as refused:
        route.proxy("https://api.letta.com")
    assert str(refused.value) == (
        "the proxy socks5://user:***@proxy.corp:1080 for https://api.letta.com is not an "
        "http:// or https:// proxy, the only kinds supported"
    )


def test_the_trust_goes_to_wss_alone(route: Route) -> None:
    assert route.socket_ssl("wss://api.letta.com/v1/listener/ws") is route.trust.context
    assert route.socket_ssl("ws://127.0.0.1:8283/v1/listener/ws") is None


async def test_a_proxy_refusal_is_named_for_both_clients(
    route: Route, refusing_proxy: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", f"http://user:hunter2@127.0.0.1:{refusing_proxy}")
    line = (
        f"the proxy http://user:***@127.0.0.1:{refusing_proxy} refused the tunnel: "
        "HTTP 407 Proxy Authentication Required"
    )
    url = "https://127.0.0.1:9/v1/environments/register"
    async with route.http_client(url) as client:
        with pytest.raises(httpx.ProxyError) as failed:
            await client.get(url)
    assert route.failure(failed.value, url) == line
    ws_url = "wss://127.0.0.1:9/v1/listener/ws"
    with pytest.raises(websockets.InvalidProxyStatus) as refused:
        await websockets.connect(
            ws_url, ssl=route.socket_ssl(ws_url), proxy=route.proxy(ws_url), open_timeout=5
        )
    assert route.failure(refused.value, ws_url) == line


async def test_registration_retries_a_refusing_proxy_and_names_it(
    route: Route, refusing_proxy: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = f"http://user:hunter2@127.0.0.1:{refusing_proxy}"
    for url in ("https://127.0.0.1:9", "http://127.0.0.1:9"):  # a tunnel; a forwarded request
        monkeypatch.setenv("HTTPS_PROXY" if url.startswith("https") else "HTTP_PROXY", proxy)
        async with route.http_client(url) as client:
            with pytest.raises(TransientRegistrationError) as failed:
                await register_once(client, url, "envk_test", REQUEST, route=route)
        assert str(failed.value) == (
            f"the proxy http://user:***@127.0.0.1:{refusing_proxy} refused the tunnel: "
            "HTTP 407 Proxy Authentication Required"
        )


async def test_a_proxy_that_cannot_be_reached_is_named(
    route: Route, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("HTTPS_PROXY", f"http://user:hunter2@127.0.0.1:{port}")
    url = "https://api.letta.com"
    async with route.http_client(url) as client:
        with pytest.raises(httpx.ConnectError) as failed:
            await client.get(url)
    named = f"the proxy http://user:***@127.0.0.1:{port} cannot be reached: "
    assert (route.failure(failed.value, url) or "").startswith(named)
    with pytest.raises(OSError) as refused:
        await websockets.connect("wss://api.letta.com/ws", proxy=route.proxy(url))
    assert (route.failure(refused.value, "wss://api.letta.com/ws") or "").startswith(named)


async def test_an_untrusted_certificate_names_the_trust(route: Route, untrusted_port: int) -> None:
    url = f"https://127.0.0.1:{untrusted_port}"
    line = (
        f"TLS: the platform's certificate is not trusted by {route.trust.source} "
        "(unable to get local issuer certificate)"
    )
    async with route.http_client(url) as client:
        with pytest.raises(httpx.ConnectError) as failed:
            await client.get(url)
    assert route.failure(failed.value, url) == line
    ws_url = f"wss://127.0.0.1:{untrusted_port}/ws"
    with pytest.raises(ssl.SSLCertVerificationError) as refused:
        await websockets.connect(ws_url, ssl=route.socket_ssl(ws_url), proxy=None)
    assert route.failure(refused.value, ws_url) == line


async def test_other_failures_are_left_to_the_caller(route: Route) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with route.http_client(url) as client:
        with pytest.raises(httpx.ConnectError) as failed:
            await client.get(url)
    assert route.failure(failed.value, url) is None  # no proxy, no TLS: the library's words
