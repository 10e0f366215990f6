from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.fields.base import OnDelete
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0008_withheld_keys')]

    initial = False

    operations = [
        ops.CreateModel(
            name='MailMessage',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('ticket', fields.ForeignKeyField('models.Ticket', source_field='ticket_id', null=True, db_constraint=True, to_field='id', related_name='mails', on_delete=OnDelete.CASCADE)),
                ('conversation', fields.ForeignKeyField('models.Conversation', source_field='conversation_id', null=True, db_constraint=True, to_field='id', related_name='mails', on_delete=OnDelete.SET_NULL)),
                ('direction', fields.CharField(max_length=3)),
                ('kind', fields.CharField(max_length=16)),
                ('message_id', fields.CharField(null=True, max_length=998)),
                ('address', fields.CharField(null=True, max_length=320)),
                ('subject', fields.TextField(null=True, unique=False)),
                ('detail', fields.TextField(null=True, unique=False)),
                ('event_id', fields.CharField(null=True, max_length=255)),
                ('at', fields.DatetimeField(auto_now=False, auto_now_add=False)),
            ],
            options={'table': 'mail_message', 'app': 'models', 'indexes': [Index(fields=['message_id'], name='idx_mail_message_message_id'), Index(fields=['address', 'at'], name='idx_mail_message_address_at'), Index(fields=['ticket_id'], name='idx_mail_message_ticket_id')], 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='MailAttachmentRow',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('mail', fields.ForeignKeyField('models.MailMessage', source_field='mail_id', db_constraint=True, to_field='id', related_name='attachments', on_delete=OnDelete.CASCADE)),
                ('filename', fields.CharField(max_length=255)),
                ('content_type', fields.CharField(max_length=255)),
                ('size', fields.BigIntField()),
                ('data', fields.BinaryField(null=True)),
            ],
            options={'table': 'mail_attachment', 'app': 'models', 'indexes': [Index(fields=['mail_id'], name='idx_mail_attachment_mail_id')], 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.AddField(
            model_name='Client',
            name='follow_by_email',
            field=fields.BooleanField(default=False),
        ),
    ]
