"""What the CLI asks of a running daemon and of the platform, and how the two rows compare."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from agent.clock import now_ms
from agent.files import Untrusted, UnusableFile, read_private
from agent.local_api import LocalApiAddress
from agent.models import (
    MAX_LIST_LIMIT,
    DaemonStatus,
    EnvironmentList,
    EnvironmentRow,
    ErrorReply,
    Mode,
    ModeChange,
)
from agent.paths import instance_file
from agent.platform.settings import ONLINE_WINDOW_MS

TIMEOUT = httpx.Timeout(5.0)


class ClientError(Exception):
    """Something the CLI cannot do; the message is the one line it prints."""


def address_file(instance_id: str | None) -> Path:
    return instance_file("local-api", instance_id, ".json")


def token_file(instance_id: str | None) -> Path:
    return instance_file("local-api-token", instance_id)


def _explain(response: httpx.Response) -> str:
    try:
        return ErrorReply.model_validate_json(response.content).message
    except ValidationError:
        return f"HTTP {response.status_code}"


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


class LocalClient:
    """The running daemon's local API, found through the address file it writes."""

    def __init__(self, instance_id: str | None) -> None:
        path = address_file(instance_id)
        try:
            address = LocalApiAddress.model_validate_json(_read(path, "the daemon's address"))
        except FileNotFoundError:
            raise ClientError(
                f"no daemon is running (no {path}); start one: envagent run"
            ) from None
        except ValidationError:
            raise ClientError(f"{path} is damaged; restart the daemon") from None
        if address.url.startswith("unix:"):
            transport = httpx.HTTPTransport(uds=address.url.removeprefix("unix:"))
            self._http = httpx.Client(
                base_url="http://localhost", transport=transport, timeout=TIMEOUT
            )
        else:
            self._http = httpx.Client(base_url=address.url, timeout=TIMEOUT)
        self.url = address.url
        self._instance_id = instance_id

    def _get(self, path: str, **params: str) -> httpx.Response:
        try:
            return self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise ClientError(f"the daemon at {self.url} does not answer: {exc!r}") from None

    def status(self) -> DaemonStatus:
        return DaemonStatus.model_validate_json(self._get("/v1/status").content)

    def listing(self, online_only: bool) -> EnvironmentList:
        params = {"onlineOnly": "true"} if online_only else {}
        return EnvironmentList.model_validate_json(self._get("/v1/environments", **params).content)

    def get_mode(self) -> Mode:
        return ModeChange.model_validate_json(self._get("/v1/mode").content).mode

    def set_mode(self, mode: Mode) -> Mode:
        path = token_file(self._instance_id)
        try:
            token = _read(path, "the local API token").decode("ascii", errors="replace").strip()
        except FileNotFoundError:
            raise ClientError(f"cannot read the local API token {path}: no such file") from None
        try:
            response = self._http.put(
                "/v1/mode",
                content=ModeChange(mode=mode).to_json(),
                headers={"Authorization": f"Bearer {token}"},
            )
        except httpx.HTTPError as exc:
            raise ClientError(f"the daemon at {self.url} does not answer: {exc!r}") from None
        if response.status_code != 200:
            raise ClientError(f"the daemon refused the mode: {_explain(response)}")
        return ModeChange.model_validate_json(response.content).mode


@dataclass(frozen=True)
class PlatformClient:
    url: str
    api_key: str

    def pages(self, online_only: bool) -> Iterator[EnvironmentRow]:
        """Every row the key can see, walking the pages."""
        params: dict[str, str] = {"limit": str(MAX_LIST_LIMIT)}
        if online_only:
            params["onlineOnly"] = "true"
        with httpx.Client(base_url=self.url, timeout=TIMEOUT) as http:
            while True:
                try:
                    response = http.get(
                        "/v1/environments",
                        params=params,
                        headers={"Authorization": f"Bearer {self.api_key}"},
                    )
                except httpx.HTTPError as exc:
                    raise ClientError(f"the platform {self.url} does not answer: {exc!r}") from None
                if response.status_code != 200:
                    raise ClientError(f"the platform {self.url} refused: {_explain(response)}")
                page = EnvironmentList.model_validate_json(response.content)
                yield from page.connections
                if not page.has_next_page or not page.connections:
                    return
                params["after"] = page.connections[-1].id


def find_own_row(rows: Iterator[EnvironmentRow], local: EnvironmentRow) -> EnvironmentRow | None:
    """The platform's row for this daemon: by id when the daemon knows it, else by device."""
    for row in rows:
        if row.id == local.id or (local.id == local.device_id and row.device_id == local.device_id):
            return row
    return None


def differences(local: EnvironmentRow, remote: EnvironmentRow) -> list[str]:
    """Each field where the platform's row differs from what the daemon holds.

    Times and `podId` are left out: they are set by two clocks and by the serving process.
    Fields the daemon cannot know without the platform's help (organization, user, key owner)
    are compared only when it knows them.
    """
    found = []
    local_wire, remote_wire = local.to_wire(), remote.to_wire()
    for key in ("id", "connectionId", "connectionName", "deviceId", "currentMode"):
        if local_wire.get(key) != remote_wire.get(key):
            found.append(_line(key, local_wire.get(key), remote_wire.get(key)))
    for key in ("organizationId", "userId", "apiKeyOwner"):
        if local_wire.get(key) and local_wire.get(key) != remote_wire.get(key):
            found.append(_line(key, local_wire.get(key), remote_wire.get(key)))
    local_meta, remote_meta = local_wire.get("metadata") or {}, remote_wire.get("metadata") or {}
    for key in sorted(set(local_meta) | set(remote_meta)):
        if local_meta.get(key) != remote_meta.get(key):
            found.append(_line(f"metadata.{key}", local_meta.get(key), remote_meta.get(key)))
    now = now_ms()
    local_online = local.is_online(now, ONLINE_WINDOW_MS)
    remote_online = remote.is_online(now, ONLINE_WINDOW_MS)
    if local_online != remote_online:
        found.append(_line("online", local_online, remote_online))
    return found


def _line(key: str, local: Any, remote: Any) -> str:
    return f"{key}: local {local!r}, platform {remote!r}"
