"""Where envagent keeps its files, following the XDG base directory rules."""

import os
import re
from pathlib import Path


def _xdg(variable: str, fallback: str) -> Path:
    value = os.environ.get(variable, "")
    # The spec says relative values are invalid and must be ignored.
    base = Path(value) if value and os.path.isabs(value) else Path.home() / fallback
    return base / "envagent"


def state_dir() -> Path:
    return _xdg("XDG_STATE_HOME", ".local/state")


def config_dir() -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config")


def platform_state_dir() -> Path:
    return state_dir() / "platform"


_SAFE_INSTANCE_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def instance_file(stem: str, instance_id: str | None, suffix: str = "") -> Path:
    """`<state dir>/<stem><suffix>` for the default daemon, `<stem>-<id><suffix>` for a listener
    instance. An id that is not already a plain file name is reduced to one, with a hash of the
    id added so that two ids never share a file."""
    if instance_id is None:
        return state_dir() / f"{stem}{suffix}"
    name = instance_id
    if not _SAFE_INSTANCE_ID.fullmatch(instance_id):
        import hashlib  # loads OpenSSL: only for the rare id that is not a plain name

        digest = hashlib.sha256(instance_id.encode()).hexdigest()[:12]
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", instance_id)[:48] + "-" + digest
    return state_dir() / f"{stem}-{name}{suffix}"
