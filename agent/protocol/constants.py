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
