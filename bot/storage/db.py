"""Opening the database and applying migrations (Tortoise's built-in migration engine)."""

from __future__ import annotations

import logging
from typing import Any

from tortoise import Tortoise
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.migrations.api import migrate

log = logging.getLogger(__name__)

MODELS_MODULE = "bot.storage.models"
MIGRATIONS_MODULE = "bot.storage.migrations"


def normalize_url(url: str) -> str:
    """Tortoise spells PostgreSQL `postgres://`; operators often write `postgresql://`.

    SQLite runs in WAL mode (Tortoise's default) with `synchronous=NORMAL` unless the URL
    says otherwise (`?synchronous=FULL`): a commit no longer waits for an fsync (about 1 ms
    each here, two or three per answer). A crash of the bot loses nothing; a power cut may
    lose the last commits, the sync position with them, so those events are handled again
    (replies keep their transaction ids, which the homeserver de-duplicates)."""
    if url.startswith("postgresql://"):
        return "postgres://" + url[len("postgresql://") :]
    if url.startswith("sqlite://") and "synchronous=" not in url:
        return url + ("&" if "?" in url else "?") + "synchronous=NORMAL"
    return url


def tortoise_config(url: str) -> dict[str, Any]:
    return {
        "connections": {"default": normalize_url(url)},
        "apps": {
            "models": {
                "models": [MODELS_MODULE],
                "migrations": MIGRATIONS_MODULE,
                "default_connection": "default",
            }
        },
        "use_tz": True,
        "timezone": "UTC",
    }


async def apply_migrations(url: str) -> list[str]:
    """Apply pending migrations; returns the names applied (empty when up to date)."""
    applied: list[str] = []

    def progress(event: str, app_label: str, name: str) -> None:
        if event == "apply_done":
            applied.append(f"{app_label}.{name}")

    await migrate(config=tortoise_config(url), progress=progress)
    await Tortoise.close_connections()
    return applied


async def open_db(url: str, *, run_migrations: bool = True) -> list[str]:
    """Open the database for the bot (migrating first unless told not to)."""
    applied = await apply_migrations(url) if run_migrations else []
    if applied:
        log.info("database: applied %d migration(s): %s", len(applied), ", ".join(applied))
    await Tortoise.init(config=tortoise_config(url), _enable_global_fallback=True)
    return applied


async def close_db() -> None:
    await Tortoise.close_connections()
    # Tortoise caches each model's INSERT statement by connection name, not by dialect: a
    # process that reopens another backend under the same name (the test suite runs SQLite
    # then PostgreSQL) would reuse SQLite's placeholders on PostgreSQL.
    EXECUTOR_CACHE.clear()
