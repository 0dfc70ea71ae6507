"""What the daemon reports: the progress its link to the platform records, and the answers built
from it, health, the daemon's own listing row and its status."""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from agent.daemon.session.policy import EndCause, Watchdog
from agent.daemon.state import DaemonState
from agent.protocol.models import (
    DaemonStatus,
    EnvironmentRow,
    Health,
    HeartbeatCounts,
    Metadata,
    Mode,
    NodeReport,
    ProcessReport,
    RegisterReply,
    Source,
)
from agent.support.clock import now_ms
from agent.support.process import process_figures

if TYPE_CHECKING:
    from agent.daemon.config import Platform
    from agent.daemon.environment import Environment

UNHEALTHY_UNANSWERED = 2
"""Pings without a pong from which `/healthz` says the daemon is not healthy (the socket itself
is dropped at 3)."""

State = Literal[
    "starting",
    "registering",
    "connecting",
    "online",
    "reconnecting",
    "refused",
    "replaced",
    "stopped",
]
STATES: tuple[State, ...] = get_args(State)
"""Every state the daemon enters, in the order of a life; one is current."""
RegistrationOutcome = Literal["ok", "failed", "refused"]
"""An attempt registered, failed in a way worth retrying (the network, 429, 5xx), or was
refused for good."""


@dataclass
class Progress:
    """What `/v1/status`, `/healthz` and `/metrics` report; updated as the session goes."""

    state: State = "starting"
    last_error: str | None = None
    connects: int = 0
    connection_id: str | None = None
    connected_at: int | None = None
    last_pong_at: int | None = None
    watchdog: Watchdog = field(default_factory=Watchdog)
    heartbeat_s: float = 30.0
    reply: RegisterReply | None = None
    started_at: int = field(default_factory=now_ms)
    started_monotonic: float = field(default_factory=time.monotonic)
    registration_attempts: Counter[RegistrationOutcome] = field(default_factory=Counter)
    reconnects: Counter[EndCause] = field(default_factory=Counter)
    """Sockets lost and tried again, by why each ended."""

    def enter(self, state: State, detail: str | None = None) -> str:
        """Move to `state`; returns the line a service manager shows for it."""
        self.state = state
        return f"{state}: {detail}" if detail else state

    @property
    def registrations(self) -> int:
        """Registrations the platform accepted."""
        return self.registration_attempts["ok"]

    def uptime_s(self) -> float:
        return round(time.monotonic() - self.started_monotonic, 3)

    def health(self) -> Health:
        """`ok` only while connected and heartbeats are answered."""
        if self.state != "online":
            reason = f"not connected ({self.state})"
            return Health(ok=False, reason=f"{reason}: {self.last_error or 'no error yet'}")
        if self.watchdog.unanswered >= UNHEALTHY_UNANSWERED:
            return Health(ok=False, reason=f"{self.watchdog.unanswered} pings unanswered")
        return Health(ok=True, reason="heartbeats are answered")

    def own_row(
        self, state: DaemonState, *, name: str, mode: Mode, metadata: Metadata, source: Source
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
            last_seen_at=self.last_pong_at or self.started_at,
            organization_id=known.organization_id if known else "",
            pod_id=None,
            api_key_owner=known.api_key_owner if known else None,
            current_mode=mode,
            metadata=metadata,
            user_id=known.user_id if known else None,
            source=source,
        )

    def status(
        self,
        environment: Environment,
        platform: Platform,
        *,
        local_api: str,
        log_file: Path | None,
        measure_process: bool = True,
    ) -> DaemonStatus:
        """`envagent status`: everything above, with the environment and, unless told not to
        (psutil is loaded by the first measure), what the process costs now."""
        watchdog, reply, node = self.watchdog, self.reply, environment.collector.node
        online = self.state == "online"
        return DaemonStatus(
            state=self.state,
            platform_url=platform.url,
            embedded_platform=platform.embedded,
            device_id=environment.device_id,
            connection_name=environment.name,
            connection_id=self.connection_id if online else None,
            environment_id=reply.environment.id if reply and reply.environment else None,
            mode=environment.mode,
            working_directory=str(environment.workdir),
            last_error=self.last_error,
            heartbeat_period_s=self.heartbeat_s,
            heartbeats=HeartbeatCounts(
                sent=watchdog.sent, answered=watchdog.answered, unanswered_now=watchdog.unanswered
            ),
            registrations=self.registrations,
            connects=self.connects,
            connected_at=self.connected_at,
            last_pong_at=self.last_pong_at,
            pid=os.getpid(),
            started_at=self.started_at,
            uptime_s=self.uptime_s(),
            local_api=local_api,
            log_path=str(log_file) if log_file else None,
            node=NodeReport(version=node.version, path=node.path, found_via=node.found_via)
            if node
            else None,
            process=self.process() if measure_process else None,
        )

    def process(self) -> ProcessReport:
        return ProcessReport(**asdict(process_figures()), uptime_s=self.uptime_s())
