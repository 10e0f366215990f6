"""The browser of the web tests: Debian's Chromium, headless, driven by Playwright.

`browser` (function): a launched Chromium. Without one that starts, the tests that use it are
skipped with the reason (`.ci/run` and `scripts/test` install Debian's `chromium` when they
can); they never error. `SUPPORT_BOT_CHROMIUM=/path/to/chromium` points them at another
executable, which is also how the skip is tested.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio

if TYPE_CHECKING:
    from playwright.async_api import Browser, Playwright

CHROMIUM_ENV = "SUPPORT_BOT_CHROMIUM"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
INSTALL_HINT = f"install Debian's chromium (apt-get install chromium) or set {CHROMIUM_ENV}"


def chromium_path() -> str:
    """The Chromium executable the tests use: `$SUPPORT_BOT_CHROMIUM`, else Debian's."""
    return os.environ.get(CHROMIUM_ENV) or DEFAULT_CHROMIUM


def is_executable(path: str) -> bool:
    return Path(path).is_file() and os.access(path, os.X_OK)


async def launch_chromium(playwright: Playwright, path: str) -> Browser:
    """Chromium launched headless, or the test skipped with why it could not be.

    Playwright's own message for a missing executable ("Failed to launch chromium because
    executable doesn't exist") came as a test error; a machine without a browser is not a
    failure of the code under test.
    """
    if not is_executable(path):
        pytest.skip(f"Chromium not found at {path}: browser tests skipped ({INSTALL_HINT})")
    from playwright.async_api import Error as PlaywrightError

    try:
        return await playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
    except PlaywrightError as error:
        # The first line says what went wrong; the rest is Playwright's call log.
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        pytest.skip(f"Chromium at {path} cannot start: browser tests skipped ({reason})")


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await launch_chromium(playwright, chromium_path())
        try:
            yield chromium
        finally:
            await chromium.close()
