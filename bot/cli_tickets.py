"""`support-bot tickets|report|client …`: the operator's view of the database.

Each command is an async function taking the parsed `Config`; it opens the database itself
(migrating it if needed), prints to stdout (problems to stderr) and returns the exit code:
0 done, 1 not found, 2 bad argument. The output is for operators, in English; times are shown
in the service time zone.

What clients wrote reaches the operator's terminal: every control character in it (C0 but
newline and tab, DEL, C1, the bidirectional overrides, embeddings, isolates and marks) is
shown escaped (`\\x1b`, `\\u202e`), so that no text can set the clipboard (OSC 52), retitle
the window or reorder what is shown. One-line fields escape newlines and tabs too (a display
name must not add lines to a table); descriptions and notes keep them. JSON keeps the data
exact: those characters are written as `\\uXXXX` escapes, which decode to the same text.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from bot.config import Config
from bot.domain.balance import Balance, signed
from bot.domain.orgs import OrgInputError, clean_note, parse_tickets
from bot.i18n import Catalogs, Msg
from bot.storage import balances, organisations, personal_data, repo
from bot.storage.balances import Account
from bot.storage.db import close_db, open_db
from bot.storage.models import AuditEntry, Ticket, TicketNote, TimeLog
from handlers import privacy

__all__ = [
    "client_erase",
    "client_export",
    "org_add",
    "org_credit",
    "org_list",
    "org_new",
    "org_show",
    "parse_month",
    "report",
    "tickets_export",
    "tickets_list",
    "tickets_show",
]

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
REPORT_FORMATS = ("csv", "json")
_MONTH = re.compile(r"(\d{4})-(\d{2})")
_LIST_COLUMNS = ("ref", "kind", "status", "client", "created", "sla due")
# What `_line` and `_text` escape (see the module docstring); JSON escapes C0 itself.
_TERMINAL_CONTROLS = "\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_CONTROLS_IN_TEXT = re.compile(f"[\x00-\x08\x0b-\x1f{_TERMINAL_CONTROLS}\u2028\u2029]")
_CONTROLS_IN_LINE = re.compile(f"[\x00-\x1f{_TERMINAL_CONTROLS}\u2028\u2029]")
_CONTROLS_IN_JSON = re.compile(f"[{_TERMINAL_CONTROLS}\u2028\u2029]")


@asynccontextmanager
async def _database(config: Config) -> AsyncIterator[None]:
    await open_db(config.database.url)
    try:
        yield
    finally:
        await close_db()


def _tz(config: Config) -> ZoneInfo:
    return ZoneInfo(config.service.timezone)


def _short(moment: datetime | None, tz: ZoneInfo) -> str:
    return "-" if moment is None else moment.astimezone(tz).strftime("%Y-%m-%d %H:%M")


_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match[0]
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _line(value: object) -> str:
    """`value` as one line for a terminal: every control character escaped, line breaks too."""
    return _CONTROLS_IN_LINE.sub(_escaped, str(value))


def _text(value: object) -> str:
    """Free text for a terminal: control characters escaped, newlines and tabs kept."""
    return _CONTROLS_IN_TEXT.sub(_escaped, str(value))


def _error(message: str) -> None:
    print(_text(message), file=sys.stderr)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    # Escaped before measuring: an escape is wider than the character it stands for.
    cells = [[_line(cell) for cell in row] for row in (header, *rows)]
    widths = [max(len(cell) for cell in column) for column in zip(*cells, strict=True)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _dump(data: Any) -> None:
    # `\uXXXX` for what json leaves raw with ensure_ascii=False: still the same data.
    text = json.dumps(data, ensure_ascii=False, indent=2)
    print(_CONTROLS_IN_JSON.sub(lambda m: f"\\u{ord(m[0]):04x}", text))


# --- tickets -------------------------------------------------------------------------------


async def tickets_list(config: Config) -> int:
    """A table of every ticket, question and quote request, oldest first."""
    tz = _tz(config)
    async with _database(config):
        tickets = await Ticket.all().select_related("client").order_by("created_at", "id")
    if not tickets:
        print("No tickets yet.")
        return EXIT_OK
    rows = [
        (
            t.ref,
            t.kind,
            t.status,
            t.client.key,
            _short(t.created_at, tz),
            _short(t.sla_due, tz),
        )
        for t in tickets
    ]
    print(_table(_LIST_COLUMNS, rows))
    return EXIT_OK


async def tickets_show(config: Config, ref: str) -> int:
    """Every field of one ticket, its notes, time logs and history."""
    tz = _tz(config)
    async with _database(config):
        ticket = await repo.ticket_by_ref(ref)
        if ticket is None:
            _error(f"No ticket {ref.strip()!r}.")
            return EXIT_NOT_FOUND
        booking = await repo.active_booking(ticket)
        notes = await TicketNote.filter(ticket_id=ticket.pk).order_by("at", "id")
        logs = await TimeLog.filter(ticket_id=ticket.pk).order_by("at", "id")
        history = await AuditEntry.filter(ticket_id=ticket.pk).order_by("at", "id")
    data = repo.ticket_to_json(ticket, booking=booking, tz=tz)
    data.update(
        client_name=ticket.client.display_name,
        instance_url=ticket.instance_url,
        instance_version=ticket.instance_version,
        survey_id=ticket.survey_id,
        email=ticket.email,
        locale=ticket.locale,
        room_id=ticket.room_id,
        closed_reason=ticket.closed_reason,
    )
    width = max(len(key) for key in data)
    for key, value in data.items():
        if key == "booking" and value is not None:
            value = (
                f"{value['start']} → {value['end']} with {value['staff']} ({value['provider']})"
            )
        print(f"{key.ljust(width)}  {'-' if value is None else _line(value)}")
    print("\nDescription:")
    print(_text(ticket.description))
    if notes:
        print("\nNotes:")
        for note in notes:
            print(f"  {_short(note.at, tz)}  {_line(note.author_key)}: {_text(note.text)}")
    if logs:
        print("\nTime logged:")
        for entry in logs:
            suffix = f"  {_text(entry.note)}" if entry.note else ""
            print(f"  {_short(entry.at, tz)}  {_line(entry.staff)}  {entry.minutes} min{suffix}")
    print("\nHistory:")
    if not history:
        print("  (none)")
    for entry in history:
        change = _line(entry.to_status or "")
        if entry.from_status and entry.from_status != entry.to_status:
            change = f"{_line(entry.from_status)} → {_line(entry.to_status)}"
        detail = f"  ({_text(entry.detail)})" if entry.detail else ""
        actor, action = _line(entry.actor), _line(entry.action)
        print(f"  {_short(entry.at, tz)}  {actor}  {action}  {change}{detail}".rstrip())
    return EXIT_OK


async def tickets_export(config: Config, *, as_json: bool = True) -> int:
    """Every ticket in the SPEC §8 JSON form (a JSON array), or as CSV without `as_json`."""
    tz = _tz(config)
    async with _database(config):
        # Two queries whatever the number of tickets (not one booking query per ticket).
        tickets = await Ticket.all().select_related("client").order_by("created_at", "id")
        bookings = await repo.active_bookings()
    exported = [repo.ticket_to_json(t, booking=bookings.get(t.pk), tz=tz) for t in tickets]
    if as_json:
        _dump(exported)
        return EXIT_OK
    flat = []
    for item in exported:
        booking = item.pop("booking") or {}
        item.update(
            {f"booking_{key}": booking.get(key) for key in ("start", "end", "provider", "staff")}
        )
        flat.append(item)
    columns = [f for f in repo.TICKET_JSON_FIELDS if f != "booking"]
    columns += ["booking_start", "booking_end", "booking_provider", "booking_staff"]
    # Lines end in "\n" alone (rows_csv), which `_text` keeps: the CSV stays CSV.
    sys.stdout.write(_text(repo.rows_csv(columns, flat)))
    return EXIT_OK


# --- report --------------------------------------------------------------------------------


def parse_month(text: str) -> tuple[int, int] | None:
    """`2026-11` → (2026, 11); None for anything else."""
    match = _MONTH.fullmatch(text.strip())
    if match is None:
        return None
    year, month = int(match.group(1)), int(match.group(2))
    if not 1 <= month <= 12 or year < 1:
        return None
    return year, month


async def report(config: Config, month: str, fmt: str = "csv") -> int:
    """Per-client figures of the tickets opened in `month` (YYYY-MM, service time zone), then
    per organisation: those figures added up, tickets purchased, balance at the month's end."""
    parsed = parse_month(month)
    if parsed is None:
        _error(f"Bad month {month!r}: write it as YYYY-MM, for example 2026-11.")
        return EXIT_USAGE
    if fmt not in REPORT_FORMATS:
        _error(f"Bad format {fmt!r}: use one of {', '.join(REPORT_FORMATS)}.")
        return EXIT_USAGE
    async with _database(config):
        rows = await balances.monthly_report(*parsed, _tz(config))
    if fmt == "json":
        _dump(rows)
    else:
        sys.stdout.write(_text(repo.report_csv(rows)))
    return EXIT_OK


# --- clients -------------------------------------------------------------------------------


async def client_export(config: Config, matrix_id: str) -> int:
    """All the data of one client (Matrix id, bridge key or anonymous id) as JSON."""
    async with _database(config):
        data = await personal_data.export_client(matrix_id.strip(), tz=_tz(config))
    if data is None:
        _error(f"No client {matrix_id.strip()!r}.")
        return EXIT_NOT_FOUND
    _dump(data)
    return EXIT_OK


async def client_erase(config: Config, matrix_id: str) -> int:
    """Erase a client's personal data, keeping the anonymised billing figures. Their staff
    cards are edited to a placeholder and the bot's messages about them redacted by the
    running bot (outbox rows); the cards are found in the configured staff room when it is a
    room id, else where the bot's sent cards are recorded."""
    key = matrix_id.strip()
    staff = Catalogs.load(default=config.service.default_locale).get(None)
    tz = _tz(config)
    room = config.matrix.staff_room
    async with _database(config):
        erased = await personal_data.erase_client(
            key,
            now=datetime.now(UTC),
            actor="cli",
            staff_room=room if room.startswith("!") else None,
            card_text=lambda ref: staff.render(Msg(privacy.ERASED_CARD, {"ref": ref}), tz),
        )
    if not erased:
        _error(f"No client {key!r}.")
        return EXIT_NOT_FOUND
    print(f"Erased the personal data of {_line(key)}; billing figures kept.")
    return EXIT_OK


# --- organisations and prepaid tickets -----------------------------------------------------

#: Refusals that mean "no such organisation or client" (exit 1); any other is a bad argument.
_NOT_FOUND_REASONS = frozenset(
    {
        organisations.ORG_UNKNOWN,
        organisations.ACCOUNT_UNKNOWN,
        organisations.TICKET_UNKNOWN,
        organisations.CLIENT_UNKNOWN,
        organisations.NICK_UNKNOWN,
    }
)


def _refused(config: Config, error: OrgInputError) -> int:
    """The refusal in English (the operator's language here), and its exit code."""
    english = Catalogs.load(default=config.service.default_locale).get("en")
    _error(english.render(error.msg, _tz(config)))
    return EXIT_NOT_FOUND if error.args[0] in _NOT_FOUND_REASONS else EXIT_USAGE


def _balance_line(balance: Balance) -> str:
    return (
        f"balance {signed(balance.remaining)} (purchased {balance.purchased}, "
        f"billed {balance.billed})"
    )


async def org_list(config: Config) -> int:
    """Every organisation with its members and balance."""
    async with _database(config):
        found = await organisations.organisations()
        rows = []
        for organisation, members in found:
            account = Account(organisation.id, None, organisation.name)
            balance = await balances.balance_of(account)
            rows.append(
                (
                    organisation.name,
                    str(members),
                    str(balance.purchased),
                    str(balance.billed),
                    signed(balance.remaining),
                )
            )
    if not rows:
        print("No organisations yet.")
        return EXIT_OK
    print(_table(("organisation", "members", "purchased", "billed", "balance"), rows))
    return EXIT_OK


async def org_new(config: Config, name: str, *, by: str = "cli") -> int:
    """Create an organisation."""
    async with _database(config):
        try:
            created = await organisations.create_organisation(name, by=by, now=datetime.now(UTC))
        except OrgInputError as error:
            return _refused(config, error)
    print(f"Created organisation {_line(created.name)}.")
    return EXIT_OK


async def org_add(config: Config, name: str, member: str, *, by: str = "cli") -> int:
    """Add a client (Matrix id, ticket reference, bridge key or Talk nickname) to an
    organisation, moving them from another one."""
    now = datetime.now(UTC)
    async with _database(config):
        try:
            organisation = await organisations.organisation_named(name)
            client = await organisations.find_client(member, now=now, create=True)
            added = await organisations.add_member(organisation, client, by=by, now=now)
        except OrgInputError as error:
            return _refused(config, error)
    moved = f" (moved from {_line(added.moved_from)})" if added.moved_from else ""
    print(f"Added {_line(client.key)} to {_line(organisation.name)}{moved}.")
    return EXIT_OK


async def org_show(config: Config, name: str) -> int:
    """An organisation (or a client in none): members, balance, every purchase."""
    tz = _tz(config)
    async with _database(config):
        try:
            account = await organisations.account_named(name, now=datetime.now(UTC))
        except OrgInputError as error:
            return _refused(config, error)
        balance = await balances.balance_of(account)
        bought = await organisations.purchases_of(account)
        members = (
            await organisations.members_of(account.organisation_id)
            if account.organisation_id is not None
            else None
        )
    if members is None:
        print(f"{_line(account.name)}: a client in no organisation")
    else:
        print(f"Organisation {_line(account.name)}")
        shown = ", ".join(_line(client.key) for client in members)
        print(f"members: {shown or '(none)'}")
    print(_balance_line(balance))
    if not bought:
        print("No purchases.")
        return EXIT_OK
    rows = [
        (
            _short(purchase.at, tz),
            f"{purchase.tickets:+d}",
            purchase.recorded_by,
            purchase.note or "",
        )
        for purchase in bought
    ]
    print(_table(("recorded", "tickets", "by", "note"), rows))
    return EXIT_OK


async def org_credit(
    config: Config, name: str, tickets: str, *, note: str | None = None, by: str = "cli"
) -> int:
    """Record tickets bought by an organisation or a client in none (negative: a correction)."""
    now = datetime.now(UTC)
    async with _database(config):
        try:
            count = parse_tickets(tickets)
            cleaned = clean_note(note or "")
            account = await organisations.account_named(name, now=now, create_client=True)
            await organisations.record_purchase(account, count, cleaned, by=by, now=now)
        except OrgInputError as error:
            return _refused(config, error)
        balance = await balances.balance_of(account)
    print(f"Recorded {count:+d} tickets for {_line(account.name)}; {_balance_line(balance)}.")
    return EXIT_OK
