"""What the CLI asks of the running daemon, through the address and token files it writes."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import httpx
from pydantic import ValidationError

from agent.protocol.httpapi import ClientError, explain
from agent.protocol.models import (
    DaemonStatus,
    EnvironmentList,
    LocalApiAddress,
    Mode,
    ModeChange,
)
from agent.support.files import Untrusted, UnusableFile, read_private
from agent.support.paths import instance_file

TIMEOUT = httpx.Timeout(5.0)

Answer = TypeVar("Answer", DaemonStatus, EnvironmentList, ModeChange)


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


class LocalClient:
    """The running daemon's local API, found through the address file it writes."""

    def __init__(self, instance_id: str | None) -> None:
        path = address_file(instance_id)
        try:
            address = LocalApiAddress.model_validate_json(_read(path, "the daemon's address"))
        except FileNotFoundError:
            raise NoDaemon(f"no daemon is running (no {path}); start one: envagent run") from None
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

    def _get(self, model: type[Answer], path: str, **params: str) -> Answer:
        try:
            response = self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise ClientError(f"the daemon at {self.url} does not answer: {exc!r}") from None
        if response.status_code != 200:
            why = explain(response.content, response.status_code)
            raise ClientError(f"the daemon at {self.url} refused GET {path}: {why}")
        return self._parse(model, response, f"GET {path}")

    def _parse(self, model: type[Answer], response: httpx.Response, what: str) -> Answer:
        """The answer as `model`; a one-line ClientError when it is not one (the address file
        may be stale, and another program now answers at that address)."""
        try:
            return model.model_validate_json(response.content)
        except ValidationError:
            raise ClientError(
                f"the answer of {self.url} to {what} is not an envagent daemon's; "
                "is another program at that address?"
            ) from None

    def status(self) -> DaemonStatus:
        return self._get(DaemonStatus, "/v1/status")

    def listing(self, online_only: bool) -> EnvironmentList:
        params = {"onlineOnly": "true"} if online_only else {}
        return self._get(EnvironmentList, "/v1/environments", **params)

    def get_mode(self) -> Mode:
        return self._get(ModeChange, "/v1/mode").mode

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
            raise ClientError(
                f"the daemon refused the mode: {explain(response.content, response.status_code)}"
            )
        return self._parse(ModeChange, response, "PUT /v1/mode").mode
