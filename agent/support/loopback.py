"""Which host names mean this machine: the local API listens on, and answers, only those."""

from __future__ import annotations

import ipaddress
import re

_PORT = re.compile(r"(?::[0-9]*)?")
"""What may follow the host in a Host header: nothing, or a colon and ASCII digits."""


def is_loopback_host(host_header: str) -> bool:
    """True for `localhost`, 127.0.0.0/8 and ::1, with or without a port.

    Only those exact forms: brackets hold an IPv6 address and nothing may follow them but a
    port; an IPv4-mapped address (`::ffff:127.0.0.1`, loopback from Python 3.13 on) or one with
    a zone (`::1%lo`) is refused on every version."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host, closed, port = host[1:].partition("]")
        if not closed or ":" not in host:
            return False
    elif host.count(":") == 1:
        host, colon, port = host.partition(":")
        port = colon + port
    else:
        port = ""
    if not _PORT.fullmatch(port):
        return False
    if host in ("localhost", "localhost."):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and (address.scope_id or address.ipv4_mapped):
        return False
    return address.is_loopback
