from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0002_ticket_fk_indexes')]

    initial = False

    operations = [
        ops.AddField(
            model_name='Booking',
            name='link_retry_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
    ]
