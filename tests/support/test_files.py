"""Files another user could plant or swap: the state folder must be this user's alone, private
files are never reached through a symlink, and a local API token envagent did not write is
replaced, never trusted. Real files throughout, and real daemons where the daemon decides.
(The token file's own rules are tested in tests/localapi/test_routes.py, the lock file's in
tests/daemon/test_lock.py.)"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

import httpx
import pytest

from agent.support import exitcodes
from agent.support.files import UnusableFile, private_dir
from agent.support.paths import state_dir
from tests.daemon_helpers import DaemonProcess, Spawn
from tests.helpers import AS_ROOT, NOBODY, WAIT_S, Platform, daemon_folder, mode_of


async def put_mode(daemon: DaemonProcess, token: str) -> int:
    async with httpx.AsyncClient(base_url=await daemon.local_url(), timeout=WAIT_S) as http:
        reply = await http.put(
            "/v1/mode", json={"mode": "standard"}, headers={"Authorization": f"Bearer {token}"}
        )
    return reply.status_code


# --- the state folder --------------------------------------------------------------------------


def test_the_state_folder_is_created_0700() -> None:
    private_dir(state_dir())
    assert mode_of(state_dir()) == 0o700


def test_a_folder_others_may_read_is_tightened(caplog: pytest.LogCaptureFixture) -> None:
    state_dir().mkdir(parents=True)
    state_dir().chmod(0o755)
    with caplog.at_level(logging.INFO):
        private_dir(state_dir())
    assert mode_of(state_dir()) == 0o700
    assert [record.getMessage() for record in caplog.records] == [
        f"{state_dir()} was mode 0755; made it 0700"
    ]


@pytest.mark.parametrize(("mode", "who"), [(0o777, "others"), (0o1777, "others"), (0o775, "group")])
def test_a_folder_others_may_write_is_refused_with_the_fix(mode: int, who: str) -> None:
    folder = state_dir()
    folder.mkdir(parents=True)
    folder.chmod(mode)
    for create in (True, False):
        with pytest.raises(UnusableFile) as raised:
            private_dir(folder, create=create)
        assert str(raised.value) == (
            f"{folder} is writable by {'its group' if who == 'group' else who} "
            f"(mode {mode & 0o7777:04o}): run `chmod 700 {folder}`; refusing to trust files in it"
        )
    assert mode_of(folder) == mode


@AS_ROOT
def test_a_folder_another_user_owns_is_refused() -> None:
    folder = state_dir()
    folder.mkdir(parents=True, mode=0o700)
    os.chown(folder, NOBODY, NOBODY)
    with pytest.raises(UnusableFile, match=f"owned by uid {NOBODY}, not by this user"):
        private_dir(folder)


def test_a_missing_folder_is_left_missing_when_only_checked() -> None:
    private_dir(state_dir(), create=False)
    assert not state_dir().exists()


# --- the local API token, as a real daemon uses it ---------------------------------------------


async def test_a_planted_token_symlink_gets_401_and_its_target_is_untouched(
    platform: Platform, spawn: Spawn, tmp_path: Path
) -> None:
    planted = secrets.token_urlsafe(32)
    target = tmp_path / "attacker-token"
    target.write_text(planted + "\n")
    target.chmod(0o644)
    (daemon_folder(tmp_path / "daemon") / "local-api-token").symlink_to(target)

    daemon = await spawn(platform.url, platform.key)

    await daemon.local_url()  # written after the token
    assert await put_mode(daemon, planted) == 401
    assert target.read_text() == planted + "\n" and mode_of(target) == 0o644
    token_file = daemon.state_dir / "envagent" / "local-api-token"
    assert not token_file.is_symlink()
    assert await put_mode(daemon, token_file.read_text().strip()) == 200
    assert await daemon.stop() == exitcodes.OK
    assert planted not in daemon.stderr()


async def test_a_token_of_stray_bytes_is_replaced_and_the_daemon_starts(
    platform: Platform, spawn: Spawn, tmp_path: Path
) -> None:
    token_file = daemon_folder(tmp_path / "daemon") / "local-api-token"
    token_file.write_bytes(b"\xff\xfe")
    token_file.chmod(0o600)

    daemon = await spawn(platform.url, platform.key)
    await daemon.local_url()  # written after the token

    assert await put_mode(daemon, token_file.read_text().strip()) == 200
    warnings = [record for record in daemon.log_records() if record["level"] == "warning"]
    assert [record["message"] for record in warnings] == [
        f"the local API token file {token_file} was not a token envagent wrote: made a new token"
    ]
    assert await daemon.stop() == exitcodes.OK
    assert "Traceback" not in daemon.stderr()


# --- the log file ------------------------------------------------------------------------------


async def test_a_log_file_others_may_write_is_made_0600(
    platform: Platform, spawn: Spawn, tmp_path: Path
) -> None:
    log_file = tmp_path / "envagent.log"
    log_file.write_text("")
    log_file.chmod(0o666)
    daemon = await spawn(platform.url, platform.key, "--log-file", str(log_file))
    await daemon.local_url()
    assert mode_of(log_file) == 0o600
    assert await daemon.stop() == exitcodes.OK
    assert log_file.read_text().startswith("{")
