"""Stored times compare as instants on SQLite as on PostgreSQL (`bot.storage.instants`).

SQLite keeps a time as the text of `isoformat(" ")` and compares text: only values written
with one offset (UTC) order like instants. These tests write and query with other offsets.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from tortoise import Tortoise, fields
from tortoise.connection import get_connection
from tortoise.migrations.api import migrate
from tortoise.migrations.autodetector import MigrationAutodetector

from bot.storage import balances, instants, models
from bot.storage.db import close_db, open_db, tortoise_config
from bot.storage.models import Organisation, Purchase

PARIS = ZoneInfo("Europe/Paris")
WEST = timezone(timedelta(hours=-7))
# 00:30 on 1 March in Paris (UTC+1): February's last half hour in UTC.
MARCH_FIRST = datetime(2026, 3, 1, 0, 30, tzinfo=PARIS)


async def stored_text(table: str, column: str) -> list[str]:
    rows = await get_connection("default").execute_query_dict(
        f'SELECT "{column}" AS v FROM "{table}" ORDER BY id'
    )
    return [str(row["v"]) for row in rows]


async def test_every_write_stores_the_instant_and_bounds_in_any_zone_find_it(db, db_url):
    acme = await Organisation.create(
        name="ACME", name_key="acme", created_by="@staff:test", created_at=MARCH_FIRST
    )

    async def purchase(note: str, at: datetime) -> Purchase:
        return await Purchase.create(
            organisation=acme, tickets=1, recorded_by="@staff:test", note=note, at=at
        )

    await purchase("created", MARCH_FIRST)  # 23:30 UTC
    saved = await purchase("saved", datetime(2026, 3, 9, tzinfo=UTC))
    saved.at = MARCH_FIRST.astimezone(WEST) + timedelta(minutes=40)  # 00:10 UTC
    await saved.save()
    updated = await purchase("updated", datetime(2026, 3, 9, tzinfo=UTC))
    await Purchase.filter(id=updated.id).update(at=MARCH_FIRST - timedelta(minutes=40))  # 22:50

    if db_url.startswith("sqlite"):
        assert [text[-6:] for text in await stored_text("purchase", "at")] == ["+00:00"] * 3
    # Midnight in Paris, written in three zones: the same bound.
    for bound in (datetime(2026, 3, 1, tzinfo=PARIS), datetime(2026, 2, 28, 23, tzinfo=UTC)):
        for written in (bound, bound.astimezone(WEST)):
            after = await Purchase.filter(at__gte=written).order_by("at").values_list("note")
            assert after == [("created",), ("saved",)], written
            before = await Purchase.filter(at__lt=written).values_list("note", flat=True)
            assert before == ["updated"], written
    assert await Purchase.filter(at=MARCH_FIRST.astimezone(WEST)).count() == 1


def test_every_time_column_is_written_in_utc():
    """A time column declared with Tortoise's own field would store its offset on SQLite."""
    columns = {
        f"{model.__name__}.{name}": isinstance(field, instants.DatetimeField)
        for model in vars(models).values()
        if isinstance(model, type) and issubclass(model, models.Model)
        for name, field in model._meta.fields_map.items()
        if isinstance(field, fields.DatetimeField)
    }
    assert "Purchase.at" in columns and "Ticket.created_at" in columns
    assert [column for column, in_utc in columns.items() if not in_utc] == []


async def test_the_models_need_no_migration(db, db_url):
    """The models match the committed migrations: `instants.DatetimeField` changed how values
    are written, not the schema (another class name would rebuild every table on SQLite)."""
    detector = MigrationAutodetector(Tortoise.apps, tortoise_config(db_url)["apps"])
    assert [writer.name for writer in await detector.changes()] == []


async def test_times_stored_with_an_offset_by_an_older_version_are_rewritten(db_url):
    """Migration 0010: on SQLite, values an older version stored with another offset are
    rewritten in UTC, and count in the right month."""
    if not db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL stores instants: migration 0010 does nothing there")
    config = tortoise_config(db_url)
    await migrate(config=config, target="models.0009_mail_channel")
    await close_db()
    await Tortoise.init(config=config)
    try:
        acme = await Organisation.create(
            name="ACME",
            name_key="acme",
            created_by="@staff:test",
            created_at=datetime(2026, 2, 1, tzinfo=UTC),
        )
        for count in (1, 2):
            await Purchase.create(
                organisation=acme, tickets=count, recorded_by="@staff:test", at=MARCH_FIRST
            )
        # As an older version wrote them: 00:30 with Paris's offset; one with no offset.
        client = get_connection("default")
        await client.execute_query(
            "UPDATE purchase SET at = ? WHERE tickets = 1", ["2026-03-01 00:30:00+01:00"]
        )
        await client.execute_query(
            "UPDATE purchase SET at = ? WHERE tickets = 2", ["2026-02-28 23:30:00"]
        )
    finally:
        await close_db()

    await open_db(db_url)
    try:
        assert await stored_text("purchase", "at") == ["2026-02-28 23:30:00+00:00"] * 2
        march = await balances.monthly_consumption(
            datetime(2026, 3, 1, tzinfo=PARIS), datetime(2026, 4, 1, tzinfo=PARIS)
        )
        assert [(account.name, bought) for account, bought, _, _ in march] == [("ACME", 3)]
        february = await balances.monthly_consumption(
            datetime(2026, 2, 1, tzinfo=PARIS), datetime(2026, 3, 1, tzinfo=PARIS)
        )
        assert february == []
    finally:
        await close_db()
