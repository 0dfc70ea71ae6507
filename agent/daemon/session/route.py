"""How the daemon reaches the platform: the CAs it trusts and the proxy it goes through, decided
once for registration and the socket (`agent.support.tls`, `agent.support.proxy`), and one line
naming the cause when the proxy or TLS is what failed, so that a person knows what to fix.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
from websockets.exceptions import InvalidProxy, InvalidProxyStatus

from agent.support.proxy import proxy_for, shown
from agent.support.tls import Trust

SUPPORTED_PROXY_SCHEMES = ("http", "https")
"""The proxies both httpx and websockets reach with no extra package."""


class UnusableProxy(Exception):
    """The proxy the environment names cannot be used; the message is one line."""


@dataclass(frozen=True)
class Route:
    trust_for: Callable[[], Trust]
    """Builds the trust (`client_trust` with the settings' CA file), called once when a TLS
    connection first needs it: a daemon whose platform is http:// (the embedded one) never
    loads a CA store, about 2 MiB."""
    proxied: bool = True
    """False for the embedded platform: the daemon's own loopback, which no proxy can reach."""

    @functools.cached_property
    def trust(self) -> Trust:
        return self.trust_for()

    def proxy(self, url: str) -> str | None:
        """The proxy for `url`, or None to connect directly. Raises UnusableProxy."""
        proxy = proxy_for(url) if self.proxied else None
        if proxy is not None and urlsplit(proxy).scheme.lower() not in SUPPORTED_PROXY_SCHEMES:
            raise UnusableProxy(
                f"the proxy {shown(proxy)} for {url} is not an http:// or https:// proxy, "
                "the only kinds supported"
            )
        return proxy

    def described(self, url: str) -> str:
        """How `url` is reached, for the log: `through the proxy …, TLS trusting …`."""
        proxy = self.proxy(url)
        way = f"through the proxy {shown(proxy)}" if proxy else "directly"
        secure = urlsplit(url).scheme.lower() in ("https", "wss")
        return way + (f", TLS trusting {self.trust.source}" if secure else "")

    def http_client(self, url: str) -> httpx.AsyncClient:
        """A client for `url` that reads nothing from the environment itself. For an http://
        URL it is given a context that trusts nothing, rather than the trust (or, by default,
        a CA store of httpx's own): nothing it reaches speaks TLS, and any that did would fail."""
        secure = urlsplit(url).scheme.lower() == "https"
        verify = self.trust.context if secure else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        return httpx.AsyncClient(verify=verify, proxy=self.proxy(url), trust_env=False)

    def socket_ssl(self, url: str) -> ssl.SSLContext | None:
        """websockets' `ssl=`: the trust for wss://, None for ws:// (which refuses one)."""
        return self.trust.context if urlsplit(url).scheme.lower() == "wss" else None

    def failure(self, exc: BaseException, url: str) -> str | None:
        """One line naming the cause when `exc` (httpx's or websockets') is a TLS verification or
        proxy failure, else None. A proxy's password is never shown."""
        verification = _verification_error(exc)
        if verification is not None:
            return (
                f"TLS: the platform's certificate is not trusted by {self.trust.source} "
                f"({verification.verify_message})"
            )
        proxy = self.proxy(url)
        if proxy is None:
            return None
        if isinstance(exc, InvalidProxyStatus):
            status = exc.response
            return proxy_refused(proxy, f"{status.status_code} {status.reason_phrase}")
        if isinstance(exc, httpx.ProxyError):  # its message is the proxy's status line
            return proxy_refused(proxy, str(exc))
        if isinstance(exc, InvalidProxy):  # its own message would show the password
            return f"the proxy {shown(proxy)} is not usable: {exc.msg}"
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | OSError):
            # Through a proxy, a connection that fails is the one to the proxy: a platform that
            # cannot be reached is the proxy's answer, HTTP 502 or so.
            return f"the proxy {shown(proxy)} cannot be reached: {exc!r}"
        return None


def proxy_refused(proxy: str | None, status_line: str) -> str:
    """The line for a proxy's refusal: its answer to a CONNECT, or a 407 to a request it
    forwards (plain http://); `proxy` None when the caller does not know which."""
    named = f"the proxy {shown(proxy)}" if proxy else "a proxy"
    return f"{named} refused the tunnel: HTTP {status_line.strip()}"


def _verification_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """`exc` or what caused it, however deep: httpx wraps httpcore's error, which wraps ssl's."""
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain:  # a chain can loop back on itself
        if isinstance(link, ssl.SSLCertVerificationError):
            return link
        chain.append(link)
        link = link.__cause__ or link.__context__
    return None
