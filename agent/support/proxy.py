"""Which HTTP proxy a connection goes through, decided in one place for httpx and websockets.

Each library reads the environment its own way (websockets also reads `wss_proxy` and the
system's settings); the daemon turns both off and passes them this module's answer, so that
registration and the socket always take the same way out. The variables are the ones curl
reads: `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY`, either case, the lower-case one
first, as urllib reads them; an empty one counts as unset. `NO_PROXY` is matched by the
standard library's `proxy_bypass_environment`: `*`, hosts, domains with their subdomains, and
`host:port`.

A service does not inherit the shell's environment: `variables_in` gives what it must be given
to decide as the shell does, and `shown_variable` what may be printed of it.
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
URL_VARIABLES = ("https_proxy", "http_proxy", "all_proxy")
"""The variables naming a proxy, whose URL may hold a password; each is also read upper-case."""
VARIABLES = (*URL_VARIABLES, "no_proxy")
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
    if parts.password is None:  # as holds_password decides
        return urlunsplit(parts)
    userinfo, at, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:***{at}{host}"))


def variables_in(environ: Mapping[str, str]) -> dict[str, str]:
    """Each variable read here that `environ` sets, under the name it was found by (the
    lower-case one first) with the value read: given only these, a process decides as here."""
    found = (_found(environ, name) for name in VARIABLES)
    return dict(item for item in found if item is not None)


def shown_variable(name: str, value: str) -> str:
    """The value of variable `name` as it may be printed: as it is, unless it holds a password."""
    return shown(value) if holds_password(name, value) else value


def holds_password(name: str, value: str) -> bool:
    """Whether variable `name` holds a proxy URL with a password (`user:password@`), which
    only a private file may then hold."""
    return name.lower() in URL_VARIABLES and urlsplit(_with_scheme(value)).password is not None


def _variable(environ: Mapping[str, str], name: str) -> str | None:
    found = _found(environ, name)
    return None if found is None else found[1]


def _found(environ: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """(the name `environ` holds it by, its value): the lower-case one unless unset or empty."""
    spelled = name if environ.get(name) else name.upper()
    value = environ.get(spelled, "").strip()
    return (spelled, value) if value else None


def _with_scheme(proxy_url: str) -> str:
    """`proxy:3128` as curl reads it, `http://proxy:3128`: both libraries need the scheme."""
    return proxy_url if "://" in proxy_url else f"http://{proxy_url}"
