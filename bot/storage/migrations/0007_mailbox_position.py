from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields

class Migration(migrations.Migration):
    dependencies = [('models', '0006_org_balance_rating_noshow')]

    initial = False

    operations = [
        ops.CreateModel(
            name='MailboxPosition',
            fields=[
                ('folder', fields.CharField(primary_key=True, unique=True, db_index=True, max_length=255)),
                ('uidvalidity', fields.BigIntField()),
                ('last_uid', fields.BigIntField()),
                ('updated_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'mailbox_position', 'app': 'models', 'pk_attr': 'folder'},
            bases=['Model'],
        ),
    ]
