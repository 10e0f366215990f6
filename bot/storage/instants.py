"""Instants in the database: every stored time and every time a query compares with is UTC.

Why (checked with Tortoise 1.1.9, `use_tz=True`, `timezone="UTC"`, see `db.tortoise_config`):

* **PostgreSQL** stores `timestamptz`, an instant: any offset compares right.
* **SQLite** stores the text of `isoformat(" ")`, offset included, and compares that text.
  `2026-02-28 23:30:00+00:00` (00:30 on 1 March in Paris) sorts before the bound
  `2026-03-01 00:00:00+01:00` (midnight in Paris), so a month queried with local bounds
  counted it in February. Text compares like instants only when every value has the same
  offset: UTC here.
* **Tortoise converts only on the way in, and not always.** `Model.create(at=…)` and a model
  built with `Model(at=…)` convert to UTC (the constructor goes through `to_python_value`);
  a query bound (`at__lt=…`), `queryset.update(at=…)`, and an attribute set on a loaded row
  then `save()` reach the database with their own offset. Values read back are UTC.

So `DatetimeField` below converts every aware value to UTC in `to_db_value`, the one method
Tortoise calls for a value written or compared (filters, `__in`/`__range` lists, updates,
inserts). Callers may pass times in any zone (a local month's bounds, a mail's date with its
sender's offset); naive ones are refused.

It keeps the name of Tortoise's class on purpose: the migration autodetector compares fields
by class *name* and column type, so the schema is unchanged (another name would make it
rebuild every SQLite table holding a time). Migration 0010 rewrites, on SQLite, values an
older version stored with another offset.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tortoise import fields

__all__ = ["DatetimeField", "require_aware", "utc"]


def require_aware(moment: datetime) -> None:
    """Refuse a naive datetime: it names no instant."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("naive datetime refused: pass an aware datetime")


def utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive datetime is refused."""
    require_aware(moment)
    return moment.astimezone(UTC)


class DatetimeField(fields.DatetimeField):
    """Tortoise's datetime field, writing and comparing in UTC (see the module doc)."""

    def to_db_value(self, value: Any, instance: Any) -> Any:
        if isinstance(value, datetime):
            value = utc(value)
        return super().to_db_value(value, instance)
