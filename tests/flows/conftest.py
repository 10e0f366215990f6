"""Fixtures of the flow tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from tortoise.backends.base.executor import EXECUTOR_CACHE

from bot.storage.db import close_db, open_db


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[None]:
    """The test's own empty database (`db_url`: SQLite, and PostgreSQL when configured),
    open for the test and closed after it."""
    # Tortoise caches insert statements per connection name across inits: a test on
    # PostgreSQL after one on SQLite would reuse SQLite's `?` placeholders.
    EXECUTOR_CACHE.clear()
    await open_db(db_url)
    try:
        yield
    finally:
        await close_db()
