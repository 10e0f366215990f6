"""Every stored time in UTC, on SQLite (see `bot.storage.instants`).

SQLite compares times as text, which orders instants only when they share an offset. Older
versions stored the offset they were given when a row was updated (`queryset.update`, or a
loaded row changed and saved): a mail intake's reminder time carried its sender's offset.
This rewrites those values in UTC. PostgreSQL stores instants: nothing to do there.
"""

from datetime import UTC, datetime

from tortoise import fields, migrations
from tortoise.migrations import operations as ops


async def times_in_utc(apps, schema_editor) -> None:
    client = schema_editor.client
    if client.capabilities.dialect != "sqlite":
        return
    for app in apps.apps.values():
        for model in app.values():
            meta = model._meta
            for name, field in meta.fields_map.items():
                if not isinstance(field, fields.DatetimeField):
                    continue
                table, pk = meta.db_table, meta.db_pk_column
                column = field.source_field or name
                rows = await client.execute_query_dict(
                    f'SELECT "{pk}" AS pk, "{column}" AS at FROM "{table}" '
                    f'WHERE "{column}" IS NOT NULL AND "{column}" NOT LIKE ?',
                    ["%+00:00"],
                )
                changes = []
                for row in rows:
                    moment = datetime.fromisoformat(row["at"])
                    if moment.tzinfo is None:  # Tortoise reads these as UTC
                        moment = moment.replace(tzinfo=UTC)
                    changes.append([moment.astimezone(UTC).isoformat(" "), row["pk"]])
                if changes:
                    await client.execute_many(
                        f'UPDATE "{table}" SET "{column}" = ? WHERE "{pk}" = ?', changes
                    )


class Migration(migrations.Migration):
    dependencies = [('models', '0009_mail_channel')]

    initial = False

    operations = [
        ops.RunPython(times_in_utc, ops.RunPython.noop),
    ]
