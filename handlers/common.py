"""What several handler modules share: staff cards, audited state changes, telling a client."""

from __future__ import annotations

import logging
import re

from bot.cards import card_view, render_card
from bot.dispatch import Context, DomainError
from bot.domain.bridge import bridged_nick
from bot.domain.tickets import Refusal, Status, TicketState
from bot.i18n import N_, Msg, Translator
from bot.ports import TransportError
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
