"""The page keeps ages and states true from the live channel alone: heartbeats come as
`heartbeats` events, ages tick on the page's clock, and a silent daemon turns lost by that
clock; the listing is read once, never again in a loop, and a missing channel is said, not
replaced by polling. Headless Chromium against the real platform and a real daemon."""

from __future__ import annotations

import os
import re
import signal
from typing import Any

import pytest
from playwright.async_api import expect

from tests.daemon_helpers import online
from tests.dashboard.conftest import (
    LIVE_MS,
    OpenSession,
    Spawn,
    StartPlatform,
    assert_clean,
    signed_in,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

WINDOW_MS = 3000
"""A short online window, so that silence turns lost within the test's patience."""
PERIOD_MS = 1000
"""The heartbeat period the platform assigns: the page before heartbeats were pushed read the
listing once a period. The daemon pings every 200 ms (`--heartbeat-ms`), which wins."""
WINDOW_PINGS = 25
"""The window watched: 25 pings of the daemon, 5 s, 5 assigned periods, 16 presence flushes."""
LISTING = "/v1/environments"
EVENTS = "/v1/environments/events"

WATCH_ROW = """name => {
  const seen = {oldest: 0, states: new Set(), beats: new Set()};
  const read = () => {
    const tr = [...document.querySelectorAll("#rows tr")]
      .find(row => row.querySelector("button.open").textContent === name);
    if (!tr) return;
    const time = tr.querySelector('[data-label="Last heartbeat"] time');
    seen.oldest = Math.max(seen.oldest, time ? parseInt(time.textContent, 10) : Infinity);
    if (time) seen.beats.add(time.dataset.ms);
    seen.states.add(tr.querySelector('[data-label="State"]').textContent);
  };
  new MutationObserver(read).observe(document.getElementById("rows"),
    {childList: true, subtree: true, characterData: true});
  read();
  window.__seen = () => ({oldest: seen.oldest, states: [...seen.states], beats: seen.beats.size});
}"""
"""Watch a row as the page renders it (each tick of its clock, each event): the oldest age it
showed (s), every state, and how many heartbeats."""
AGE_AT_LEAST = """([name, column, seconds]) => {
  const tr = [...document.querySelectorAll("#rows tr")]
    .find(row => row.querySelector("button.open").textContent === name);
  const time = tr && tr.querySelector(`[data-label="${column}"] time`);
  return Boolean(time) && parseInt(time.textContent, 10) >= seconds;
}"""
"""Whether a row's age in `column` shows at least `seconds` (a tick may skip one value)."""


async def test_heartbeats_keep_a_row_fresh_with_one_read_and_silence_turns_it_lost(
    start_platform: StartPlatform, spawn: Spawn, open_session: OpenSession
) -> None:
    platform = await start_platform(online_window_ms=WINDOW_MS, heartbeat_interval_ms=PERIOD_MS)
    daemon = await spawn(platform.url, platform.key, "--name", "pinging-box")
    status = await daemon.wait_status(online)
    session = await signed_in(open_session, platform, platform.key)
    page = session.page
    state = session.cell("pinging-box", "State")
    await expect(state).to_have_text("online", timeout=LIVE_MS)
    await page.evaluate(WATCH_ROW, "pinging-box")

    answered = status["heartbeats"]["answered"]
    await daemon.wait_status(lambda now: now["heartbeats"]["answered"] >= answered + WINDOW_PINGS)
    seen: dict[str, Any] = await page.evaluate("window.__seen()")
    assert seen["states"] == ["online"], seen
    assert seen["beats"] >= 5, seen  # heartbeats applied, pushed: each a new lastHeartbeat
    assert seen["oldest"] <= 2, seen
    assert session.requests_to(LISTING) == 1, session.calls  # the first read, and no other

    # Silent (its socket still open): the page's clock ages it, then turns it lost.
    os.kill(daemon.process.pid, signal.SIGSTOP)
    try:
        arg = ["pinging-box", "Last heartbeat", 2]
        await page.wait_for_function(AGE_AT_LEAST, arg=arg, timeout=2000 + LIVE_MS)
        await expect(state).to_have_text("lost", timeout=WINDOW_MS + LIVE_MS)
    finally:
        os.kill(daemon.process.pid, signal.SIGCONT)
    # Pinging again: a heartbeat brings it back, with no read either.
    await expect(state).to_have_text("online", timeout=LIVE_MS)
    assert session.requests_to(LISTING) == 1, session.calls
    assert session.requests_to(EVENTS) == 1, session.calls
    assert_clean(session)


async def test_no_live_channel_is_said_and_the_listing_is_not_polled(
    start_platform: StartPlatform, open_session: OpenSession
) -> None:
    platform = await start_platform()
    daemon = await platform.connect("quiet-device")
    session = await open_session(platform)
    page = session.page
    await session.context.route(
        f"**{EVENTS}",
        lambda route: route.fulfill(
            status=404, content_type="application/json", body='{"error": "not_found"}'
        ),
    )
    await session.sign_in(platform.key)
    await expect(page.locator("#live")).to_have_text("no live channel", timeout=LIVE_MS)
    await expect(page.locator("#live-error")).to_contain_text(f"{platform.url}{EVENTS} (HTTP 404)")
    # The listing was read once; the page's clock goes on (3 s of it), and nothing is asked.
    connected = session.cell("quiet-device-name", "Connected")
    await expect(connected).to_have_text(re.compile(r"^\d+ s ago$"))
    since = int((await connected.text_content() or "").split()[0])
    arg = ["quiet-device-name", "Connected", since + 3]
    await page.wait_for_function(AGE_AT_LEAST, arg=arg, timeout=3000 + LIVE_MS)
    assert session.requests_to(LISTING) == 1, session.calls
    assert session.requests_to(EVENTS) == 1, session.calls
    assert_clean(session)
    await daemon.ws.close()
