"""Opening the database and applying migrations (Tortoise's built-in migration engine)."""

from __future__ import annotations

import logging
from typing import Any

from tortoise import Tortoise
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.connection import get_connection
from tortoise.migrations.api import migrate
from tortoise.migrations.loader import MigrationLoader
from tortoise.migrations.recorder import MigrationRecorder

log = logging.getLogger(__name__)

MODELS_MODULE = "bot.storage.models"
MIGRATIONS_MODULE = "bot.storage.migrations"


class NewerDatabaseError(Exception):
    """The database records migrations this code does not have: a newer version of the bot
    migrated it. Running against it (or migrating it further) could corrupt it."""

    def __init__(self, unknown: list[str]) -> None:
        self.unknown = unknown
        super().__init__(
            f"the database has {len(unknown)} migration(s) this version of support-bot does "
            f"not know: {', '.join(unknown)}. It was upgraded by a newer version of "
            "support-bot; run that version, or restore a backup taken before the upgrade."
        )


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


async def check_known_migrations(config: dict[str, Any]) -> None:
    """Raise NewerDatabaseError when the database (Tortoise initialised with `config`) records
    applied migrations that are not in this code. Tortoise itself ignores them silently.

    Tortoise records each applied migration as a row (app, name) in `tortoise_migrations`;
    a database without that table (a new one) has none."""
    loader = MigrationLoader(config["apps"], MigrationRecorder(get_connection("default")))
    loader.load_disk()
    applied = await loader.recorder.applied_migrations()
    unknown = sorted(str(key) for key in applied if key not in loader.disk_migrations)
    if unknown:
        raise NewerDatabaseError(unknown)


async def apply_migrations(url: str) -> list[str]:
    """Apply pending migrations; returns the names applied (empty when up to date).

    Raises NewerDatabaseError, before changing anything, when a newer version migrated it."""
    applied: list[str] = []

    def progress(event: str, app_label: str, name: str) -> None:
        if event == "apply_done":
            applied.append(f"{app_label}.{name}")

    config = tortoise_config(url)

    async def refuse_unknown(*_: object) -> None:  # called once the plan is made, before it runs
        await check_known_migrations(config)

    try:
        await migrate(config=config, progress=progress, reporter=refuse_unknown)
    finally:
        await Tortoise.close_connections()
    return applied


async def open_db(url: str, *, run_migrations: bool = True) -> list[str]:
    """Open the database for the bot (migrating first unless told not to).

    Raises NewerDatabaseError when a newer version of the bot migrated the database."""
    applied = await apply_migrations(url) if run_migrations else []
    if applied:
        log.info("database: applied %d migration(s): %s", len(applied), ", ".join(applied))
    config = tortoise_config(url)
    await Tortoise.init(config=config, _enable_global_fallback=True)
    if not run_migrations:  # apply_migrations checked already
        try:
            await check_known_migrations(config)
        except NewerDatabaseError:
            await close_db()
            raise
    return applied


async def close_db() -> None:
    await Tortoise.close_connections()
    # Tortoise caches each model's INSERT statement by connection name, not by dialect: a
    # process that reopens another backend under the same name (the test suite runs SQLite
    # then PostgreSQL) would reuse SQLite's placeholders on PostgreSQL.
    EXECUTOR_CACHE.clear()
