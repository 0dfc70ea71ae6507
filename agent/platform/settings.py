"""What the reference platform can be told at start-up."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from agent.protocol.constants import ONLINE_WINDOW_MS
from agent.support.paths import platform_state_dir

DEFAULT_PORT = 8283


def default_db() -> Path:
    return platform_state_dir() / "platform.db"


def _pod_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class PlatformSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    db: Path = field(default_factory=default_db)
    """The SQLite file, unless `database_url` names a PostgreSQL database."""
    database_url: str | None = None
    heartbeat_interval_ms: int = 30_000
    """Assigned to every daemon at registration (`heartbeatIntervalMs`)."""
    online_window_ms: int = ONLINE_WINDOW_MS
    transport_ping_s: float = 30.0
    """WebSocket-level ping period; a socket that misses the pong for half of it is dropped."""
    answer_wait_s: float = 60.0
    """How long `POST …/frames` waits for the daemon's answer to a frame with a request id."""
    pod_heartbeat_s: float = 2.0
    """How often a pod sharing a PostgreSQL database renews its lease and fences silent pods."""
    pod_fence_after_s: float = 10.0
    """Silence after which a pod is fenced and its connections marked lost."""
    presence_flush_s: float = 1.0
    """How often a pod writes the heartbeats it received, in one statement (`presence`); at
    most a tenth of the online window, so that waiting never makes a row look offline."""
    max_event_streams: int = 1_000
    """Live channel streams (`GET /v1/environments/events`) a pod serves at once; 503 beyond."""
    event_buffer_bytes: int = 1024 * 1024
    """Events a stream may have waiting for its reader; past it the stream is cut."""
    events_keepalive_s: float = 15.0
    """A comment on an idle stream this often, so that proxies do not cut it."""
    max_body_bytes: int = 64 * 1024
    max_frame_bytes: int = 64 * 1024
    pod_id: str = field(default_factory=_pod_id)
    reuse_port: bool = False
    """Share the port with other platform processes (SO_REUSEPORT): what `--workers` does."""
    loop_lag_probe: bool = True
    """Time a timer once a second for the event-loop lag metric; off for the platform embedded
    in a daemon, which serves that one daemon and must not wake it every second."""
    tls_cert: Path | None = None
    """With `tls_key`: serve HTTPS and wss:// with this PEM certificate chain."""
    tls_key: Path | None = None

    @property
    def presence_interval_s(self) -> float:
        return min(self.presence_flush_s, self.online_window_ms / 10_000)

    @property
    def database(self) -> Path | str:
        """Where the store is: a `postgresql://` URL, or the SQLite file."""
        return self.database_url or self.db

    @property
    def dev_key_file(self) -> Path:
        """Where a development key is written when the database has no keys."""
        return self.db.with_name(self.db.name + ".dev-api-key")
