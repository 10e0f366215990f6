"""Opening the database and applying migrations (Tortoise's built-in migration engine).

A SQLite database holds the Matrix access token and, until they are moved out, secrets of the
end-to-end encryption store: its file is the bot user's alone (0600, `protect_sqlite_files`).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
#: The mode of the SQLite database and its companion files.
PRIVATE_FILE_MODE = 0o600
# The files SQLite keeps beside a database (WAL mode, or a rollback journal).
_COMPANIONS = ("-wal", "-shm", "-journal")


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


def sqlite_path(url: str) -> str | None:
    """The file of a `sqlite://FILE[?options]` URL; None for another database or in memory."""
    if not url.startswith("sqlite://"):
        return None
    path = url[len("sqlite://") :].partition("?")[0]
    return None if path in ("", ":memory:") else path


def protect_sqlite_files(url: str) -> None:
    """Make a SQLite database (and its -wal, -shm, -journal) readable by its owner only.

    A missing database is created here, empty (SQLite reads an empty file as a new database),
    with mode 0600: SQLite would create it 0644 less the umask. Its -wal and -shm files are
    created by SQLite with the database file's own mode, so they follow. An existing file
    that others could read (made by an older version) is chmod-ed, and said so. Does nothing
    for PostgreSQL; a file this user cannot chmod is logged, not fatal (SQLite then decides).
    """
    path = sqlite_path(url)
    if path is None:
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    except (FileExistsError, FileNotFoundError):  # there already; or no such directory
        pass
    for name in (path, *(path + suffix for suffix in _COMPANIONS)):
        try:
            mode = stat.S_IMODE(os.stat(name).st_mode)
            if mode & ~PRIVATE_FILE_MODE:
                os.chmod(name, PRIVATE_FILE_MODE)
                log.info("database: %s was mode %04o, now %04o", name, mode, PRIVATE_FILE_MODE)
        except FileNotFoundError:
            continue
        except OSError as error:
            log.warning(
                "database: cannot make %s private (%s)",
                name,
                error.strerror or type(error).__name__,
            )


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
    protect_sqlite_files(url)  # before the first connection can create the file
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
    protect_sqlite_files(url)
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


@asynccontextmanager
async def database(url: str) -> AsyncIterator[None]:
    """The database open (migrated) for one command, closed after it."""
    await open_db(url)
    try:
        yield
    finally:
        await close_db()
