"""The browser fixture's way out: no Chromium, or one that cannot start, skips with the reason.

The tests that drive Chromium must never error on a machine without it (`scripts/test` only
installs it when it may use apt-get).
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from tests.web.conftest import CHROMIUM_ENV, launch_chromium


async def test_a_missing_chromium_skips_naming_the_path_and_the_remedy() -> None:
    no_playwright: Any = None  # not reached: the executable is checked first
    with pytest.raises(pytest.skip.Exception) as skipped:
        await launch_chromium(no_playwright, "/nonexistent/chromium")
    reason = str(skipped.value)
    assert "Chromium not found at /nonexistent/chromium" in reason
    assert "apt-get install chromium" in reason and CHROMIUM_ENV in reason


async def test_a_chromium_that_cannot_start_skips_with_playwrights_reason() -> None:
    from playwright.async_api import async_playwright

    not_a_browser = shutil.which("false")
    assert not_a_browser is not None
    async with async_playwright() as playwright:
        with pytest.raises(pytest.skip.Exception, match=f"Chromium at {not_a_browser} cannot"):
            await launch_chromium(playwright, not_a_browser)
