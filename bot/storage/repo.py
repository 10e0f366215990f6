"""The few queries the bot, the CLI and the web pages need, over the Tortoise models.

Functions here load and save rows; every decision stays in `bot.domain` and `bot.rules`.
`ticket_state` / `apply_state` are the bridge between a `Ticket` row and the pure
`TicketState` the lifecycle decisions work on.

Every function runs on the current connection: called inside `in_transaction()`, it takes part
in that transaction (nested blocks become savepoints), so a caller can allocate a reference,
create the ticket and write its audit entry atomically.

Decisions worth knowing:

* **References** come from one `RefCounter` row per (prefix, year), incremented with a single
  `UPDATE … SET last_value = last_value + 1`. On PostgreSQL the row lock serialises concurrent
  allocations (READ COMMITTED re-reads the row once the other transaction commits), on SQLite
  the connection does. The row is created with `INSERT … ON CONFLICT DO NOTHING`, so two first
  allocations of a year never fail on the unique constraint, and no error ever aborts an
  outer transaction. A rolled-back transaction gives its number back: references stay
  consecutive.
* **Overdue** means the SLA deadline has passed and nobody has answered yet (R3): a ticket
  taken late is no longer overdue, it was only late.
* **Monthly report** counts what was *opened* in the month (local month in the service time
  zone) with the figures those tickets bill today, so a ticket's whole bill lands in one month.
* **Erasure** (SPEC §7) keeps every number (minutes, tickets, statuses, dates) and removes what
  identifies or describes the person: texts they wrote, their e-mail, their Matrix id (replaced
  by `anon:<random>` everywhere it is stored), their instance URL, meeting join links that
  carry their name, their intakes (dropped ones too), their language preference, their
  undecryptable messages, the consent-link tokens of their tickets, and what staff wrote about
  their requests (closing reasons, audit details, time notes). Outbox rows are found by room
  (every row of a room that is theirs alone) and by content (their ids, e-mail addresses,
  references and texts, in any room, e-mails included): sent or failed ones are blanked, those
  not sent yet deleted. The bot's messages among them are returned for redaction.
* **Outbox retention**: `prune_outbox` forgets what was sent (or given up) before a date.
"""

from __future__ import annotations

import csv
import html
import io
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, tzinfo
from typing import Any

from tortoise.exceptions import IntegrityError
from tortoise.expressions import F, Q
from tortoise.transactions import in_transaction

from bot import logcontext
from bot.domain.bridge import bridged_nick
from bot.domain.tickets import (
    ACTIVE_STATUSES,
    ENDED_STATUSES,
    Channel,
    Kind,
    Status,
    TicketState,
    billed_tickets,
)
from bot.storage.models import (
    AuditEntry,
    Booking,
    Client,
    ConfirmationToken,
    Conversation,
    DeferredEvent,
    OutboxItem,
    Reaction,
    RefCounter,
    Ticket,
    TicketNote,
    TimeLog,
    UndecryptedEvent,
    UserPref,
)

log = logging.getLogger(__name__)

__all__ = [
    "ERASED_CONTENT",
    "ERASED_TEXT",
    "REPORT_COLUMNS",
    "TICKET_JSON_FIELDS",
    "Erasure",
    "active_booking",
    "active_bookings",
    "allocate_ref",
    "apply_state",
    "audit",
    "booking_to_json",
    "erase_client",
    "erase_data",
    "erasure_outbox",
    "export_client",
    "format_ref",
    "get_or_create_client",
    "holds_data",
    "is_overdue",
    "month_bounds",
    "open_tickets_for",
    "prune_outbox",
    "queue",
    "report_csv",
    "report_month",
    "rows_csv",
    "ticket_by_ref",
    "ticket_for_client",
    "ticket_state",
    "ticket_to_json",
]

#: What replaces erased free text (descriptions, notes).
ERASED_TEXT = "[erased]"
ANON_PREFIX = "anon:"
#: The SPEC §8 export fields, in order (extra fields may follow them).
TICKET_JSON_FIELDS: tuple[str, ...] = (
    "ref",
    "kind",
    "status",
    "category",
    "channel",
    "client",
    "created_at",
    "sla_due",
    "first_response_at",
    "estimate_minutes",
    "minutes_logged",
    "billed_tickets",
    "client_confirmed_at",
    "staff_confirmed_by",
    "accepted_at",
    "warranty_until",
    "booking",
)
CANCELLED_BOOKING = "cancelled"
#: Statuses in which a client still has something going on with a ticket.
_NOT_OPEN = ENDED_STATUSES | {Status.CLOSED}


# --- References ----------------------------------------------------------------------------


def format_ref(prefix: str, year: int, number: int) -> str:
    """`SP-2026-0042`: four digits at least, more once a year passes 9999 requests."""
    return f"{prefix}-{year}-{number:04d}"


async def allocate_ref(prefix: str, year: int) -> str:
    """The next reference of `prefix` for `year`; atomic under concurrency (see module doc)."""
    if not prefix or "-" in prefix:
        raise ValueError(f"a reference prefix must be non-empty without '-', got {prefix!r}")
    if not 1 <= year <= 9999:
        raise ValueError(f"year out of range: {year}")
    async with in_transaction() as conn:
        number = await _bump_counter(conn, prefix, year)
        if number is None:
            # First reference of the year: create the row, or find the one a concurrent
            # allocation just created (ON CONFLICT DO NOTHING waits for it to commit).
            await RefCounter.bulk_create(
                [RefCounter(prefix=prefix, year=year, last_value=0)],
                ignore_conflicts=True,
                using_db=conn,
            )
            number = await _bump_counter(conn, prefix, year)
        if number is None:  # pragma: no cover - the row exists at this point
            raise RuntimeError(f"reference counter {prefix}/{year} could not be created")
    return format_ref(prefix, year, number)


async def _bump_counter(conn: Any, prefix: str, year: int) -> int | None:
    counter = RefCounter.filter(prefix=prefix, year=year).using_db(conn)
    if not await counter.update(last_value=F("last_value") + 1):
        return None
    # Our UPDATE holds the row (PostgreSQL) or the connection (SQLite) until commit, so this
    # reads our own increment.
    return await counter.first().values_list("last_value", flat=True)


# --- Audit ---------------------------------------------------------------------------------


async def audit(
    ticket: Ticket,
    actor: str,
    action: str,
    from_status: Status | str | None,
    to_status: Status | str | None,
    detail: str | None = None,
    *,
    at: datetime,
) -> AuditEntry:
    """Record one state change of `ticket` (who, when, what), SPEC §7. The ticket's reference
    is on every log line written after it while the same event is handled."""
    _require_aware(at)
    logcontext.bind(ref=ticket.ref)
    return await AuditEntry.create(
        ticket=ticket,
        actor=actor,
        action=action,
        from_status=None if from_status is None else str(from_status),
        to_status=None if to_status is None else str(to_status),
        detail=detail,
        at=at,
    )


# --- Clients and tickets -------------------------------------------------------------------


async def get_or_create_client(
    key: str, *, now: datetime, display_name: str | None = None
) -> Client:
    """The client with `key`, created on first contact; a new display name is remembered."""
    _require_aware(now)
    client = await Client.get_or_none(key=key)
    if client is None:
        try:
            # A savepoint: losing the race must not abort the caller's transaction.
            async with in_transaction():
                return await Client.create(key=key, display_name=display_name, created_at=now)
        except IntegrityError:
            client = await Client.get(key=key)
    if display_name and client.display_name != display_name:
        client.display_name = display_name
        await client.save(update_fields=["display_name"])
    return client


async def locale_for(user_key: str, default: str) -> str:
    """The language someone chose with !lang, else `default`."""
    pref = await UserPref.get_or_none(user_key=user_key)
    return pref.locale if pref is not None else default


async def set_locale(user_key: str, locale: str) -> None:
    await UserPref.update_or_create(defaults={"locale": locale}, user_key=user_key)


async def client_locale(ticket: Ticket) -> str:
    """The language to write to a ticket's client in: their current choice, else the
    language the request was made in."""
    client_key = await Client.filter(id=ticket.client_id).values_list(  # type: ignore[attr-defined]
        "key", flat=True
    )
    pref = await UserPref.get_or_none(user_key=client_key[0]) if client_key else None
    return pref.locale if pref is not None else ticket.locale


async def ticket_by_ref(ref: str) -> Ticket | None:
    """The ticket, question or quote request `ref` (case-insensitive), client loaded."""
    return await Ticket.filter(ref__iexact=ref.strip()).select_related("client").first()


async def ticket_for_client(ref: str, client_key: str) -> Ticket | None:
    """`ref` if it belongs to `client_key`; None otherwise, exactly as for an unknown ref.

    Someone else's ticket is "not found", never "forbidden": its existence is not disclosed.
    """
    return (
        await Ticket.filter(ref__iexact=ref.strip(), client__key=client_key)
        .select_related("client")
        .first()
    )


async def open_tickets_for(client_key: str) -> list[Ticket]:
    """The client's tickets that are not closed or ended, oldest first (R1)."""
    return (
        await Ticket.filter(client__key=client_key)
        .exclude(status__in=[str(s) for s in _NOT_OPEN])
        .select_related("client")
        .order_by("created_at", "id")
    )


def is_overdue(
    sla_due: datetime | None, first_response_at: datetime | None, now: datetime
) -> bool:
    """The SLA deadline has passed and nobody has answered the client yet (R3, R4)."""
    return sla_due is not None and first_response_at is None and sla_due < now


async def queue(now: datetime) -> list[Ticket]:
    """Work staff owe: overdue first, then by SLA due time (none last), then oldest first."""
    _require_aware(now)
    tickets = (
        await Ticket.filter(status__in=[str(s) for s in ACTIVE_STATUSES])
        .select_related("client")
        .order_by("created_at", "id")
    )
    far = datetime.max.replace(tzinfo=UTC)

    def key(ticket: Ticket) -> tuple[bool, bool, datetime]:
        overdue = is_overdue(ticket.sla_due, ticket.first_response_at, now)
        return (not overdue, ticket.sla_due is None, ticket.sla_due or far)

    return sorted(tickets, key=key)  # stable: equal keys stay oldest first


async def active_booking(ticket: Ticket) -> Booking | None:
    """The ticket's current call: the latest booking that was not cancelled."""
    return (
        await Booking.filter(ticket_id=ticket.pk)
        .exclude(status=CANCELLED_BOOKING)
        .order_by("-start", "-id")
        .first()
    )


async def active_bookings() -> dict[int, Booking]:
    """`active_booking` of every ticket that has one, by ticket id, in one query.

    The database orders the bookings exactly as `active_booking` does; the first one seen for
    each ticket is therefore the one `active_booking` would return.
    """
    current: dict[int, Booking] = {}
    for booking in await Booking.exclude(status=CANCELLED_BOOKING).order_by("-start", "-id"):
        current.setdefault(booking.ticket_id, booking)
    return current


# --- Row <-> TicketState -------------------------------------------------------------------

_ENUM_FIELDS: Mapping[str, type] = {"kind": Kind, "channel": Channel, "status": Status}
_STATE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(TicketState))


def ticket_state(ticket: Ticket) -> TicketState:
    """The lifecycle view of a ticket row."""
    values: dict[str, Any] = {}
    for name in _STATE_FIELDS:
        value = getattr(ticket, name)
        enum = _ENUM_FIELDS.get(name)
        values[name] = enum(value) if enum is not None else value
    return TicketState(**values)


def apply_state(ticket: Ticket, state: TicketState) -> list[str]:
    """Copy `state` onto the row (not saved); returns the fields that changed, for `save`."""
    changed: list[str] = []
    for name in _STATE_FIELDS:
        value = getattr(state, name)
        if name in _ENUM_FIELDS:
            value = str(value)
        if getattr(ticket, name) != value:
            setattr(ticket, name, value)
            changed.append(name)
    return changed


# --- JSON ----------------------------------------------------------------------------------


def _iso(value: datetime | None, tz: tzinfo) -> str | None:
    return None if value is None else value.astimezone(tz).isoformat()


def _client_key(ticket: Ticket) -> str:
    client = ticket.client
    if not isinstance(client, Client):
        raise ValueError(
            f"ticket {ticket.ref}: load its client first (select_related('client') or "
            "fetch_related('client'))"
        )
    return client.key


def booking_to_json(booking: Booking | None, tz: tzinfo = UTC) -> dict[str, Any] | None:
    if booking is None:
        return None
    return {
        "start": _iso(booking.start, tz),
        "end": _iso(booking.end, tz),
        "provider": booking.provider,
        "staff": booking.staff,
    }


def ticket_to_json(
    ticket: Ticket, *, booking: Booking | None = None, tz: tzinfo = UTC
) -> dict[str, Any]:
    """The SPEC §8 export of a ticket (its client must be loaded); times in `tz` with offset."""
    return {
        "ref": ticket.ref,
        "kind": ticket.kind,
        "status": ticket.status,
        "category": ticket.category,
        "channel": ticket.channel,
        "client": _client_key(ticket),
        "created_at": _iso(ticket.created_at, tz),
        "sla_due": _iso(ticket.sla_due, tz),
        "first_response_at": _iso(ticket.first_response_at, tz),
        "estimate_minutes": ticket.estimate_minutes,
        "minutes_logged": ticket.minutes_logged,
        "billed_tickets": billed_tickets(ticket_state(ticket)),
        "client_confirmed_at": _iso(ticket.client_confirmed_at, tz),
        "staff_confirmed_by": ticket.staff_confirmed_by,
        "accepted_at": _iso(ticket.accepted_at, tz),
        "warranty_until": _iso(ticket.warranty_until, tz),
        "booking": booking_to_json(booking, tz),
        # Extra fields, after the stable ones.
        "assigned_to": ticket.assigned_to,
        "confirmed_tickets": ticket.confirmed_tickets,
        "resolved_at": _iso(ticket.resolved_at, tz),
        "converted_from": ticket.converted_from,
    }


# --- Monthly report ------------------------------------------------------------------------

REPORT_COLUMNS: tuple[str, ...] = (
    "month",
    "client",
    "client_name",
    "tickets",
    "billed_tickets",
    *(f"minutes_{channel}" for channel in Channel),
    "minutes_total",
    "questions",
    "quotes",
)


def month_bounds(year: int, month: int, tz: tzinfo) -> tuple[datetime, datetime]:
    """The first instant of the local month and of the next one, in `tz`."""
    if not 1 <= month <= 12:
        raise ValueError(f"month must be 1..12, got {month}")
    start = datetime(year, month, 1, tzinfo=tz)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=tz)
    return start, end


async def report_month(year: int, month: int, tz: tzinfo) -> list[dict[str, Any]]:
    """Per client, what was opened in the local month and what it bills (see module doc)."""
    start, end = month_bounds(year, month, tz)
    tickets = (
        await Ticket.filter(
            created_at__gte=start.astimezone(UTC), created_at__lt=end.astimezone(UTC)
        )
        .select_related("client")
        .order_by("created_at", "id")
    )
    label = f"{year:04d}-{month:02d}"
    rows: dict[int, dict[str, Any]] = {}
    for ticket in tickets:
        client: Client = ticket.client
        row = rows.get(client.pk)
        if row is None:
            row = rows[client.pk] = {column: 0 for column in REPORT_COLUMNS}
            row.update(month=label, client=client.key, client_name=client.display_name)
        kind = Kind(ticket.kind)
        if kind is Kind.QUESTION:
            row["questions"] += 1
        elif kind is Kind.QUOTE:
            row["quotes"] += 1
        else:
            row["tickets"] += 1
            row["billed_tickets"] += billed_tickets(ticket_state(ticket))
        row[f"minutes_{Channel(ticket.channel)}"] += ticket.minutes_logged
        row["minutes_total"] += ticket.minutes_logged
    return sorted(rows.values(), key=lambda row: row["client"])


# Spreadsheets run a cell starting with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# A Matrix user id cannot hold a formula (no parentheses, spaces or quotes): kept as it is.
_MATRIX_USER_ID = re.compile(r"@[A-Za-z0-9._=/+-]+:[A-Za-z0-9.:\[\]-]+")


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if (
        isinstance(value, str)
        and value.startswith(_FORMULA_START)
        and not _MATRIX_USER_ID.fullmatch(value)
    ):
        return "'" + value
    return value


def rows_csv(columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    """CSV with a header line; text that a spreadsheet would run as a formula is quoted with a
    leading `'` (Matrix user ids excepted: their grammar cannot express a formula)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(column)) for column in columns])
    return buffer.getvalue()


def report_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """The monthly report (`report_month`) as CSV, one line per client."""
    return rows_csv(REPORT_COLUMNS, rows)


# --- Export and erasure (SPEC §7) ----------------------------------------------------------


async def holds_data(key: str) -> bool:
    """Whether anything stored names `key`: a client row, an intake (even a dropped one, whose
    row keeps the step), a language preference, an undecryptable message, a reaction."""
    return (
        await Client.exists(key=key)
        or await Conversation.exists(client_key=key)
        or await UserPref.exists(user_key=key)
        or await UndecryptedEvent.exists(sender=key)
        or await Reaction.exists(sender=key)
    )


async def export_client(key: str, *, tz: tzinfo = UTC) -> dict[str, Any] | None:
    """Everything stored about `key`, as JSON-ready data; None if nothing names it.

    Someone who never opened a request may still be known by an intake (running, or dropped:
    its row keeps the step) or a language preference: `client` is then None."""
    client = await Client.get_or_none(key=key)
    conversations = await Conversation.filter(client_key=key).order_by("id")
    pref = await UserPref.get_or_none(user_key=key)
    undecrypted = await UndecryptedEvent.filter(sender=key).order_by("received_at")
    reactions = await Reaction.filter(sender=key).order_by("at")
    if client is None and not (conversations or pref or undecrypted or reactions):
        return None
    tickets = (
        []
        if client is None
        else await Ticket.filter(client=client)
        .select_related("client")
        .order_by("created_at", "id")
    )
    return {
        "client": None if client is None else _client_json(client, pref, tz),
        "tickets": [await _ticket_export(ticket, tz) for ticket in tickets],
        "conversations": [
            {
                "room_id": c.room_id,
                "step": c.step,
                "data": c.data,
                "updated_at": _iso(c.updated_at, tz),
            }
            for c in conversations
        ],
        "preferences": None if pref is None else {"locale": pref.locale},
        "undecryptable_events": [
            {"event_id": e.event_id, "room_id": e.room_id, "received_at": _iso(e.received_at, tz)}
            for e in undecrypted
        ],
        "reactions": [
            {"room_id": r.room_id, "target": r.target_event_id, "key": r.key, "at": _iso(r.at, tz)}
            for r in reactions
        ],
    }


def _client_json(client: Client, pref: UserPref | None, tz: tzinfo) -> dict[str, Any]:
    return {
        "key": client.key,
        "display_name": client.display_name,
        "email": client.email,
        "locale": client.locale,
        "preferred_locale": pref.locale if pref else None,
        "terms_shown_at": _iso(client.terms_shown_at, tz),
        "terms_url": client.terms_url,
        "private_room_id": client.private_room_id,
        "created_at": _iso(client.created_at, tz),
        "erased_at": _iso(client.erased_at, tz),
    }


async def _ticket_export(ticket: Ticket, tz: tzinfo) -> dict[str, Any]:
    bookings = await Booking.filter(ticket_id=ticket.pk).order_by("start", "id")
    data = ticket_to_json(ticket, booking=await active_booking(ticket), tz=tz)
    data.update(
        description=ticket.description,
        instance_url=ticket.instance_url,
        instance_version=ticket.instance_version,
        survey_id=ticket.survey_id,
        email=ticket.email,
        locale=ticket.locale,
        room_id=ticket.room_id,
        closed_reason=ticket.closed_reason,
        notes=[
            {"at": _iso(note.at, tz), "author": note.author_key, "text": note.text}
            for note in await TicketNote.filter(ticket_id=ticket.pk).order_by("at", "id")
        ],
        time_logs=[
            {
                "at": _iso(entry.at, tz),
                "staff": entry.staff,
                "minutes": entry.minutes,
                "note": entry.note,
            }
            for entry in await TimeLog.filter(ticket_id=ticket.pk).order_by("at", "id")
        ],
        bookings=[
            {
                **(booking_to_json(b, tz) or {}),
                "status": b.status,
                "created_at": _iso(b.created_at, tz),
                "client_url": b.client_url,
            }
            for b in bookings
        ],
        audit=[
            {
                "at": _iso(entry.at, tz),
                "actor": entry.actor,
                "action": entry.action,
                "from_status": entry.from_status,
                "to_status": entry.to_status,
                "detail": entry.detail,
            }
            for entry in await AuditEntry.filter(ticket_id=ticket.pk).order_by("at", "id")
        ],
    )
    return data


@dataclass(frozen=True, slots=True)
class Erasure:
    """What an erasure leaves to do on Matrix once it is committed (`erasure_outbox`)."""

    anon: str  # the anonymous key the client row now has
    cards: tuple[tuple[int, str], ...]  # (ticket id, reference): cards to show a placeholder
    card_room: str | None  # where the staff cards were seen posted (None: no record left)
    redactions: tuple[tuple[str, str], ...]  # (room id, event id) of the bot's messages


async def erase_client(
    key: str,
    *,
    now: datetime,
    actor: str = "system",
    staff_room: str | None = None,
    card_text: Callable[[str], str] | None = None,
) -> bool:
    """`erase_data`, with its card placeholders and redactions queued in the outbox (for the
    command line, which has no handler's outbox; the running bot sends them). False if
    nothing names `key`."""
    async with in_transaction():
        erasure = await erase_data(key, now=now, actor=actor)
        if erasure is None:
            return False
        rows = erasure_outbox(erasure, staff_room=staff_room, card_text=card_text)
        base = "er" + erasure.anon.removeprefix(ANON_PREFIX)  # a valid, unique transaction id
        await OutboxItem.bulk_create(
            [OutboxItem(txn_id=f"{base}-{n}", created_at=now, **row) for n, row in enumerate(rows)]
        )
    return True


async def _drop_deferred(key: str) -> None:
    """Messages of theirs that a flood deferred are never handled: their text goes too. A
    Matrix account has a lane of its own; behind a bridge, the room's lane holds every
    nickname, and theirs are the ones the bridge prefixed with their nickname."""
    await DeferredEvent.filter(lane=key).delete()
    if not key.startswith("bridge:"):
        return
    for row in await DeferredEvent.filter(lane__startswith="bridge-room:"):
        nick = bridged_nick(key, row.room_id)
        body = str(row.event.get("body", "")) if isinstance(row.event, dict) else ""
        if nick and nick in body:
            await row.delete()


async def erase_data(key: str, *, now: datetime, actor: str = "system") -> Erasure | None:
    """Delete or blank everything that names or describes `key` and keep the billing figures;
    None if nothing names them (see the module doc and `Erasure`).

    One transaction: either everything is erased or nothing is. Each ticket gets an "erased"
    audit entry by `actor` (never the client's own id, which is being erased). The outbox
    rows that held their data are blanked (sent, failed) or deleted (not sent yet: they must
    never go out); the sent ones are returned for redaction, except the card itself, which gets
    a placeholder edit instead.
    """
    _require_aware(now)
    async with in_transaction():
        if not await holds_data(key):
            return None
        client = await Client.get_or_none(key=key)
        tickets = [] if client is None else await Ticket.filter(client=client)
        conversations = await Conversation.filter(client_key=key)
        traces, exclusive = await _traces_of(key, client, tickets, conversations)
        ids = [t.pk for t in tickets]
        cards = {f"card:{pk}" for pk in ids}
        redactions, card_room = await _erase_outbox(traces, exclusive, cards)
        anon = f"{ANON_PREFIX}{secrets.token_hex(8)}"
        if ids:
            await Ticket.filter(id__in=ids).update(
                description=ERASED_TEXT, email=None, instance_url=None
            )
            # What staff wrote about the request (a reason, an audit detail, a time note) may
            # quote or describe the client; the minutes, statuses and dates stay.
            await Ticket.filter(id__in=ids, closed_reason__not_isnull=True).update(
                closed_reason=ERASED_TEXT
            )
            await TicketNote.filter(ticket_id__in=ids).update(text=ERASED_TEXT)
            await TicketNote.filter(ticket_id__in=ids, author_key=key).update(author_key=anon)
            await TimeLog.filter(ticket_id__in=ids, note__not_isnull=True).update(note=ERASED_TEXT)
            await AuditEntry.filter(ticket_id__in=ids, actor=key).update(actor=anon)
            await AuditEntry.filter(ticket_id__in=ids, detail__not_isnull=True).update(
                detail=ERASED_TEXT
            )
            # Join links of providers such as BigBlueButton carry the client's name.
            await Booking.filter(ticket_id__in=ids).update(client_url=None)
            # A consent link still in their mailbox must lead nowhere; the consent given
            # stays on the ticket (`client_confirmed_at`) and in its audit.
            await ConfirmationToken.filter(ticket_id__in=ids).delete()
        await Conversation.filter(client_key=key).delete()
        await UserPref.filter(user_key=key).delete()
        await Reaction.filter(sender=key).update(sender=anon)
        await UndecryptedEvent.filter(sender=key).delete()
        await _drop_deferred(key)
        if client is not None:
            client.key = anon
            client.display_name = None
            client.email = None
            client.private_room_id = None
            client.erased_at = now
            await client.save(
                update_fields=["key", "display_name", "email", "private_room_id", "erased_at"]
            )
        for ticket in tickets:
            await audit(ticket, actor, "erased", ticket.status, ticket.status, at=now)
    log.info(
        "personal data erased: now %s, %d ticket(s) kept for billing, %d message(s) to redact",
        anon,
        len(tickets),
        len(redactions),
    )
    return Erasure(
        anon=anon,
        cards=tuple((t.pk, t.ref) for t in tickets),
        card_room=card_room,
        redactions=tuple(redactions),
    )


def erasure_outbox(
    erasure: Erasure, *, staff_room: str | None, card_text: Callable[[str], str] | None
) -> list[dict[str, Any]]:
    """The outbox rows of an erasure (`OutboxItem` fields): each staff card edited to
    `card_text(ref)` in `staff_room` (else where the cards were seen; without either, left
    alone), then a redaction of each of the bot's messages that held the client's data."""
    rows: list[dict[str, Any]] = []
    room = staff_room or erasure.card_room
    if room is not None and card_text is not None:
        for ticket_id, ref in erasure.cards:
            text = card_text(ref)
            # An edit as `Context.edit` writes it; a notice that can ping nobody.
            new = {"msgtype": "m.notice", "body": text, "m.mentions": {}}
            content = {**new, "body": f"* {text}", "m.new_content": new}
            rows.append(
                {
                    "room_id": room,
                    "kind": "edit",
                    "content": content,
                    "target": f"card:{ticket_id}",
                }
            )
    for room_id, event_id in erasure.redactions:
        rows.append(
            {"room_id": room_id, "kind": "redaction", "content": {}, "target": f"event:{event_id}"}
        )
    return rows


#: What replaces the content of an outbox row that held a client's data.
ERASED_CONTENT: dict[str, Any] = {"erased": True}
# Outbox kinds that are no event of the bot's to redact.
_NOT_REDACTED = frozenset({"mail", "redaction", "pruned"})
# Free text shorter than this is not looked for in stored messages (a note such as "ok"
# would be found everywhere); the staff messages that quote one also name its request.
_MIN_TRACE_CHARS = 8
# What `bot.cards.defuse` inserts into, or strips from, the client text it echoes.
_INVISIBLE = re.compile("[\u2060\u200b-\u200f\u202a-\u202e\u2066-\u2069\u061c]")
_BATCH = 500


def _fold(text: str) -> str:
    """Text as compared: unescaped, without invisible marks, spaces collapsed, any case."""
    return " ".join(_INVISIBLE.sub("", html.unescape(text)).split()).casefold()


class _Traces:
    """What names or describes one client, to find it in the messages the bot stored: their
    ids and e-mail addresses, the free text of their requests, their references, and (behind
    a bridge) the nickname the bot's answers in that room start with."""

    def __init__(
        self,
        ids: Iterable[str | None],
        texts: Iterable[str | None],
        refs: Iterable[str],
        addressed: Mapping[str, str],
    ) -> None:
        found = {_fold(i) for i in ids if i}
        # Already erased text (a second erasure of an anonymous client) names nobody.
        found |= {
            f for t in texts if t and t != ERASED_TEXT and len(f := _fold(t)) >= _MIN_TRACE_CHARS
        }
        self._needles = found - {""}
        alternatives = "|".join(sorted(map(re.escape, {r.casefold() for r in refs})))
        # A reference is found whole: SP-2026-0001 is not in SP-2026-00012.
        self._refs = re.compile(rf"(?<![\w-])(?:{alternatives})(?!\d)") if alternatives else None
        self._addressed = {room: _fold(nick) + ":" for room, nick in addressed.items()}

    def found_in(self, row: OutboxItem) -> bool:
        prefix = self._addressed.get(row.room_id)
        for text in _strings(row.content, files=row.kind == "file"):
            folded = _fold(text)
            if prefix is not None and folded.startswith(prefix):
                return True
            if any(needle in folded for needle in self._needles):
                return True
            if self._refs is not None and self._refs.search(folded):
                return True
        return False


def _strings(value: Any, *, files: bool) -> Iterator[str]:
    """Every string in a row's JSON content; with `files`, the text of the attached data
    (a report sent as a file names clients)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for name, item in value.items():
            if files and name == "data" and isinstance(item, str):
                try:
                    yield bytes.fromhex(item).decode("utf-8", "replace")
                except ValueError:
                    yield item
            else:
                yield from _strings(item, files=files)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, files=files)


async def _traces_of(
    key: str, client: Client | None, tickets: list[Ticket], conversations: list[Conversation]
) -> tuple[_Traces, set[str]]:
    """The client's traces, and the rooms that are theirs alone (every message the bot sent
    there is about them): their ticket, intake and private rooms in which no other client
    ever asked anything. A bridged room is never theirs alone: a nickname speaks in a room
    the whole bridged conversation shares."""
    ids: list[str | None] = [key]
    texts: list[str | None] = []
    refs: list[str] = []
    ticket_ids = [t.pk for t in tickets]
    if client is not None:
        ids.append(client.email)
    for ticket in tickets:
        ids.append(ticket.email)
        texts += [ticket.description, ticket.instance_url]
        refs += [ticket.ref, *([ticket.converted_from] if ticket.converted_from else [])]
    # What staff wrote (reasons, time notes) is not looked for: the same words may be about
    # someone else, and the staff messages that echo it name the request, which is.
    if ticket_ids:
        texts += await TicketNote.filter(ticket_id__in=ticket_ids).values_list("text", flat=True)
    for conv in conversations:
        data = conv.data if isinstance(conv.data, Mapping) else {}
        ids += [data.get("email"), data.get("known_email")]
        texts += [*(data.get("description_parts") or []), data.get("pending_text")]
        texts.append(data.get("instance_url"))
    rooms = {t.room_id for t in tickets} | {c.room_id for c in conversations}
    if client is not None and client.private_room_id:
        rooms.add(client.private_room_id)
    addressed = {room: nick for room in rooms if (nick := bridged_nick(key, room)) is not None}
    shared: set[str] = set(addressed)
    if rooms:
        others = Ticket.filter(room_id__in=rooms)
        if client is not None:
            others = others.exclude(client_id=client.pk)
        shared.update(await others.values_list("room_id", flat=True))
        shared.update(
            await Conversation.filter(room_id__in=rooms)
            .exclude(client_key=key)
            .values_list("room_id", flat=True)
        )
    return _Traces(ids, texts, refs, addressed), rooms - shared


async def _erase_outbox(
    traces: _Traces, exclusive: set[str], cards: set[str]
) -> tuple[list[tuple[str, str]], str | None]:
    """Blank (sent, failed) or delete (pending) the outbox rows of the client's own rooms, of
    their cards, and any that holds their traces (the e-mails to them, staff notices quoting
    them). Returns the events to redact and the room the staff cards are posted in."""
    redactions: dict[tuple[str, str], None] = {}  # ordered, without repeats
    card_room: str | None = None
    blank: list[int] = []
    drop: list[int] = []
    last = 0
    while batch := await OutboxItem.filter(id__gt=last).order_by("id").limit(_BATCH):
        last = batch[-1].pk
        for row in batch:
            if card_room is None and (row.on_sent or "").startswith("card:"):
                card_room = row.room_id
            is_card = row.on_sent in cards or row.target in cards
            if row.content == ERASED_CONTENT or not (
                is_card or row.room_id in exclusive or traces.found_in(row)
            ):
                continue
            if row.sent_at is None and not row.failed:
                drop.append(row.pk)
                continue
            blank.append(row.pk)
            # The card itself is edited to a placeholder (its edits, holding the text, go).
            if row.event_id and row.kind not in _NOT_REDACTED and row.on_sent not in cards:
                redactions[(row.room_id, row.event_id)] = None
    for start in range(0, len(blank), _BATCH):
        chunk = blank[start : start + _BATCH]
        await OutboxItem.filter(id__in=chunk).update(content=ERASED_CONTENT)
    for start in range(0, len(drop), _BATCH):
        await OutboxItem.filter(id__in=drop[start : start + _BATCH]).delete()
    return list(redactions), card_room


# --- Outbox retention ----------------------------------------------------------------------


async def prune_outbox(before: datetime) -> int:
    """Forget what the bot said before `before`: the rows sent then, and those given up
    (failed) that were written then; rows still to send are kept. A row with a tag
    (`on_sent`) keeps its room, event id and tag without its content (kind "pruned"): a
    reaction may still look it up (a client's ✅ on a "resolved" message). Returns how many
    rows were deleted or emptied."""
    _require_aware(before)
    old = Q(sent_at__lt=before) | Q(failed=True, created_at__lt=before)
    async with in_transaction():
        deleted = await OutboxItem.filter(old, on_sent__isnull=True).delete()
        emptied = (
            await OutboxItem.filter(old, on_sent__not_isnull=True)
            .exclude(kind="pruned")
            .update(kind="pruned", content={}, target=None)
        )
    return deleted + emptied


def _require_aware(moment: datetime) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("naive datetime refused: pass an aware datetime")
