"""Debian's chromium, as the dashboard's tests and its benchmark launch it through Playwright.

Never a browser of Playwright's own: nothing is downloaded (`.ci/run` installs chromium with
apt when it is missing)."""

from __future__ import annotations

from playwright.async_api import Browser, Playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # root in a container has no user namespace for the sandbox
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # The machine has no network: Chromium's own background connections are refused many at a
    # time, which slows it down and fills its log.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


async def launch(playwright: Playwright) -> Browser:
    return await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
