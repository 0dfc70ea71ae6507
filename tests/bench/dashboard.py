"""The dashboard's latency: from a mode change on a daemon's local API (what a coding tool does)
to the page showing it, through the daemon's `update_device_status`, the platform's row and its
live channel, and the page's rendering, in headless Chromium.

The page records when the mode cell's new text is about to be painted (the animation frame
after the DOM changed), in the browser's wall clock; the benchmark notes the wall clock just
before the `PUT /v1/mode` and corrects for the offset between the two clocks (measured with a
round trip). Changes follow one another: the next is made once the page showed the last.
"""

from __future__ import annotations

import time

import aiohttp
from playwright.async_api import Page, async_playwright

from tests.bench.fixtures import make_repo, start_daemon, start_platform, wait_online
from tests.bench.plan import Plan
from tests.bench.procs import BenchError, Workspace
from tests.bench.report import Budget, Figure, Section
from tests.bench.stats import median, percentile
from tests.dashboard.browser import launch

NAME = "bench-dashboard"
MODES = ("acceptEdits", "bypassPermissions", "unrestricted", "standard", "default")
SHOWN_WAIT_MS = 10_000
BUDGET = Budget(2000, "requirement: a change shows on the page within 2 s")

# Each text the row's mode cell takes, with the time of the frame that paints it.
WATCH_MODE_CELL = """name => {
  window.__modes = [];
  let last = null;
  const read = () => {
    const button = [...document.querySelectorAll("#rows button.open")]
      .find(b => b.textContent === name);
    const cell = button && button.closest("tr").querySelector('[data-label="Mode"]');
    const text = cell ? cell.textContent : null;
    if (text !== last) {
      last = text;
      requestAnimationFrame(() =>
        window.__modes.push({mode: text, at: performance.timeOrigin + performance.now()}));
    }
  };
  new MutationObserver(read).observe(document.getElementById("rows"),
    {childList: true, subtree: true, characterData: true});
  read();
}"""


async def _clock_offset_ms(page: Page) -> float:
    """The browser's wall clock minus ours, from the middle of a round trip."""
    before = time.time() * 1000
    theirs: float = await page.evaluate("performance.timeOrigin + performance.now()")
    after = time.time() * 1000
    return theirs - (before + after) / 2


async def run(workspace: Workspace, plan: Plan) -> Section:
    section = Section("dashboard", "Dashboard: a daemon's mode change to the page showing it")
    platform = await start_platform(workspace, workspace.path("dashboard") / "platform.db")
    state_home = workspace.path("dashboard-daemon")
    daemon = await start_daemon(
        workspace,
        platform,
        name=NAME,
        state_home=state_home,
        workdir=make_repo(workspace.path("dashboard-repo")),
    )
    latencies: list[float] = []
    async with aiohttp.ClientSession() as http, async_playwright() as playwright:
        status = await wait_online(http, daemon)
        local_api = status.local_api
        if local_api is None:
            raise BenchError("the daemon reports no local API address")
        token = (state_home / "state" / "envagent" / "local-api-token").read_text().strip()
        browser = await launch(playwright)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            await page.goto(platform.url + "/")
            await page.get_by_label("API key").fill(platform.key)
            await page.get_by_role("button", name="Sign in").click()
            await page.wait_for_function(
                "document.getElementById('live').textContent === 'live'", timeout=SHOWN_WAIT_MS
            )
            await page.get_by_role("button", name=f"Details of {NAME}").wait_for()
            await page.evaluate(WATCH_MODE_CELL, NAME)
            offset = await _clock_offset_ms(page)
            for index in range(plan.dashboard_changes):
                mode = MODES[index % len(MODES)]
                began = time.time() * 1000
                async with http.put(
                    f"{local_api}/v1/mode",
                    json={"mode": mode},
                    headers={"Authorization": f"Bearer {token}"},
                ) as reply:
                    if reply.status != 200:
                        raise BenchError(f"PUT /v1/mode answered {reply.status}")
                handle = await page.wait_for_function(
                    """([mode, since]) => {
                      const seen = window.__modes.find(m => m.mode === mode && m.at >= since);
                      return seen ? seen.at : null;
                    }""",
                    arg=[mode, began + offset],
                    timeout=SHOWN_WAIT_MS,
                )
                shown: float = await handle.json_value()
                latencies.append(shown - offset - began)
        finally:
            await browser.close()
    await daemon.child.stop()
    await platform.child.stop()
    samples = len(latencies)
    section.add(Figure("mode change → shown, p50", "ms", [median(latencies)], samples=samples))
    section.add(
        Figure(
            "mode change → shown, p99",
            "ms",
            [percentile(latencies, 0.99)],
            samples=samples,
            budget=BUDGET,
        )
    )
    section.add(Figure("mode change → shown, max", "ms", [max(latencies)], samples=samples))
    section.details["latencies_ms"] = [round(value, 2) for value in latencies]
    section.notes.append(
        "local API PUT /v1/mode → daemon's update_device_status → platform row → live channel "
        "event → page rendered (the animation frame after the DOM changed); one daemon, one "
        "page, on 127.0.0.1; the next change starts once the last one showed"
    )
    return section
