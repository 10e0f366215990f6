from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.fields.base import OnDelete
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0005_booking_meeting_ended')]

    initial = False

    operations = [
        ops.CreateModel(
            name='DashboardToken',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('token_hash', fields.CharField(unique=True, max_length=128)),
                ('kind', fields.CharField(max_length=16)),
                ('staff', fields.CharField(max_length=255)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('expires_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ('used_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'dashboard_token', 'app': 'models', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Organisation',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('name', fields.CharField(max_length=128)),
                ('name_key', fields.CharField(unique=True, max_length=128)),
                ('created_by', fields.CharField(max_length=255)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'organisation', 'app': 'models', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='OrgMember',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('organisation', fields.ForeignKeyField('models.Organisation', source_field='organisation_id', db_constraint=True, to_field='id', related_name='members', on_delete=OnDelete.CASCADE)),
                ('client', fields.ForeignKeyField('models.Client', source_field='client_id', unique=True, db_constraint=True, to_field='id', related_name='memberships', on_delete=OnDelete.CASCADE)),
                ('added_by', fields.CharField(max_length=255)),
                ('added_at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'org_member', 'app': 'models', 'indexes': [Index(fields=['organisation_id'], name='idx_org_member_org_id')], 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Purchase',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('organisation', fields.ForeignKeyField('models.Organisation', source_field='organisation_id', null=True, db_constraint=True, to_field='id', related_name='purchases', on_delete=OnDelete.RESTRICT)),
                ('client', fields.ForeignKeyField('models.Client', source_field='client_id', null=True, db_constraint=True, to_field='id', related_name='purchases', on_delete=OnDelete.RESTRICT)),
                ('tickets', fields.IntField()),
                ('note', fields.TextField(null=True, unique=False)),
                ('recorded_by', fields.CharField(max_length=255)),
                ('at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'purchase', 'app': 'models', 'indexes': [Index(fields=['organisation_id'], name='idx_purchase_org_id'), Index(fields=['client_id'], name='idx_purchase_client_id')], 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.AddField(
            model_name='Booking',
            name='no_show_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Booking',
            name='no_show_by',
            field=fields.CharField(null=True, max_length=255),
        ),
        ops.AddField(
            model_name='Booking',
            name='staff_event_id',
            field=fields.CharField(null=True, max_length=255),
        ),
        ops.AddField(
            model_name='Ticket',
            name='early_confirm_by',
            field=fields.CharField(null=True, max_length=255),
        ),
        ops.AddField(
            model_name='Ticket',
            name='early_confirm_event_id',
            field=fields.CharField(null=True, max_length=255),
        ),
        ops.AddField(
            model_name='Ticket',
            name='rated_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Ticket',
            name='rating',
            field=fields.IntField(null=True),
        ),
        ops.AddField(
            model_name='Ticket',
            name='rating_asked_at',
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name='Ticket',
            name='rating_comment',
            field=fields.TextField(null=True, unique=False),
        ),
        ops.AddField(
            model_name='Ticket',
            name='rating_event_id',
            field=fields.CharField(null=True, max_length=255),
        ),
        ops.AddField(
            model_name='Ticket',
            name='start_prompt_event_id',
            field=fields.CharField(null=True, max_length=255),
        ),
    ]
