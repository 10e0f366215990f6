"""What several handler modules share: staff cards, audited state changes, telling a client."""

from __future__ import annotations

import logging
import re

from bot.cards import card_view, render_card
from bot.domain.bridge import bridged_nick
from bot.domain.tickets import Refusal, Status, TicketState
from bot.i18n import N_, NP_, Msg, Translator
from bot.ports import TransportError
from bot.routing import Context, DomainError
from bot.storage import repo
from bot.storage.models import Booking, Client, Ticket
from handlers.effects import FreeCall

__all__ = ["bridged_nick"]  # re-exported for the handler modules

log = logging.getLogger(__name__)

REF_RE = re.compile(r"\b([A-Za-z]{1,10}-\d{4}-\d{4,})\b")

NOT_FOUND = N_("I could not find {ref} among your requests. Type !tickets to list them.")
STAFF_NOT_FOUND = N_("No ticket, question or quote request has the reference {ref}.")
NEED_REF = N_("Please give the reference, for example: !{command} {example}")


def find_ref(text: str) -> str | None:
    match = REF_RE.search(text)
    return match.group(1).upper() if match else None


async def card_parts(ctx: Context, ticket: Ticket) -> tuple[str, str]:
    client = await Client.get(id=ticket.client_id)  # type: ignore[attr-defined]
    booking = await repo.active_booking(ticket)
    return render_card(card_view(ticket, client, booking), ctx.services.staff_tr(), ctx.tz)


async def post_card(ctx: Context, ticket: Ticket) -> None:
    plain, html = await card_parts(ctx, ticket)
    ctx.send_staff(plain, html_body=html, on_sent=f"card:{ticket.id}")


async def refresh_card(ctx: Context, ticket: Ticket) -> None:
    """Edit the staff card in place (resolved at delivery, so a card still in the outbox works)."""
    room = ctx.services.staff_room_id()
    if room is None:
        return
    plain, html = await card_parts(ctx, ticket)
    ctx.edit(room, f"card:{ticket.id}", plain, html)


async def change(
    ctx: Context,
    ticket: Ticket,
    result: TicketState | Refusal,
    *,
    action: str,
    detail: str | None = None,
    actor: str | None = None,
) -> TicketState:
    """Apply a lifecycle decision: refuse it to the user, or save + audit + refresh the card."""
    if isinstance(result, Refusal):
        raise DomainError(result.msg)
    before = ticket.status
    changed = repo.apply_state(ticket, result)
    ticket.version += 1
    await ticket.save(update_fields=[*changed, "version"])
    await repo.audit(
        ticket,
        actor or ctx.sender.key,
        action,
        before,
        ticket.status,
        detail,
        at=ctx.now,
    )
    if ticket.status in FREES_CALL and before != ticket.status:
        await _free_future_call(ctx, ticket)
    await refresh_card(ctx, ticket)
    return result


# A ticket that ends this way no longer needs the call it booked: its slot goes back.
FREES_CALL = frozenset({Status.CANCELLED, Status.DECLINED, Status.UNSOLVABLE})


async def _free_future_call(ctx: Context, ticket: Ticket) -> None:
    if await Booking.filter(ticket_id=ticket.id, status="active", start__gt=ctx.now).exists():
        await ctx.emit(FreeCall(ticket.id, actor=ctx.sender.key))  # the booking side's work


async def client_translator(ctx: Context, ticket: Ticket) -> Translator:
    """The client's language: their current choice, else the one of the request."""
    return ctx.services.catalogs.get(await repo.client_locale(ticket))


async def tell_client(
    ctx: Context, ticket: Ticket, *parts: Msg | str, on_sent: str | None = None
) -> None:
    """Write to a ticket's client in their room and language (addressing the nickname
    behind a bridge); several parts make one message, as sentences of one paragraph."""
    client_key = await ticket_client_key(ticket)
    tr = await client_translator(ctx, ticket)
    text = " ".join(ctx.render(part, tr) for part in parts)
    ctx.to_client(ticket.room_id, client_key, text, on_sent=on_sent)


async def ticket_client_key(ticket: Ticket) -> str:
    client = await Client.get(id=ticket.client_id)  # type: ignore[attr-defined]
    return client.key


def staff_private(ctx: Context) -> bool:
    """The staff room, or a room whose members are all staff (and the bot): where other
    clients' requests may be shown."""
    if ctx.in_staff_room:
        return True
    services = ctx.services
    try:
        members = services.transport.joined_members(ctx.room_id)
    except Exception:  # the room may not be synced yet
        return False
    others = members - {services.bot_user_id()}
    return bool(members) and all(services.identity.is_staff_user(user) for user in others)


async def invite_back(ctx: Context, room_id: str, user_id: str) -> None:
    """Invite `user_id` to a room the bot keeps for them unless they are in it (they left, or
    have not accepted yet: the server then refuses, which is fine)."""
    transport = ctx.services.transport
    try:
        await transport.ensure_room(room_id)  # its member list may not be known yet
        if user_id not in transport.joined_members(room_id):
            await transport.invite(room_id, user_id)
    except TransportError as error:
        log.info("re-invite to %s not done: %s", room_id, type(error).__name__)


async def staff_ticket(ctx: Context, example: str = "SP-2026-0042") -> Ticket:
    """The ticket named in a staff command's arguments, or a clear refusal."""
    ref = find_ref(ctx.args)
    if ref is None:
        raise DomainError(Msg(NEED_REF, {"command": ctx.command, "example": example}))
    ticket = await repo.ticket_by_ref(ref)
    if ticket is None:
        raise DomainError(Msg(STAFF_NOT_FOUND, {"ref": ref}))
    return ticket


async def client_ticket(ctx: Context, example: str = "SP-2026-0042") -> Ticket:
    """The client's own ticket named in the arguments; someone else's is "not found"."""
    ref = find_ref(ctx.args)
    if ref is None:
        tickets = await repo.open_tickets_for(ctx.sender.key)
        if len(tickets) == 1:
            return tickets[0]
        raise DomainError(Msg(NEED_REF, {"command": ctx.command, "example": example}))
    ticket = await repo.ticket_for_client(ref, ctx.sender.key)
    if ticket is None:
        raise DomainError(Msg(NOT_FOUND, {"ref": ref}))
    return ticket


# -- shared by the consent, closing and billing modules -----------------------------------------

#: A check mark: a staff member's confirmation on a card, a client's acceptance elsewhere.
CONFIRM_KEYS = ("✅", "✔️")

_TICKETS = NP_("{n} ticket", "{n} tickets")
_BAD_DURATION = N_("{reason} Example: {example}")


def tickets_msg(n: int) -> Msg:
    """The count "{n} ticket(s)", to put in a message's parameters."""
    return Msg(_TICKETS[0], {}, _TICKETS[1], n)


def bad_duration(ctx: Context, ref: str, reason: Msg, sample: str) -> DomainError:
    """The refusal of a duration that does not parse (`reason`, from `rules.DurationError`),
    with the command written right."""
    example = f"!{ctx.command} {ref} {sample}"
    return DomainError(Msg(_BAD_DURATION, {"reason": reason, "example": example}))


def rest_of_args(args: str) -> str:
    """The arguments after the reference."""
    return REF_RE.sub("", args, count=1).strip()


async def locked(ticket_id: int) -> Ticket:
    """The ticket row, locked until the handler's transaction ends (PostgreSQL; SQLite
    serialises writers anyway), so a web confirmation cannot interleave with a decision."""
    return await Ticket.filter(id=ticket_id).select_for_update().get()


async def locked_staff_ticket(ctx: Context) -> Ticket:
    """`staff_ticket`, locked."""
    return await locked((await staff_ticket(ctx)).id)


async def locked_client_ticket(ctx: Context, statuses: frozenset[Status]) -> Ticket:
    """The client's ticket named in the arguments, locked; without a reference, their only
    ticket in one of `statuses`. Someone else's ticket is "not found"."""
    if find_ref(ctx.args) is not None:
        return await locked((await client_ticket(ctx)).id)
    candidates = await Ticket.filter(
        client__key=ctx.sender.key, status__in=[str(s) for s in statuses]
    ).limit(2)
    if len(candidates) == 1:
        return await locked(candidates[0].id)
    raise DomainError(Msg(NEED_REF, {"command": ctx.command, "example": "SP-2026-0042"}))


async def card_ticket(ctx: Context, target: str) -> Ticket | None:
    """The ticket whose card is `target`, locked, for a staff member's reaction in the staff
    room. Anyone else (clients, bridges) gets no answer at all."""
    if not ctx.in_staff_room or not ctx.is_staff:
        return None
    found = await Ticket.get_or_none(card_event_id=target)
    return None if found is None else await locked(found.id)


#: A booking's status while its call stands (`repo.CANCELLED_BOOKING` once it is cancelled);
#: the booking side, the staff calendar and the meetings all filter on it.
ACTIVE_BOOKING = "active"
