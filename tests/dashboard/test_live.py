"""The dashboard end to end: a real daemon's life on a real platform, seen in headless Chromium
as it happens, within 2 s of each change and without a reload; what another organization and
another user of the same one see and may do."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from playwright.async_api import expect

from agent.platform.access import ApiKey
from agent.platform.keys import create_key
from tests.daemon_helpers import DaemonProcess, online
from tests.dashboard.conftest import (
    LIVE_MS,
    OUTPUT,
    OpenSession,
    Spawn,
    assert_clean,
    signed_in,
)
from tests.helpers import Platform, make_repo

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def set_mode_locally(daemon: DaemonProcess, mode: str) -> None:
    """What a coding tool does: `PUT /v1/mode` on the daemon's local API, with its token."""
    token = (daemon.state_dir / "envagent" / "local-api-token").read_text().strip()
    async with httpx.AsyncClient(base_url=await daemon.local_url(), timeout=5) as http:
        reply = await http.put(
            "/v1/mode", json={"mode": mode}, headers={"Authorization": f"Bearer {token}"}
        )
    assert reply.status_code == 200, reply.text


@pytest.mark.slow
async def test_a_daemon_s_life_shows_live_and_only_to_its_organization(
    platform: Platform, spawn: Spawn, open_session: OpenSession, tmp_path: Path
) -> None:
    other_org = await create_key(platform.server.store, ApiKey("org-other", "user-eve", "Eve"))
    page_of = await signed_in(open_session, platform, platform.key)
    stranger = await signed_in(open_session, platform, other_org)
    page = page_of.page
    # The key is held by the tab, not by any URL.
    assert await page.evaluate("sessionStorage.getItem('envagent.dashboard.key')") == platform.key
    await expect(page.locator("#empty-none")).to_contain_text(
        f"LETTA_BASE_URL={platform.url} LETTA_API_KEY="
    )

    work = tmp_path / "work"
    work.mkdir()
    daemon = await spawn(platform.url, platform.key, "--name", "build-box", cwd=work)
    status = await daemon.wait_status(online)
    await expect(page_of.cell("build-box", "State")).to_have_text("online", timeout=LIVE_MS)
    await expect(page_of.cell("build-box", "Working directory")).to_have_text(str(work))
    await expect(page_of.cell("build-box", "Mode")).to_have_text("default")
    # Relative times, the exact one in the tooltip, and the heartbeat moving, pushed live (its
    # age stays near 0 s: test_heartbeats).
    heartbeat = page_of.cell("build-box", "Last heartbeat").locator("time")
    await expect(heartbeat).to_have_text(re.compile(r"^\d+ s ago$"))
    await expect(heartbeat).to_have_attribute("title", re.compile(r"\d{2}:\d{2}:\d{2}"))
    await expect(page_of.cell("build-box", "Connected").locator("time")).to_have_text(
        re.compile(r"^\d+ s ago$")
    )
    before = await heartbeat.get_attribute("datetime")
    await expect(heartbeat).not_to_have_attribute("datetime", before or "", timeout=LIVE_MS)

    # The mode, changed by a coding tool on the machine.
    await set_mode_locally(daemon, "acceptEdits")
    await expect(page_of.cell("build-box", "Mode")).to_have_text("acceptEdits", timeout=LIVE_MS)

    # The mode, changed from the page: the detail view sends the frame.
    await page_of.row("build-box").get_by_role("button").click()
    detail = page.locator("#detail")
    await expect(detail).to_be_visible()
    fields = detail.locator("#detail-fields")
    await expect(fields.locator('[data-field="deviceId"]')).to_have_text(status["deviceId"])
    await expect(fields.locator('[data-field="connectionId"]')).to_have_text(status["connectionId"])
    await expect(fields.locator('[data-field="organizationId"]')).to_have_text("org-dev")
    await expect(detail.locator('#detail-metadata [data-field="workingDirectory"]')).to_have_text(
        str(work)
    )
    await expect(
        detail.locator('#detail-metadata [data-field="supported_commands"]')
    ).to_contain_text("refresh_metadata")
    await expect(detail.locator('#detail-self-update [data-field="supported"]')).to_have_text(
        re.compile("^(yes|no)$")
    )
    await detail.get_by_label("Mode").select_option("bypassPermissions")
    await detail.get_by_role("button", name="Set mode").click()
    await expect(detail.locator("#mode-status")).to_have_text(
        "The daemon is now in bypassPermissions.", timeout=LIVE_MS
    )
    await expect(page_of.cell("build-box", "Mode")).to_have_text(
        "bypassPermissions", timeout=LIVE_MS
    )
    assert (await daemon.status())["mode"] == "bypassPermissions"
    await page.keyboard.press("Escape")
    await expect(detail).to_be_hidden()

    # The working directory, changed by the platform: the branch comes with it.
    repo = make_repo(tmp_path / "repo", branch="feature/live")
    sent = await platform.send_frame(
        status["connectionId"], {"type": "change_device_state", "payload": {"cwd": str(repo)}}
    )
    assert sent.status_code == 204, sent.text
    await expect(page_of.cell("build-box", "Working directory")).to_have_text(
        str(repo), timeout=LIVE_MS
    )
    await expect(page_of.cell("build-box", "Branch")).to_have_text("feature/live", timeout=LIVE_MS)

    # A second machine, then the picture of the table with both.
    second = await spawn(platform.url, platform.key, "--name", "ci-runner-2", state="second")
    await second.wait_status(online)
    await expect(page_of.cell("ci-runner-2", "State")).to_have_text("online", timeout=LIVE_MS)
    OUTPUT.mkdir(exist_ok=True)
    await page.screenshot(path=str(OUTPUT / "dashboard.png"), full_page=True)

    # It stops: the row stays, as left.
    await daemon.stop()
    await expect(page_of.cell("build-box", "State")).to_have_text("left", timeout=LIVE_MS)
    await expect(page_of.cell("build-box", "Connected")).to_have_text("—")

    # Another organization saw none of it, live or read.
    await expect(stranger.page.locator("#rows tr")).to_have_count(0)
    await expect(stranger.page.locator("#empty-none")).to_be_visible()
    for session in (page_of, stranger):
        assert_clean(session)
        assert not any(platform.key in url or other_org in url for url in session.requests)


async def test_a_member_of_another_user_sees_the_row_but_may_not_steer_it(
    platform: Platform, spawn: Spawn, open_session: OpenSession
) -> None:
    bob = await create_key(platform.server.store, ApiKey("org-dev", "user-bob", "Bob"))
    daemon = await spawn(platform.url, platform.key, "--name", "alice-box")
    await daemon.wait_status(online)
    session = await signed_in(open_session, platform, bob)
    await expect(session.cell("alice-box", "User")).to_have_text("user-dev", timeout=LIVE_MS)
    await session.row("alice-box").get_by_role("button").click()
    detail = session.page.locator("#detail")
    await detail.get_by_label("Mode").select_option("unrestricted")
    await detail.get_by_role("button", name="Set mode").click()
    await expect(detail.get_by_role("alert")).to_have_text(
        "only user user-dev, who registered this environment, or an admin key of org-dev "
        "may steer it",
        timeout=LIVE_MS,
    )
    assert (await daemon.status())["mode"] == "default"
    await expect(session.cell("alice-box", "Mode")).to_have_text("default")
    assert_clean(session)
