from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from json import dumps, loads
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0003_booking_link_retry')]

    initial = False

    operations = [
        ops.CreateModel(
            name='DeferredEvent',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('lane', fields.CharField(max_length=600)),
                ('room_id', fields.CharField(max_length=255)),
                ('event', fields.JSONField(encoder=functools.partial(dumps, separators=(',', ':')), decoder=loads)),
                ('due_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('deferred_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'deferred_event', 'app': 'models', 'indexes': [Index(fields=['lane', 'id'], name='idx_deferred_event_lane'), Index(fields=['due_at'], name='idx_deferred_event_due_at')], 'pk_attr': 'id'},
            bases=['Model'],
        ),
    ]
