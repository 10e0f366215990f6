"""The staff side (SPEC §4, R3): 👀 on a card, `!queue`, `!take`, `!ticket`, `!convert`, the
first answer of a staff member in a client's room, and the SLA watcher.

Decisions worth knowing:

* **Taking** (👀 or `!take`) goes through `bot.domain.tickets.take`: it assigns the ticket,
  counts as the first response (R3) and tells the client who took it, by Matrix id only.
  Taking a ticket already assigned to you changes nothing and tells nobody; taking someone
  else's reassigns it (audited with the previous assignee). The 👀 is recorded as a `Reaction`
  row; withdrawing it (a redaction) does not un-assign: the client was already told, and the
  first response stays a fact.
* Reactions count only from staff, in the staff room, on a card the bot posted (found by its
  stored `card_event_id`, so it works after a restart); anything else is ignored silently. A
  refusal (a cancelled ticket, a resolution awaiting acceptance) is answered in the staff room.
* **Rooms** (SPEC §7): `!queue` and `!ticket` show other clients' requests, so they answer only
  in the staff room or in a room whose members are all staff (a direct chat with the bot).
  `!take` and `!convert` also work in the ticket's own room; anywhere else they are refused.
* **Converting** a question keeps the same row (its card, notes, audit and SLA stay with it)
  and gives it a new ticket reference (`ticket_prefix`, year of the conversion), keeping the
  question's reference in `converted_from`.
* **First response**: any staff message (not a command) in a room holding unanswered tickets
  answers them. In a room shared by several clients (a bridged Talk room), a message that
  names some of them (nickname or display name) answers only theirs.
* **SLA watcher**: the warning comes `service.sla_warning_hours` working hours before the due
  time (0 disables it) and is skipped once the deadline has passed (the "missed" notice says
  more); each notice is a `run_job` with a unique key, and the ticket's `sla_warned_at` /
  `sla_missed_at` record it, so neither repeats across sweeps or restarts.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from datetime import datetime

from bot.cards import (
    DESCRIPTION_PREVIEW_CHARS,
    STATUS_LABELS,
    defuse,
    render_queue,
)
from bot.domain.tickets import (
    ACTIVE_STATUSES,
    ENDED_STATUSES,
    Refusal,
    Status,
    convert_to_ticket,
    record_staff_answer,
    take,
)
from bot.events import IncomingReaction
from bot.i18n import N_, NP_, Msg, Translator
from bot.routing import Context, DomainError, Router, Situation
from bot.services import Services
from bot.storage import repo
from bot.storage.models import AuditEntry, Client, Reaction, Ticket, TicketNote
from handlers.common import (
    bridged_nick,
    card_parts,
    change,
    refresh_card,
    staff_private,
    staff_ticket,
    tell_client,
)

log = logging.getLogger(__name__)

router = Router("staff")

TAKE_KEY = "👀"
#: How much of `!ticket` history is shown.
AUDIT_LINES = 10
NOTES_SHOWN = 10
NOTE_PREVIEW_CHARS = 1000
#: `!ticket` sends a long description in parts of this size (a Matrix event is at most 64 KiB).
DESCRIPTION_PART_CHARS = 4000
# Statuses in which a staff answer to the client still counts (R3).
_ANSWERABLE = frozenset(Status) - ENDED_STATUSES - {Status.CLOSED}

TAKEN_CLIENT = N_("{staff} from the support team has taken your request {ref}.")
TAKEN_STAFF = N_("{ref} is now assigned to you.")
ALREADY_YOURS = N_("{ref} is already assigned to you.")
CONVERTED_STAFF = N_("{old} is now the ticket {ref}.")
CONVERTED_CLIENT = N_(
    "Your feasibility question {old} needs work from the support team: it is now the ticket "
    "{ref}, handled and billed in tickets under the service terms."
)
NOT_HERE = N_(
    "Please use this command in the staff room: other people can read this room, and it "
    "shows other clients' requests."
)
SLA_WARNING = NP_(
    "⚠️ {ref} is due {due} (in {n} working hour) and nobody has answered yet.",
    "⚠️ {ref} is due {due} (in {n} working hours) and nobody has answered yet.",
)
SLA_MISSED = N_("🚨 SLA missed for {ref}: it was due {due} and nobody has answered yet.")
NOTES_TITLE = N_("Client notes:")
NO_NOTES = N_("No notes from the client.")
NOTE_LINE = N_("{when} · {author}: {text}")
HISTORY_TITLE = N_("Recent history:")
HISTORY_LINE = N_("{when} · {actor} · {action}")
HISTORY_LINE_STATUS = N_("{when} · {actor} · {action} ({before} → {after})")
DESCRIPTION_PART = N_("Full description of {ref} ({part}/{parts}):")


# --- Taking ----------------------------------------------------------------------------------


@router.reaction(TAKE_KEY)
async def take_by_reaction(ctx: Context) -> None:
    event = ctx.event
    if not isinstance(event, IncomingReaction):
        return
    if not (ctx.is_staff and ctx.in_staff_room):
        return  # not staff, a bridge, or not on a card: silently nothing
    ticket = await Ticket.get_or_none(card_event_id=event.target_event_id)
    if ticket is None:
        return
    await Reaction.create(
        event_id=event.event_id,
        room_id=event.room_id,
        target_event_id=event.target_event_id,
        sender=ctx.sender.user_id,
        key=TAKE_KEY,
        at=ctx.now,
    )
    await _take(ctx, await _locked(ticket.id), via="reaction")


@router.command(
    "take",
    help=N_("Take a request: it is assigned to you and the client is told."),
    usage="SP-…",
    staff=True,
)
async def take_command(ctx: Context) -> None:
    ticket = await _locked((await staff_ticket(ctx)).id)
    _require_room(ctx, ticket)
    if await _take(ctx, ticket, via="command"):
        _staff_reply(ctx, Msg(TAKEN_STAFF, {"ref": ticket.ref}))
    else:
        _staff_reply(ctx, Msg(ALREADY_YOURS, {"ref": ticket.ref}))


async def _take(ctx: Context, ticket: Ticket, *, via: str) -> bool:
    """Assign `ticket` to the sender; False when it was already theirs (nothing done)."""
    staff = ctx.sender.user_id
    state = repo.ticket_state(ticket)
    previous = ticket.assigned_to
    result = take(state, staff, ctx.now)
    if previous == staff and result == state:
        return False
    detail = f"{via}; reassigned from {previous}" if previous and previous != staff else via
    await change(ctx, ticket, result, action="taken", detail=detail, actor=staff)
    await tell_client(ctx, ticket, Msg(TAKEN_CLIENT, {"staff": staff, "ref": ticket.ref}))
    return True


# --- First response (R3) ---------------------------------------------------------------------


@router.text(Situation.STAFF_IN_CLIENT_ROOM)
async def staff_answer(ctx: Context) -> None:
    """A staff member wrote in a client's room: their unanswered tickets there are answered."""
    tickets = (
        await Ticket.filter(
            room_id=ctx.room_id,
            first_response_at=None,
            status__in=[str(status) for status in _ANSWERABLE],
        )
        .select_related("client")
        .order_by("created_at", "id")
    )
    for found in _addressed(tickets, ctx.args, ctx.room_id):
        ticket = await _locked(found.id)
        if ticket.first_response_at is not None:
            continue  # answered meanwhile (a 👀 in the staff room)
        result = record_staff_answer(repo.ticket_state(ticket), ctx.now)
        await change(ctx, ticket, result, action="first_response", actor=ctx.sender.user_id)


def _addressed(tickets: Sequence[Ticket], text: str, room_id: str) -> Sequence[Ticket]:
    """The tickets a message answers: in a room with several clients, those it names if any."""
    clients = {ticket.client.pk for ticket in tickets}
    if len(clients) <= 1:
        return tickets
    lowered = text.casefold()

    def named(ticket: Ticket) -> bool:
        client: Client = ticket.client
        names = (bridged_nick(client.key, room_id), client.display_name)
        return any(name and name.casefold() in lowered for name in names)

    chosen = [ticket for ticket in tickets if named(ticket)]
    return chosen or tickets


# --- Queue, show, convert --------------------------------------------------------------------


@router.command(
    "queue", help=N_("Show the open work: overdue first, then by answer due time."), staff=True
)
async def show_queue(ctx: Context) -> None:
    _require_room(ctx)
    tickets = await repo.queue(ctx.now)
    plain, markup = render_queue(tickets, ctx.services.staff_tr(), ctx.tz, ctx.now)
    ctx.reply(plain, html_body=markup)


@router.command(
    "ticket",
    help=N_("Show a request: its card, the client's notes and its recent history."),
    usage="SP-…",
    staff=True,
)
async def show_ticket(ctx: Context) -> None:
    _require_room(ctx)
    ticket = await staff_ticket(ctx)
    tr = ctx.services.staff_tr()
    card_plain, card_html = await card_parts(ctx, ticket)
    notes = await TicketNote.filter(ticket_id=ticket.pk).order_by("-at", "-id").limit(NOTES_SHOWN)
    audit = await AuditEntry.filter(ticket_id=ticket.pk).order_by("-at", "-id").limit(AUDIT_LINES)

    note_lines = [
        _line(
            ctx,
            tr,
            NOTE_LINE,
            when=note.at,
            author=defuse(_author(note.author_key, ticket)),
            text=defuse(_preview(note.text, NOTE_PREVIEW_CHARS)),
        )
        for note in reversed(notes)
    ]
    history = [_history_line(ctx, tr, entry) for entry in reversed(audit)]
    sections = [(tr.gettext(NOTES_TITLE), note_lines or [tr.gettext(NO_NOTES)])]
    if history:
        sections.append((tr.gettext(HISTORY_TITLE), history))

    plain = [card_plain]
    markup = [card_html]
    for title, lines in sections:
        plain += ["", title, *(f"• {line}" for line in lines)]
        markup.append(
            f"<p><b>{html.escape(title)}</b></p><ul>"
            + "".join(f"<li>{html.escape(line)}</li>" for line in lines)
            + "</ul>"
        )
    ctx.reply("\n".join(plain), html_body="".join(markup))

    description = ticket.description.strip()
    if len(description) > DESCRIPTION_PREVIEW_CHARS:
        # The card shows a preview; the full text follows in parts that fit in an event.
        parts = [
            description[start : start + DESCRIPTION_PART_CHARS]
            for start in range(0, len(description), DESCRIPTION_PART_CHARS)
        ]
        for number, part in enumerate(parts, start=1):
            title = ctx.render(
                Msg(DESCRIPTION_PART, {"ref": ticket.ref, "part": number, "parts": len(parts)}),
                tr,
            )
            ctx.reply(f"{title}\n{defuse(part)}")


@router.command(
    "convert",
    help=N_("Turn a feasibility question into a billed ticket."),
    usage="Q-…",
    staff=True,
)
async def convert(ctx: Context) -> None:
    ticket = await _locked((await staff_ticket(ctx, example="Q-2026-0007")).id)
    _require_room(ctx, ticket)
    result = convert_to_ticket(repo.ticket_state(ticket))
    if isinstance(result, Refusal):
        raise DomainError(result.msg)
    old = ticket.ref
    year = ctx.services.calendar.local(ctx.now).year
    ticket.ref = await repo.allocate_ref(ctx.services.config.service.ticket_prefix, year)
    ticket.converted_from = old
    await ticket.save(update_fields=["ref", "converted_from"])
    await change(
        ctx,
        ticket,
        result,
        action="converted",
        detail=f"{old} → {ticket.ref}",
        actor=ctx.sender.user_id,
    )
    await tell_client(ctx, ticket, Msg(CONVERTED_CLIENT, {"old": old, "ref": ticket.ref}))
    _staff_reply(ctx, Msg(CONVERTED_STAFF, {"old": old, "ref": ticket.ref}))


# --- SLA watcher -----------------------------------------------------------------------------


async def watch_sla(services: Services, now: datetime) -> None:
    """Warn the staff room before an SLA deadline, and say when it was missed (each once)."""
    dispatcher = services.jobs
    room = services.staff_room_id()
    if dispatcher is None or room is None:
        return
    lead = services.config.service.sla_warning_hours
    tickets = await Ticket.filter(
        status__in=[str(status) for status in ACTIVE_STATUSES],
        sla_due__not_isnull=True,
        first_response_at=None,
        sla_missed_at=None,
    ).order_by("sla_due", "id")
    for ticket in tickets:
        due = ticket.sla_due
        assert due is not None
        if now > due:
            await dispatcher.run_job(
                f"sla-missed:{ticket.id}", _sla_missed(ticket.id), room_id=room
            )
        elif (
            lead > 0
            and ticket.sla_warned_at is None
            and now >= services.calendar.subtract_business_hours(due, lead)
        ):
            await dispatcher.run_job(
                f"sla-warn:{ticket.id}", _sla_warning(ticket.id), room_id=room
            )


def _unanswered(ticket: Ticket | None) -> Ticket | None:
    """The ticket if staff still owe it a first answer (re-read inside the job)."""
    if ticket is None or ticket.sla_due is None or ticket.first_response_at is not None:
        return None
    return ticket if Status(ticket.status) in ACTIVE_STATUSES else None


def _sla_warning(ticket_id: int):
    async def job(ctx: Context) -> None:
        ticket = _unanswered(await _locked(ticket_id))
        if ticket is None or ticket.sla_warned_at is not None:
            return
        due = ticket.sla_due
        assert due is not None
        hours = max(1, round(ctx.services.calendar.business_hours_between(ctx.now, due)))
        ctx.send_staff(Msg(SLA_WARNING[0], {"ref": ticket.ref, "due": due}, SLA_WARNING[1], hours))
        ticket.sla_warned_at = ctx.now
        await ticket.save(update_fields=["sla_warned_at"])
        await repo.audit(
            ticket, ctx.sender.key, "sla_warning", ticket.status, ticket.status, at=ctx.now
        )
        await refresh_card(ctx, ticket)

    return job


def _sla_missed(ticket_id: int):
    async def job(ctx: Context) -> None:
        ticket = _unanswered(await _locked(ticket_id))
        if ticket is None or ticket.sla_missed_at is not None:
            return
        ctx.send_staff(Msg(SLA_MISSED, {"ref": ticket.ref, "due": ticket.sla_due}))
        ticket.sla_missed_at = ctx.now
        await ticket.save(update_fields=["sla_missed_at"])
        await repo.audit(
            ticket, ctx.sender.key, "sla_missed", ticket.status, ticket.status, at=ctx.now
        )
        await refresh_card(ctx, ticket)

    return job


SWEEPERS = [watch_sla]


# --- Helpers ---------------------------------------------------------------------------------


async def _locked(ticket_id: int) -> Ticket:
    """The ticket row, locked until the handler's transaction ends (PostgreSQL; SQLite
    serialises writers anyway): two staff members taking at once are decided one by one."""
    return await Ticket.filter(id=ticket_id).select_for_update().get()


def _require_room(ctx: Context, ticket: Ticket | None = None) -> None:
    if staff_private(ctx) or (ticket is not None and ticket.room_id == ctx.room_id):
        return
    raise DomainError(Msg(NOT_HERE))


def _staff_reply(ctx: Context, msg: Msg) -> None:
    """Answers to staff read in the staff room's language there, in the sender's elsewhere."""
    ctx.reply(ctx.render(msg, ctx.services.staff_tr()) if ctx.in_staff_room else msg)


def _line(ctx: Context, tr: Translator, msgid: str, **params: object) -> str:
    return ctx.render(Msg(msgid, params), tr)


def _history_line(ctx: Context, tr: Translator, entry: AuditEntry) -> str:
    actor = entry.actor
    services = ctx.services
    if actor != services.bot_user_id() and not services.identity.is_staff_user(actor):
        actor = defuse(actor)  # a client's id or nickname: shown, never a pill
    if entry.from_status and entry.to_status and entry.from_status != entry.to_status:
        return _line(
            ctx,
            tr,
            HISTORY_LINE_STATUS,
            when=entry.at,
            actor=actor,
            action=entry.action,
            before=_status(tr, entry.from_status),
            after=_status(tr, entry.to_status),
        )
    return _line(ctx, tr, HISTORY_LINE, when=entry.at, actor=actor, action=entry.action)


def _status(tr: Translator, value: str) -> str:
    try:
        return tr.gettext(STATUS_LABELS[Status(value)])
    except ValueError:
        return value


def _author(key: str, ticket: Ticket) -> str:
    client: Client = ticket.client
    if key == client.key:
        return client.display_name or bridged_nick(key, ticket.room_id) or key
    return key


def _preview(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit].rstrip() + "…"
