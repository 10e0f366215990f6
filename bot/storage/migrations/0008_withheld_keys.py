from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0007_mailbox_position')]

    initial = False

    operations = [
        ops.CreateModel(
            name='WithheldKey',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('sender', fields.CharField(max_length=255)),
                ('sender_key', fields.CharField(max_length=255)),
                ('room_id', fields.CharField(max_length=255)),
                ('session_id', fields.CharField(max_length=255)),
                ('code', fields.CharField(max_length=64)),
                ('received_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'withheld_key', 'app': 'models', 'unique_together': (('sender', 'room_id', 'session_id', 'sender_key'),), 'indexes': [Index(fields=['received_at'], name='idx_withheld_key_received_at')], 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.AddField(
            model_name='UndecryptedEvent',
            name='withheld',
            field=fields.CharField(null=True, max_length=64),
        ),
    ]
