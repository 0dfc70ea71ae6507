"""Which HTTP proxy a connection goes through, decided in one place for httpx and websockets.

Each library reads the environment its own way (websockets also reads `wss_proxy` and the
system's settings); the daemon turns both off and passes them this module's answer, so that
registration and the socket always take the same way out. The variables are the ones curl
reads: `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`, either case, the lower-case one
first, as urllib reads them; an empty one counts as unset. `NO_PROXY` is matched by the
standard library's `proxy_bypass_environment`: `*`, hosts, domains with their subdomains, and
`host:port`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from urllib import request
from urllib.parse import urlsplit, urlunsplit

_SCHEMES = {
    "http": ("http", 80),
    "ws": ("http", 80),
    "https": ("https", 443),
    "wss": ("https", 443),
}
"""A URL's scheme -> the proxy variable's scheme and the default port: ws:// goes as http://."""
_bypass: Callable[[str, Mapping[str, str]], bool] = request.proxy_bypass_environment  # type: ignore[attr-defined]
"""urllib's NO_PROXY matcher, public in the module but missing from typeshed."""


def proxy_for(url: str, environ: Mapping[str, str] = os.environ) -> str | None:
    """The proxy URL (credentials included) for `url`, or None for a direct connection."""
    parts = urlsplit(url)
    scheme, default_port = _SCHEMES.get(parts.scheme.lower(), (None, 0))
    if scheme is None or not parts.hostname:
        return None
    proxy = _variable(environ, f"{scheme}_proxy") or _variable(environ, "all_proxy")
    if proxy is None:
        return None
    no_proxy = _variable(environ, "no_proxy")
    # urllib reads the environment itself; given the value, it only matches.
    target = f"{parts.hostname}:{parts.port or default_port}"
    if no_proxy and _bypass(target, {"no": no_proxy}):
        return None
    return _with_scheme(proxy)


def shown(proxy_url: str) -> str:
    """`proxy_url` with any password replaced by `***`, for logs and `envagent doctor`."""
    parts = urlsplit(_with_scheme(proxy_url))
    userinfo, at, host = parts.netloc.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if not colon:
        return urlunsplit(parts)
    return urlunsplit(parts._replace(netloc=f"{user}:***{at}{host}"))


def _variable(environ: Mapping[str, str], name: str) -> str | None:
    value = (environ.get(name) or environ.get(name.upper()) or "").strip()
    return value or None


def _with_scheme(proxy_url: str) -> str:
    """`proxy:3128` as curl reads it, `http://proxy:3128`: both libraries need the scheme."""
    return proxy_url if "://" in proxy_url else f"http://{proxy_url}"
