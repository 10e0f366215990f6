"""Calls by appointment, the client's side (part of SPEC R4–R6, §5): slot offers, choosing one
by number or keycap, the atomic booking, `!book` / `!unbook`, and cancelling a call when its
ticket ends (the `OfferSlots` and `FreeCall` effects). What follows a booking (meeting link,
`.ics` invitation, reminders) is `handlers.meetings`; the staff's `!slots`, `!block`,
`!unblock` and `!calendar` are `handlers.calendar`.

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
* **Missed calls.** A booking marked as a no-show (`handlers.noshow`) stays in the history as
  it was: `!book` then offers times as for a new call (not a move of the missed one), and
  neither a new booking nor `!unbook` cancels it. Every staff-room message about a call is
  tagged `call:<booking id>` and says how to mark a no-show.
* **Rooms that gain members.** Everything for the client goes through `ClientOut`, which
  checks the ticket's room when it is loaded (`handlers.common.client_room`): once others have
  joined, the offer, the booking with its link and the `.ics` go to the client's private room,
  and the shared room only learns that they moved.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q
from tortoise.transactions import in_transaction

from bot.domain.slots import Busy, Slot, free_slots, parse_slot_choice
from bot.events import IncomingReaction
from bot.i18n import N_, NP_, Msg
from bot.routing import Context, DomainError, Router, Situation
from bot.services import Services
from bot.storage import repo
from bot.storage.models import Block, Booking, Reminder, SlotOffer, Ticket
from handlers.common import ACTIVE_BOOKING, client_ticket, refresh_card, staff_ticket
from handlers.effects import FreeCall, OfferSlots
from handlers.meetings import (
    SEQ_BOOKED,
    SEQ_CANCELLED,
    ClientOut,
    attach_meeting,
    call_kind,
    end_meetings,
    is_bookable,
    schedule_reminders,
    send_invitation,
    send_reminders,
    staff_time,
    tell_staff_about_call,
)
from handlers.state import offer_chosen_from

log = logging.getLogger(__name__)

router = Router("booking")

KEYCAPS = ("1️⃣", "2️⃣", "3️⃣", "4️⃣", "5️⃣")
CANCELLED = repo.CANCELLED_BOOKING
R4_BUSINESS_DAYS = 3
#: A slot picked later than this before its start is refused (offers can be days old).
LATE_PICK = timedelta(hours=1)

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
BOOKED_STAFF = N_("📅 {ref}: {kind} booked for {when}–{end} with {staff}. Moderator link: {link}")
MOVED_STAFF = N_(
    "📅 {ref}: {kind} moved from {old} to {when}–{end} with {staff}. Moderator link: {link}"
)
BOOKED_STAFF_NO_LINK = N_(
    "📅 {ref}: {kind} booked for {when}–{end} with {staff}. ⚠️ No meeting link ({error}): "
    "the client was told it will follow; I will try again."
)
UNBOOK_CLIENT = N_(
    "Your call of {when} for {ref} is cancelled. Type !book {ref} to choose a new time."
)
UNBOOK_STAFF = N_("🗑 {ref}: the call of {when} with {staff} is cancelled ({who}).")
NO_BOOKING = N_("{ref} has no booked call.")
OFFER_SENT_STAFF = N_("New times for {ref} were sent to the client.")
OFFER_SENT_ELSEWHERE = N_("I sent the times for {ref} in the room of that request.")


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


def _staff_when(ctx: Context, moment: datetime) -> str:
    return ctx.services.staff_tr().format_datetime_long(moment, ctx.tz)


async def _busy(now: datetime) -> list[Busy]:
    """Booked calls and blocks that still matter for slots after `now`."""
    busy = [
        Busy(b.staff, b.start, b.end, "booking")
        for b in await Booking.filter(status=ACTIVE_BOOKING, end__gt=now)
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
    if not is_bookable(ticket):
        log.warning("no slots offered for %s: not an open call ticket", ticket.ref)
        return
    services = ctx.services
    config = services.config.service
    out = await ClientOut.load(ctx, ticket)
    current = await repo.active_booking(ticket)
    if current is not None and current.no_show_at is not None:
        current = None  # missed: a new time is a new call, not a move of that one
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
                    {"kind": call_kind(ticket), "ref": ticket.ref, "when": current.start},
                )
            )
        )
    else:
        params = {"kind": call_kind(ticket), "ref": ticket.ref, "minutes": config.slot_minutes}
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
    if not is_bookable(ticket):
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
                status=ACTIVE_BOOKING,
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
            status=ACTIVE_BOOKING,
            staff=slot.staff,
            start__lt=slot.end + buffer,
            end__gt=slot.start - buffer,
        )
        .exclude(ticket_id=ticket.id)
        .exists()
    )


async def _refuse_and_reoffer(ctx: Context, ticket: Ticket, text: str) -> None:
    out = await ClientOut.load(ctx, ticket)
    out.send(Msg(text))
    await offer_slots(ctx, ticket)


async def _cancel_active(ticket: Ticket) -> list[Booking]:
    """Cancel the ticket's active bookings (frees their slots, drops their reminders); a call
    the client missed stays as it was (`handlers.noshow`)."""
    bookings = list(
        await Booking.filter(ticket_id=ticket.id, status=ACTIVE_BOOKING, no_show_at=None)
    )
    for booking in bookings:
        booking.status = CANCELLED
        booking.slot_lock = None
        await booking.save(update_fields=["status", "slot_lock"])
        await Reminder.filter(booking_id=booking.id).delete()
    return bookings


# --- after booking: meeting, invitation, reminders, staff -----------------------------------


async def _after_booking(
    ctx: Context, ticket: Ticket, booking: Booking, replaced: list[Booking]
) -> None:
    services = ctx.services
    minutes = services.config.service.slot_minutes
    error = await attach_meeting(services, ticket, booking)
    await schedule_reminders(ctx, booking)

    out = await ClientOut.load(ctx, ticket)
    params: dict[str, Any] = {
        "kind": call_kind(ticket),
        "ref": ticket.ref,
        "when": booking.start,
        "minutes": minutes,
    }
    if booking.client_url:
        out.send(Msg(BOOKED_CLIENT, {**params, "link": booking.client_url}))
    else:
        out.send(Msg(BOOKED_CLIENT_NO_LINK, params))
    await send_invitation(ctx, out, booking, SEQ_BOOKED)

    staff_params: dict[str, Any] = {
        "ref": ticket.ref,
        "kind": call_kind(ticket),
        "when": booking.start,
        "end": staff_time(ctx, booking.end),
        "staff": booking.staff,
    }
    if booking.staff_url is None:
        staff_msg = Msg(BOOKED_STAFF_NO_LINK, {**staff_params, "error": error or "?"})
    elif replaced:
        old = _staff_when(ctx, replaced[-1].start)
        staff_msg = Msg(MOVED_STAFF, {**staff_params, "old": old, "link": booking.staff_url})
    else:
        staff_msg = Msg(BOOKED_STAFF, {**staff_params, "link": booking.staff_url})
    tell_staff_about_call(ctx, staff_msg, ticket, booking)

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
    if not is_bookable(ticket):
        raise DomainError(Msg(NOT_BOOKABLE, {"ref": ticket.ref}))
    room_id = ticket.room_id  # before the offer: a room that gained members moves it
    await offer_slots(ctx, ticket)
    if staff_side:
        ctx.reply(Msg(OFFER_SENT_STAFF, {"ref": ticket.ref}))
    elif room_id != ctx.room_id:
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
    if booking is None or booking.no_show_at is not None:  # a missed call is not cancelled
        raise DomainError(Msg(NO_BOOKING, {"ref": ticket.ref}))
    room_id = ticket.room_id  # before telling the client: a room that gained members moves it
    await cancel_call(ctx, ticket, actor=ctx.sender.key)
    if not staff_side and ctx.room_id != room_id:
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
        out = await ClientOut.load(ctx, ticket)
        out.send(Msg(UNBOOK_CLIENT, {"ref": ticket.ref, "when": booking.start}))
        await send_invitation(ctx, out, booking, SEQ_CANCELLED, cancelled=True)
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


# Reminders, late meeting links and the end of meetings no longer needed: handlers.meetings
SWEEPERS = [send_reminders, end_meetings]
