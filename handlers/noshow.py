"""No-shows (issue #16 §3): staff mark a client who did not join a booked call.

Staff: 🚫 on a call's staff-room message (the booking, the move, the ⏰ reminder: each says
so), or `!noshow REF` (`!absent`). The pure decision (when a call can be marked) and what it
bills are `bot.domain.calls`.

Decisions worth knowing:

* **Which message.** The booking side tags every staff-room message about a call
  `call:<booking id>` (`handlers.meetings.tell_staff_about_call`); the latest one's event id
  is `Booking.staff_event_id`, and an earlier one is found through its outbox row (tagged
  rows keep their event id when the outbox is pruned). A 🚫 on the message of a call that was
  moved or cancelled since is refused with the reason; anyone but current staff, or outside
  the staff room, is ignored.
* **Recorded on the ticket**: `Booking.no_show_at` / `no_show_by` and an audit entry
  (`no_show`); the card shows it, the monthly report counts it.
* **The client is told** in their language that the call was missed and how to book a new
  time (`!book REF`, while the ticket can still have a call), and whether it is billed.
* **Billing** (`service.no_show_billed`): when on, 45 minutes are logged on the ticket by the
  staff member who marked it, through `!log`'s own work (`LogTime`, `handlers.billing`); when
  the lifecycle refuses time on the ticket, the no-show is still recorded, unbilled, and
  staff are told why.
"""

from __future__ import annotations

from datetime import UTC

from bot.domain import tickets as lifecycle
from bot.domain.calls import NO_SHOW_MINUTES, CallState, no_show
from bot.domain.tickets import Refusal
from bot.events import IncomingReaction
from bot.i18n import N_, Msg
from bot.routing import Context, DomainError, Router
from bot.storage import repo
from bot.storage.models import Booking, OutboxItem, Ticket
from handlers.common import locked, locked_staff_ticket, refresh_card, tell_client
from handlers.effects import LogTime
from handlers.meetings import CALL_TAG, call_kind, is_bookable

__all__ = ["router"]

router = Router("noshow")

NO_SHOW_KEYS = ("🚫",)

# -- messages -----------------------------------------------------------------------------------

_REFUSED = N_("No-show on {ref} refused: {reason}")
_MOVED = N_("This call was moved or cancelled since; mark the current one (!noshow {ref}).")
_MARKED_STAFF = N_(
    "🚫 {ref}: {staff} marked the {kind} of {when} as a no-show; the client has been told."
)
_NOT_BILLED_STAFF = N_("It is not billed: {reason}")
_MISSED_CLIENT = N_("You did not join the {kind} of {when} for {ref}.")
_MISSED_BILLED_CLIENT = N_("As the service terms provide, the missed call counts as one ticket.")
_BOOK_AGAIN_CLIENT = N_("To choose a new time, type !book {ref}")
_NOTE = N_("no-show: the client did not join the call")


@router.command(
    "noshow",
    "absent",
    help=N_("Mark that the client did not join the booked call of a ticket."),
    usage="SP-…",
    staff=True,
)
async def noshow_command(ctx: Context) -> None:
    ticket = await locked_staff_ticket(ctx)
    await _mark(ctx, ticket, await repo.active_booking(ticket))


@router.reaction(*NO_SHOW_KEYS)
async def noshow_reaction(ctx: Context) -> None:
    """🚫 by staff, in the staff room, on a message about a call."""
    event = ctx.event
    assert isinstance(event, IncomingReaction)
    if not ctx.in_staff_room or not ctx.is_staff:
        return
    booking = await _call_of_message(event.target_event_id)
    if booking is None:
        return
    ticket = await locked(booking.ticket_id)  # type: ignore[attr-defined]
    current = await repo.active_booking(ticket)
    if current is None or current.id != booking.id:
        reason = Msg(_MOVED, {"ref": ticket.ref})
        raise DomainError(Msg(_REFUSED, {"ref": ticket.ref, "reason": reason}))
    await _mark(ctx, ticket, current)


async def _call_of_message(event_id: str) -> Booking | None:
    """The booking whose staff-room message is `event_id`: the latest one (its column), or
    an earlier one (its outbox row's tag)."""
    booking = await Booking.get_or_none(staff_event_id=event_id)
    if booking is not None:
        return booking
    sent = await OutboxItem.filter(event_id=event_id, on_sent__startswith=CALL_TAG).first()
    if sent is None or sent.on_sent is None:
        return None
    booking_id = sent.on_sent[len(CALL_TAG) :]
    return await Booking.get_or_none(id=int(booking_id)) if booking_id.isdigit() else None


async def _mark(ctx: Context, ticket: Ticket, booking: Booking | None) -> None:
    call = None
    if booking is not None:
        call = CallState(booking.start, booking.no_show_at, booking.no_show_by)
    refusal = no_show(call, ctx.now)
    if refusal is not None:
        raise DomainError(Msg(_REFUSED, {"ref": ticket.ref, "reason": refusal.msg}))
    assert booking is not None  # `no_show` refuses a missing call
    staff = ctx.sender.user_id
    booking.no_show_at, booking.no_show_by = ctx.now, staff
    await booking.save(update_fields=["no_show_at", "no_show_by"])
    start = booking.start.astimezone(UTC).isoformat()
    await repo.audit(ticket, staff, "no_show", ticket.status, ticket.status, start, at=ctx.now)
    kind = call_kind(ticket)
    ctx.send_staff(
        Msg(
            _MARKED_STAFF, {"ref": ticket.ref, "staff": staff, "kind": kind, "when": booking.start}
        )
    )
    billed = False
    if ctx.services.config.service.no_show_billed:
        decision = lifecycle.log_time(repo.ticket_state(ticket), NO_SHOW_MINUTES, ctx.now)
        if isinstance(decision, Refusal):
            ctx.send_staff(Msg(_NOT_BILLED_STAFF, {"reason": decision.msg}))
        else:
            note = ctx.render(Msg(_NOTE), ctx.services.staff_tr())
            await ctx.emit(LogTime(ticket.id, NO_SHOW_MINUTES, staff, note))  # refreshes the card
            billed = True
    if not billed:
        await refresh_card(ctx, ticket)
    parts = [Msg(_MISSED_CLIENT, {"kind": kind, "when": booking.start, "ref": ticket.ref})]
    if billed:
        parts.append(Msg(_MISSED_BILLED_CLIENT))
    if is_bookable(await Ticket.get(id=ticket.id)):
        parts.append(Msg(_BOOK_AGAIN_CLIENT, {"ref": ticket.ref}))
    await tell_client(ctx, ticket, *parts)
