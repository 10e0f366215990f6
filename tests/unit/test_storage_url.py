"""Database URLs as the operator writes them, as Tortoise gets them."""

from __future__ import annotations

import pytest

from bot.storage.db import normalize_url


@pytest.mark.parametrize(
    ("written", "opened"),
    [
        ("postgresql://bot@db/support", "postgres://bot@db/support"),
        ("postgres://bot@db/support", "postgres://bot@db/support"),
        # SQLite commits do not wait for an fsync unless the operator asks for it.
        ("sqlite:///var/lib/bot.sqlite3", "sqlite:///var/lib/bot.sqlite3?synchronous=NORMAL"),
        ("sqlite://bot.sqlite3?foo=1", "sqlite://bot.sqlite3?foo=1&synchronous=NORMAL"),
        ("sqlite://bot.sqlite3?synchronous=FULL", "sqlite://bot.sqlite3?synchronous=FULL"),
    ],
)
def test_database_url_as_opened(written: str, opened: str) -> None:
    assert normalize_url(written) == opened
