"""The daemon's small persistent state: device id, first-seen time, mode, last connection.

One JSON file per daemon identity in the XDG state dir, always written whole (atomically) with
mode 0600. A damaged file never stops the daemon: it is copied aside, logged once and rebuilt,
keeping the device id whenever it can still be read, because a new device id makes the platform
list this machine twice. A file envagent did not write (a symlink, another user's) is replaced
unread; a folder in its place, which no file can replace, stops the daemon with one line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import uuid
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import from_json

from agent.protocol.models import Mode, describe_validation_error
from agent.support.clock import now_ms
from agent.support.files import Untrusted, read_private, save_private, unusable
from agent.support.paths import instance_file

logger = logging.getLogger("envagent.state")

STATE_VERSION = 1
_STEM = "state"
_SUFFIX = ".json"
# What a truncated file may still hold, as complete JSON tokens (a number must be followed by a
# separator, so that a number cut short is not taken for a smaller one).
_DEVICE_ID_TOKEN = re.compile(rb'"device_id"\s*:\s*("(?:[^"\\]|\\.)*")')
_FIRST_SEEN_TOKEN = re.compile(rb'"first_seen_at"\s*:\s*(\d+)\s*[,}]')

DeviceId = Annotated[str, Field(min_length=1, max_length=200)]
Millis = Annotated[int, Field(ge=0)]


class LastConnection(BaseModel):
    """The connection the daemon held last, so that a restart can say where it was."""

    model_config = ConfigDict(strict=True, frozen=True)

    platform_url: str
    connection_id: str
    ws_url: str
    environment_id: str | None
    at: Millis


class DaemonState(BaseModel):
    """What survives a restart. Strict: a wrong type in the file means the file is damaged."""

    model_config = ConfigDict(strict=True, frozen=True)

    device_id: DeviceId
    first_seen_at: Millis
    mode: Mode = "default"
    last_connection: LastConnection | None = None


_IDENTITY_FIELDS: dict[str, TypeAdapter[Any]] = {
    "device_id": TypeAdapter(DeviceId, config=ConfigDict(strict=True)),
    "first_seen_at": TypeAdapter(Millis, config=ConfigDict(strict=True)),
}


def state_path(instance_id: str | None) -> Path:
    """`state.json` for the default daemon, `state-<id>.json` for a listener instance."""
    return instance_file(_STEM, instance_id, _SUFFIX)


class StateStore:
    """Loads and saves one state file, keeping the last state in memory.

    An instance file (`state-<id>.json`) created new takes its device id and first-seen time from
    the default `state.json` next to it, so that every daemon of one machine and user shares one
    device id.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._state: DaemonState | None = None

    def load(self) -> DaemonState:
        """Read the file, creating or rebuilding it when it is missing, damaged or untrusted.

        Raises UnusableFile when it can be neither read nor replaced (a folder, say)."""
        try:
            raw = self._read()
        except FileNotFoundError:
            state = self._create(None)
        except Untrusted as exc:
            state = self._rebuild(None, str(exc))
        else:
            try:
                state = _parse(raw)
            except ValueError as exc:
                state = self._rebuild(raw, str(exc))
        self._state = state
        return state

    def save(self, state: DaemonState) -> None:
        """Replace the file atomically (mode 0600) with `state`."""
        document = {"version": STATE_VERSION, **state.model_dump(mode="json")}
        data = json.dumps(document, indent=2).encode() + b"\n"
        save_private(self.path, data, "the state file")
        self._state = state

    def update(self, **changes: Any) -> DaemonState:
        """Apply `changes` (field names of DaemonState) to the current state and save it."""
        unknown = changes.keys() - DaemonState.model_fields.keys()
        if unknown:
            raise TypeError(f"not state fields: {', '.join(sorted(unknown))}")
        current = self._state or self.load()
        state = DaemonState.model_validate({**current.model_dump(), **changes})
        self.save(state)
        return state

    def _read(self) -> bytes:
        """The file's bytes, after making it 0600 if it was not."""
        try:
            private = read_private(self.path)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise unusable(self.path, "cannot read the state file", exc) from None
        if private.mode != 0o600:
            logger.info("state file %s was mode %o; made it 0600", self.path, private.mode)
        return private.data

    def _rebuild(self, raw: bytes | None, problem: str) -> DaemonState:
        """Keep the damaged bytes next to the file, then replace it (the file is never absent).

        An untrusted file (`raw` None: a symlink, another user's) is replaced unread."""
        kept, kept_as = None, "replaced it unread"
        if raw is not None:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{now_ms()}")
            save_private(aside, raw, "the damaged state file aside")
            kept, kept_as = _salvage(raw), f"kept it as {aside.name}"
        state = self._create(kept)
        logger.warning(
            "state file %s is damaged (%s): %s and started afresh, device id %s (%s)",
            self.path,
            problem,
            kept_as,
            state.device_id,
            "recovered" if kept else "the old one was unreadable",
        )
        return state

    def _create(self, kept: dict[str, Any] | None) -> DaemonState:
        """A new state from the salvaged identity, else the machine's, else a new one; saved."""
        identity = kept or self._machine_identity()
        state = DaemonState.model_validate({"first_seen_at": now_ms(), **identity})
        self.save(state)
        return state

    def _machine_identity(self) -> dict[str, Any]:
        """The default file's device id for an instance file; a new UUID for the default one."""
        if self.path.name.startswith(f"{_STEM}-"):
            shared = StateStore(self.path.with_name(_STEM + _SUFFIX)).load()
            return {"device_id": shared.device_id, "first_seen_at": shared.first_seen_at}
        return {"device_id": str(uuid.uuid4())}


def _parse(raw: bytes) -> DaemonState:
    """The state in `raw`, or ValueError saying in a few words what is wrong with it."""
    if not raw.strip():
        raise ValueError("the file is empty")
    try:
        document = from_json(raw)
    except ValueError as exc:  # deep nesting included: from_json bounds its recursion
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ValueError(f"a JSON {type(document).__name__}, not an object")
    version = document.pop("version", None)
    if type(version) is not int or version != STATE_VERSION:
        raise ValueError(f"unknown version {version!r}, expected {STATE_VERSION}")
    try:
        return DaemonState.model_validate(document)
    except ValidationError as exc:
        raise ValueError(describe_validation_error(exc)) from None


def _salvage(raw: bytes) -> dict[str, Any] | None:
    """The identity still readable in a damaged file: device_id, and first_seen_at if valid."""
    try:
        fields = _readable_fields(raw)
    except ValueError:  # a device_id token with a bad escape or bad UTF-8
        return None
    identity: dict[str, Any] = {}
    for name, adapter in _IDENTITY_FIELDS.items():
        with contextlib.suppress(KeyError, ValidationError):
            identity[name] = adapter.validate_python(fields[name])
    return identity if "device_id" in identity else None


def _readable_fields(raw: bytes) -> dict[str, Any]:
    """The top-level object if `raw` is JSON, else the identity tokens a truncated file kept."""
    try:
        document = from_json(raw)
    except ValueError:
        fields: dict[str, Any] = {}
        if device := _DEVICE_ID_TOKEN.search(raw):
            fields["device_id"] = from_json(device.group(1))
        if first_seen := _FIRST_SEEN_TOKEN.search(raw):
            fields["first_seen_at"] = int(first_seen.group(1))
        return fields
    return document if isinstance(document, dict) else {}
