"""What the CLI asks of the running daemon, through the address and token files it writes.

HTTP/1.1 over one short-lived socket, framed by h11 (the library the daemon's side is served
with), the answers parsed with `json` and checked against the typed views of
agent.protocol.views: coding tools call `status` and `mode` often, and neither pydantic nor
an HTTP client library is loaded for them. Every failure is one line (ClientError).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import h11

from agent.protocol.constants import Mode
from agent.protocol.views import (
    ClientError,
    DaemonStatusView,
    EnvironmentListView,
    LocalApiAddressView,
    ModeChangeView,
    explain,
    parse_answer,
)
from agent.support.files import Untrusted, UnusableFile, read_private
from agent.support.paths import instance_file

TIMEOUT_S = 5.0
"""For the whole exchange: connecting, sending and the complete answer."""
MAX_ANSWER_BYTES = 16 * 2**20
"""An answer larger than this is not the daemon's (its listing holds one row)."""

Answer = TypeVar("Answer", DaemonStatusView, EnvironmentListView, ModeChangeView)


def address_file(instance_id: str | None) -> Path:
    return instance_file("local-api", instance_id, ".json")


def token_file(instance_id: str | None) -> Path:
    return instance_file("local-api-token", instance_id)


def _read(path: Path, what: str) -> bytes:
    """A private file the daemon wrote; anything else there (a symlink, another user's file) is
    a one-line ClientError. FileNotFoundError is left to the caller, which knows what it means.
    """
    try:
        return read_private(path).data
    except FileNotFoundError:
        raise
    except (Untrusted, UnusableFile) as exc:
        raise ClientError(f"{path}: not using it as {what}: {exc}") from None
    except OSError as exc:
        raise ClientError(f"cannot read {what} {path}: {exc.strerror}") from None


class NoDaemon(ClientError):
    """No daemon has written its address: none is running (`status --json` says `stopped`)."""


class _Refused(Exception):
    """The peer's answer is not one to use (h11's errors, a too large answer)."""


class LocalClient:
    """The running daemon's local API, found through the address file it writes: `http://HOST:
    PORT` or `unix:/path/to/socket`."""

    def __init__(self, instance_id: str | None) -> None:
        path = address_file(instance_id)
        try:
            content = _read(path, "the daemon's address")
        except FileNotFoundError:
            raise NoDaemon(f"no daemon is running (no {path}); start one: envagent run") from None
        try:
            self.url = parse_answer(content, LocalApiAddressView)["url"]
            self._socket_path, self._host, self._port = _where(self.url)
        except ValueError:
            raise ClientError(f"{path} is damaged; restart the daemon") from None
        self._instance_id = instance_id

    def status(self) -> DaemonStatusView:
        return self._get(DaemonStatusView, "/v1/status")

    def listing(self, online_only: bool) -> EnvironmentListView:
        query = "?onlineOnly=true" if online_only else ""
        return self._get(EnvironmentListView, "/v1/environments", query)

    def get_mode(self) -> Mode:
        return self._get(ModeChangeView, "/v1/mode")["mode"]

    def set_mode(self, mode: Mode) -> Mode:
        path = token_file(self._instance_id)
        try:
            token = _read(path, "the local API token").decode("ascii", errors="replace").strip()
        except FileNotFoundError:
            raise ClientError(f"cannot read the local API token {path}: no such file") from None
        body = json.dumps({"mode": mode}, separators=(",", ":")).encode()
        status, content = self._exchange(
            "PUT", "/v1/mode", body, [("Authorization", f"Bearer {token}")]
        )
        if status != 200:
            raise ClientError(f"the daemon refused the mode: {explain(content, status)}")
        return self._parse(ModeChangeView, content, "PUT /v1/mode")["mode"]

    def _get(self, view: type[Answer], path: str, query: str = "") -> Answer:
        status, content = self._exchange("GET", path + query)
        if status != 200:
            why = explain(content, status)
            raise ClientError(f"the daemon at {self.url} refused GET {path}: {why}")
        return self._parse(view, content, f"GET {path}")

    def _parse(self, view: type[Answer], content: bytes, what: str) -> Answer:
        """The answer as `view`; a one-line ClientError when it is not one (the address file
        may be stale, and another program now answers at that address)."""
        try:
            return parse_answer(content, view)
        except ValueError:
            raise ClientError(
                f"the answer of {self.url} to {what} is not an envagent daemon's; "
                "is another program at that address?"
            ) from None

    def _exchange(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> tuple[int, bytes]:
        """One request on a new connection: the answer's status and body, or a ClientError."""
        deadline = time.monotonic() + TIMEOUT_S
        try:
            with self._connect() as sock:
                return _request(sock, deadline, self._head(method, target, body, headers), body)
        except (OSError, h11.ProtocolError, _Refused) as exc:
            raise ClientError(f"the daemon at {self.url} does not answer: {exc!r}") from None

    def _connect(self) -> socket.socket:
        if self._socket_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(TIMEOUT_S)
                sock.connect(self._socket_path)
            except BaseException:
                sock.close()
                raise
            return sock
        return socket.create_connection((self._host, self._port), timeout=TIMEOUT_S)

    def _head(
        self,
        method: str,
        target: str,
        body: bytes | None,
        extra: list[tuple[str, str]] | None,
    ) -> h11.Request:
        host = "localhost" if self._socket_path is not None else urlsplit(self.url).netloc
        headers = [("Host", host), ("Accept", "application/json"), ("Connection", "close")]
        if body is not None:
            headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        return h11.Request(method=method, target=target, headers=[*headers, *(extra or [])])


def _where(url: str) -> tuple[str | None, str, int]:
    """(Unix socket path, or None and the host and port) of an address; ValueError if it is
    neither `unix:PATH` nor `http://HOST:PORT`."""
    if url.startswith("unix:"):
        path = url.removeprefix("unix:")
        if not path:
            raise ValueError("no socket path")
        return path, "", 0
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise ValueError(f"not an http://HOST:PORT address: {url!r}")
    return None, parts.hostname, parts.port


def _request(
    sock: socket.socket, deadline: float, head: h11.Request, body: bytes | None
) -> tuple[int, bytes]:
    """Send the request and read the whole answer before `deadline` (TimeoutError after)."""
    connection = h11.Connection(h11.CLIENT)
    out = connection.send(head) or b""
    if body:
        out += connection.send(h11.Data(data=body)) or b""
    out += connection.send(h11.EndOfMessage()) or b""
    sock.settimeout(_left(deadline))
    sock.sendall(out)
    status = 0
    answer = bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            sock.settimeout(_left(deadline))
            connection.receive_data(sock.recv(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            answer += event.data
            if len(answer) > MAX_ANSWER_BYTES:
                raise _Refused(f"an answer over {MAX_ANSWER_BYTES} bytes")
        elif isinstance(event, h11.EndOfMessage):
            return status, bytes(answer)
        elif isinstance(event, h11.ConnectionClosed):
            raise _Refused("the connection closed before an answer")


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"no complete answer within {TIMEOUT_S:g} s")
    return left
