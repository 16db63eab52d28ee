"""Headless Chromium for the browser tests: `from browser_support import chromium, new_context`.

Debian's /usr/bin/chromium, driven by Playwright's async API on pytest-asyncio's session loop.
Not the sync API: between two calls it leaves its own event loop marked as running in the
main thread, so every async test that ran after it in the session would fail with "Cannot run
the event loop while another loop is running".
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> None:
    """Skips the test without Chromium, or fails it when REQUIRE_BROWSER=1 (CI)."""
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is missing: install it with `apt-get install -y chromium`"
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def chromium() -> AsyncIterator[Browser]:
    """One browser for the whole session; give each simulated user its own context."""
    require_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        yield browser
        await browser.close()


NewContext = Callable[..., Awaitable[BrowserContext]]


@pytest_asyncio.fixture(loop_scope="session")
async def new_context(chromium: Browser) -> AsyncIterator[NewContext]:
    """`await new_context(**options)`: a fresh context (own cookies and storage) per simulated
    user, with Playwright's new_context options; all are closed after the test."""
    contexts: list[BrowserContext] = []

    async def make(**options: Any) -> BrowserContext:
        context = await chromium.new_context(**options)
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        await context.close()
