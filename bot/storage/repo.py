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
import io
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from datetime import UTC, datetime, tzinfo
from typing import Any

from tortoise.exceptions import IntegrityError
from tortoise.expressions import F
from tortoise.transactions import in_transaction

from bot import logcontext
from bot.domain.tickets import (
    ACTIVE_STATUSES,
    ENDED_STATUSES,
    Channel,
    Kind,
    Status,
    TicketState,
    billed_tickets,
)
from bot.storage.instants import require_aware
from bot.storage.models import (
    AuditEntry,
    Booking,
    Client,
    RefCounter,
    Ticket,
    UserPref,
)
from bot.storage.satisfaction import SATISFACTION_COLUMNS, add_report_columns

log = logging.getLogger(__name__)

__all__ = [
    "ERASED_TEXT",
    "REPORT_COLUMNS",
    "REPORT_SUMS",
    "TICKET_JSON_FIELDS",
    "active_booking",
    "active_bookings",
    "allocate_ref",
    "apply_state",
    "audit",
    "booking_to_json",
    "format_ref",
    "get_or_create_client",
    "is_overdue",
    "month_bounds",
    "open_tickets_for",
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
    require_aware(at)
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
    require_aware(now)
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
    require_aware(now)
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
        "rating": ticket.rating,
        "rated_at": _iso(ticket.rated_at, tz),
    }


# --- Monthly report ------------------------------------------------------------------------

REPORT_COLUMNS: tuple[str, ...] = (
    "month",
    "row",  # "client", or "organisation" for an account's line (`bot.storage.balances`)
    "client",
    "client_name",
    "organisation",
    "tickets",
    "billed_tickets",
    *(f"minutes_{channel}" for channel in Channel),
    "minutes_total",
    "questions",
    "quotes",
    *SATISFACTION_COLUMNS,
    "purchased",  # organisation lines: tickets bought in the month
    "balance",  # organisation lines: the balance at the end of the month
)
#: The figures of a client line that add up into their organisation's line.
REPORT_SUMS: tuple[str, ...] = (
    "tickets",
    "billed_tickets",
    *(f"minutes_{channel}" for channel in Channel),
    "minutes_total",
    "questions",
    "quotes",
    "ratings",
    "rating_sum",
    "no_shows",
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
        await Ticket.filter(created_at__gte=start, created_at__lt=end)
        .select_related("client")
        .order_by("created_at", "id")
    )
    label = f"{year:04d}-{month:02d}"
    rows: dict[int, dict[str, Any]] = {}
    for ticket in tickets:
        client: Client = ticket.client
        row = rows.get(client.pk)
        if row is None:
            row = rows[client.pk] = {column: None for column in REPORT_COLUMNS}
            row.update(dict.fromkeys(REPORT_SUMS, 0))
            row.update(
                month=label, row="client", client=client.key, client_name=client.display_name
            )
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
    await add_report_columns(rows, ((ticket.client.pk, ticket) for ticket in tickets))
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
