"""The way to the platform, hop by hop: DNS, TCP, the proxy's tunnel, TLS.

Each check opens its own connection the way the daemon's clients do (the same proxy from
`support.proxy`, the same trust from `support.tls`), so that a failure is pinned on the first hop
that fails rather than shown as one "cannot connect".
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import h11

from agent.doctor.results import failed, passed, skipped
from agent.protocol.doctor import CheckResult
from agent.support.proxy import shown
from agent.support.tls import Trust

TIMEOUT_S = 5.0
MAX_PROXY_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Hops:
    """Where the platform is, and the first hop towards it (the proxy, or the platform)."""

    host: str
    port: int
    tls: bool
    proxy: str | None
    """The proxy URL for the platform, credentials included; None: direct."""

    @classmethod
    def to(cls, base_url: str, proxy: str | None) -> Hops:
        parts = urlsplit(base_url)
        tls = parts.scheme == "https"
        host = parts.hostname or ""
        return cls(host, parts.port or (443 if tls else 80), tls, proxy)

    @property
    def first_hop(self) -> tuple[str, int]:
        if self.proxy is None:
            return self.host, self.port
        proxy = urlsplit(self.proxy)
        return proxy.hostname or "", proxy.port or 8080

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def hop_name(self) -> str:
        host, port = self.first_hop
        return f"the proxy {host}:{port}" if self.proxy else f"the platform {host}:{port}"


class HopFailed(Exception):
    """A hop failed: the message says what happened, `fix` what to do."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


async def check_dns(hops: Hops) -> CheckResult:
    host, port = hops.first_hop
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(TIMEOUT_S):
            found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        cause = "no answer in time" if isinstance(exc, TimeoutError) else _strerror(exc)
        whose = "the proxy's host in HTTPS_PROXY" if hops.proxy else "the host in base_url"
        return failed(
            "dns",
            f"cannot resolve {host}: {cause}",
            f"check {whose}, and this machine's DNS (/etc/resolv.conf, a VPN)",
        )
    addresses = sorted({str(entry[4][0]) for entry in found})
    note = [f"{hops.host} is resolved by the proxy"] if hops.proxy else []
    return passed("dns", f"{host} is {', '.join(addresses)}", note)


async def check_tcp(hops: Hops) -> CheckResult:
    started = time.monotonic()
    try:
        _, writer = await _connect(hops)
    except HopFailed as exc:
        return failed("tcp", str(exc), exc.fix)
    await _close(writer)
    elapsed = (time.monotonic() - started) * 1000
    return passed("tcp", f"connected to {hops.hop_name} in {elapsed:.0f} ms")


async def check_proxy(hops: Hops, ws_proxy: str | None) -> CheckResult:
    """The proxy for HTTP (registration) and for the socket, and the tunnel through it."""
    details = [
        f"HTTP (registration): {shown(hops.proxy) if hops.proxy else 'direct'}",
        f"WebSocket: {shown(ws_proxy) if ws_proxy else 'direct'}",
    ]
    if hops.proxy is None:
        return passed("proxy", "none: the daemon connects directly", details)
    if urlsplit(hops.proxy).scheme != "http":
        return skipped("proxy", f"{shown(hops.proxy)}: only http:// proxies are checked here")
    try:
        _, writer = await open_hops(hops)
    except HopFailed as exc:
        return failed("proxy", str(exc), exc.fix, details)
    await _close(writer)
    return passed("proxy", f"{shown(hops.proxy)} opened a tunnel to {hops.target}", details)


async def check_tls(hops: Hops, trust: Trust) -> CheckResult:
    if not hops.tls:
        return skipped("tls", "the platform's URL is http://: no TLS to check")
    try:
        reader, writer = await open_hops(hops)
    except HopFailed as exc:
        return skipped("tls", f"no connection to try TLS on: {exc}")
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await writer.start_tls(trust.context, server_hostname=hops.host)
    except ssl.SSLCertVerificationError as exc:
        await _close(writer)
        return failed(
            "tls",
            f"the certificate of {hops.host} is not trusted: {exc.verify_message}",
            "if a proxy or firewall on this network inspects TLS, set ca_file in the config "
            "file (or SSL_CERT_FILE) to your organization's CA bundle",
            [f"trusted now: {trust.source}"],
        )
    except (ssl.SSLError, OSError, TimeoutError) as exc:
        await _close(writer)
        cause = "no answer in time" if isinstance(exc, TimeoutError) else _strerror(exc)
        return failed(
            "tls",
            f"the TLS handshake with {hops.host} failed: {cause}",
            "check that base_url's port serves HTTPS",
        )
    del reader
    tls = writer.get_extra_info("ssl_object")
    certificate = tls.getpeercert() if isinstance(tls, ssl.SSLObject) else None
    await _close(writer)
    details = [f"trusted: {trust.source}"]
    if certificate:
        details += [
            f"subject: {_name(certificate.get('subject', ()))}",
            f"issuer: {_name(certificate.get('issuer', ()))}",
            f"expires: {certificate.get('notAfter', 'unknown')}",
        ]
    version = tls.version() if isinstance(tls, ssl.SSLObject) else None
    return passed(
        "tls",
        f"{version or 'TLS'}: the certificate of {hops.host} is verified by {trust.source}",
        details,
    )


async def open_hops(hops: Hops) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to the platform: direct, or through the proxy's CONNECT tunnel."""
    reader, writer = await _connect(hops)
    if hops.proxy is None:
        return reader, writer
    try:
        await _tunnel(hops, reader, writer)
    except BaseException:
        await _close(writer)
        raise
    return reader, writer


async def _connect(hops: Hops) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = hops.first_hop
    try:
        async with asyncio.timeout(TIMEOUT_S):
            return await asyncio.open_connection(host, port)
    except TimeoutError:
        raise HopFailed(
            f"{hops.hop_name} did not answer within {TIMEOUT_S:.0f} s",
            "a firewall may drop the packets; check the host and port, and the network",
        ) from None
    except OSError as exc:
        refused = isinstance(exc, ConnectionRefusedError)
        fix = (
            "nothing listens there: check the port, and that it is running"
            if refused
            else "check the host and port, and the network"
        )
        raise HopFailed(f"cannot connect to {hops.hop_name}: {_strerror(exc)}", fix) from None


async def _tunnel(hops: Hops, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """CONNECT through the proxy, as the daemon's clients do; HopFailed naming its answer."""
    assert hops.proxy is not None
    proxy = urlsplit(hops.proxy)
    headers = [("Host", hops.target)]
    if proxy.username is not None:
        credentials = f"{unquote(proxy.username)}:{unquote(proxy.password or '')}"
        headers.append(
            ("Proxy-Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
        )
    http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_PROXY_ANSWER_BYTES)
    writer.write(http.send(h11.Request(method="CONNECT", target=hops.target, headers=headers)))
    writer.write(http.send(h11.EndOfMessage()) or b"")
    name = shown(hops.proxy)
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await writer.drain()
            answer = await _proxy_answer(http, reader)
    except (OSError, TimeoutError, h11.RemoteProtocolError) as exc:
        cause = "no answer in time" if isinstance(exc, TimeoutError) else str(exc) or repr(exc)
        raise HopFailed(
            f"the proxy {name} did not answer the CONNECT: {cause}",
            "check that HTTPS_PROXY names an HTTP proxy",
        ) from None
    if 200 <= answer.status_code < 300:
        return
    status = f"HTTP {answer.status_code} {answer.reason.decode(errors='replace')}".strip()
    if answer.status_code in (401, 407):  # tinyproxy, for one, refuses a wrong password with 401
        given = "refused the credentials given" if proxy.username else "asks for credentials"
        raise HopFailed(
            f"the proxy {name} {given}: {status}",
            "put the proxy's user and password in HTTPS_PROXY: http://user:password@host:port",
        )
    raise HopFailed(
        f"the proxy {name} refused the tunnel to {hops.target}: {status}",
        f"ask the proxy's administrator to allow CONNECT to {hops.target}, or add the host "
        "to NO_PROXY if it is reachable directly",
    )


async def _proxy_answer(http: h11.Connection, reader: asyncio.StreamReader) -> h11.Response:
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(MAX_PROXY_ANSWER_BYTES)
            if not data:
                raise ConnectionResetError("the proxy closed the connection")
            http.receive_data(data)
        elif isinstance(event, h11.Response):
            return event
        elif not isinstance(event, h11.InformationalResponse):
            raise ConnectionResetError("the proxy closed the connection")


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()


def _name(rdns: object) -> str:
    """A certificate's subject or issuer as `CN=…, O=…`, from `getpeercert()`'s nested tuples."""
    parts = []
    if isinstance(rdns, tuple):
        for rdn in rdns:
            for key, value in rdn:
                short = {"commonName": "CN", "organizationName": "O"}.get(key, key)
                parts.append(f"{short}={value}")
    return ", ".join(parts) or "unknown"


def _strerror(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
