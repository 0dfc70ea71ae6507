"""Fixtures for the dashboard's end-to-end tests: Debian's chromium driven by Playwright, one
browser per test module and a fresh context per test, against the real platform and real
daemons.

A browser shared by a module lives in the module's event loop (Playwright's objects belong to
the loop that made them), so every test here runs in that loop (`pytestmark` in each module,
`asyncio(loop_scope="module")`), and so must the platform and the daemons it talks to. The
shared `start_platform` and `spawn` fixtures of tests/conftest.py run in each test's own loop,
hence fixtures of the module's loop below, over the same `running_platforms` and
`running_daemons`.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Error,
    Frame,
    Page,
    Request,
    async_playwright,
    expect,
)

from tests.daemon_helpers import Spawn, running_daemons
from tests.dashboard.browser import CHROMIUM, launch
from tests.helpers import Platform, StartPlatform, running_platforms

LIVE_S = 2.0
"""The requirement: a change shows on the page within 2 s, without a reload."""
LIVE_MS = LIVE_S * 1000
REPO = Path(__file__).resolve().parents[2]
OUTPUT = REPO / "test-output"


ALLOWED = [
    ("GET", re.compile(r"/|/(index\.html|app\.js|style\.css|favicon\.svg)")),
    ("GET", re.compile(r"/v1/environments")),  # the listing
    ("GET", re.compile(r"/v1/environments/events")),  # the live channel
    ("GET", re.compile(r"/v1/environments/(?!register$)[^/]+")),  # one row
    ("POST", re.compile(r"/v1/environments/[^/]+/frames")),  # a mode change
]
"""Every request the page may make: its own files and the documented API (docs/protocol.md).
Anything else is a bug or a leak."""


@pytest.fixture(scope="module")
def chromium() -> str:
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    return CHROMIUM


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    """One browser for the module's tests; each test opens contexts of its own."""
    async with async_playwright() as playwright:
        launched = await launch(playwright)
        yield launched
        await launched.close()


@dataclass
class Session:
    """One browser context and its page, with every request it made and every navigation."""

    context: BrowserContext
    page: Page
    base_url: str
    calls: list[tuple[str, str]] = field(default_factory=list)
    """(method, URL) of every request the page made."""
    navigations: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    async def open(self) -> None:
        await self.page.goto(self.base_url + "/")
        self.navigations.clear()  # from here on, any navigation is a reload

    async def sign_in(self, key: str) -> None:
        await self.page.get_by_label("API key").fill(key)
        await self.page.get_by_role("button", name="Sign in").click()

    def row(self, name: str) -> Any:
        """The table row of the environment called `name`."""
        return self.page.locator("#rows tr").filter(
            has=self.page.get_by_role("button", name=f"Details of {name}", exact=True)
        )

    def cell(self, name: str, column: str) -> Any:
        return self.row(name).locator(f'[data-label="{column}"]')

    @property
    def requests(self) -> list[str]:
        return [url for _, url in self.calls]

    def requests_to(self, path: str) -> int:
        """How many requests the page made to `path` (`/v1/environments`: the listing)."""
        return sum(1 for _, url in self.calls if urlsplit(url).path == path)

    def unexpected_requests(self) -> list[str]:
        """Requests to anything but the page's own files and the documented API."""
        strays = []
        for method, url in self.calls:
            parts = urlsplit(url)
            own = f"{parts.scheme}://{parts.netloc}" == self.base_url
            allowed = any(method == verb and path.fullmatch(parts.path) for verb, path in ALLOWED)
            if not own or not allowed:
                strays.append(f"{method} {url}")
        return strays


OpenSession = Callable[..., Awaitable[Session]]
ANSWERED_4XX = "Failed to load resource: the server responded with a status of 4"


@pytest_asyncio.fixture(loop_scope="module")
async def open_session(browser: Browser) -> AsyncIterator[OpenSession]:
    """Open the dashboard of a platform in a fresh browser context (its own sessionStorage)."""
    contexts: list[BrowserContext] = []

    async def start(platform: Platform, **context_options: Any) -> Session:
        options = {"viewport": {"width": 1280, "height": 800}, **context_options}
        context = await browser.new_context(**options)
        contexts.append(context)
        page = await context.new_page()
        session = Session(context, page, platform.url)

        def on_request(request: Request) -> None:
            session.calls.append((request.method, request.url))

        def on_navigated(frame: Frame) -> None:
            if frame == page.main_frame:
                session.navigations.append(frame.url)

        def on_console(message: ConsoleMessage) -> None:
            # Script errors and CSP refusals; Chromium's own line for each 4xx answer the
            # page expects (a refused key, a 403) is not one.
            if message.type == "error" and not message.text.startswith(ANSWERED_4XX):
                session.console_errors.append(message.text)

        def on_page_error(error: Error) -> None:
            session.console_errors.append(str(error))

        page.on("request", on_request)
        page.on("framenavigated", on_navigated)
        page.on("console", on_console)
        page.on("pageerror", on_page_error)
        await session.open()
        return session

    yield start
    for context in contexts:
        await context.close()


@pytest_asyncio.fixture(loop_scope="module")
async def start_platform(tmp_path: Path) -> AsyncIterator[StartPlatform]:
    """tests/conftest.py's `start_platform`, in the module's loop."""
    async with running_platforms(tmp_path) as start:
        yield start


@pytest_asyncio.fixture(loop_scope="module")
async def platform(start_platform: StartPlatform) -> Platform:
    return await start_platform()


@pytest_asyncio.fixture(loop_scope="module")
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    """tests/conftest.py's `spawn`, in the module's loop."""
    async with running_daemons(tmp_path) as start:
        yield start


async def signed_in(
    open_session: OpenSession, platform: Platform, key: str, **options: Any
) -> Session:
    """A fresh context on the dashboard, signed in with `key`, its live channel open."""
    session = await open_session(platform, **options)
    await session.sign_in(key)
    await expect(session.page.locator("#live")).to_have_text("live", timeout=LIVE_MS)
    return session


def assert_clean(session: Session) -> None:
    """No reload, only the documented requests (the live channel among them), no script error
    or CSP refusal."""
    assert session.navigations == [], session.navigations
    assert session.unexpected_requests() == [], session.unexpected_requests()
    assert session.console_errors == [], session.console_errors
    assert any(urlsplit(url).path == "/v1/environments/events" for url in session.requests)
