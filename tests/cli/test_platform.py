"""`envagent platform serve`, `platform keys create` and `keys list` (agent/cli/platform.py) as a
person runs them: the key shown once and stored as a hash, the table of keys, and every
refusal as one line with its exit code."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import socket
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from agent.cli.main import main
from agent.platform.keys import hash_key
from agent.support import exitcodes
from agent.support.paths import platform_state_dir
from tests.conftest import StartPlatform
from tests.daemon_helpers import cli
from tests.helpers import WAIT_S, Platform

KEY_COLUMNS = ["ORGANIZATION", "USER", "OWNER", "ROLE", "CREATED", "FINGERPRINT"]


def envagent(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """`envagent ARGS` in this process: the key commands run no event loop of their own."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


async def serve(*args: str) -> tuple[int, str, str]:
    """`envagent platform serve ARGS` in its own process, as it runs its own event loop."""
    return await cli(dict(os.environ), "platform", "serve", "--port", "0", *args)


async def test_keys_create_prints_the_key_once_and_stores_only_a_hash(
    start_platform: StartPlatform, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "platform.db"
    code, out, err = await asyncio.to_thread(  # the command runs its own event loop
        envagent, capsys, "platform", "keys", "create", "--org", "org-a", "--user", "u-1",
        "--owner", "Ann", "--db", str(db),
    )  # fmt: skip
    assert code == 0, err
    key = out.strip()
    assert out == key + "\n" and key.startswith("envk_") and len(key) > 40
    assert err == (
        f"envagent: member key for user u-1 of org-a stored in {db}; it is shown only this once\n"
    )
    platform = await start_platform(db=db)
    assert not platform.server.settings.dev_key_file.exists()  # keys exist: no dev key
    registration = await platform.register("dev-1", key)
    row = registration["environment"]
    assert (row["organizationId"], row["userId"], row["apiKeyOwner"]) == ("org-a", "u-1", "Ann")
    await platform.server.stop()
    for path in tmp_path.iterdir():
        assert key.encode() not in path.read_bytes(), path


def test_keys_list_shows_roles_and_never_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "platform.db")
    keys = []
    for args in (("--user", "u1", "--owner", "Ann"), ("--user", "u3", "--role", "admin")):
        code, out, err = envagent(
            capsys, "platform", "keys", "create", "--org", "org-a", *args, "--db", db
        )
        assert code == 0, err
        keys.append(out.strip())
    assert "admin key for user u3 of org-a" in err
    code, out, _ = envagent(capsys, "platform", "keys", "list", "--db", db)
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == KEY_COLUMNS
    assert [line.split()[:4] for line in lines] == [
        ["org-a", "u1", "Ann", "member"],
        ["org-a", "u3", "-", "admin"],
    ]
    for key, line in zip(keys, lines, strict=True):
        assert key not in out and hash_key(key) not in out
        assert line.split()[-1] == hash_key(key)[:12]
    with pytest.raises(SystemExit) as usage:
        main(["platform", "keys", "create", "--org", "o", "--user", "u", "--role", "root"])
    assert usage.value.code == exitcodes.CONFIG
    assert "invalid choice: 'root'" in capsys.readouterr().err


def test_the_key_table_lines_up_and_says_when_in_utc(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = str(tmp_path / "platform.db")
    code, out, _ = envagent(capsys, "platform", "keys", "list", "--db", db)
    assert (code, out.split()) == (0, KEY_COLUMNS)  # a new database: the header alone
    people = [("u", "a very long owner name"), ("user-with-a-long-id", "B")]
    for user, owner in people:
        envagent(capsys, "platform", "keys", "create", "--org", "o", "--user", user,
                 "--owner", owner, "--db", db)  # fmt: skip
    with monkeypatch.context() as local:
        local.setenv("TZ", "XYZ-05:45")  # a local time would be 5 h 45 min off
        time.tzset()
        _, out, _ = envagent(capsys, "platform", "keys", "list", "--db", db)
    time.tzset()
    now = datetime.now(UTC)
    header, *lines = out.splitlines()
    starts = [header.index(column) for column in KEY_COLUMNS]
    for line, (user, owner) in zip(lines, people, strict=True):
        cells = [
            line[start:end].strip() for start, end in zip(starts, [*starts[1:], None], strict=True)
        ]
        assert cells[:4] == ["o", user, owner, "member"], line
        created = datetime.strptime(cells[4], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert abs(now - created) < timedelta(minutes=1), cells[4]
    assert all(line == line.rstrip() for line in out.splitlines())


def test_a_relative_database_is_named_absolute_and_the_default_is_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    _, _, err = envagent(capsys, "platform", "keys", "create", "--org", "o", "--user", "u",
                         "--db", "keys.db")  # fmt: skip
    assert f"stored in {tmp_path / 'keys.db'};" in err
    _, _, err = envagent(capsys, "platform", "keys", "create", "--org", "o", "--user", "u")
    assert f"stored in {platform_state_dir() / 'platform.db'};" in err
    assert (platform_state_dir() / "platform.db").is_file()


def test_keys_on_an_unusable_database_are_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in (("create", "--org", "o", "--user", "u"), ("list",)):
        code, out, err = envagent(capsys, "platform", "keys", *command, "--db", str(tmp_path))
        assert (code, out) == (exitcodes.ERROR, "")
        assert err.startswith(f"envagent: cannot use the platform database {tmp_path}: ")
        assert err.count("\n") == 1


async def test_unusable_database_or_port_is_one_line_and_exit_1(tmp_path: Path) -> None:
    code, _, err = await serve("--db", str(tmp_path))
    assert code == 1
    assert err.startswith(f"envagent: cannot use the platform database {tmp_path}")
    assert err.count("\n") == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = await cli(
            dict(os.environ), "platform", "serve", "--port", str(port), "--db",
            str(tmp_path / "p.db"),
        )  # fmt: skip
    assert code == 1 and f"cannot listen on 127.0.0.1:{port}" in err
    assert err.strip().splitlines()[-1].startswith("envagent: cannot listen")


async def test_a_database_another_platform_serves_is_exit_5_and_changes_nothing(
    platform: Platform, tmp_path: Path
) -> None:
    """The lock is taken before any row is touched: the platform already serving the
    database keeps its sockets online."""
    db, lock = tmp_path / "platform.db", tmp_path / "platform.db.lock"
    daemon = await platform.connect("dev-1")
    code, out, err = await serve("--db", str(db))
    assert (code, out) == (exitcodes.ALREADY_RUNNING, "")
    assert err == (
        f"envagent: the platform database {db} is in use by pid {os.getpid()} "
        f"(lock {lock}); SQLite serves one platform process\n"
    )
    # The refused start touched no row: the serving platform's socket is still online.
    assert await daemon.ping() == {"type": "pong"}
    assert (await platform.row("dev-1"))["connectionId"] == daemon.connection_id
    await daemon.ws.close()


async def test_a_development_key_that_cannot_be_written_is_named_not_the_port(
    tmp_path: Path,
) -> None:
    """Not `cannot listen on 127.0.0.1:0: Is a directory`: the port is fine."""
    db = tmp_path / "platform.db"
    (tmp_path / "platform.db.dev-api-key").mkdir()
    code, out, err = await serve("--db", str(db))
    assert (code, out) == (exitcodes.ERROR, "")
    assert err.splitlines()[-1] == (
        f"envagent: cannot write the development key {tmp_path / 'platform.db.dev-api-key'}: "
        "Is a directory"
    )


async def test_keys_on_postgresql_by_flag_or_environment_never_print_the_password(
    postgres_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test server trusts the role, so the password is accepted and ignored: what matters
    is that no output carries it."""
    parts = urlsplit(postgres_url)
    url = parts._replace(netloc=f"{parts.username}:hunter2@{parts.netloc.split('@')[1]}").geturl()
    code, out, err = await asyncio.to_thread(
        envagent, capsys, "platform", "keys", "create", "--org", "org-a", "--user", "u-1",
        "--database", url,
    )  # fmt: skip
    assert code == 0, err
    assert err.startswith(f"envagent: member key for user u-1 of org-a stored in {postgres_url};")
    monkeypatch.setenv("ENVAGENT_DATABASE_URL", url)
    code, listed, err = await asyncio.to_thread(envagent, capsys, "platform", "keys", "list")
    assert code == 0, err
    assert "org-a" in listed and "u-1" in listed
    assert "hunter2" not in out + err + listed


@pytest.mark.parametrize(("asked", "expected"), [((), "human"), (("--log-format", "json"), "json")])
async def test_serve_logs_human_lines_on_a_terminal_and_json_when_asked(
    tmp_path: Path, asked: tuple[str, ...], expected: str
) -> None:
    primary, terminal = pty.openpty()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "platform", "serve", "--port", "0",
        "--db", str(tmp_path / "p.db"), *asked,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=terminal,
    )  # fmt: skip
    os.close(terminal)
    try:
        line = await asyncio.wait_for(
            asyncio.to_thread(_line_with, primary, "listening on"), WAIT_S
        )
    finally:
        process.terminate()
        await process.wait()
        os.close(primary)
    if expected == "json":
        assert json.loads(line)["message"].startswith("platform ")
    else:
        assert " INFO envagent.platform: platform " in line and line[0].isdigit()


def _line_with(fd: int, text: str) -> str:
    """The first line read from `fd` that holds `text`; what was read when the terminal ends."""
    seen = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the other side closed
            chunk = b""
        seen += chunk
        for line in seen.decode(errors="replace").splitlines():
            if text in line:
                return line.strip()
        if not chunk:
            return seen.decode(errors="replace")
