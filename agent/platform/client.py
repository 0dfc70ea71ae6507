"""What the CLI asks of a platform's listing, and how its row compares with the daemon's own."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from agent.protocol.constants import ONLINE_WINDOW_MS
from agent.protocol.httpapi import ClientError, explain
from agent.protocol.models import MAX_LIST_LIMIT, EnvironmentList, EnvironmentRow
from agent.support.clock import now_ms
from agent.support.proxy import proxy_for
from agent.support.tls import CAFileError, client_trust

TIMEOUT = httpx.Timeout(5.0)


@dataclass(frozen=True)
class PlatformClient:
    url: str
    api_key: str
    ca_file: Path | None = None
    """The daemon's `ca_file` setting: the same CAs as the daemon (`agent.support.tls`)."""
    proxied: bool = True
    """False for the embedded platform, on the daemon's own loopback: no proxy can reach it."""

    def pages(self, online_only: bool) -> Iterator[EnvironmentRow]:
        """Every row the key can see, walking the pages. A ClientError for an answer that is no
        listing, and for a row listed twice: paging that goes round would never end."""
        params: dict[str, str] = {"limit": str(MAX_LIST_LIMIT)}
        seen: set[str] = set()
        if online_only:
            params["onlineOnly"] = "true"
        try:
            trust = client_trust(self.ca_file)
        except CAFileError as exc:
            raise ClientError(str(exc)) from None
        with httpx.Client(
            base_url=self.url,
            timeout=TIMEOUT,
            verify=trust.context,
            proxy=proxy_for(self.url) if self.proxied else None,
            trust_env=False,
        ) as http:
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
                    why = explain(response.content, response.status_code)
                    raise ClientError(f"the platform {self.url} refused: {why}")
                try:
                    page = EnvironmentList.model_validate_json(response.content)
                except ValidationError:
                    raise ClientError(
                        f"the platform {self.url} answered something that is not a listing: "
                        "is this a Letta platform?"
                    ) from None
                for row in page.connections:
                    if row.id in seen:
                        raise ClientError(
                            f"the platform {self.url} listed row {row.id!r} twice: "
                            "its paging goes round"
                        )
                    seen.add(row.id)
                    yield row
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
