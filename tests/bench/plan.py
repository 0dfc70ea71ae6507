"""How big and how long each benchmark runs: the full plan, and `--quick` for development.

The full plan is what the figures in the README come from; the quick one only shows that every
benchmark works end to end (its figures are not comparable: fewer daemons, shorter windows and
a shorter heartbeat period to get samples in a few seconds).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    name: str
    # daemon footprint
    startup_runs: int
    """Starts of the daemon, each timed from exec to online."""
    idle_runs: int
    """Of those starts, how many also measure an idle window."""
    idle_window_s: float
    heartbeat_runs: int
    heartbeats: int
    sample_every: int
    """RSS/PSS are sampled every this many heartbeats, for the slope."""
    metadata_runs: int
    warm_collects: int
    import_runs: int
    # platform scale
    fleet_sizes: tuple[int, ...]
    fleet_period_s: float
    """Heartbeat period of the simulated daemons (30 s as real ones; shorter in quick)."""
    windows: int
    window_s: float
    listing_rows: tuple[int, ...]
    listing_live: int
    """Simulated daemons online (and heartbeating) while the listing is read."""
    listing_requests: int
    listing_runs: int
    storm_size: int
    storm_runs: int
    storm_timeout_s: float
    # pods on PostgreSQL
    pods_fleet: int
    """Simulated daemons spread over two pods, and held by one pod in the comparison."""
    pods_frames: int
    """Frames sent with a request_id, each way (same pod, across pods), per run."""
    pods_frame_runs: int
    # listing at the largest size, on both backends
    big_listing_rows: int
    big_listing_requests: int
    # the dashboard in headless Chromium
    dashboard_changes: int
    """Mode changes on a daemon's local API, each timed until the page shows it."""
    # the command line, and Letta Code's listener beside the daemon
    cli_runs: int
    """Runs of each command (and of `python -c pass`), each timed from exec to exit."""
    letta_code_runs: int
    """Starts of Letta Code's listener and of `envagent run` each, alternating."""


FULL = Plan(
    name="full",
    startup_runs=5,
    idle_runs=3,
    idle_window_s=60.0,
    heartbeat_runs=3,
    heartbeats=10_000,
    sample_every=1_000,
    metadata_runs=5,
    warm_collects=200,
    import_runs=5,
    fleet_sizes=(1_000, 5_000, 10_000),
    fleet_period_s=30.0,
    windows=3,
    window_s=30.0,
    listing_rows=(10_000, 100_000),
    listing_live=1_000,
    listing_requests=1_000,
    listing_runs=3,
    storm_size=5_000,
    storm_runs=3,
    storm_timeout_s=300.0,
    pods_fleet=10_000,
    pods_frames=1_000,
    pods_frame_runs=3,
    big_listing_rows=1_000_000,
    big_listing_requests=1_000,
    dashboard_changes=50,
    cli_runs=20,
    letta_code_runs=5,
)

QUICK = Plan(
    name="quick",
    startup_runs=2,
    idle_runs=1,
    idle_window_s=5.0,
    heartbeat_runs=1,
    heartbeats=1_000,
    sample_every=250,
    metadata_runs=2,
    warm_collects=50,
    import_runs=2,
    fleet_sizes=(100, 300),
    fleet_period_s=1.0,
    windows=2,
    window_s=3.0,
    listing_rows=(1_000, 5_000),
    listing_live=100,
    listing_requests=200,
    listing_runs=2,
    storm_size=300,
    storm_runs=1,
    storm_timeout_s=120.0,
    pods_fleet=400,
    pods_frames=100,
    pods_frame_runs=2,
    big_listing_rows=20_000,
    big_listing_requests=200,
    dashboard_changes=10,
    cli_runs=5,
    letta_code_runs=2,
)
