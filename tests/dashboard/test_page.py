"""The dashboard as a person uses it: a refused key, hostile text, a phone's width, the keyboard
alone, filters and paging, and the online/lost/left states, in headless Chromium against the
real platform."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from agent.platform.access import ApiKey
from agent.platform.keys import create_key
from tests.daemon_helpers import online
from tests.dashboard.conftest import (
    LIVE_MS,
    OUTPUT,
    OpenSession,
    Spawn,
    StartPlatform,
    assert_clean,
    signed_in,
)
from tests.helpers import Platform

pytestmark = pytest.mark.asyncio(loop_scope="module")

WINDOW_MS = 3000
PHONE = {
    "viewport": {"width": 390, "height": 844},
    "is_mobile": True,
    "has_touch": True,
    "device_scale_factor": 2,
}


async def overflow(page: Page, selector: str = "html") -> int:
    """How many pixels `selector` is wider than its box: > 0 means a sideways scroll."""
    width: int = await page.eval_on_selector(selector, "e => e.scrollWidth - e.clientWidth")
    return width


async def test_a_refused_key_shows_the_platform_s_message_and_is_not_kept(
    platform: Platform, open_session: OpenSession
) -> None:
    session = await open_session(platform)
    page = session.page
    await expect(page.get_by_label("API key")).to_be_focused()
    await session.sign_in("envk_not-a-key")
    await expect(page.locator("#sign-in-error")).to_have_text("the API key was not recognised")
    assert await page.evaluate("sessionStorage.length") == 0
    await expect(page.locator("#environments")).to_be_hidden()
    # The right key then works, in the same page.
    await session.sign_in(platform.key)
    await expect(page.locator("#live")).to_have_text("live", timeout=LIVE_MS)
    await expect(page.locator("#sign-in-error")).to_be_hidden()
    assert not any("envk_" in url for url in session.requests)
    assert_clean(session)


async def test_hostile_names_and_paths_render_as_text(
    platform: Platform, spawn: Spawn, open_session: OpenSession, tmp_path: Path
) -> None:
    name = '<img src=x onerror="window.__pwned=1">&amp;</td><script>window.__pwned=2</script>'
    folder = tmp_path / "<img src=y onerror=window.__pwned=3>&lt;b&gt;"
    folder.mkdir()
    session = await signed_in(open_session, platform, platform.key)
    page = session.page
    daemon = await spawn(platform.url, platform.key, "--name", name, cwd=folder)
    await daemon.wait_status(online)
    await expect(session.cell(name, "Name")).to_have_text(name, timeout=LIVE_MS)
    await expect(session.cell(name, "Working directory")).to_have_text(str(folder))
    await session.row(name).get_by_role("button").click()
    await expect(page.locator("#detail-title")).to_contain_text(name)
    await expect(page.locator('#detail-metadata [data-field="workingDirectory"]')).to_have_text(
        str(folder)
    )
    assert await page.locator("main img, main script, dialog img, dialog script").count() == 0
    assert await page.evaluate("window.__pwned") is None
    assert_clean(session)  # the img's request for `x` or `y` would show here


async def test_a_phone_s_width_shows_cards_and_no_sideways_scroll(
    platform: Platform, spawn: Spawn, open_session: OpenSession, tmp_path: Path
) -> None:
    session = await signed_in(open_session, platform, platform.key, **PHONE)
    page = session.page
    await expect(page.locator("#empty-none")).to_be_visible()
    assert await overflow(page) <= 0  # the long `envagent run` line wraps

    name = "phone-" + "x" * 80
    deep = tmp_path.joinpath(*(["a-rather-long-folder-name-" * 3] * 3))
    deep.mkdir(parents=True)
    daemon = await spawn(platform.url, platform.key, "--name", name, cwd=deep)
    await daemon.wait_status(online)
    await expect(session.cell(name, "State")).to_have_text("online", timeout=LIVE_MS)
    assert await session.row(name).evaluate("e => getComputedStyle(e).display") == "block"
    await expect(page.locator("thead")).not_to_be_in_viewport()
    assert await overflow(page) <= 0
    assert await overflow(page, "body") <= 0
    OUTPUT.mkdir(exist_ok=True)
    await page.screenshot(path=str(OUTPUT / "dashboard-phone.png"), full_page=True)

    await session.row(name).get_by_role("button").click()
    await expect(page.locator("#detail")).to_be_visible()
    assert await overflow(page, "#detail") <= 0
    assert_clean(session)


async def test_every_control_is_reached_with_the_keyboard(
    platform: Platform, open_session: OpenSession
) -> None:
    await platform.register("kb-device", connectionName="kb-box")
    session = await open_session(platform)
    page = session.page
    await expect(page.get_by_label("API key")).to_be_focused()
    await page.keyboard.type(platform.key)
    await page.keyboard.press("Enter")
    await expect(page.locator("#live")).to_have_text("live", timeout=LIVE_MS)

    async def tab_to(locator_name: str, key: str = "Tab") -> None:
        for _ in range(30):
            if await page.evaluate(f"document.activeElement.matches({locator_name!r})"):
                return
            await page.keyboard.press(key)
        raise AssertionError(f"{locator_name} not reached with {key}")

    opener = "#rows button.open"
    await tab_to(opener)
    # The focus shows: an outline, only while the keyboard moves it (:focus-visible).
    assert await page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"
    await page.keyboard.press("Enter")
    await expect(page.locator("#detail")).to_be_visible()
    await expect(page.locator("#detail-close")).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(page.locator("#detail")).to_be_hidden()
    await expect(page.locator(opener)).to_be_focused()

    for control in ("#filter-user", "#filter-source", "#filter-online", "#sign-out"):
        await tab_to(control, "Shift+Tab")
    await page.keyboard.press("Enter")
    await expect(page.locator("#sign-in")).to_be_visible()
    await expect(page.get_by_label("API key")).to_be_focused()
    assert await page.evaluate("sessionStorage.getItem('envagent.dashboard.key')") is None
    await expect(page.locator("#rows tr")).to_have_count(0)
    assert_clean(session)


async def test_filters_paging_and_live_rows_respect_the_filters(
    platform: Platform, open_session: OpenSession
) -> None:
    bob = await create_key(platform.server.store, ApiKey("org-dev", "user-bob", "Bob"))
    for number in range(50):
        await platform.register(f"dev-{number:02}")
    for number in range(3):
        await platform.register(f"remote-{number}", source="remote")
    for number in range(2):
        await platform.register(f"bob-{number}", bob)
    session = await signed_in(open_session, platform, platform.key)
    page = session.page
    rows = page.locator("#rows tr")
    await expect(rows).to_have_count(50)
    await expect(page.locator("#count")).to_have_text("(50+)")
    await page.get_by_role("button", name="Load more").click()
    await expect(rows).to_have_count(55)
    await expect(page.get_by_role("button", name="Load more")).to_be_hidden()
    assert any("after=" in url for url in session.requests)
    # Every page is loaded: a new row goes at the end, live.
    await platform.register("dev-new")
    await expect(rows).to_have_count(56, timeout=LIVE_MS)
    await expect(rows.last).to_contain_text("dev-new-name")

    # One user's rows; a live row of another user stays out.
    await page.get_by_label("User").fill("user-bob")
    await page.get_by_label("User").press("Enter")
    await expect(rows).to_have_count(2)
    await platform.register("dev-late")
    await platform.register("bob-late", bob)
    await expect(session.row("bob-late-name")).to_be_visible(timeout=LIVE_MS)
    await expect(session.row("dev-late-name")).to_have_count(0)
    await expect(rows).to_have_count(3)

    # Each row says its source, and one source filters them, live rows included.
    await page.get_by_label("User").fill("")
    await page.get_by_label("User").press("Enter")
    await expect(session.cell("dev-00-name", "Source")).to_have_text("local")
    await page.get_by_label("Source").select_option("remote")
    await expect(rows).to_have_count(3)
    await expect(page.locator('[data-label="Source"]')).to_have_text(["remote"] * 3)
    await platform.register("local-late")
    await platform.register("remote-late", source="remote")
    await expect(session.row("remote-late-name")).to_be_visible(timeout=LIVE_MS)
    await expect(session.row("local-late-name")).to_have_count(0)

    # Online only: a socket opening brings its row in, and its end takes it out.
    await page.get_by_label("Source").select_option("")
    await page.get_by_label("Online only").check()
    await expect(page.locator("#empty-filtered")).to_be_visible()
    daemon = await platform.connect("live-1")
    await expect(session.cell("live-1-name", "State")).to_have_text("online", timeout=LIVE_MS)
    await daemon.ws.close()
    await expect(rows).to_have_count(0, timeout=LIVE_MS)
    assert_clean(session)


async def test_online_lost_and_left_are_told_apart(
    start_platform: StartPlatform, open_session: OpenSession
) -> None:
    # A short online window, so that a silent socket turns lost within the test's patience
    # (and still long enough for the row to be seen online first on a busy machine).
    platform = await start_platform(online_window_ms=WINDOW_MS)
    session = await signed_in(open_session, platform, platform.key)
    daemon = await platform.connect("quiet-device")
    state = session.cell("quiet-device-name", "State")
    await expect(state).to_have_text("online", timeout=LIVE_MS)
    # No ping: the page turns it lost by itself once the heartbeat is older than the window.
    await expect(state).to_have_text("lost", timeout=WINDOW_MS + LIVE_MS)
    await expect(state.locator(".badge")).to_have_attribute(
        "title", "connected, but no heartbeat within the online window"
    )
    await daemon.ws.close()
    await expect(state).to_have_text("left", timeout=LIVE_MS)
    assert_clean(session)


async def test_after_the_platform_restarts_the_page_reconnects_and_reads_again(
    start_platform: StartPlatform, open_session: OpenSession
) -> None:
    platform = await start_platform()
    session = await signed_in(open_session, platform, platform.key)
    live = session.page.locator("#live")
    await platform.server.stop()  # ends every live stream, cleanly
    await expect(live).to_have_text("reconnecting…", timeout=LIVE_MS)
    again = await start_platform(port=platform.server.port)
    # Made before the page is back, so it can only learn of it by reading the listing again
    # (or, if it reconnected first, from the stream): either way, without a reload.
    await again.register("while-away")
    # Back within the backoff: a retry after at most 1.5 s, or (a slow restart) 3 s after that.
    await expect(live).to_have_text("live", timeout=LIVE_MS + 4500)
    await expect(session.row("while-away-name")).to_be_visible(timeout=LIVE_MS)
    assert_clean(session)


async def test_the_detail_of_one_of_several_instances_of_a_device_is_that_row(
    platform: Platform, open_session: OpenSession
) -> None:
    first = await platform.register("shared-device", connectionName="first-instance")
    second = await platform.register(
        "shared-device", connectionName="second-instance", listenerInstanceId="b", source="remote"
    )
    session = await signed_in(open_session, platform, platform.key)
    page = session.page
    await session.row("second-instance").get_by_role("button").click()
    detail = page.locator("#detail")
    await expect(detail.locator("#detail-title")).to_contain_text("second-instance")
    fields = detail.locator("#detail-fields")
    await expect(fields.locator('[data-field="id"]')).to_have_text(second["environment"]["id"])
    await expect(fields.locator('[data-field="source"]')).to_have_text("remote")
    # Read by the row's id: by device, the platform would answer with the first instance.
    path = "/v1/environments/" + second["environment"]["id"]
    assert any(url.split("?")[0].endswith(path) for url in session.requests)
    assert first["environment"]["id"] != second["environment"]["id"]
    assert_clean(session)
