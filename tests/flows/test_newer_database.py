"""A database migrated by a newer version of the bot: refused, by `open_db` and by the CLI.

The newer version is simulated by recording a migration this code does not have in Tortoise's
own table of applied migrations (`tortoise_migrations`), with Tortoise's own recorder.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from tortoise import Tortoise
from tortoise.connection import get_connection
from tortoise.migrations.graph import MigrationKey
from tortoise.migrations.recorder import MigrationRecorder

from bot.storage.db import (
    NewerDatabaseError,
    apply_migrations,
    close_db,
    open_db,
    tortoise_config,
)
from tests.unit.test_cli import valid_config

FUTURE = "0099_from_a_newer_version"
LATEST_KNOWN = "0002_ticket_fk_indexes"
ROOT = Path(__file__).resolve().parents[2]


async def _migrate_then(
    url: str, *, record: Sequence[str] = (), unrecord: Sequence[str] = ()
) -> None:
    """Migrate `url`, then record (or forget) migrations as applied, as another version would."""
    await open_db(url)
    await close_db()
    await _edit_records(url, record=record, unrecord=unrecord)


async def _edit_records(
    url: str, *, record: Sequence[str] = (), unrecord: Sequence[str] = ()
) -> list[MigrationKey]:
    """Change the records of applied migrations (bypassing `open_db`'s check); returns them."""
    await Tortoise.init(config=tortoise_config(url))
    try:
        recorder = MigrationRecorder(get_connection("default"))
        for name in record:
            await recorder.record_applied("models", name)
        for name in unrecord:
            await recorder.record_unapplied("models", name)
        return await recorder.applied_migrations()
    finally:
        await close_db()


async def test_open_db_refuses_a_database_migrated_by_a_newer_version(empty_db_url: str) -> None:
    await _migrate_then(empty_db_url, record=[FUTURE])

    for run_migrations in (True, False):
        with pytest.raises(NewerDatabaseError) as refused:
            await open_db(empty_db_url, run_migrations=run_migrations)
        assert refused.value.unknown == [f"models.{FUTURE}"]
        message = str(refused.value)
        assert f"models.{FUTURE}" in message
        assert "newer version" in message
        assert "restore a backup" in message

    # Nothing was left open or changed: without the future migration it opens again.
    await _edit_records(empty_db_url, unrecord=[FUTURE])
    assert await open_db(empty_db_url) == []
    await close_db()


async def test_refused_before_any_pending_migration_is_applied(empty_db_url: str) -> None:
    # A database this code would migrate (0002 pending) that also has a migration it lacks.
    await _migrate_then(empty_db_url, record=[FUTURE], unrecord=[LATEST_KNOWN])

    with pytest.raises(NewerDatabaseError):
        await apply_migrations(empty_db_url)

    names = {key.name for key in await _edit_records(empty_db_url, unrecord=[FUTURE])}
    assert LATEST_KNOWN not in names  # not applied behind the newer version's back


@pytest.mark.parametrize(
    "command", [["migrate"], ["run"], ["tickets", "list"]], ids=lambda c: " ".join(c)
)
def test_cli_refuses_with_a_message_and_no_traceback(
    empty_db_url: str, tmp_path: Path, command: list[str]
) -> None:
    asyncio.run(_migrate_then(empty_db_url, record=[FUTURE]))
    config = tmp_path / "bot.toml"
    config.write_text(valid_config(tmp_path))

    result = subprocess.run(
        [sys.executable, "-m", "bot", *command, "--config", str(config)],
        cwd=ROOT,
        env={**os.environ, "SUPPORT_BOT_DATABASE_URL": empty_db_url},  # wins over the file's
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"models.{FUTURE}" in result.stderr
    assert "upgraded by a newer version of support-bot" in result.stderr
    assert "restore a backup" in result.stderr
    assert "applied" not in result.stdout
