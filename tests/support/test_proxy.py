"""Which proxy a URL goes through, under the variables curl reads, and a proxy URL as logs show
it."""

from __future__ import annotations

import pytest

from agent.support.proxy import proxy_for, shown

PROXY = "http://user:pw@proxy.corp:3128"


@pytest.mark.parametrize(
    ("url", "environ", "expected"),
    [
        ("https://api.letta.com", {}, None),
        ("https://api.letta.com", {"HTTPS_PROXY": PROXY}, PROXY),
        ("wss://api.letta.com/v1/listener/ws?x=1", {"HTTPS_PROXY": PROXY}, PROXY),
        ("https://api.letta.com", {"https_proxy": PROXY}, PROXY),
        # HTTP_PROXY is for http:// (and ws://) alone, as curl reads it.
        ("https://api.letta.com", {"HTTP_PROXY": PROXY}, None),
        ("http://platform.corp", {"HTTP_PROXY": PROXY}, PROXY),
        ("ws://platform.corp/ws", {"http_proxy": PROXY}, PROXY),
        ("ws://platform.corp/ws", {"HTTPS_PROXY": PROXY}, None),
        # ALL_PROXY when the scheme's own is not set.
        ("https://api.letta.com", {"ALL_PROXY": PROXY}, PROXY),
        ("ws://platform.corp", {"all_proxy": PROXY}, PROXY),
        ("https://a", {"ALL_PROXY": "http://all:1", "HTTPS_PROXY": PROXY}, PROXY),
        # The lower-case variable first; an empty one counts as unset.
        ("https://a", {"https_proxy": PROXY, "HTTPS_PROXY": "http://upper:1"}, PROXY),
        ("https://a", {"https_proxy": "", "HTTPS_PROXY": PROXY}, PROXY),
        ("https://a", {"HTTPS_PROXY": "  "}, None),
        # A proxy without a scheme is an http:// one, as curl reads it.
        ("https://a", {"HTTPS_PROXY": "proxy.corp:3128"}, "http://proxy.corp:3128"),
        ("https://a", {"HTTPS_PROXY": "https://proxy.corp"}, "https://proxy.corp"),
        ("ftp://a", {"ALL_PROXY": PROXY}, None),
        ("not a url", {"ALL_PROXY": PROXY}, None),
    ],
)
def test_which_variable(url: str, environ: dict[str, str], expected: str | None) -> None:
    assert proxy_for(url, environ) == expected


@pytest.mark.parametrize(
    ("no_proxy", "url", "bypassed"),
    [
        ("*", "https://api.letta.com", True),
        ("127.0.0.1", "https://127.0.0.1:8283", True),
        ("127.0.0.1", "wss://127.0.0.1:8283/v1/listener/ws", True),
        ("127.0.0.1", "https://127.0.0.2", False),
        ("localhost", "http://LOCALHOST:8283", True),
        # A domain covers itself and its subdomains, with or without a leading dot...
        ("corp.example", "https://corp.example", True),
        ("corp.example", "https://api.corp.example", True),
        (".corp.example", "https://corp.example", True),
        (".corp.example", "https://deep.api.corp.example", True),
        # ...but not a name that merely ends the same way.
        ("corp.example", "https://notcorp.example", False),
        # Several entries, spaces around them; a port narrows an entry to that port, the
        # scheme's default port included.
        ("a.test, b.test ,c.test", "https://b.test", True),
        ("api.corp:8443", "https://api.corp:8443", True),
        ("api.corp:8443", "https://api.corp", False),
        ("api.corp:443", "https://api.corp", True),
        ("api.corp:80", "ws://api.corp/ws", True),
        ("::1", "https://[::1]:8283", True),
        # `*` only alone: in a list it is no wildcard.
        ("*.corp.example", "https://api.corp.example", False),
        ("other.test", "https://api.letta.com", False),
    ],
)
def test_no_proxy(no_proxy: str, url: str, bypassed: bool) -> None:
    for variable in ("NO_PROXY", "no_proxy"):
        environ = {"HTTPS_PROXY": PROXY, "HTTP_PROXY": PROXY, variable: no_proxy}
        assert proxy_for(url, environ) == (None if bypassed else PROXY), variable


def test_the_lower_case_no_proxy_first() -> None:
    environ = {"HTTPS_PROXY": PROXY, "no_proxy": "other.test", "NO_PROXY": "api.letta.com"}
    assert proxy_for("https://api.letta.com", environ) == PROXY


@pytest.mark.parametrize(
    ("proxy", "expected"),
    [
        ("http://user:pw@proxy.corp:3128", "http://user:***@proxy.corp:3128"),
        ("http://user:p%40ss:w@proxy.corp", "http://user:***@proxy.corp"),
        ("http://user:p@ss@proxy.corp:3128/", "http://user:***@proxy.corp:3128/"),
        ("http://user:@proxy.corp", "http://user:***@proxy.corp"),
        ("http://user@proxy.corp:3128", "http://user@proxy.corp:3128"),
        ("http://proxy.corp:3128", "http://proxy.corp:3128"),
        ("user:pw@proxy.corp:3128", "http://user:***@proxy.corp:3128"),
        ("http://user:pw@[::1]:3128", "http://user:***@[::1]:3128"),
    ],
)
def test_shown_hides_the_password_alone(proxy: str, expected: str) -> None:
    assert shown(proxy) == expected
