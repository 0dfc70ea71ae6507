"""Which host names count as this machine (agent/support/loopback.py): the local API answers a
Host header only when it names one, so that a web page reaching 127.0.0.1 through a DNS name of
its own (DNS rebinding) is refused; the daemon's settings allow only these as its listen host."""

from __future__ import annotations

import pytest

from agent.support.loopback import is_loopback_host


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.2",
        "127.255.255.255",  # the whole 127.0.0.0/8, to its last address
        "::1",
        "0:0:0:0:0:0:0:1",  # ::1 written out
        "localhost",
        "LocalHost",  # names are case-insensitive
        "localhost.",  # the absolute name: resolvers answer it with loopback only (RFC 6761)
        " 127.0.0.1\t",  # the spaces around a header's value are not part of it
    ],
)
def test_loopback_names_and_addresses_are_loopback(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:8283",
        "localhost:80",
        "localhost.:80",
        "[::1]",
        "[::1]:8283",
        "[::1]:",  # an empty port is allowed by the URL grammar (RFC 3986 3.2.3)
        "localhost:",
    ],
)
def test_a_port_may_follow(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    [
        "0.0.0.0",
        "::",
        "126.255.255.255",  # just below 127.0.0.0/8
        "128.0.0.0",  # just above
        "192.168.1.5",
        "10.0.0.1",
        "fe80::1",
        "::2",
        "example.com",
        "",
        "   ",
        ":8283",  # a port and no host
    ],
)
def test_other_hosts_are_not_loopback(host: str) -> None:
    assert not is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1.evil.com",  # a DNS name that starts like an address
        "127.0.0.1.evil.com:80",
        "localhost.evil.com",
        "evil.com.localhost.example",
        "localhost..",
        "xn--localhost",
        "l\u043ecalhost",  # a Cyrillic o (U+043E)
        "\uff11\uff12\uff17.0.0.1",  # full-width digits
        "127\u30020\u30020\u30021",  # ideographic full stops
        # other spellings of 127.0.0.1 some resolvers accept; a browser sends 127.0.0.1
        "0x7f000001",
        "2130706433",
        "0177.0.0.1",
        "127.1",
        "127.0.0.01",
    ],
)
def test_look_alike_names_are_not_loopback(host: str) -> None:
    assert not is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    [
        "[::1]evil.com",
        "[::1].evil.com",
        "[::1]:80.evil.com",
        "[::1]:80:80",
        "127.0.0.1:evil.com",
        "localhost:evil",
        "localhost:-1",
        "localhost: 80",
        "localhost:\uff18\uff10",  # full-width digits are not a port
    ],
)
def test_only_digits_may_follow_the_host(host: str) -> None:
    assert not is_loopback_host(host)


@pytest.mark.parametrize(
    "host", ["[127.0.0.1]", "[127.0.0.1]:80", "[localhost]", "[]", "[::1", "::1]", "[", "]"]
)
def test_brackets_hold_a_whole_ipv6_address_and_nothing_else(host: str) -> None:
    assert not is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    [
        # Python 3.13 counts an IPv4-mapped 127.x address as loopback, 3.11 does not: the answer
        # must not depend on the interpreter, and these are not the promised forms.
        "::ffff:127.0.0.1",
        "[::ffff:127.0.0.1]",
        "[::ffff:127.0.0.1]:80",
        "::ffff:7f00:1",
        # a zone: not ::1 as promised, and not an address a URL can carry as written
        "::1%lo",
        "[::1%lo]",
        "[::1%25lo]:80",
    ],
)
def test_mapped_and_zoned_ipv6_forms_are_refused(host: str) -> None:
    assert not is_loopback_host(host)
