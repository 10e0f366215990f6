"""Calls by appointment (SPEC R4–R6, §5): slot offers, atomic booking, meeting links, `.ics`
invitations, persisted reminders, and the staff side (`!slots`, `!block`, `!unblock`,
`!calendar`).

Decisions worth knowing:

* **Offers.** `offer_slots` stores a `SlotOffer` row (the slots as JSON, UTC) and sends the
  numbered list; the message's event id is remembered at delivery (`on_sent`), so a keycap
  reaction on it still finds the offer after a restart. A new offer for a ticket retires the
  previous ones. The window is `deadline(created_at, 3)` (R4); when nothing is free inside it the
  first slots after it are offered and the staff room is told about the SLA risk. A reschedule
  (the ticket already had a booking) counts 3 business days from now instead: moving a call on
  the client's request is not an SLA failure.
* **Choosing.** A bare number 1–5 (or a keycap typed as text) in the ticket's room acts only when
  the sender has an active offer there and no unfinished intake conversation (intake steps also
  take numbers): the situation `SLOT_CHOICE` of `handlers.state`. Keycap reactions act only on
  the offer message and only from its client.
  Bridged rooms are told to type the number (reactions are not relayed).
* **Atomic booking.** `Booking.slot_lock = "<staff>|<UTC start>"` is unique: the insert runs in a
  savepoint, and a unique violation means someone else got the slot first; the client is told
  and gets fresh slots. Blocks and overlapping calls are also checked before the insert (the
  constraint covers the common case, identical grid times, under any concurrency).
* **Rescheduling** (`!book` again, or staff `!book` in the staff room) sends a new offer and
  keeps the current call until a new time is chosen; then, in the same savepoint as the new
  insert, the old booking is cancelled (`slot_lock` NULL, reminders deleted), so a failed swap
  changes nothing. `!unbook` cancels the call and frees its slot.
* **Meeting link.** Created with the booking (title "Support SP-…", neutral names). If the
  provider fails (or none is configured) the booking stays, staff get the error key, the client
  is told the link will follow; the reminder sweeper retries every few minutes and sends the
  link and an updated invitation when it works.
* **Invitation.** One UID per ticket's call (`support-call-<ref>@<host>`), its SEQUENCE raised
  on every change, so calendars move the event instead of adding one.
* **Reminders** are `Reminder` rows (one per `service.reminder_offsets_minutes` still in the
  future), each sent through `run_job("reminder:<id>")`: exactly once across sweeps and restarts.
  When several are due at once (the bot was down), only the nearest is sent; none once the call
  has started. Reminders within an hour of the call also `prepare()` the meeting (BigBlueButton
  forgets idle meetings) and give staff their link again.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q
from tortoise.transactions import in_transaction

from bot.calendar_ics import invitation_ics
from bot.cards import CHANNEL_LABELS
from bot.dispatch import Context, DomainError, Router, Situation
from bot.domain.bridge import bridged_nick
from bot.domain.slots import (
    Busy,
    Slot,
    SlotInputError,
    free_slots,
    parse_block,
    parse_slot_choice,
)
from bot.domain.tickets import ACTIVE_STATUSES, Channel, Kind, Status
from bot.events import IncomingReaction
from bot.i18n import N_, NP_, Msg, Translator
from bot.services import Services
from bot.storage import repo
from bot.storage.models import (
    Block,
    Booking,
    BotState,
    Client,
    Reminder,
    SlotOffer,
    Ticket,
)
from bot.video import Meeting, VideoError
from handlers.common import (
    client_ticket,
    client_translator,
    invite_back,
    refresh_card,
    staff_private,
    staff_ticket,
)
from handlers.effects import FreeCall, OfferSlots
from handlers.state import offer_chosen_from

log = logging.getLogger(__name__)

router = Router("booking")

KEYCAPS = ("1️⃣", "2️⃣", "3️⃣", "4️⃣", "5️⃣")
ACTIVE = "active"
CANCELLED = repo.CANCELLED_BOOKING
R4_BUSINESS_DAYS = 3
CALL_CHANNELS = frozenset({Channel.VIDEO, Channel.PHONE})
#: A slot picked later than this before its start is refused (offers can be days old).
LATE_PICK = timedelta(hours=1)
#: Reminders this close to the call also prepare the meeting and remind staff.
PREPARE_WITHIN_MINUTES = 60
#: How often a missing meeting link is asked for again.
LINK_RETRY = timedelta(minutes=5)
ALARM_MINUTES = 15

# --- messages (English msgids) ---------------------------------------------------------------

OFFER_HEAD = N_("To book your {kind} for {ref} ({minutes} minutes), choose a time:")
OFFER_HEAD_MOVE = N_(
    "Your {kind} for {ref} is booked for {when}. To move it, choose a new time (your current "
    "booking stays until you choose):"
)
OFFER_LATE = N_(
    "Sorry: no time is free within our usual three business days (by {deadline}). Here are "
    "the first free times after that:"
)
OFFER_HOW = N_(
    "Answer with the number of the time you want, or react to this message with its keycap "
    "(1️⃣…). Type !book {ref} for new times."
)
OFFER_HOW_BRIDGED = N_(
    "Answer with the number of the time you want (for example: 1). Type !book {ref} for new times."
)
NO_SLOTS_CLIENT = N_(
    "No time is free for a call about {ref} at the moment: the support team has been told and "
    "will come back to you with a time."
)
NO_SLOTS_STAFF = N_(
    "🚨 {ref}: no call slot is free, not even after the deadline {deadline}. Free some time "
    "(!slots, !unblock) and send new times with !book {ref}."
)
LATE_STAFF = N_(
    "⚠️ SLA risk for {ref}: no call slot is free before {deadline} (3 business days); the "
    "client was offered later times, the first on {first}."
)
CHOOSE_RANGE = NP_(
    "Please answer with the number of a time from the list: 1.",
    "Please answer with the number of a time from the list: 1 to {n}.",
)
OFFER_OUTDATED = N_(
    "This list of times is out of date: please use the latest one, or type !book {ref} for "
    "new times."
)
SLOT_TAKEN = N_("Sorry, this time was just taken by someone else. Here are new times:")
SLOT_TOO_LATE = N_("Sorry, this time is now too close to be booked. Here are new times:")
NOT_BOOKABLE = N_("{ref} has no call to book: only open video or phone tickets are booked.")
BOOKED_CLIENT = N_(
    "Your {kind} for {ref} is booked for {when} ({minutes} minutes). Join with this link: {link}"
)
BOOKED_CLIENT_NO_LINK = N_(
    "Your {kind} for {ref} is booked for {when} ({minutes} minutes). The link to join will "
    "follow shortly."
)
ICS_BODY = N_("Invitation for your calendar: {ref}")
SUMMARY = N_("Support call {ref}")
ICS_DESCRIPTION = N_("Support call {ref} ({minutes} minutes). Join: {link}")
BOOKED_STAFF = N_("📅 {ref}: {kind} booked for {when}–{end} with {staff}. Moderator link: {link}")
MOVED_STAFF = N_(
    "📅 {ref}: {kind} moved from {old} to {when}–{end} with {staff}. Moderator link: {link}"
)
BOOKED_STAFF_NO_LINK = N_(
    "📅 {ref}: {kind} booked for {when}–{end} with {staff}. ⚠️ No meeting link ({error}): "
    "the client was told it will follow; I will try again."
)
LINK_FOLLOWS_CLIENT = N_("Here is the link for your {kind} of {when} ({ref}): {link}")
LINK_FOLLOWS_STAFF = N_("🔗 {ref}: the meeting of {when} now exists. Moderator link: {link}")
REMIND_DAY = N_("Reminder: your {kind} for {ref} is on {when}. Join with this link: {link}")
REMIND_SOON = N_(
    "Your {kind} for {ref} starts at {time}, in {minutes} minutes. Join with this link: {link}"
)
REMIND_NO_LINK = N_(
    "Reminder: your {kind} for {ref} is on {when}. The support team will send you the link."
)
REMIND_STAFF = N_("⏰ {ref}: call at {time} with {staff}. Moderator link: {link}")
REMIND_STAFF_NO_LINK = N_("⏰ {ref}: call at {time} with {staff}, but it has no meeting link.")
PREPARE_FAILED = N_(
    "⚠️ {ref}: the meeting of {when} could not be prepared ({error}). Check the video service."
)
UNBOOK_CLIENT = N_(
    "Your call of {when} for {ref} is cancelled. Type !book {ref} to choose a new time."
)
UNBOOK_STAFF = N_("🗑 {ref}: the call of {when} with {staff} is cancelled ({who}).")
NO_BOOKING = N_("{ref} has no booked call.")
OFFER_SENT_STAFF = N_("New times for {ref} were sent to the client.")
OFFER_SENT_ELSEWHERE = N_("I sent the times for {ref} in the room of that request.")
SLOTS_CALLS = N_("Upcoming calls:")
SLOTS_NO_CALLS = N_("No upcoming calls.")
SLOTS_CALL_LINE = N_("• {when}–{end} · {ref} · {staff}")
SLOTS_BLOCKS = N_("Blocked periods (!unblock <number> to remove one):")
SLOTS_NO_BLOCKS = N_("No blocked periods.")
SLOTS_BLOCK_LINE = N_("• #{id} · {start} → {end} · {who}")
EVERYONE = N_("everyone")
BLOCKED = N_("Blocked #{id}: {start} → {end} for {who}. Undo with !unblock {id}.")
BLOCK_OVERLAPS = N_(
    "These calls fall in that period and are still booked (move them with !book or cancel "
    "them with !unbook): {calls}"
)
BLOCK_UNKNOWN_STAFF = N_("{staff} has no availability in the configuration.")
BLOCK_PAST = N_("This period is already over.")
UNBLOCK_USAGE = N_("Please give the number of the blocked period, for example: !unblock 3")
UNBLOCK_UNKNOWN = N_("There is no blocked period #{id}. !slots lists them.")
UNBLOCKED = N_("Blocked period #{id} removed.")
CALENDAR_DM = N_(
    "Your calendar of support calls, to subscribe to in your calendar application (keep this "
    "link private; !calendar again gives a new one and disables this one): {url}"
)
CALENDAR_SENT = N_("I sent you the link of your calendar in a direct message.")
CALENDAR_NO_SECRET = N_("Calendar feeds need [web] secret in the configuration.")
DM_NAME = N_("Support calls")
NOT_HERE = N_("Please use this command in the staff room: it shows other clients' requests.")


# --- small helpers ---------------------------------------------------------------------------


def slot_lock(staff: str, start: datetime) -> str:
    """The unique key of a booked slot: one call per staff member and start instant."""
    return f"{staff}|{start.astimezone(UTC).isoformat()}"


def _slot_json(slot: Slot) -> dict[str, str]:
    return {
        "staff": slot.staff,
        "start": slot.start.astimezone(UTC).isoformat(),
        "end": slot.end.astimezone(UTC).isoformat(),
    }


def _slot_from_json(data: dict[str, Any]) -> Slot:
    return Slot(
        str(data["staff"]),
        datetime.fromisoformat(str(data["start"])),
        datetime.fromisoformat(str(data["end"])),
    )


parse_choice = parse_slot_choice  # the grammar lives with the slots


def _keycap_number(key: str) -> int | None:
    normalized = key.replace("\ufe0f", "")
    for index, keycap in enumerate(KEYCAPS, start=1):
        if keycap.replace("\ufe0f", "") == normalized:
            return index
    return None


def _kind(ticket: Ticket) -> Msg:
    return Msg(CHANNEL_LABELS[Channel(ticket.channel)])


def _bookable(ticket: Ticket) -> bool:
    return (
        ticket.kind == Kind.TICKET
        and ticket.channel in CALL_CHANNELS
        and Status(ticket.status) in ACTIVE_STATUSES
    )


def _host(services: Services) -> str:
    return urlsplit(services.config.web.public_url).hostname or "support-bot"


def _video_booking_id(ticket: Ticket, booking: Booking) -> str:
    return f"{ticket.ref}-{booking.id}"


def _title(ticket: Ticket) -> str:
    return f"Support {ticket.ref}"


class _ClientOut:
    """Writing to a ticket's client: their room, language, and nickname behind a bridge."""

    def __init__(self, ctx: Context, ticket: Ticket, client: Client, tr: Translator):
        self.ctx = ctx
        self.ticket = ticket
        self.client = client
        self.tr = tr
        self.nick = bridged_nick(client.key, ticket.room_id)  # behind a bridge: plain text

    @classmethod
    async def load(cls, ctx: Context, ticket: Ticket) -> _ClientOut:
        client = await Client.get(id=ticket.client_id)  # type: ignore[attr-defined]
        return cls(ctx, ticket, client, await client_translator(ctx, ticket))

    @property
    def bridged(self) -> bool:
        return self.nick is not None

    def render(self, msg: Msg) -> str:
        return self.tr.render(msg, self.ctx.tz)

    def when(self, moment: datetime) -> str:
        return self.tr.format_datetime_long(moment, self.ctx.tz)

    def send(self, text: str | Msg, *, on_sent: str | None = None) -> None:
        self.ctx.to_client(self.ticket.room_id, self.client.key, text, tr=self.tr, on_sent=on_sent)

    def send_file(self, data: bytes, filename: str, body: str) -> None:
        self.ctx.send_file(self.ticket.room_id, data, filename, "text/calendar", body)


def _staff_when(ctx: Context, moment: datetime) -> str:
    return ctx.services.staff_tr().format_datetime_long(moment, ctx.tz)


def _staff_time(ctx: Context, moment: datetime) -> str:
    return ctx.services.staff_tr().format_time(moment, ctx.tz)


async def _busy(now: datetime) -> list[Busy]:
    """Booked calls and blocks that still matter for slots after `now`."""
    busy = [
        Busy(b.staff, b.start, b.end, "booking")
        for b in await Booking.filter(status=ACTIVE, end__gt=now)
    ]
    busy += [Busy(b.staff, b.start, b.end, "block") for b in await Block.filter(end__gt=now)]
    return busy


async def is_slot_choice(room_id: str, client_key: str, text: str) -> bool:
    """Whether `text` is this client's answer to a pending slot offer."""
    return await offer_chosen_from(room_id, client_key, text) is not None


# --- offering --------------------------------------------------------------------------------


async def offer_slots(ctx: Context, ticket: Ticket) -> None:
    """Offer up to `service.slots_offered` call slots for `ticket` to its client (R4, §5).

    Runs inside the caller's transaction (the intake right after opening the ticket, `!book`,
    or a booking that lost its slot).
    """
    if not _bookable(ticket):
        log.warning("no slots offered for %s: not an open call ticket", ticket.ref)
        return
    services = ctx.services
    config = services.config.service
    out = await _ClientOut.load(ctx, ticket)
    current = await repo.active_booking(ticket)
    rebooking = current is not None or await Booking.filter(ticket_id=ticket.id).exists()
    received = ctx.now if rebooking else ticket.created_at
    window_end = services.calendar.deadline(received, R4_BUSINESS_DAYS)
    offer = free_slots(
        now=ctx.now,
        availability=services.config.availability,
        busy=await _busy(ctx.now),
        is_business_day=services.calendar.is_business_day,
        tz=ctx.tz,
        window_end=window_end,
        slot_minutes=config.slot_minutes,
        buffer_minutes=config.slot_buffer_minutes,
        min_notice=timedelta(hours=config.min_notice_hours),
        count=max(1, min(config.slots_offered, len(KEYCAPS))),
    )
    await SlotOffer.filter(ticket_id=ticket.id, active=True).update(active=False)
    if not offer.slots:
        out.send(Msg(NO_SLOTS_CLIENT, {"ref": ticket.ref}))
        ctx.send_staff(Msg(NO_SLOTS_STAFF, {"ref": ticket.ref, "deadline": window_end}))
        await repo.audit(
            ticket, ctx.sender.key, "no_slots", ticket.status, ticket.status, at=ctx.now
        )
        return
    row = await SlotOffer.create(
        ticket=ticket,
        slots=[_slot_json(slot) for slot in offer.slots],
        created_at=ctx.now,
        active=True,
    )
    lines: list[str] = []
    if current is not None:
        lines.append(
            out.render(
                Msg(
                    OFFER_HEAD_MOVE,
                    {"kind": _kind(ticket), "ref": ticket.ref, "when": current.start},
                )
            )
        )
    else:
        params = {"kind": _kind(ticket), "ref": ticket.ref, "minutes": config.slot_minutes}
        lines.append(out.render(Msg(OFFER_HEAD, params)))
    if not offer.within_window:
        lines.append(out.render(Msg(OFFER_LATE, {"deadline": window_end})))
    lines += [f"{KEYCAPS[n]} {out.when(slot.start)}" for n, slot in enumerate(offer.slots)]
    how = OFFER_HOW_BRIDGED if out.bridged else OFFER_HOW
    lines.append(out.render(Msg(how, {"ref": ticket.ref})))
    out.send("\n".join(lines), on_sent=f"slot_offer:{row.id}")
    if not offer.within_window and not rebooking:
        ctx.send_staff(
            Msg(
                LATE_STAFF,
                {"ref": ticket.ref, "deadline": window_end, "first": offer.slots[0].start},
            )
        )
    await repo.audit(
        ticket,
        ctx.sender.key,
        "slots_offered",
        ticket.status,
        ticket.status,
        f"{len(offer.slots)} slot(s){'' if offer.within_window else ', after the R4 window'}",
        at=ctx.now,
    )


# --- choosing --------------------------------------------------------------------------------


@router.text(Situation.SLOT_CHOICE)
async def choose_by_number(ctx: Context) -> None:
    """A client answers an offer with its number (the only way in bridged rooms)."""
    if ctx.state is not None:
        offer = ctx.state.found  # the router found it
    else:
        offer = await offer_chosen_from(ctx.room_id, ctx.sender.key, ctx.args)
    number = parse_slot_choice(ctx.args)
    if offer is None or number is None:
        return
    await _choose(ctx, offer, number)


@router.reaction(*KEYCAPS)
async def choose_by_reaction(ctx: Context) -> None:
    """A client reacts to the offer message with a keycap."""
    event = ctx.event
    if not isinstance(event, IncomingReaction):
        return
    number = _keycap_number(event.key)
    offer = (
        await SlotOffer.filter(event_id=event.target_event_id)
        .select_related("ticket__client")
        .first()
    )
    if number is None or offer is None or offer.ticket.client.key != ctx.sender.key:
        return  # not an offer, or not this person's: ignored
    if not offer.active:
        ctx.reply(Msg(OFFER_OUTDATED, {"ref": offer.ticket.ref}))
        return
    await _choose(ctx, offer, number)


async def _choose(ctx: Context, offer: SlotOffer, number: int) -> None:
    ticket = await Ticket.get(id=offer.ticket_id)  # type: ignore[attr-defined]
    slots = list(offer.slots)
    if not 1 <= number <= len(slots):
        n = len(slots)
        raise DomainError(Msg(CHOOSE_RANGE[0], {}, CHOOSE_RANGE[1], n))
    if not _bookable(ticket):
        offer.active = False
        await offer.save(update_fields=["active"])
        ctx.reply(Msg(NOT_BOOKABLE, {"ref": ticket.ref}))
        return
    slot = _slot_from_json(slots[number - 1])
    if slot.start - ctx.now < LATE_PICK:
        await _refuse_and_reoffer(ctx, ticket, SLOT_TOO_LATE)
        return
    if await _conflicts(slot, ticket, ctx.services):
        await _refuse_and_reoffer(ctx, ticket, SLOT_TAKEN)
        return
    try:
        # A savepoint: losing the slot to a concurrent booking must not abort the event's
        # transaction (the client is then told and offered new times).
        async with in_transaction():
            replaced = await _cancel_active(ticket)
            booking = await Booking.create(
                ticket=ticket,
                staff=slot.staff,
                start=slot.start,
                end=slot.end,
                slot_lock=slot_lock(slot.staff, slot.start),
                status=ACTIVE,
                created_at=ctx.now,
            )
    except IntegrityError:
        await _refuse_and_reoffer(ctx, ticket, SLOT_TAKEN)
        return
    await SlotOffer.filter(ticket_id=ticket.id, active=True).update(active=False)
    await _after_booking(ctx, ticket, booking, replaced)


async def _conflicts(slot: Slot, ticket: Ticket, services: Services) -> bool:
    """A block, or another ticket's call too close to it, appeared since the offer was made.

    Only a courtesy check (it is not atomic): the unique `slot_lock` is the guarantee.
    """
    buffer = timedelta(minutes=services.config.service.slot_buffer_minutes)
    blocked = await Block.filter(
        Q(staff=slot.staff) | Q(staff__isnull=True), start__lt=slot.end, end__gt=slot.start
    ).exists()
    if blocked:
        return True
    return (
        await Booking.filter(
            status=ACTIVE,
            staff=slot.staff,
            start__lt=slot.end + buffer,
            end__gt=slot.start - buffer,
        )
        .exclude(ticket_id=ticket.id)
        .exists()
    )


async def _refuse_and_reoffer(ctx: Context, ticket: Ticket, text: str) -> None:
    out = await _ClientOut.load(ctx, ticket)
    out.send(Msg(text))
    await offer_slots(ctx, ticket)


async def _cancel_active(ticket: Ticket) -> list[Booking]:
    """Cancel the ticket's active bookings (frees their slots, drops their reminders)."""
    bookings = list(await Booking.filter(ticket_id=ticket.id, status=ACTIVE))
    for booking in bookings:
        booking.status = CANCELLED
        booking.slot_lock = None
        await booking.save(update_fields=["status", "slot_lock"])
        await Reminder.filter(booking_id=booking.id).delete()
    return bookings


# --- after booking: meeting, invitation, reminders, staff -----------------------------------


async def _create_meeting(
    services: Services, ticket: Ticket, booking: Booking
) -> tuple[Meeting | None, str | None]:
    """The meeting of a booking, or (None, error key) — never raises for the provider."""
    video = services.video
    if video is None:
        return None, "notConfigured"
    try:
        meeting = await video.create_meeting(
            booking_id=_video_booking_id(ticket, booking),
            title=_title(ticket),
            start=booking.start,
            minutes=services.config.service.slot_minutes,
            staff_name="Support",
            client_name="Client",
        )
    except VideoError as error:
        log.warning("meeting for booking %s not created: %s", booking.id, error.key)
        return None, error.key
    return meeting, None


def _store_meeting(booking: Booking, meeting: Meeting) -> list[str]:
    booking.provider = meeting.provider
    booking.meeting_id = meeting.meeting_id
    booking.client_url = meeting.client_url
    booking.staff_url = meeting.staff_url
    return ["provider", "meeting_id", "client_url", "staff_url"]


def meeting_of(booking: Booking, ticket: Ticket, minutes: int) -> Meeting | None:
    """The stored meeting of a booking, as `VideoProvider.prepare` wants it."""
    if not booking.meeting_id or not booking.provider:
        return None
    return Meeting(
        provider=booking.provider,
        meeting_id=booking.meeting_id,
        client_url=booking.client_url or "",
        staff_url=booking.staff_url or "",
        extra=MappingProxyType(
            {
                "name": _title(ticket),
                "booking_id": _video_booking_id(ticket, booking),
                "start": booking.start.isoformat(),
                "minutes": minutes,
            }
        ),
    )


async def _invitation(
    ctx: Context,
    out: _ClientOut,
    booking: Booking,
    *,
    sequence: int,
    cancelled: bool = False,
) -> None:
    """Upload the `.ics` of the ticket's call to the client's room."""
    services = ctx.services
    ticket = out.ticket
    name, address = parseaddr(services.config.mail.from_)
    attendee = ticket.email or out.client.email
    minutes = services.config.service.slot_minutes
    link = booking.client_url or ""
    description = out.render(
        Msg(ICS_DESCRIPTION, {"ref": ticket.ref, "minutes": minutes, "link": link or "—"})
    )
    try:
        data = invitation_ics(
            uid=f"support-call-{ticket.ref.lower()}@{_host(services)}",
            start=booking.start,
            end=booking.end,
            tz_name=services.config.service.timezone,
            summary=out.render(Msg(SUMMARY, {"ref": ticket.ref})),
            description=description,
            location_url=link,
            organizer_email=address or "support@localhost",
            organizer_name=name or "Support",
            attendee_email=attendee or None,
            alarm_minutes=ALARM_MINUTES,
            now=ctx.now,
            sequence=sequence,
            cancelled=cancelled,
        )
    except ValueError:
        # An address or link a calendar cannot carry: no file rather than a broken one.
        log.warning("no invitation for booking %s: unusable address or link", booking.id)
        return
    out.send_file(
        data, f"support-{ticket.ref}.ics", out.render(Msg(ICS_BODY, {"ref": ticket.ref}))
    )


# SEQUENCE of the call's invitation (one UID per ticket): three steps per booking, so every
# later change of the same call carries a higher number than every earlier one.
SEQ_BOOKED, SEQ_LINK, SEQ_CANCELLED = 0, 1, 2


async def _sequence(ticket: Ticket, step: int) -> int:
    return 3 * (await Booking.filter(ticket_id=ticket.id).count() - 1) + step


async def _after_booking(
    ctx: Context, ticket: Ticket, booking: Booking, replaced: list[Booking]
) -> None:
    services = ctx.services
    minutes = services.config.service.slot_minutes
    meeting, error = await _create_meeting(services, ticket, booking)
    if meeting is not None:
        await booking.save(update_fields=_store_meeting(booking, meeting))
    for offset in services.config.service.reminder_offsets_minutes:
        due = booking.start - timedelta(minutes=offset)
        if due > ctx.now:
            await Reminder.create(booking=booking, offset_minutes=offset, due_at=due)

    out = await _ClientOut.load(ctx, ticket)
    params: dict[str, Any] = {
        "kind": _kind(ticket),
        "ref": ticket.ref,
        "when": booking.start,
        "minutes": minutes,
    }
    if booking.client_url:
        out.send(Msg(BOOKED_CLIENT, {**params, "link": booking.client_url}))
    else:
        out.send(Msg(BOOKED_CLIENT_NO_LINK, params))
    await _invitation(ctx, out, booking, sequence=await _sequence(ticket, SEQ_BOOKED))

    staff_params: dict[str, Any] = {
        "ref": ticket.ref,
        "kind": _kind(ticket),
        "when": booking.start,
        "end": _staff_time(ctx, booking.end),
        "staff": booking.staff,
    }
    if booking.staff_url is None:
        ctx.send_staff(Msg(BOOKED_STAFF_NO_LINK, {**staff_params, "error": error or "?"}))
    elif replaced:
        old = _staff_when(ctx, replaced[-1].start)
        ctx.send_staff(Msg(MOVED_STAFF, {**staff_params, "old": old, "link": booking.staff_url}))
    else:
        ctx.send_staff(Msg(BOOKED_STAFF, {**staff_params, "link": booking.staff_url}))

    detail = f"{booking.start.astimezone(UTC).isoformat()} {booking.staff}"
    if replaced:
        detail += f" (was {replaced[-1].start.astimezone(UTC).isoformat()})"
    await repo.audit(
        ticket,
        ctx.sender.key,
        "rebooked" if replaced else "booked",
        ticket.status,
        ticket.status,
        detail,
        at=ctx.now,
    )
    await refresh_card(ctx, ticket)


# --- client commands: !book, !unbook ---------------------------------------------------------


@router.command(
    "book",
    "rdv",
    help=N_("Book or move the call of a video or phone ticket."),
    usage="SP-…",
)
async def book(ctx: Context) -> None:
    staff_side = ctx.is_staff and ctx.in_staff_room
    ticket = await (staff_ticket(ctx) if staff_side else client_ticket(ctx))
    if not _bookable(ticket):
        raise DomainError(Msg(NOT_BOOKABLE, {"ref": ticket.ref}))
    await offer_slots(ctx, ticket)
    if staff_side:
        ctx.reply(Msg(OFFER_SENT_STAFF, {"ref": ticket.ref}))
    elif ticket.room_id != ctx.room_id:
        ctx.reply(Msg(OFFER_SENT_ELSEWHERE, {"ref": ticket.ref}))


@router.command(
    "unbook",
    "annuler-rdv",
    help=N_("Cancel the booked call of a ticket (the ticket stays open)."),
    usage="SP-…",
)
async def unbook(ctx: Context) -> None:
    staff_side = ctx.is_staff and ctx.in_staff_room
    ticket = await (staff_ticket(ctx) if staff_side else client_ticket(ctx))
    booking = await repo.active_booking(ticket)
    if booking is None:
        raise DomainError(Msg(NO_BOOKING, {"ref": ticket.ref}))
    await cancel_call(ctx, ticket, actor=ctx.sender.key)
    if not staff_side and ctx.room_id != ticket.room_id:
        ctx.reply(Msg(UNBOOK_CLIENT, {"ref": ticket.ref, "when": booking.start}))


@router.effect(OfferSlots)
async def on_offer_slots(ctx: Context, effect: OfferSlots) -> None:
    await offer_slots(ctx, await Ticket.get(id=effect.ticket_id))


@router.effect(FreeCall)
async def on_free_call(ctx: Context, effect: FreeCall) -> None:
    await cancel_call(ctx, await Ticket.get(id=effect.ticket_id), actor=effect.actor)


async def cancel_call(
    ctx: Context, ticket: Ticket, *, actor: str, tell_client: bool = True
) -> bool:
    """Cancel the ticket's booked call: slot freed, reminders dropped, offers retired, client
    (optionally) and staff told, card refreshed. For other modules too (a ticket that ends
    frees its call). Returns False when there was no call."""
    cancelled = await _cancel_active(ticket)
    await SlotOffer.filter(ticket_id=ticket.id, active=True).update(active=False)
    if not cancelled:
        return False
    booking = cancelled[-1]
    if tell_client:
        out = await _ClientOut.load(ctx, ticket)
        out.send(Msg(UNBOOK_CLIENT, {"ref": ticket.ref, "when": booking.start}))
        await _invitation(
            ctx, out, booking, sequence=await _sequence(ticket, SEQ_CANCELLED), cancelled=True
        )
    ctx.send_staff(
        Msg(
            UNBOOK_STAFF,
            {"ref": ticket.ref, "when": booking.start, "staff": booking.staff, "who": actor},
        )
    )
    await repo.audit(
        ticket,
        actor,
        "booking_cancelled",
        ticket.status,
        ticket.status,
        booking.start.astimezone(UTC).isoformat(),
        at=ctx.now,
    )
    await refresh_card(ctx, ticket)
    return True


# --- staff commands --------------------------------------------------------------------------


@router.command(
    "slots",
    "creneaux",
    help=N_("List the upcoming calls and the blocked periods."),
    staff=True,
)
async def show_slots(ctx: Context) -> None:
    if not staff_private(ctx):
        raise DomainError(Msg(NOT_HERE))
    tr = ctx.tr
    bookings = (
        await Booking.filter(status=ACTIVE, end__gt=ctx.now)
        .select_related("ticket")
        .order_by("start", "id")
    )
    blocks = await Block.filter(end__gt=ctx.now).order_by("start", "id")
    lines = [tr.render(Msg(SLOTS_CALLS if bookings else SLOTS_NO_CALLS), ctx.tz)]
    for booking in bookings:
        params = {
            "when": booking.start,
            "end": tr.format_time(booking.end, ctx.tz),
            "ref": booking.ticket.ref,
            "staff": booking.staff,
        }
        lines.append(tr.render(Msg(SLOTS_CALL_LINE, params), ctx.tz))
    lines.append("")
    lines.append(tr.render(Msg(SLOTS_BLOCKS if blocks else SLOTS_NO_BLOCKS), ctx.tz))
    for block in blocks:
        who = block.staff or tr.gettext(EVERYONE)
        params = {"id": str(block.id), "start": block.start, "end": block.end, "who": who}
        lines.append(tr.render(Msg(SLOTS_BLOCK_LINE, params), ctx.tz))
    ctx.reply("\n".join(lines))


@router.command(
    "block",
    "bloquer",
    help=N_("Block a period for calls (everyone, or one staff member)."),
    usage="[@staff] 2026-12-03 14:00-16:00",
    staff=True,
)
async def block(ctx: Context) -> None:
    words = ctx.args.split()
    staff: str | None = None
    if words and words[0].startswith("@"):
        staff, words = words[0], words[1:]
        known = {window.staff for window in ctx.services.config.availability}
        if staff not in known:
            raise DomainError(Msg(BLOCK_UNKNOWN_STAFF, {"staff": staff}))
    try:
        start, end = parse_block(" ".join(words), ctx.tz)
    except SlotInputError as error:
        raise DomainError(error.msg) from None
    if end <= ctx.now:
        raise DomainError(Msg(BLOCK_PAST))
    row = await Block.create(
        staff=staff, start=start, end=end, created_by=ctx.sender.user_id, created_at=ctx.now
    )
    who = staff or ctx.tr.gettext(EVERYONE)
    lines = [
        ctx.tr.render(
            Msg(BLOCKED, {"id": str(row.id), "start": start, "end": end, "who": who}), ctx.tz
        )
    ]
    overlapping = Booking.filter(status=ACTIVE, start__lt=end, end__gt=start)
    if staff is not None:
        overlapping = overlapping.filter(staff=staff)
    calls = await overlapping.select_related("ticket").order_by("start")
    if calls:
        listed = ", ".join(
            f"{b.ticket.ref} ({ctx.tr.format_datetime_long(b.start, ctx.tz)})" for b in calls
        )
        lines.append(ctx.tr.render(Msg(BLOCK_OVERLAPS, {"calls": listed}), ctx.tz))
    ctx.reply("\n".join(lines))


@router.command(
    "unblock",
    "debloquer",
    help=N_("Remove a blocked period (its number is in !slots)."),
    usage="N",
    staff=True,
)
async def unblock(ctx: Context) -> None:
    value = ctx.args.strip().lstrip("#")
    if not value.isdigit():
        raise DomainError(Msg(UNBLOCK_USAGE))
    if not re.fullmatch(r"[0-9]{1,9}", value):  # "²" is a digit too; ids fit 9 digits
        raise DomainError(Msg(UNBLOCK_UNKNOWN, {"id": value}))
    deleted = await Block.filter(id=int(value)).delete()
    if not deleted:
        raise DomainError(Msg(UNBLOCK_UNKNOWN, {"id": value}))
    ctx.reply(Msg(UNBLOCKED, {"id": value}))


@router.command(
    "calendar",
    "calendrier",
    help=N_("Get the private calendar feed (.ics) of your calls, in a direct message."),
    staff=True,
)
async def calendar(ctx: Context) -> None:
    services = ctx.services
    secret = services.config.web.secret
    if not secret:
        raise DomainError(Msg(CALENDAR_NO_SECRET))
    staff = ctx.sender.user_id
    token = await _issue_feed_token(staff, secret, ctx.now)
    url = f"{services.config.web.public_url.rstrip('/')}/calendar/{token}.ics"
    room = await _direct_room(ctx, staff)
    ctx.send(room, Msg(CALENDAR_DM, {"url": url}))
    if room != ctx.room_id:
        ctx.reply(Msg(CALENDAR_SENT))


async def _issue_feed_token(staff: str, secret: str, now: datetime) -> str:
    try:
        from bot.web.app import issue_staff_feed_token
    except ImportError:  # pragma: no cover - the web module provides it
        return await _own_feed_token(staff, secret, now)
    return await issue_staff_feed_token(staff, secret, now)


async def _own_feed_token(staff: str, secret: str, now: datetime) -> str:  # pragma: no cover
    from bot.storage.models import StaffFeed
    from bot.web.tokens import new_token, token_hash

    token = new_token()
    async with in_transaction():
        await StaffFeed.filter(staff=staff).delete()
        await StaffFeed.create(staff=staff, token_hash=token_hash(token, secret), created_at=now)
    return token


def _dm_key(user_id: str) -> str:
    return "staff-dm:" + hashlib.sha256(user_id.encode()).hexdigest()[:48]


async def _direct_room(ctx: Context, user_id: str) -> str:
    """The bot's direct room with a staff member: the one remembered, or a new one."""
    transport = ctx.services.transport
    key = _dm_key(user_id)
    state = await BotState.get_or_none(key=key)
    if state is not None:
        await invite_back(ctx, state.value, user_id)
        return state.value
    room = await transport.create_room(
        name=ctx.tr.gettext(DM_NAME), invite=[user_id], is_direct=True, encrypted=False
    )
    await BotState.update_or_create(defaults={"value": room}, key=key)
    return room


# --- reminders and late links (the sweeper) --------------------------------------------------

Job = Callable[[Context], Awaitable[None]]


async def send_reminders(services: Services, now: datetime) -> None:
    """Send due reminders (each once: `run_job("reminder:<id>")`) and retry missing links."""
    dispatcher = services.jobs
    if dispatcher is None:
        return
    await _retry_links(services, now)
    due = (
        await Reminder.filter(sent_at=None, due_at__lte=now, booking__status=ACTIVE)
        .select_related("booking__ticket")
        .order_by("due_at", "id")
    )
    for reminder in due:
        ticket: Ticket = reminder.booking.ticket
        await dispatcher.run_job(
            f"reminder:{reminder.id}",
            _remind(reminder.id),
            room_id=ticket.room_id,
            locale=ticket.locale,
        )


def _remind(reminder_id: int) -> Job:
    async def job(ctx: Context) -> None:
        reminder = await Reminder.get_or_none(id=reminder_id, sent_at=None)
        if reminder is None:
            return
        reminder.sent_at = ctx.now
        await reminder.save(update_fields=["sent_at"])
        booking = await Booking.get(id=reminder.booking_id)  # type: ignore[attr-defined]
        if booking.status != ACTIVE or ctx.now >= booking.start:
            return  # cancelled, or the bot was down until the call: nothing useful to say
        nearer = await Reminder.filter(
            booking_id=booking.id,
            sent_at=None,
            due_at__lte=ctx.now,
            offset_minutes__lt=reminder.offset_minutes,
        ).exists()
        if nearer:
            return  # several due at once (downtime): only the nearest is sent
        ticket = await Ticket.get(id=booking.ticket_id)  # type: ignore[attr-defined]
        if not _bookable(ticket):
            return  # the ticket ended without its call being cancelled: no reminder
        await _send_reminder(ctx, ticket, booking, reminder)

    return job


async def _send_reminder(
    ctx: Context, ticket: Ticket, booking: Booking, reminder: Reminder
) -> None:
    services = ctx.services
    out = await _ClientOut.load(ctx, ticket)
    soon = reminder.offset_minutes <= PREPARE_WITHIN_MINUTES
    minutes_left = max(1, round((booking.start - ctx.now).total_seconds() / 60))
    params: dict[str, Any] = {"kind": _kind(ticket), "ref": ticket.ref, "when": booking.start}
    if booking.client_url is None:
        out.send(Msg(REMIND_NO_LINK, params))
    elif soon:
        params.update(
            time=out.tr.format_time(booking.start, ctx.tz),
            minutes=minutes_left,
            link=booking.client_url,
        )
        out.send(Msg(REMIND_SOON, params))
    else:
        out.send(Msg(REMIND_DAY, {**params, "link": booking.client_url}))
    if not soon:
        return
    staff_params = {
        "ref": ticket.ref,
        "time": _staff_time(ctx, booking.start),
        "staff": booking.staff,
    }
    if booking.staff_url:
        ctx.send_staff(Msg(REMIND_STAFF, {**staff_params, "link": booking.staff_url}))
    else:
        ctx.send_staff(Msg(REMIND_STAFF_NO_LINK, staff_params))
    meeting = meeting_of(booking, ticket, services.config.service.slot_minutes)
    video = services.video
    if meeting is None or video is None or video.name != meeting.provider:
        return
    try:
        await video.prepare(meeting)
    except VideoError as error:
        log.warning("meeting of booking %s not prepared: %s", booking.id, error.key)
        ctx.send_staff(
            Msg(PREPARE_FAILED, {"ref": ticket.ref, "when": booking.start, "error": error.key})
        )


async def _retry_links(services: Services, now: datetime) -> None:
    """Bookings still without a meeting link: ask the provider again (every LINK_RETRY; the
    next try is a column, so a restart neither forgets nor hurries it)."""
    if services.video is None or services.jobs is None:
        return
    bookings = await (
        Booking.filter(status=ACTIVE, client_url=None, start__gt=now)
        .filter(Q(link_retry_at__isnull=True) | Q(link_retry_at__lte=now))
        .select_related("ticket")
    )
    for booking in bookings:
        await Booking.filter(id=booking.id).update(link_retry_at=now + LINK_RETRY)
        meeting, _ = await _create_meeting(services, booking.ticket, booking)
        if meeting is None:
            continue
        await services.jobs.run_job(
            f"meeting-link:{booking.id}",
            _link_follows(booking.id, meeting),
            room_id=booking.ticket.room_id,
            locale=booking.ticket.locale,
        )


def _link_follows(booking_id: int, meeting: Meeting) -> Job:
    async def job(ctx: Context) -> None:
        booking = await Booking.get_or_none(id=booking_id, status=ACTIVE, client_url=None)
        if booking is None:
            return
        booking.link_retry_at = None
        await booking.save(update_fields=[*_store_meeting(booking, meeting), "link_retry_at"])
        ticket = await Ticket.get(id=booking.ticket_id)  # type: ignore[attr-defined]
        out = await _ClientOut.load(ctx, ticket)
        out.send(
            Msg(
                LINK_FOLLOWS_CLIENT,
                {
                    "kind": _kind(ticket),
                    "when": booking.start,
                    "ref": ticket.ref,
                    "link": meeting.client_url,
                },
            )
        )
        await _invitation(ctx, out, booking, sequence=await _sequence(ticket, SEQ_LINK))
        ctx.send_staff(
            Msg(
                LINK_FOLLOWS_STAFF,
                {"ref": ticket.ref, "when": booking.start, "link": meeting.staff_url},
            )
        )
        await repo.audit(
            ticket, "system", "meeting_created", ticket.status, ticket.status, at=ctx.now
        )

    return job


SWEEPERS = [send_reminders]
