"""The daemon: its run loop, settings, state, commands, the parent watch, the single-instance
lock, service-manager notifications, and `session/` (registration, the socket, their policy)."""
