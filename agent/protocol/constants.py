"""Facts of the protocol that both sides act on."""

ONLINE_WINDOW_MS = 120_000
"""The Letta online rule: a row is online while its last heartbeat is younger than this."""
REPLACED_REASON = "Replaced by new connection"
"""The close reason (with code 1000) of a socket that a newer one for the same row replaced."""
