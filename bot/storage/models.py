"""Tortoise models: everything the bot must remember across restarts.

Schema changes go through migrations in `bot/storage/migrations` (Tortoise's built-in
`makemigrations`; see README). Stored enum values are never renamed.
"""

from __future__ import annotations

from tortoise import fields
from tortoise.indexes import Index
from tortoise.models import Model

from bot.storage import instants


# Small key/value rows: sync token, access token, device id.
class BotState(Model):
    key = fields.CharField(max_length=64, primary_key=True)
    value = fields.TextField()

    class Meta:
        table = "bot_state"


# Every Matrix event the bot has handled; the unique id makes a redelivery a no-op.
class HandledEvent(Model):
    event_id = fields.CharField(max_length=255, primary_key=True)
    room_id = fields.CharField(max_length=255)
    handled_at = instants.DatetimeField()

    class Meta:
        table = "handled_event"


# What the bot sends, written in the same transaction as the state change that causes it
# (a transactional outbox), then delivered in order with `txn_id` as the Matrix transaction
# id, so that a crash and replay never answers twice. `target` names the event an edit or a
# reaction applies to ("event:$id", or "card:<ticket id>" resolved at delivery time);
# `on_sent` tells what to remember of the event id once sent ("card:<ticket id>",
# "slot_offer:<id>").
class OutboxItem(Model):
    id = fields.IntField(primary_key=True)
    txn_id = fields.CharField(max_length=255, unique=True)
    room_id = fields.CharField(max_length=255)
    kind = fields.CharField(max_length=16)  # message | edit | reaction | file
    content = fields.JSONField()
    target = fields.CharField(max_length=255, null=True)
    on_sent = fields.CharField(max_length=255, null=True)
    created_at = instants.DatetimeField()
    sent_at = instants.DatetimeField(null=True)
    event_id = fields.CharField(max_length=255, null=True)
    attempts = fields.IntField(default=0)
    failed = fields.BooleanField(default=False)

    class Meta:
        table = "outbox_item"


# A person asking for support: a Matrix user, or a nickname behind a bridge in one room.
class Client(Model):
    id = fields.IntField(primary_key=True)
    # "@alice:example.org", or "bridge:<room id>:<nickname>"; replaced by "anon:<id>" on erase.
    key = fields.CharField(max_length=512, unique=True)
    display_name = fields.CharField(max_length=255, null=True)
    email = fields.CharField(max_length=320, null=True)
    locale = fields.CharField(max_length=8, null=True)
    terms_shown_at = instants.DatetimeField(null=True)
    terms_url = fields.CharField(max_length=512, null=True)
    private_room_id = fields.CharField(max_length=255, null=True)
    erased_at = instants.DatetimeField(null=True)
    created_at = instants.DatetimeField()
    # The client follows their requests by e-mail too (`!follow email on`): what the bot and
    # staff write to them about a request is also mailed to the request's address.
    follow_by_email = fields.BooleanField(default=False)

    class Meta:
        table = "client"


# Preferences of any Matrix user (staff included): their language.
class UserPref(Model):
    user_key = fields.CharField(max_length=512, primary_key=True)
    locale = fields.CharField(max_length=8)

    class Meta:
        table = "user_pref"


# The intake conversation of one client in one room (the persisted state machine).
class Conversation(Model):
    id = fields.IntField(primary_key=True)
    room_id = fields.CharField(max_length=255)
    client_key = fields.CharField(max_length=512)
    step = fields.CharField(max_length=32)
    data = fields.JSONField(default=dict)
    version = fields.IntField(default=0)
    updated_at = instants.DatetimeField()
    # When the sweeper should look at it next (reminder or expiry); NULL when finished.
    due_at = instants.DatetimeField(null=True)

    class Meta:
        table = "conversation"
        unique_together = (("room_id", "client_key"),)


# Per-prefix, per-year sequence for references such as SP-2026-0042.
class RefCounter(Model):
    id = fields.IntField(primary_key=True)
    prefix = fields.CharField(max_length=16)
    year = fields.IntField()
    last_value = fields.IntField(default=0)

    class Meta:
        table = "ref_counter"
        unique_together = (("prefix", "year"),)


# A ticket, a feasibility question or a quote request (see `kind`).
class Ticket(Model):
    id = fields.IntField(primary_key=True)
    ref = fields.CharField(max_length=32, unique=True)
    kind = fields.CharField(max_length=16)
    status = fields.CharField(max_length=32)
    category = fields.CharField(max_length=32)
    channel = fields.CharField(max_length=16)
    client: fields.ForeignKeyRelation[Client] = fields.ForeignKeyField(
        "models.Client", related_name="tickets", on_delete=fields.RESTRICT
    )
    room_id = fields.CharField(max_length=255)
    locale = fields.CharField(max_length=8)
    description = fields.TextField()
    instance_url = fields.CharField(max_length=1024, null=True)
    instance_version = fields.CharField(max_length=64, null=True)
    survey_id = fields.CharField(max_length=32, null=True)
    email = fields.CharField(max_length=320, null=True)
    created_at = instants.DatetimeField()
    sla_due = instants.DatetimeField(null=True)
    first_response_at = instants.DatetimeField(null=True)
    assigned_to = fields.CharField(max_length=255, null=True)
    estimate_minutes = fields.IntField(null=True)
    confirmed_tickets = fields.IntField(null=True)
    minutes_logged = fields.IntField(default=0)
    client_confirmed_at = instants.DatetimeField(null=True)
    staff_confirmed_by = fields.CharField(max_length=255, null=True)
    resolved_at = instants.DatetimeField(null=True)
    accepted_at = instants.DatetimeField(null=True)
    warranty_until = instants.DatetimeField(null=True)
    card_event_id = fields.CharField(max_length=255, null=True, unique=True)
    sla_warned_at = instants.DatetimeField(null=True)
    sla_missed_at = instants.DatetimeField(null=True)
    converted_from = fields.CharField(max_length=32, null=True)
    closed_reason = fields.TextField(null=True)
    version = fields.IntField(default=0)
    # Satisfaction (asked once, when the client accepts a resolution or the ticket closes):
    # when it was asked, the question's event (reactions 1️⃣–5️⃣ on it count), the rating 1–5,
    # an optional comment and when it was given.
    rating_asked_at = instants.DatetimeField(null=True)
    rating_event_id = fields.CharField(max_length=255, null=True)
    rating = fields.IntField(null=True)
    rating_comment = fields.TextField(null=True)
    rated_at = instants.DatetimeField(null=True)
    # A staff ✅ given on the card before the client consented (refused then, remembered):
    # who, and the reaction's event id; and the staff-room "start now?" message the bot posted
    # once the client consented, whose own ✅ confirms in one click.
    early_confirm_by = fields.CharField(max_length=255, null=True)
    early_confirm_event_id = fields.CharField(max_length=255, null=True)
    start_prompt_event_id = fields.CharField(max_length=255, null=True)

    class Meta:
        table = "ticket"


# Further messages a client added to an open ticket (R1).
class TicketNote(Model):
    id = fields.IntField(primary_key=True)
    ticket: fields.ForeignKeyRelation[Ticket] = fields.ForeignKeyField(
        "models.Ticket", related_name="notes", on_delete=fields.CASCADE
    )
    author_key = fields.CharField(max_length=512)
    text = fields.TextField()
    at = instants.DatetimeField()

    class Meta:
        table = "ticket_note"
        # Tortoise (like PostgreSQL) does not index a foreign key by itself; the per-ticket
        # lookups of notes, time logs, audit entries and bookings need one (migration 0002).
        indexes = (Index(fields=("ticket_id",), name="idx_ticket_note_ticket_id"),)


class TimeLog(Model):
    id = fields.IntField(primary_key=True)
    ticket: fields.ForeignKeyRelation[Ticket] = fields.ForeignKeyField(
        "models.Ticket", related_name="time_logs", on_delete=fields.CASCADE
    )
    staff = fields.CharField(max_length=255)
    minutes = fields.IntField()
    note = fields.TextField(null=True)
    at = instants.DatetimeField()

    class Meta:
        table = "time_log"
        indexes = (Index(fields=("ticket_id",), name="idx_time_log_ticket_id"),)


# Every state change of a ticket: who, when, from → to, why.
class AuditEntry(Model):
    id = fields.IntField(primary_key=True)
    ticket: fields.ForeignKeyRelation[Ticket] = fields.ForeignKeyField(
        "models.Ticket", related_name="audit", on_delete=fields.CASCADE
    )
    actor = fields.CharField(max_length=512)
    at = instants.DatetimeField()
    action = fields.CharField(max_length=64)
    from_status = fields.CharField(max_length=32, null=True)
    to_status = fields.CharField(max_length=32, null=True)
    detail = fields.TextField(null=True)

    class Meta:
        table = "audit_entry"
        indexes = (Index(fields=("ticket_id",), name="idx_audit_entry_ticket_id"),)


# Reactions the bot acted on, so that their redaction can be undone after a restart.
class Reaction(Model):
    event_id = fields.CharField(max_length=255, primary_key=True)
    room_id = fields.CharField(max_length=255)
    target_event_id = fields.CharField(max_length=255)
    sender = fields.CharField(max_length=255)
    key = fields.CharField(max_length=64)
    at = instants.DatetimeField()

    class Meta:
        table = "reaction"


# A call booked on a slot. `slot_lock` is set while active: its uniqueness is what makes
# double booking impossible, and it is cleared (NULL) when the booking is cancelled.
class Booking(Model):
    id = fields.IntField(primary_key=True)
    ticket: fields.ForeignKeyRelation[Ticket] = fields.ForeignKeyField(
        "models.Ticket", related_name="bookings", on_delete=fields.CASCADE
    )
    staff = fields.CharField(max_length=255)
    start = instants.DatetimeField()
    end = instants.DatetimeField()
    slot_lock = fields.CharField(max_length=320, null=True, unique=True)
    status = fields.CharField(max_length=16, default="active")
    provider = fields.CharField(max_length=32, null=True)
    meeting_id = fields.CharField(max_length=255, null=True)
    client_url = fields.TextField(null=True)
    staff_url = fields.TextField(null=True)
    created_at = instants.DatetimeField()
    # No meeting link yet (the provider failed): when the reminder sweeper asks again.
    link_retry_at = instants.DatetimeField(null=True)
    # When the sweeper was done with the provider's meeting once the booking was cancelled or
    # its call long over (ended, nothing to end, left to a booking re-using it, or given up):
    # NULL while that is still to do.
    meeting_ended_at = instants.DatetimeField(null=True)
    # The client did not join: when staff said so (🚫 on the call's staff message or !noshow),
    # and who. Whether it bills the ticket is `service.no_show_billed`.
    no_show_at = instants.DatetimeField(null=True)
    no_show_by = fields.CharField(max_length=255, null=True)
    # The call's message in the staff room (a 🚫 reaction on it marks a no-show).
    staff_event_id = fields.CharField(max_length=255, null=True)

    class Meta:
        table = "booking"
        indexes = (Index(fields=("ticket_id",), name="idx_booking_ticket_id"),)


class Reminder(Model):
    id = fields.IntField(primary_key=True)
    booking: fields.ForeignKeyRelation[Booking] = fields.ForeignKeyField(
        "models.Booking", related_name="reminders", on_delete=fields.CASCADE
    )
    offset_minutes = fields.IntField()
    due_at = instants.DatetimeField()
    sent_at = instants.DatetimeField(null=True)

    class Meta:
        table = "reminder"
        unique_together = (("booking_id", "offset_minutes"),)


# A blocked period (staff NULL = nobody available).
class Block(Model):
    id = fields.IntField(primary_key=True)
    staff = fields.CharField(max_length=255, null=True)
    start = instants.DatetimeField()
    end = instants.DatetimeField()
    created_by = fields.CharField(max_length=255)
    created_at = instants.DatetimeField()

    class Meta:
        table = "block"


# The slots last offered to a client for a ticket (numbers 1…5 refer to these).
class SlotOffer(Model):
    id = fields.IntField(primary_key=True)
    ticket: fields.ForeignKeyRelation[Ticket] = fields.ForeignKeyField(
        "models.Ticket", related_name="slot_offers", on_delete=fields.CASCADE
    )
    slots = fields.JSONField()
    event_id = fields.CharField(max_length=255, null=True)
    created_at = instants.DatetimeField()
    active = fields.BooleanField(default=True)

    class Meta:
        table = "slot_offer"


# A single-use, expiring consent link for an intervention estimate (stored hashed).
class ConfirmationToken(Model):
    id = fields.IntField(primary_key=True)
    ticket: fields.ForeignKeyRelation[Ticket] = fields.ForeignKeyField(
        "models.Ticket", related_name="confirmation_tokens", on_delete=fields.CASCADE
    )
    token_hash = fields.CharField(max_length=128, unique=True)
    tickets = fields.IntField()
    estimate_minutes = fields.IntField()
    created_at = instants.DatetimeField()
    expires_at = instants.DatetimeField()
    used_at = instants.DatetimeField(null=True)

    class Meta:
        table = "confirmation_token"


# The secret token of each staff member's .ics feed.
class StaffFeed(Model):
    staff = fields.CharField(max_length=255, primary_key=True)
    token_hash = fields.CharField(max_length=128, unique=True)
    created_at = instants.DatetimeField()

    class Meta:
        table = "staff_feed"


# One-time notices already given (SLA warnings, flood notices…), unique by key.
class Notice(Model):
    key = fields.CharField(max_length=255, primary_key=True)
    at = instants.DatetimeField()

    class Meta:
        table = "notice"


# An encrypted event the bot could not decrypt yet: kept, keys requested, retried when they
# arrive (never dropped, never answered with "I can't read you" while keys are merely late).
class UndecryptedEvent(Model):
    event_id = fields.CharField(max_length=255, primary_key=True)
    room_id = fields.CharField(max_length=255)
    sender = fields.CharField(max_length=255)
    session_id = fields.CharField(max_length=255)
    source = fields.JSONField()
    received_at = instants.DatetimeField()
    attempts = fields.IntField(default=0)
    # Why its key will not come, once known (a withheld code, or the bot's own
    # `SESSION_STARTS_LATER`); the sender is then told at once. Kept all the same.
    withheld = fields.CharField(max_length=64, null=True)

    class Meta:
        table = "undecrypted_event"


# An `m.room_key.withheld` to-device message: the sender's app will not give the bot the key
# of a Megolm session (`room_id`, `session_id`; both empty for `m.no_olm`, which is about all
# the sessions of the device `sender_key`). Kept a day, so that an event of that session
# arriving after it is answered at once; deleted when the key comes after all.
class WithheldKey(Model):
    id = fields.IntField(primary_key=True)
    sender = fields.CharField(max_length=255)
    sender_key = fields.CharField(max_length=255)  # "" when not given
    room_id = fields.CharField(max_length=255)
    session_id = fields.CharField(max_length=255)
    code = fields.CharField(max_length=64)
    received_at = instants.DatetimeField()

    class Meta:
        table = "withheld_key"
        unique_together = (("sender", "room_id", "session_id", "sender_key"),)
        indexes = (Index(fields=("received_at",), name="idx_withheld_key_received_at"),)


# A message held back from a client sending too many too quickly (`bot.dispatch`): its event
# id is already in `handled_event` (a redelivery does nothing), and it is handled later, in
# the order of `id` within its lane, once `due_at` has come. Holds what the client wrote.
class DeferredEvent(Model):
    id = fields.IntField(primary_key=True)
    # One order and one pace: the sender's key, or for a bridge account every nickname it
    # relays in one room together ("bridge-room:<room id>:<bridge account>").
    lane = fields.CharField(max_length=600)
    room_id = fields.CharField(max_length=255)
    # The `bot.events` value: its class name under "kind", its fields, `ts` in ISO 8601.
    event = fields.JSONField()
    due_at = instants.DatetimeField()
    deferred_at = instants.DatetimeField()

    class Meta:
        table = "deferred_event"
        indexes = (
            Index(fields=("lane", "id"), name="idx_deferred_event_lane"),
            Index(fields=("due_at",), name="idx_deferred_event_due_at"),
        )


# A client organisation: several clients (Matrix users or bridged nicknames) sharing one
# prepaid ticket balance. A client in no organisation is an organisation of one.
class Organisation(Model):
    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=128)
    # `name` folded (casefold, stripped): what `!org add NAME` looks up; unique.
    name_key = fields.CharField(max_length=128, unique=True)
    created_by = fields.CharField(max_length=255)
    created_at = instants.DatetimeField()

    class Meta:
        table = "organisation"


# Which organisation a client belongs to (at most one).
class OrgMember(Model):
    id = fields.IntField(primary_key=True)
    organisation: fields.ForeignKeyRelation[Organisation] = fields.ForeignKeyField(
        "models.Organisation", related_name="members", on_delete=fields.CASCADE
    )
    client: fields.ForeignKeyRelation[Client] = fields.ForeignKeyField(
        "models.Client", related_name="memberships", on_delete=fields.CASCADE, unique=True
    )
    added_by = fields.CharField(max_length=255)
    added_at = instants.DatetimeField()

    class Meta:
        table = "org_member"
        indexes = (Index(fields=("organisation_id",), name="idx_org_member_org_id"),)


# Tickets bought in advance (or a correction: a negative count), never edited: the purchase
# rows are their own audit log. For an organisation, or for a client in none.
class Purchase(Model):
    id = fields.IntField(primary_key=True)
    organisation: fields.ForeignKeyNullableRelation[Organisation] = fields.ForeignKeyField(
        "models.Organisation", related_name="purchases", null=True, on_delete=fields.RESTRICT
    )
    client: fields.ForeignKeyNullableRelation[Client] = fields.ForeignKeyField(
        "models.Client", related_name="purchases", null=True, on_delete=fields.RESTRICT
    )
    tickets = fields.IntField()
    note = fields.TextField(null=True)
    recorded_by = fields.CharField(max_length=255)
    at = instants.DatetimeField()

    class Meta:
        table = "purchase"
        indexes = (
            Index(fields=("organisation_id",), name="idx_purchase_org_id"),
            Index(fields=("client_id",), name="idx_purchase_client_id"),
        )


# A staff dashboard login: a one-time link (hashed token, short-lived), then a session
# cookie (hashed too). `kind` is "link" or "session".
class DashboardToken(Model):
    id = fields.IntField(primary_key=True)
    token_hash = fields.CharField(max_length=128, unique=True)
    kind = fields.CharField(max_length=16)
    staff = fields.CharField(max_length=255)
    created_at = instants.DatetimeField()
    expires_at = instants.DatetimeField()
    used_at = instants.DatetimeField(null=True)

    class Meta:
        table = "dashboard_token"


# How far the support mailbox has been read, per IMAP folder: its UIDVALIDITY and the last UID
# handled. Advanced in the same transaction as what the mail changed (`bot.storage.mailbox`),
# so a crash between fetch and commit replays the mail without doing it twice.
class MailboxPosition(Model):
    folder = fields.CharField(max_length=255, primary_key=True)
    uidvalidity = fields.BigIntField()
    last_uid = fields.BigIntField()
    updated_at = instants.DatetimeField()

    class Meta:
        table = "mailbox_position"


# The e-mail channel (`handlers.mail`): every mail received or sent about a request, for its
# threading (a reply's In-Reply-To/References are looked up here) and its history. `ticket`
# is set once the request exists; `conversation` while it is an intake by e-mail.
class MailMessage(Model):
    id = fields.IntField(primary_key=True)
    ticket: fields.ForeignKeyNullableRelation[Ticket] = fields.ForeignKeyField(
        "models.Ticket", related_name="mails", null=True, on_delete=fields.CASCADE
    )
    conversation: fields.ForeignKeyNullableRelation[Conversation] = fields.ForeignKeyField(
        "models.Conversation", related_name="mails", null=True, on_delete=fields.SET_NULL
    )
    direction = fields.CharField(max_length=3)  # in | out
    # request | answers | reply | auto | bounce | refused | limited (in);
    # questions | receipt | staff | update | refusal (out)
    kind = fields.CharField(max_length=16)
    message_id = fields.CharField(max_length=998, null=True)
    # The client's address: the sender of a mail in, the recipient of a mail out.
    address = fields.CharField(max_length=320, null=True)
    subject = fields.TextField(null=True)
    # A bounce's status and diagnostic; why a mail was not handled.
    detail = fields.TextField(null=True)
    event_id = fields.CharField(max_length=255, null=True)  # mail:<folder>:<uidvalidity>:<uid>
    at = instants.DatetimeField()

    class Meta:
        table = "mail_message"
        indexes = (
            Index(fields=("message_id",), name="idx_mail_message_message_id"),
            Index(fields=("address", "at"), name="idx_mail_message_address_at"),
            Index(fields=("ticket_id",), name="idx_mail_message_ticket_id"),
        )


# A file attached to a mail in: its name and size always, its bytes when under
# `mail.attachment_max_kib` (else refused politely, `data` NULL).
class MailAttachmentRow(Model):
    id = fields.IntField(primary_key=True)
    mail: fields.ForeignKeyRelation[MailMessage] = fields.ForeignKeyField(
        "models.MailMessage", related_name="attachments", on_delete=fields.CASCADE
    )
    filename = fields.CharField(max_length=255)
    content_type = fields.CharField(max_length=255)
    size = fields.BigIntField()
    data = fields.BinaryField(null=True)

    class Meta:
        table = "mail_attachment"
        indexes = (Index(fields=("mail_id",), name="idx_mail_attachment_mail_id"),)
