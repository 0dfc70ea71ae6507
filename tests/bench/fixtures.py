"""The real processes a benchmark measures: `envagent platform serve` and `envagent run`.

Both are started exactly as a person would start them (the console script, flags and
environment), never imported into the benchmark's own process, so that their memory, CPU and
start-up are their own.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from agent.platform.settings import PlatformSettings
from agent.protocol.models import DaemonStatus, EnvironmentList, EnvironmentRow, LocalApiAddress
from tests.bench.procs import BenchError, Child, Workspace, wait_for_output
from tests.install_helpers import ENVIRON, copy_project

START_WAIT_S = 30.0
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10.0)


INSTALL_WAIT_S = 300.0


def envagent_command() -> list[str]:
    """The `envagent` console script of this environment: what a service or a coding tool
    executes, so the measured start includes the same imports."""
    script = Path(sys.executable).with_name("envagent")
    return [str(script)] if script.exists() else [sys.executable, "-m", "agent"]


async def install_runtime(workspace: Workspace) -> None:
    """Build envagent's wheel and install it, with its runtime dependencies only, into a fresh
    venv (what `pipx install envagent` gives a user); the measured daemons run from there.

    The development venv also holds the test tools, and some libraries import what they find:
    httpx loads click and pygments for its command line when they are installed (1.5 MiB a
    daemon in the field does not pay)."""
    source = copy_project(workspace.path("source"))
    dist, venv = workspace.path("dist"), workspace.path("runtime")
    # ENVIRON: the person's pip configuration (index, find-links) applies, as to a user's install
    for name, command in (
        ("build-wheel", [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", dist, source]),
        ("make-venv", [sys.executable, "-m", "venv", venv]),
    ):
        await workspace.run_to_end(name, [str(part) for part in command], ENVIRON, INSTALL_WAIT_S)
    workspace.runtime = venv
    (wheel,) = dist.glob("envagent-*.whl")
    pip = [workspace.runtime_program("python"), "-m", "pip", "install", "-q", str(wheel)]
    await workspace.run_to_end("install-wheel", pip, ENVIRON, INSTALL_WAIT_S)


@dataclass
class PlatformProcess:
    child: Child
    url: str
    port: int
    key: str
    database: Path | str
    """The SQLite file, or the PostgreSQL URL."""

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def listing(self, http: aiohttp.ClientSession, **params: str) -> EnvironmentList:
        async with http.get(
            f"{self.url}/v1/environments", params=params, headers=self.auth, timeout=HTTP_TIMEOUT
        ) as reply:
            reply.raise_for_status()
            return EnvironmentList.model_validate_json(await reply.read())

    async def walk(self, http: aiohttp.ClientSession, **params: str) -> list[EnvironmentRow]:
        """Every row the listing gives for `params`, page after page of 100."""
        rows: list[EnvironmentRow] = []
        while True:
            after = {"after": rows[-1].id} if rows else {}
            page = await self.listing(http, limit="100", **params, **after)
            rows += page.connections
            if not page.has_next_page:
                return rows


async def start_platform(
    workspace: Workspace,
    database: Path | str,
    *,
    port: int = 0,
    heartbeat_ms: int = 30_000,
    online_window_ms: int | None = None,
    gc_log: Path | None = None,
    key: str | None = None,
    name: str = "platform",
    pod_args: Sequence[str] = (),
    tls: tuple[Path, Path] | None = None,
) -> PlatformProcess:
    """Start the reference platform on 127.0.0.1 and return once it accepts connections;
    with `gc_log`, under `gc_probe`, which logs its garbage collector's pauses there.

    `database` is a SQLite file, whose development key the platform writes and this reads, or
    a PostgreSQL URL, for which `key` must be given (`create_key`); `pod_args` are the flags of
    a pod sharing it (`--pod-id`, `--reuse-port`...). `online_window_ms` replaces the
    platform's default online window (`--online-window-ms`). `tls`: (certificate chain, key)
    PEM files, to serve HTTPS and wss:// (`--tls-cert`, `--tls-key`)."""
    if key is None and not isinstance(database, Path):
        raise BenchError("a platform on PostgreSQL needs `key` (`create_key`)")
    command = envagent_command()
    if gc_log is not None:
        command = [sys.executable, "-m", "tests.bench.gc_probe", str(gc_log)]
    child = await workspace.spawn(
        name,
        [
            *command,
            "platform",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--database",
            str(database),
            "--heartbeat-ms",
            str(heartbeat_ms),
            *(["--online-window-ms", str(online_window_ms)] if online_window_ms else []),
            *pod_args,
            *(["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])] if tls else []),
        ],
        workspace.env(),
    )
    listening = r"listening on (https?://127\.0\.0\.1:(\d+))"
    found = await wait_for_output(child, listening, START_WAIT_S)
    if key is None:
        assert isinstance(database, Path)
        key = PlatformSettings(db=database).dev_key_file.read_text().strip()
    return PlatformProcess(child, found.group(1), int(found.group(2)), key, database)


async def create_key(workspace: Workspace, database: str, *, user: str = "bench-user") -> str:
    """A new key of the benchmark's organization, made with `envagent platform keys create`
    as an operator would."""
    child = await workspace.run_to_end(
        "create-key",
        [
            *envagent_command(),
            "platform",
            "keys",
            "create",
            "--database",
            database,
            "--org",
            "bench-org",
            "--user",
            user,
            "--owner",
            "bench",
        ],
        workspace.env(),
        START_WAIT_S,
    )
    return child.stdout_path.read_text().strip()


@dataclass
class DaemonProcess:
    child: Child
    name: str
    state_home: Path

    async def status(self, http: aiohttp.ClientSession) -> DaemonStatus | None:
        """The daemon's `/v1/status`, or None while its local API is not up yet."""
        address_file = self.state_home / "state" / "envagent" / "local-api.json"
        try:
            address = LocalApiAddress.model_validate_json(address_file.read_bytes())
            async with http.get(f"{address.url}/v1/status", timeout=HTTP_TIMEOUT) as reply:
                if reply.status != 200:
                    return None
                return DaemonStatus.model_validate_json(await reply.read())
        except (OSError, ValueError, aiohttp.ClientError):
            return None


async def start_daemon(
    workspace: Workspace,
    platform: PlatformProcess,
    *,
    name: str,
    state_home: Path,
    workdir: Path,
    python_flags: tuple[str, ...] = (),
    extra_env: dict[str, str] | None = None,
) -> DaemonProcess:
    """`envagent run` of the runtime-only install against `platform`, configured through the
    environment as a service would be; the heartbeat period is the platform's
    (`heartbeatIntervalMs`). `extra_env`: more variables (SSL_CERT_FILE for a TLS platform)."""
    command = [workspace.runtime_program("envagent")]
    if python_flags:
        command = [workspace.runtime_program("python"), *python_flags, "-m", "agent"]
    env = workspace.env(
        state_home=state_home,
        installed=True,
        LETTA_BASE_URL=platform.url,
        LETTA_API_KEY=platform.key,
        **(extra_env or {}),
    )
    child = await workspace.spawn(
        name, [*command, "run", "--name", name, "--workdir", str(workdir)], env
    )
    return DaemonProcess(child, name, state_home)


async def wait_offline(
    http: aiohttp.ClientSession, platform: PlatformProcess, name: str, within_s: float
) -> None:
    """Wait until the platform lists no online row named `name`: a restart measured while the
    previous start's row is still online would be seen online at once."""
    async with asyncio.timeout(within_s):
        while True:
            page = await platform.listing(http, onlineOnly="true", limit="100")
            if all(row.connection_name != name for row in page.connections):
                return
            await asyncio.sleep(0.05)


async def wait_online(
    http: aiohttp.ClientSession, daemon: DaemonProcess, within_s: float = START_WAIT_S
) -> DaemonStatus:
    """Wait until the daemon says it is online (its socket is open)."""
    async with asyncio.timeout(within_s):
        while True:
            status = await daemon.status(http)
            if status is not None and status.state == "online":
                return status
            if not daemon.child.running:
                raise BenchError(f"{daemon.name} exited:\n{daemon.child.tail()}")
            await asyncio.sleep(0.05)


async def warm_up(workspace: Workspace) -> None:
    """Run everything once, unmeasured, so that no measured process compiles bytecode.

    The children cache bytecode in the workspace (PYTHONPYCACHEPREFIX), as an installed package
    has it beside its sources: without that, a start under PYTHONDONTWRITEBYTECODE compiles
    `agent` every time, and the compiler's memory stays in the RSS (6 MiB here). A whole daemon
    run is needed because the daemon imports some modules only when it first uses them.
    The runtime-only install the daemons run from is made first.
    """
    await install_runtime(workspace)
    await workspace.run_to_end(
        "warm-up-imports",
        [
            sys.executable,
            "-c",
            "import agent.cli.daemon, agent.cli.platform, git, "
            "tests.bench.gc_probe, tests.bench.loadgen, tests.bench.metadata_probe",
        ],
        workspace.env(),
        START_WAIT_S,
    )
    platform = await start_platform(workspace, workspace.path("warm-up") / "platform.db")
    daemon = await start_daemon(
        workspace,
        platform,
        name="warm-up",
        state_home=workspace.path("warm-up-daemon"),
        workdir=make_repo(workspace.path("warm-up-repo")),
    )
    async with aiohttp.ClientSession() as http:
        await wait_online(http, daemon)
    await daemon.child.stop()
    await platform.child.stop()


def make_repo(path: Path) -> Path:
    """A git repository on branch `main`, for a daemon to serve as its working directory."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True, timeout=30)
    return path
