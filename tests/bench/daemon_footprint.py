"""What a running daemon costs: start-up time, memory, idle CPU, and memory over heartbeats.

Every figure is of a real `envagent run` process against a reference platform in another
process, both on 127.0.0.1.

Heartbeats are sped up through the platform, not the daemon: the daemon's own `--heartbeat-ms` has a
minimum of 100 ms (10,000 heartbeats would take 17 minutes), but it uses whatever
`heartbeatIntervalMs` the platform assigns at registration (docs/protocol.md, "Reply", ext), so a
platform started with `--heartbeat-ms 1` makes it heartbeat as fast as a ping, a pong and a re-read
of the working directory allow. The code path is the one of every heartbeat at 30 s.

The start-up is also measured against a platform serving TLS (`--tls-cert`, a CA made with
trustme that the daemon trusts through SSL_CERT_FILE), the case the memory budget names, and
the daemon's code path runs once under tracemalloc there (`daemon_tracemalloc.py`): its
heaviest Python allocations go into the JSON details.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from statistics import median

import aiohttp

from tests.bench.fixtures import (
    DaemonProcess,
    PlatformProcess,
    make_repo,
    start_daemon,
    start_platform,
    wait_offline,
    wait_online,
)
from tests.bench.plan import Plan
from tests.bench.procs import (
    BenchError,
    Memory,
    Workspace,
    context_switches,
    cpu_seconds,
    memory,
    thread_count,
)
from tests.bench.report import Budget, Figure, Section
from tests.bench.stats import slope
from tests.tls_helpers import make_authority

MIB = 1024.0
STACK_FLOOR = Path(__file__).with_name("stack_floor.py")
TRACEMALLOC_PROBE = Path(__file__).with_name("daemon_tracemalloc.py")
TRACEMALLOC_WAIT_S = 180.0
"""Start-up under tracemalloc is slower, and grouping its snapshot takes a while."""
TLS_RSS_BUDGET = Budget(40, "budget: RSS <= 40 MiB after start against a TLS platform")
TLS_PSS_BUDGET = Budget(30, "budget: PSS <= 30 MiB after start against a TLS platform")
OFFLINE_WAIT_S = 10.0
"""For the previous start's row to go offline before the next start."""
SETTLE_S = 2.0
"""After online, before measuring: the first status report and the start-up threads finish."""
POLL_ONLINE_S = 0.01
FAST_HEARTBEAT_MS = 1


async def run(workspace: Workspace, plan: Plan) -> Section:
    section = Section("daemon_footprint", "Daemon footprint (envagent run, local platform)")
    repo = make_repo(workspace.path("repo") / "work")
    async with aiohttp.ClientSession() as http:
        started_rss = await _startup_and_idle(workspace, plan, section, http, repo)
    await _tls_startup(workspace, plan, section, repo, started_rss)
    async with aiohttp.ClientSession() as http:
        await _heartbeats(workspace, plan, section, http, repo)
    await _stack_floor(workspace, plan, section, started_rss)
    return section


async def _stack_floor(
    workspace: Workspace, plan: Plan, section: Section, daemon_rss: list[float]
) -> None:
    """The daemon's libraries alone (tests/bench/stack_floor.py), in the same install, and
    what envagent adds on top: the profile behind the RSS budget."""
    python = workspace.runtime_program("python")
    steps: dict[str, list[float]] = {}
    for index in range(plan.startup_runs):
        child = await workspace.run_to_end(
            f"stack-floor-{index}", [python, str(STACK_FLOOR)], workspace.env(installed=True), 60.0
        )
        for step, (rss_kib, _) in json.loads(child.stdout_path.read_text()).items():
            steps.setdefault(step, []).append(rss_kib / MIB)
    for step, values in steps.items():
        section.add(Figure(f"libraries alone: {step}", "MiB RSS", values))
    floor = median(list(steps.values())[-1])
    section.add(
        Figure(
            "envagent's own share of the RSS after start-up",
            "MiB",
            [rss - floor for rss in daemon_rss],
            note="the daemon's RSS after start-up less the median of the libraries alone: "
            "its code, models, threads, socket and server",
        )
    )


async def _startup_and_idle(
    workspace: Workspace,
    plan: Plan,
    section: Section,
    http: aiohttp.ClientSession,
    repo: Path,
) -> list[float]:
    """Start-up time, memory and idle CPU; returns the RSS after each start (MiB)."""
    platform = await start_platform(workspace, workspace.path("platform-idle") / "platform.db")
    state_home = workspace.path("daemon-idle")
    online_ms: list[float] = []
    rss: list[float] = []
    pss: list[float] = []
    idle_cpu: list[float] = []
    wakeups: list[float] = []
    threads: list[float] = []
    for index in range(plan.startup_runs):
        await wait_offline(http, platform, "bench-idle", OFFLINE_WAIT_S)
        started = time.perf_counter()
        daemon = await start_daemon(
            workspace, platform, name="bench-idle", state_home=state_home, workdir=repo
        )
        online_ms.append((await _listed_online(http, platform, daemon) - started) * 1000)
        await asyncio.sleep(SETTLE_S)
        used = memory(daemon.child.pid)
        rss.append(used.rss_kib / MIB)
        pss.append(used.pss_kib / MIB)
        if index < plan.idle_runs:
            cpu, switches = await _idle_window(daemon, plan.idle_window_s)
            idle_cpu.append(cpu)
            wakeups.append(switches)
            threads.append(thread_count(daemon.child.pid))
        await daemon.child.stop()
    await platform.child.stop()
    section.add(
        Figure(
            "exec -> online in the platform listing",
            "ms",
            online_ms,
            budget=Budget(800, "budget: start to online <= 0.8 s"),
            note="from spawning the envagent script to the first listing that shows the row "
            "online (the platform is polled every 10 ms); the first start is a new device, "
            "the others restart with its state",
        )
    )
    section.add(Figure("RSS after start-up", "MiB", rss))
    section.add(Figure("PSS after start-up", "MiB", pss))
    section.add(
        Figure(
            f"CPU while idle ({plan.idle_window_s:g} s window, 30 s heartbeats)",
            "% of a core",
            idle_cpu,
            budget=Budget(0.03, "budget: idle CPU <= 0.03 % of one core"),
        )
    )
    section.add(
        Figure(
            "context switches while idle, all threads",
            "per minute",
            wakeups,
            note="each wake-up of an idle process costs at least one; a ticking timer shows here",
        )
    )
    section.add(Figure("threads while idle", "threads", threads))
    return rss


async def _tls_startup(
    workspace: Workspace, plan: Plan, section: Section, repo: Path, plain_rss: list[float]
) -> None:
    """Exec -> online and memory after start-up against a platform serving TLS, as many starts
    as against the plain one; then the tracemalloc view of the same start."""
    authority = make_authority(workspace.path("tls-ca"))
    platform = await start_platform(
        workspace,
        workspace.path("platform-tls") / "platform.db",
        tls=(authority.cert_pem, authority.key_pem),
    )
    trust = {"SSL_CERT_FILE": str(authority.ca_pem)}
    state_home = workspace.path("daemon-tls")
    online_ms: list[float] = []
    rss: list[float] = []
    pss: list[float] = []
    connector = aiohttp.TCPConnector(ssl=authority.client_context())
    async with aiohttp.ClientSession(connector=connector) as https:
        for _ in range(plan.startup_runs):
            await wait_offline(https, platform, "bench-tls", OFFLINE_WAIT_S)
            started = time.perf_counter()
            daemon = await start_daemon(
                workspace,
                platform,
                name="bench-tls",
                state_home=state_home,
                workdir=repo,
                extra_env=trust,
            )
            online_ms.append((await _listed_online(https, platform, daemon) - started) * 1000)
            await asyncio.sleep(SETTLE_S)
            used = memory(daemon.child.pid)
            rss.append(used.rss_kib / MIB)
            pss.append(used.pss_kib / MIB)
            await daemon.child.stop()
    section.add(
        Figure(
            "exec -> online, TLS platform",
            "ms",
            online_ms,
            budget=Budget(800, "budget: start to online <= 0.8 s"),
            note="as against the plain platform, to an https:// platform and a wss:// socket",
        )
    )
    section.add(Figure("RSS after start-up, TLS platform", "MiB", rss, budget=TLS_RSS_BUDGET))
    section.add(Figure("PSS after start-up, TLS platform", "MiB", pss, budget=TLS_PSS_BUDGET))
    plain = median(plain_rss)
    section.add(
        Figure(
            "RSS after start-up, TLS less plain",
            "MiB",
            [value - plain for value in rss],
            note="each TLS start less the median of the plain ones",
        )
    )
    section.notes.append(
        "TLS: the platform serves a certificate of a CA made with trustme; the daemon trusts "
        "that CA alone (SSL_CERT_FILE), where against a public platform it loads the system's"
    )
    section.details["trust"] = {
        "tls_daemons": "SSL_CERT_FILE=<the test CA alone>",
        "plain_daemons": "SSL_CERT_FILE="
        + workspace.env().get("SSL_CERT_FILE", "(unset)")
        + " (the environment's; unset: the system store through truststore)",
    }
    await _tracemalloc(workspace, section, platform, trust, repo)
    await platform.child.stop()


async def _tracemalloc(
    workspace: Workspace,
    section: Section,
    platform: PlatformProcess,
    trust: dict[str, str],
    repo: Path,
) -> None:
    """The daemon's code path under tracemalloc against `platform`, once online: its heaviest
    Python allocations into the details, and the traced total into the table."""
    env = workspace.env(
        workspace.path("daemon-tracemalloc"),
        installed=True,
        LETTA_BASE_URL=platform.url,
        LETTA_API_KEY=platform.key,
        **trust,
    )
    child = await workspace.run_to_end(
        "tracemalloc",
        [
            workspace.runtime_program("python"),
            "-P",
            str(TRACEMALLOC_PROBE),
            "bench-trace",
            str(repo),
        ],
        env,
        TRACEMALLOC_WAIT_S,
    )
    found = json.loads(child.stdout_path.read_text())
    section.add(
        Figure(
            "Python allocations once online (tracemalloc, TLS)",
            "MiB",
            [found["traced_kib"] / MIB],
            note="what Python's allocators hold: C libraries' own memory is in the RSS only",
        )
    )
    section.details["tracemalloc"] = {
        "how": "agent.daemon.core.Daemon started in a process under tracemalloc (8 frames) "
        "before any import of it, against the TLS platform; snapshot once online and settled. "
        "top_files: grouped by the file of the allocating frame, as tracemalloc does "
        "(<frozen importlib._bootstrap_external> is modules' bytecode as they load); "
        "top_packages: the same with <frozen ...> frames charged to the first real file "
        "above them. rss_kib includes tracemalloc's own memory (tracemalloc_own_kib)",
        **found,
    }
    heaviest = ", ".join(
        f"{item['package']} {item['kib'] / MIB:.1f}" for item in found["top_packages"][:5]
    )
    section.notes.append(f"tracemalloc once online, by package (MiB): {heaviest}; more in JSON")


async def _idle_window(daemon: DaemonProcess, window_s: float) -> tuple[float, float]:
    """CPU (% of one core) and context switches per minute over `window_s` of idling."""
    pid = daemon.child.pid
    cpu_before, switches_before = cpu_seconds(pid), context_switches(pid)
    started = time.monotonic()
    await asyncio.sleep(window_s)
    elapsed = time.monotonic() - started
    cpu = (cpu_seconds(pid) - cpu_before) / elapsed * 100
    switches = (context_switches(pid) - switches_before) / elapsed * 60
    return cpu, switches


async def _listed_online(
    http: aiohttp.ClientSession, platform: PlatformProcess, daemon: DaemonProcess
) -> float:
    """perf_counter() of the first listing that shows the daemon's row online."""
    async with asyncio.timeout(30.0):
        while True:
            page = await platform.listing(http, onlineOnly="true", limit="100")
            if any(row.connection_name == daemon.name for row in page.connections):
                return time.perf_counter()
            if not daemon.child.running:
                raise BenchError(f"{daemon.name} exited:\n{daemon.child.tail()}")
            await asyncio.sleep(POLL_ONLINE_S)


async def _heartbeats(
    workspace: Workspace,
    plan: Plan,
    section: Section,
    http: aiohttp.ClientSession,
    repo: Path,
) -> None:
    platform = await start_platform(
        workspace,
        workspace.path("platform-heartbeats") / "platform.db",
        heartbeat_ms=FAST_HEARTBEAT_MS,
    )
    at_start: list[Memory] = []
    at_end: list[Memory] = []
    slopes: list[float] = []
    rates: list[float] = []
    cpu_per_beat: list[float] = []
    reconnects: list[float] = []
    series: list[list[tuple[int, int, int]]] = []
    for index in range(plan.heartbeat_runs):
        daemon = await start_daemon(
            workspace,
            platform,
            name=f"bench-heartbeats-{index}",
            state_home=workspace.path("daemon-heartbeats"),
            workdir=repo,
        )
        cpu_before = cpu_seconds(daemon.child.pid)
        samples, seconds, connects = await _sample_heartbeats(http, daemon, plan)
        beats = samples[-1][0] - samples[0][0]
        cpu_per_beat.append((cpu_seconds(daemon.child.pid) - cpu_before) / beats * 1000)
        await daemon.child.stop()
        series.append([(beats, used.rss_kib, used.pss_kib) for beats, used in samples])
        at_start.append(samples[0][1])
        at_end.append(samples[-1][1])
        # The slope leaves out the first interval, where caches and pools fill once.
        steady = samples[1:]
        slopes.append(
            slope([beats for beats, _ in steady], [used.rss_kib for _, used in steady]) * 1000
        )
        rates.append(beats / seconds)
        reconnects.append(connects - 1)
    await platform.child.stop()
    count = f"{plan.heartbeats:,}"
    section.add(Figure("RSS at online (heartbeat run)", "MiB", [m.rss_kib / MIB for m in at_start]))
    section.add(
        Figure(
            f"RSS after {count} heartbeats",
            "MiB",
            [m.rss_kib / MIB for m in at_end],
            budget=Budget(40, "budget: RSS <= 40 MiB, flat over 10,000 heartbeats"),
        )
    )
    section.add(Figure(f"PSS after {count} heartbeats", "MiB", [m.pss_kib / MIB for m in at_end]))
    section.add(
        Figure(
            "RSS slope over heartbeats",
            "KiB per 1,000",
            slopes,
            note=f"least squares over samples every {plan.sample_every:,} heartbeats, "
            "leaving out the first interval; about 0 when flat",
        )
    )
    section.add(
        Figure(
            f"RSS growth, online -> {count} heartbeats",
            "x",
            [end.rss_kib / start.rss_kib for start, end in zip(at_start, at_end, strict=True)],
        )
    )
    section.add(Figure("heartbeat rate reached", "per s", rates))
    section.add(
        Figure(
            "daemon CPU per heartbeat",
            "ms",
            cpu_per_beat,
            note="ping, pong, re-read of the branch, status polls of this benchmark included; "
            "at 30 s, 1 ms a heartbeat is 0.0033 % of a core",
        )
    )
    section.add(
        Figure(
            "reconnects during the heartbeat run",
            "count",
            reconnects,
            note="3 unanswered pings drop the socket: at a 1 ms period a platform stall of a "
            "few ms (a WAL checkpoint) is enough; at 30 s it would take 90 s",
        )
    )
    section.notes.append(
        f"heartbeats at the period the platform assigns ({FAST_HEARTBEAT_MS} ms, "
        "heartbeatIntervalMs): the daemon's --heartbeat-ms minimum is 100 ms"
    )
    section.notes.append(
        "PSS shares the pages of libraries also mapped by the platform process running beside it"
    )
    section.details["heartbeat_series"] = {
        "columns": ["heartbeats", "rss_kib", "pss_kib"],
        "runs": series,
    }


async def _sample_heartbeats(
    http: aiohttp.ClientSession, daemon: DaemonProcess, plan: Plan
) -> tuple[list[tuple[int, Memory]], float, int]:
    """Memory at online and every `sample_every` answered heartbeats up to `heartbeats`.

    Returns the samples, the seconds between the first and last, and the connects counted.
    """
    status = await wait_online(http, daemon)
    pid = daemon.child.pid
    samples = [(status.heartbeats.answered, memory(pid))]
    connects = status.connects
    started = time.monotonic()
    mark = plan.sample_every
    # At least 1 ms a heartbeat; allow 50 times that before giving up.
    async with asyncio.timeout(max(60.0, plan.heartbeats * 0.05)):
        while samples[-1][0] < plan.heartbeats:
            await asyncio.sleep(0.05)
            now = await daemon.status(http)
            if now is None:
                if not daemon.child.running:
                    raise BenchError(f"{daemon.name} exited:\n{daemon.child.tail()}")
                continue
            connects = now.connects
            if now.heartbeats.answered >= mark:
                samples.append((now.heartbeats.answered, memory(pid)))
                mark = (now.heartbeats.answered // plan.sample_every + 1) * plan.sample_every
    return samples, time.monotonic() - started, connects
