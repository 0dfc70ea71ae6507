"""Debian's real tinyproxy for the tests: on 127.0.0.1 and a free port, tunnelling (CONNECT)
only to the ports a test names, asking for a user and password when the test gives them, and
logging every connection to a file the test reads to prove that a request went through it.

Run as root, tinyproxy warns unless its config names a user and group to run as: it is given
the test's own, so that it can still write its log in the test's private folder. It runs in the
foreground (`-d`) and is killed, with a bounded wait, by `stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import pwd
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.helpers import WAIT_S, free_port, wait_for

INSTALL_HINT = (
    "the tests need tinyproxy: install it with `apt-get install tinyproxy` "
    "(.ci/run does this on CI when it is missing)"
)
PORT_ATTEMPTS = 3
"""A port found free may be taken before tinyproxy binds it: then another is tried."""


class Tinyproxy:
    def __init__(
        self, folder: Path, connect_ports: Sequence[int], auth: tuple[str, str] | None = None
    ) -> None:
        self.folder = folder
        self.connect_ports = connect_ports
        self.auth = auth
        self.port = 0
        self._process: asyncio.subprocess.Process | None = None

    @property
    def log_file(self) -> Path:
        return self.folder / "tinyproxy.log"

    def url(self, auth: tuple[str, str] | None = None) -> str:
        """The proxy's URL, with the user and password it asks for unless `auth` is given."""
        user, password = auth or self.auth or ("", "")
        credentials = f"{user}:{password}@" if user else ""
        return f"http://{credentials}127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def connects(self, port: int) -> list[str]:
        """The log's lines for each CONNECT to 127.0.0.1:`port`."""
        return [line for line in self.log().splitlines() if f"CONNECT 127.0.0.1:{port} " in line]

    async def start(self) -> Tinyproxy:
        binary = shutil.which("tinyproxy") or pytest.fail(INSTALL_HINT, pytrace=False)
        self.folder.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self.port = free_port()
            config = self.folder / "tinyproxy.conf"
            config.write_text(self._config())
            self._process = await asyncio.create_subprocess_exec(
                binary, "-d", "-c", str(config),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            if await self._accepting() or attempt == PORT_ATTEMPTS:
                break
        assert self._process is not None and self._process.returncode is None, (
            f"tinyproxy did not start: {self.log()}"
        )
        return self

    async def stop(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            process.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), WAIT_S)

    def _config(self) -> str:
        lines = [
            "Listen 127.0.0.1",
            f"Port {self.port}",
            "Allow 127.0.0.1",
            *(f"ConnectPort {port}" for port in self.connect_ports),
            f'LogFile "{self.log_file}"',
            "LogLevel Connect",
            "Timeout 60",
        ]
        if os.geteuid() == 0:
            lines += [
                f"User {pwd.getpwuid(os.getuid()).pw_name}",
                f"Group {grp.getgrgid(os.getgid()).gr_name}",
            ]
        if self.auth is not None:
            lines.append(f"BasicAuth {self.auth[0]} {self.auth[1]}")
        return "\n".join(lines) + "\n"

    async def _accepting(self) -> bool:
        """Wait until tinyproxy accepts connections (True) or has exited (False)."""
        process = self._process
        assert process is not None

        async def probe() -> bool | None:
            if process.returncode is not None:
                return False
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return None
            writer.close()
            await writer.wait_closed()
            return True

        found = await wait_for(probe, lambda ready: ready is not None)
        return bool(found)
