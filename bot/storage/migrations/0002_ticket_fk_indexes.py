from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.indexes import Index

class Migration(migrations.Migration):
    dependencies = [('models', '0001_initial')]

    initial = False

    operations = [
        ops.AddIndex(
            model_name='AuditEntry',
            index=Index(fields=['ticket_id'], name='idx_audit_entry_ticket_id'),
        ),
        ops.AddIndex(
            model_name='Booking',
            index=Index(fields=['ticket_id'], name='idx_booking_ticket_id'),
        ),
        ops.AddIndex(
            model_name='TicketNote',
            index=Index(fields=['ticket_id'], name='idx_ticket_note_ticket_id'),
        ),
        ops.AddIndex(
            model_name='TimeLog',
            index=Index(fields=['ticket_id'], name='idx_time_log_ticket_id'),
        ),
    ]
