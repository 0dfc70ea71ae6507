"""What the daemon reports of its session: the progress the session loop records, and the two
answers built from it alone, health and the daemon's own listing row."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.daemon.session.policy import Watchdog
from agent.daemon.state import DaemonState
from agent.protocol.models import EnvironmentRow, Health, Metadata, Mode, RegisterReply

UNHEALTHY_UNANSWERED = 2
"""Pings without a pong from which `/healthz` says the daemon is not healthy (the socket itself
is dropped at 3)."""


@dataclass
class Progress:
    """What `/v1/status` and `/healthz` report; updated as the session goes."""

    state: str = "starting"
    last_error: str | None = None
    registrations: int = 0
    connects: int = 0
    connection_id: str | None = None
    connected_at: int | None = None
    last_pong_at: int | None = None
    watchdog: Watchdog = field(default_factory=Watchdog)
    heartbeat_s: float = 30.0
    reply: RegisterReply | None = None

    def health(self) -> Health:
        """`ok` only while connected and heartbeats are answered."""
        if self.state != "online":
            reason = f"not connected ({self.state})"
            return Health(ok=False, reason=f"{reason}: {self.last_error or 'no error yet'}")
        if self.watchdog.unanswered >= UNHEALTHY_UNANSWERED:
            return Health(ok=False, reason=f"{self.watchdog.unanswered} pings unanswered")
        return Health(ok=True, reason="heartbeats are answered")

    def own_row(
        self, state: DaemonState, *, name: str, mode: Mode, metadata: Metadata, started_at: int
    ) -> EnvironmentRow:
        """The daemon's row in exactly the listing shape: what the platform returned at
        registration where the daemon cannot know it (a Letta platform returns none: then `id`
        is the device id and `organizationId` is empty), the live socket's connection, and the
        time of the last pong as the last heartbeat. `podId` is the platform's to know."""
        known = self.reply.environment if self.reply else None
        online = self.state == "online"
        return EnvironmentRow(
            id=known.id if known else state.device_id,
            connected_at=self.connected_at if online else None,
            connection_id=self.connection_id if online else None,
            connection_name=name,
            device_id=state.device_id,
            first_seen_at=known.first_seen_at if known else state.first_seen_at,
            last_heartbeat=self.last_pong_at,
            last_seen_at=self.last_pong_at or started_at,
            organization_id=known.organization_id if known else "",
            pod_id=None,
            api_key_owner=known.api_key_owner if known else None,
            current_mode=mode,
            metadata=metadata,
            user_id=known.user_id if known else None,
        )
