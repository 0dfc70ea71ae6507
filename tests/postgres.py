"""A throwaway PostgreSQL server for the tests and the benchmarks, and its pytest fixtures.

`PostgresServer.start()` finds the server's binaries (the folder of `initdb` on PATH first, then
/usr/lib/postgresql/*/bin, newest version first), makes a cluster in a temporary folder with
`initdb -A trust -U envagent --no-sync`, tuned for speed over durability (fsync, synchronous
commit and full page writes off: a crash loses a test database, nothing else), and starts it
with `pg_ctl -w` on 127.0.0.1 and an ephemeral port. `stop()` stops it at once
(`pg_ctl stop -m immediate`) and removes the folder; `shut_down()` stops it as an operator does
and keeps the folder, and `start_again()` brings it back on the same port (a database outage).

PostgreSQL refuses to run as root, and CI runs as root: then the folder is given to the
`postgres` system user when there is one, else to `nobody`, and initdb and pg_ctl run as that
user (the server and every process it forks inherit it). Otherwise they run as ourselves.
Clients (psql, the drivers) connect over TCP as the role `envagent` without a password.

The fixtures (registered for every test by `pytest_plugins` in tests/conftest.py):

- `postgres_server` (session): the running `PostgresServer`; its `dsn` is
  `postgresql://envagent@127.0.0.1:PORT/postgres`.
- `postgres_url` (function): the URL of a new, empty database `test_<n>` on that server,
  dropped (`WITH (FORCE)`, so a connection the test left open does not stop it) after the test.

Databases are created and dropped with the server's own `psql`, so no Python driver is needed.
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import pytest

ROLE = "envagent"
"""The superuser role initdb creates; every client connects as it."""
VERSIONED_BIN_DIRS = Path("/usr/lib/postgresql")
"""Debian and Ubuntu install each major version in /usr/lib/postgresql/<version>/bin, off PATH."""
TOOLS = ("initdb", "pg_ctl", "postgres", "psql")
INSTALL_HINT = (
    "install it with `apt-get install --no-install-recommends postgresql` (Debian, Ubuntu; "
    ".ci/run does this on CI when it is missing), or put the folder holding its initdb, "
    "pg_ctl, postgres and psql on PATH"
)
UNPRIVILEGED_USERS = ("postgres", "nobody")
"""Who runs the server when we are root, in order of preference."""
INITDB_TIMEOUT_S = 120.0
START_WAIT_S = 30
"""pg_ctl's own bound on waiting for the server to accept connections."""
PSQL_TIMEOUT_S = 60.0
PSQL_OPTIONS = ("-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1")
"""No .psqlrc, quiet, unaligned rows without a header, stop at the first error."""
PORT_ATTEMPTS = 3
"""A port found free may be taken before the server binds it: then another is tried."""
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
    "log_min_messages": "warning",
}
"""Appended to postgresql.conf: fast, not durable, TCP on the loopback only."""


class PostgresError(RuntimeError):
    """The server could not be set up, started or asked something."""


class PostgresUnavailable(PostgresError):
    """No PostgreSQL installation (or nobody to run it as) on this machine."""


def find_bin_dir(path: str | None = None) -> Path:
    """The folder holding initdb, pg_ctl, postgres and psql: the one of `initdb` on PATH
    first, then /usr/lib/postgresql/<version>/bin, the newest version first."""
    candidates: list[Path] = []
    on_path = shutil.which("initdb", path=path)
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    versioned = []
    for initdb in VERSIONED_BIN_DIRS.glob("*/bin/initdb"):
        version = tuple(int(part) for part in re.findall(r"\d+", initdb.parent.parent.name))
        versioned.append((version, initdb.parent))
    candidates += [folder for _, folder in sorted(versioned, reverse=True)]
    for folder in candidates:
        if all(os.access(folder / tool, os.X_OK) for tool in TOOLS):
            return folder
    looked = ", ".join(str(folder) for folder in candidates) or "nothing found"
    raise PostgresUnavailable(
        f"PostgreSQL is needed and was not found (initdb on PATH, then "
        f"{VERSIONED_BIN_DIRS}/*/bin; looked at: {looked}): {INSTALL_HINT}"
    )


def server_user() -> pwd.struct_passwd | None:
    """Who runs the server: None for ourselves, an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return None
    for name in UNPRIVILEGED_USERS:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid != 0:
            return entry
    raise PostgresUnavailable(
        "running as root, which PostgreSQL refuses, and there is no unprivileged user to run "
        f"it as (looked for {', '.join(UNPRIVILEGED_USERS)}); run the tests as another user, "
        "or create one: `useradd --system postgres`"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _clean_env(home: Path) -> dict[str, str]:
    """Our environment less libpq's PG* variables (PGOPTIONS, PGHOST... would change what the
    tools do), with HOME in the server's folder, which the server user can read."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env["HOME"] = str(home)
    return env


def _base_dir(user: pwd.struct_passwd | None) -> Path:
    """Where the temporary folder goes: the usual temporary folder, unless another user must
    reach it and cannot (a TMPDIR under /root), then /tmp."""
    base = Path(tempfile.gettempdir())
    if user is None:
        return base
    for folder in (base, *base.parents):
        if not folder.stat().st_mode & stat.S_IXOTH:
            return Path("/tmp")
    return base


class PostgresServer:
    """A running throwaway server; `stop()` (or leaving its `with` block) ends it and removes
    its folder."""

    def __init__(
        self, bin_dir: Path, directory: Path, port: int, user: pwd.struct_passwd | None
    ) -> None:
        self.bin_dir = bin_dir
        self.directory = directory
        self.data_dir = directory / "data"
        self.log_file = directory / "server.log"
        self.port = port
        self.user = user
        self.started_in_s = 0.0
        """Wall time of `start()`: initdb, configuration and pg_ctl start."""
        self._names = itertools.count(1)
        self._stopped = False

    @classmethod
    def start(cls, settings: Mapping[str, str] | None = None) -> PostgresServer:
        """initdb and start; `settings` are added to SETTINGS (a benchmark's preloaded
        libraries, say)."""
        began = time.monotonic()
        bin_dir = find_bin_dir()
        user = server_user()
        directory = Path(tempfile.mkdtemp(prefix="envagent-pg-", dir=_base_dir(user)))
        server = cls(bin_dir, directory, 0, user)
        try:
            if user is not None:
                os.chown(directory, user.pw_uid, user.pw_gid)
            cluster = ["-D", str(server.data_dir), "-E", "UTF8", "--locale=C"]
            server._run_as_server_user(
                "initdb",
                [*cluster, "-A", "trust", "-U", ROLE, "--no-sync"],
                timeout=INITDB_TIMEOUT_S,
            )
            with (server.data_dir / "postgresql.conf").open("a") as conf:
                conf.write("\n# tests/postgres.py: a throwaway server\n")
                conf.write(f"unix_socket_directories = '{directory}'\n")
                chosen = SETTINGS | dict(settings or {})
                conf.writelines(f"{name} = {value}\n" for name, value in chosen.items())
            server._start_on_a_free_port()
        except BaseException:
            server.stop()
            raise
        server.started_in_s = time.monotonic() - began
        return server

    def _start_on_a_free_port(self) -> None:
        for attempt in range(1, PORT_ATTEMPTS + 1):
            self.port = free_port()
            try:
                self._pg_ctl_start()
                return
            except PostgresError as exc:
                if "already in use" not in str(exc) or attempt == PORT_ATTEMPTS:
                    raise
            self._pg_ctl_stop()  # a half-started postmaster would keep the data folder locked

    def _pg_ctl_start(self) -> None:
        """Start the server on `self.port` and wait until it accepts connections."""
        logged = self._log_size()
        where = ["-D", str(self.data_dir), "-l", str(self.log_file)]
        wait = ["-w", "-t", str(START_WAIT_S)]
        done = self._run_as_server_user(
            "pg_ctl",
            [*where, *wait, "-o", f"-p {self.port}", "start"],
            timeout=START_WAIT_S + 10,
            check=False,
        )
        if done.returncode != 0:
            raise PostgresError(
                f"pg_ctl start failed (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()}\n"
                f"server log:\n{self._log_since(logged).strip()}"
            )

    def shut_down(self) -> None:
        """Stop the server as an operator does (`pg_ctl stop -m fast`: every client is
        disconnected), keeping its data for `start_again`."""
        self._run_as_server_user(
            "pg_ctl",
            ["-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(START_WAIT_S), "stop"],
            timeout=START_WAIT_S + 10,
        )

    def start_again(self) -> None:
        """Start the server `shut_down` stopped, with its databases, on the same port."""
        self._pg_ctl_start()

    def _log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except OSError:
            return 0

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_file.open(errors="replace") as log:
                log.seek(offset)
                return log.read()[-4000:]
        except OSError:
            return "(no log)"

    def _run_as_server_user(
        self, tool: str, args: Sequence[str], *, timeout: float, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run one of the server's tools as the server user, in the server's folder."""
        user = self.user
        try:
            done = subprocess.run(
                [str(self.bin_dir / tool), *args],
                cwd=self.directory,
                env=_clean_env(self.directory),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                user=user.pw_uid if user else None,
                group=user.pw_gid if user else None,
                extra_groups=[] if user else None,  # not root's supplementary groups
            )
        except subprocess.TimeoutExpired as exc:
            raise PostgresError(f"{tool} did not finish within {timeout:g} s") from exc
        if check and done.returncode != 0:
            who = f" as {self.user.pw_name}" if self.user else ""
            raise PostgresError(
                f"{tool}{who} failed (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()}"
            )
        return done

    @property
    def dsn(self) -> str:
        """The URL of the `postgres` database, for administration."""
        return self.url("postgres")

    def url(self, database: str) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{database}"

    @property
    def major_version(self) -> int:
        """The major version of the binaries, from `postgres --version`."""
        done = subprocess.run(
            [str(self.bin_dir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=PSQL_TIMEOUT_S,
            check=True,
        )
        found = re.search(r"(\d+)", done.stdout)
        if not found:
            raise PostgresError(f"no version in {done.stdout!r}")
        return int(found.group(1))

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run `sql` with psql (no .psqlrc, stop at the first error); its unaligned output."""
        try:
            done = subprocess.run(
                [str(self.bin_dir / "psql"), *PSQL_OPTIONS, "-d", self.url(database), "-c", sql],
                env=_clean_env(self.directory),
                capture_output=True,
                text=True,
                timeout=PSQL_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise PostgresError(f"psql did not finish within {PSQL_TIMEOUT_S:g} s") from exc
        if done.returncode != 0:
            raise PostgresError(f"psql failed on {sql!r}: {done.stderr.strip()}")
        return done.stdout.strip()

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (`test_<n>` unless named); its URL."""
        name = name or f"test_{next(self._names)}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"not a plain database name: {name!r}")
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """Drop the database of a URL `create_database` returned, closing its connections."""
        name = urlsplit(url).path.lstrip("/")
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name) or name == "postgres":
            raise ValueError(f"not a database this server created: {url!r}")
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def postmaster_pid(self) -> int:
        """The server's main process, from the first line of its postmaster.pid."""
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])

    def _pg_ctl_stop(self) -> None:
        if (self.data_dir / "postmaster.pid").exists():
            self._run_as_server_user(
                "pg_ctl",
                ["-D", str(self.data_dir), "-m", "immediate", "-w", "-t", "10", "stop"],
                timeout=20,
                check=False,
            )

    def stop(self) -> None:
        """Stop the server at once (nothing in it is kept) and remove its folder."""
        if self._stopped:
            return
        self._stopped = True
        try:
            self._pg_ctl_stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL for the whole session, started when a test first needs it."""
    try:
        server = PostgresServer.start()
    except PostgresError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty database for this test alone, dropped after it."""
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)
