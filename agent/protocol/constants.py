"""Facts of the protocol that both sides act on. Plain Python: the command line builds its
parser from these (the modes, the sources) without loading pydantic or the wire models."""

from typing import Literal, get_args

Mode = Literal["default", "standard", "acceptEdits", "bypassPermissions", "unrestricted"]
MODES: tuple[str, ...] = get_args(Mode)
Source = Literal["local", "remote"]
SOURCES: tuple[str, ...] = get_args(Source)

ONLINE_WINDOW_MS = 120_000
"""The Letta online rule: a row is online while its last heartbeat is younger than this."""
REPLACED_REASON = "Replaced by new connection"
"""The close reason (with code 1000) of a socket that a newer one for the same row replaced."""

Role = Literal["member", "admin"]
ROLES: tuple[Role, ...] = ("member", "admin")
"""A reference platform's API key: `member`, the default, steers its own user's rows; `admin`
every row of its organization (agent.platform.access)."""

MAX_NAME_CHARS = 200
"""One cap for device ids, listener instance ids and connection names, wherever they arrive."""


def is_online(
    connection_id: str | None, last_heartbeat: int | None, now_ms: int, window_ms: int
) -> bool:
    """The Letta online rule: a connection id and a heartbeat younger than the window."""
    return (
        bool(connection_id) and last_heartbeat is not None and now_ms - last_heartbeat < window_ms
    )


def check_text(value: object) -> str:
    """The rule of a text setting (`name`, `listener_instance_id`, `client_version`): a string,
    stripped, 1 to MAX_NAME_CHARS characters; ValueError in pydantic's words otherwise, so that
    the settings model and the commands that read one setting without it say the same."""
    if not isinstance(value, str):
        raise ValueError("Input should be a valid string")
    text = value.strip()
    if not text:
        raise ValueError("String should have at least 1 character")
    if len(text) > MAX_NAME_CHARS:
        raise ValueError(f"String should have at most {MAX_NAME_CHARS} characters")
    return text
