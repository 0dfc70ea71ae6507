"""systemd's readiness protocol (sd_notify), written against the protocol itself.

A notification is one datagram of `KEY=value` lines sent to the AF_UNIX socket named by
`$NOTIFY_SOCKET`; a name starting with `@` is in the abstract namespace. Without that variable
(not started by systemd with `Type=notify`) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("envagent.service")


_ONE_LINE = str.maketrans("\r\n", "  ")
"""systemd splits a notification at both: a value with either would add lines of its own."""


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self._name = address
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.setblocking(False)
        self._last_status = ""
        self._failing = False

    def send(self, *lines: str) -> None:
        """Send one datagram; a failure is logged, never raised (the daemon goes on)."""
        if self._socket is None or self._address is None:
            return
        try:
            message = "\n".join(line.translate(_ONE_LINE) for line in lines)
            self._socket.sendto(message.encode(), self._address)
        except OSError as exc:
            if not self._failing:  # once, not at every heartbeat
                log.warning("cannot notify systemd at %s: %s", self._name, exc)
            self._failing = True
        else:
            self._failing = False

    def ready(self, status: str) -> None:
        self._last_status = status
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
