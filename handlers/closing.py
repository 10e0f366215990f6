"""How a request ends: declined, resolved and accepted, warranty, unsolvable (SPEC §2
R11–R13; §4).

Staff: `!resolve`, `!unsolvable`, `!refuse-warranty`, and ❌ on a ticket's card (decline).
Clients: `!accept` (or ✅ on the "resolved" message), `!notsolved`, `!reopen`. The staff ✅ on a
card belongs to `handlers.consent`.

Decisions worth knowing:

* Every state change goes through `handlers.common.change` (audit entry + card refresh).
  Fields the lifecycle does not carry (`resolved_at`, `closed_reason`) are saved beside it.
* The client's ✅ on the "resolved" message is recognised by the message's event id: it is
  sent with `on_sent="resolved:<ticket id>"`, which the outbox records with the event id once
  sent (the deliverer ignores hooks it does not know). Clients behind a bridge type the
  commands instead (SPEC §9).
* The staff reason of `!unsolvable` stays internal (audit, quote request card); the reason of
  `!refuse-warranty` is told to the client (R13).
* A ticket that closes (acceptance, or a warranty rework closed by staff) emits `AskRating`:
  `handlers.satisfaction` asks its client to rate it, once. Its failure never undoes the
  closing (a savepoint).
"""

from __future__ import annotations

from typing import Any

from bot.domain import tickets as lifecycle
from bot.domain.tickets import Channel, Kind, Refusal, Status, TicketState
from bot.events import EMAIL_ROOM, IncomingReaction
from bot.i18n import N_, Msg
from bot.routing import Context, DomainError, Router
from bot.storage import repo
from bot.storage.models import Client, OutboxItem, Ticket
from handlers.common import (
    CONFIRM_KEYS,
    bridged_nick,
    card_ticket,
    change,
    locked,
    locked_client_ticket,
    locked_staff_ticket,
    post_card,
    rest_of_args,
    tell_client,
)
from handlers.common import tickets_msg as _tickets
from handlers.effects import AskRating, ResolutionAnswered

__all__ = ["router"]

router = Router("closing")

DECLINE_KEYS = ("❌",)
RESOLVED_HOOK = "resolved:"

# -- messages -----------------------------------------------------------------------------------

_NEED_REASON = N_("Please give a reason, for example: {example}")

# ❌ on cards
_DECLINE_REFUSED = N_("❌ on {ref} refused: {reason}")
_DECLINED_STAFF = N_("{staff} declined {ref}; the client has been told.")
_DECLINED_CLIENT = N_(
    "We are sorry: the support team cannot take on your request {ref}. It is closed and "
    "nothing is billed for it. If you have a question about this, you can write to us here."
)

# !resolve, !accept, !notsolved
_RESOLVED_STAFF = N_("{ref} is marked as resolved: waiting for the client's acceptance.")
_RESOLVED_CLIENT = N_(
    "The support team considers your request {ref} solved. If it is, type !accept {ref} (or "
    "react ✅ to this message). If something is still wrong, type !notsolved {ref} and tell us "
    "what."
)
_RESOLVED_CLIENT_TYPED = N_(
    "The support team considers your request {ref} solved. If it is, type !accept {ref}. If "
    "something is still wrong, type !notsolved {ref} and tell us what."
)
# A request made by e-mail: commands are not read from mails, a numbered reply is.
_RESOLVED_CLIENT_MAIL = N_(
    "The support team considers your request {ref} solved. If it is, reply to this e-mail "
    "with 1. If something is still wrong, reply with 2 and tell us what."
)
_ACCEPTED_CLIENT = N_(
    "Thank you! {ref} is closed. The adaptations made are guaranteed until {warranty_until}: "
    "if the problem comes back before then, type !reopen {ref}."
)
_ACCEPTED_CLIENT_MAIL = N_(
    "Thank you! {ref} is closed. The adaptations made are guaranteed until {warranty_until}: "
    "if the problem comes back before then, reply to this e-mail with 2 and tell us what."
)
_ACCEPTED_CLIENT_NO_WARRANTY = N_("Thank you! {ref} is closed.")
_ACCEPTED_STAFF = N_("The client accepted the resolution of {ref}: closed, warranty until {when}.")
_ACCEPTED_STAFF_NO_WARRANTY = N_("The client accepted the resolution of {ref}: closed.")
_NOT_SOLVED_CLIENT = N_(
    "Noted: {ref} is back with the support team. Please tell us here what is still wrong."
)
_NOT_SOLVED_STAFF = N_("The client says {ref} is not solved: it is back in progress.")

# !reopen, !refuse-warranty
_REOPENED_CLIENT = N_(
    "{ref} is reopened under the warranty, at no extra ticket. Please describe here what is "
    "wrong again; the support team has been told."
)
_REOPENED_STAFF = N_(
    "The client reopened {ref} under the warranty (no new ticket). If it is not covered "
    "(software update, hardware or hosting limits, changes made by others), refuse it: "
    "!refuse-warranty {ref} <reason>"
)
_REOPEN_TOO_LATE = N_(
    "{reason} To open a new ticket, simply describe the problem in a message: I will guide you."
)
_WARRANTY_REFUSED_CLIENT = N_(
    "The support team cannot handle {ref} under the warranty: {reason}. The one-week warranty "
    "does not cover software updates, hardware or hosting limits, or changes made by others. "
    "To open a new ticket, simply describe the problem in a message."
)
_WARRANTY_REFUSED_STAFF = N_("Warranty refused for {ref}; the client has been told the reason.")

# !unsolvable
_UNSOLVABLE_CANCELLED_CLIENT = N_(
    "We are sorry: the support team could not solve {ref} within the support service. As the "
    "assistance was by messaging only, the ticket is cancelled and not billed. We opened the "
    "quote request {quote} for a specific offer: the team will contact you about it."
)
_UNSOLVABLE_BILLED_CLIENT = N_(
    "We are sorry: the support team could not solve {ref} within the support service. The "
    "work already done stays billed ({tickets}). We opened the quote request {quote} for a "
    "specific offer: the team will contact you about it."
)
_UNSOLVABLE_FREE_CLIENT = N_(
    "We are sorry: the support team could not solve {ref} within the support service. Nothing "
    "is billed for it. We opened the quote request {quote} for a specific offer: the team "
    "will contact you about it."
)
_UNSOLVABLE_STAFF = N_(
    "{ref} closed as {status} ({tickets} billed); quote request {quote} opened for a specific "
    "offer."
)
_STATUS_CANCELLED = N_("cancelled")
_STATUS_UNSOLVABLE = N_("unsolvable")


async def _save_extra(ticket: Ticket, **values: Any) -> None:
    for name, value in values.items():
        setattr(ticket, name, value)
    await ticket.save(update_fields=list(values))


# -- declining (❌ on a card) --------------------------------------------------------------------


@router.reaction(*DECLINE_KEYS)
async def on_cross(ctx: Context) -> None:
    event = ctx.event
    assert isinstance(event, IncomingReaction)
    ticket = await card_ticket(ctx, event.target_event_id)
    if ticket is None:
        return
    staff = ctx.sender.user_id
    result = lifecycle.decline(repo.ticket_state(ticket))
    if isinstance(result, Refusal):
        raise DomainError(Msg(_DECLINE_REFUSED, {"ref": ticket.ref, "reason": result.msg}))
    await change(ctx, ticket, result, action="declined", actor=staff)
    ctx.reply(Msg(_DECLINED_STAFF, {"staff": staff, "ref": ticket.ref}))
    await tell_client(ctx, ticket, Msg(_DECLINED_CLIENT, {"ref": ticket.ref}))


# -- resolution and acceptance ------------------------------------------------------------------


@router.command(
    "resolve",
    "resoudre",
    help=N_("Mark a ticket as solved and ask the client to accept it."),
    usage="SP-…",
    staff=True,
)
async def resolve(ctx: Context) -> None:
    ticket = await locked_staff_ticket(ctx)
    result = lifecycle.resolve(repo.ticket_state(ticket))
    await change(ctx, ticket, result, action="resolved", actor=ctx.sender.user_id)
    await _save_extra(ticket, resolved_at=ctx.now)
    ctx.reply(Msg(_RESOLVED_STAFF, {"ref": ticket.ref}))
    client = await Client.get(id=ticket.client_id)  # type: ignore[attr-defined]
    if ticket.room_id == EMAIL_ROOM:
        text = _RESOLVED_CLIENT_MAIL  # answered by a reply (`on_resolution_answered`)
    elif bridged_nick(client.key, ticket.room_id) is not None:
        text = _RESOLVED_CLIENT_TYPED
    else:
        text = _RESOLVED_CLIENT
    # The outbox keeps this message's event id with the hook: a ✅ on it is an acceptance.
    await tell_client(
        ctx, ticket, Msg(text, {"ref": ticket.ref}), on_sent=f"{RESOLVED_HOOK}{ticket.id}"
    )


_RESOLVED_ONLY = frozenset({Status.RESOLVED})


@router.command("accept", "accepter", help=N_("Accept the resolution of a ticket."), usage="SP-…")
async def accept(ctx: Context) -> None:
    ticket = await locked_client_ticket(ctx, _RESOLVED_ONLY)
    await _accept(ctx, ticket)


async def _accept(ctx: Context, ticket: Ticket) -> None:
    days = ctx.services.config.service.warranty_days
    result = lifecycle.accept(repo.ticket_state(ticket), ctx.now, days)
    state = await change(ctx, ticket, result, action="accepted", actor=ctx.sender.key)
    if state.warranty_until is None:
        await tell_client(ctx, ticket, Msg(_ACCEPTED_CLIENT_NO_WARRANTY, {"ref": ticket.ref}))
        ctx.send_staff(Msg(_ACCEPTED_STAFF_NO_WARRANTY, {"ref": ticket.ref}))
    else:
        until = state.warranty_until
        text = _ACCEPTED_CLIENT_MAIL if ticket.room_id == EMAIL_ROOM else _ACCEPTED_CLIENT
        await tell_client(ctx, ticket, Msg(text, {"ref": ticket.ref, "warranty_until": until}))
        ctx.send_staff(Msg(_ACCEPTED_STAFF, {"ref": ticket.ref, "when": until}))
    await ctx.try_emit(AskRating(ticket.id))


@router.reaction(*CONFIRM_KEYS)
async def accept_by_reaction(ctx: Context) -> None:
    """A ✅ on the bot's "resolved" message, by the ticket's own client (in the staff room, a
    ✅ is a staff confirmation: `handlers.consent`)."""
    event = ctx.event
    assert isinstance(event, IncomingReaction)
    if ctx.in_staff_room:
        return
    sent = await OutboxItem.get_or_none(
        event_id=event.target_event_id,
        room_id=event.room_id,
        on_sent__startswith=RESOLVED_HOOK,
    )
    if sent is None or sent.on_sent is None:
        return
    found = await Ticket.get_or_none(id=int(sent.on_sent[len(RESOLVED_HOOK) :]))
    if found is None:
        return
    client = await Client.get(id=found.client_id)  # type: ignore[attr-defined]
    if client.key != ctx.sender.key:
        return
    ticket = await locked(found.id)
    if ticket.status != Status.RESOLVED:
        return  # already answered (by command or an earlier ✅)
    await _accept(ctx, ticket)


@router.command(
    "notsolved",
    "pasresolu",
    help=N_("Tell the support team that a ticket marked as solved is not."),
    usage="SP-…",
)
async def not_solved(ctx: Context) -> None:
    ticket = await locked_client_ticket(ctx, _RESOLVED_ONLY)
    await _not_solved(ctx, ticket, lifecycle.reject_resolution(repo.ticket_state(ticket)))


async def _not_solved(ctx: Context, ticket: Ticket, result: TicketState | Refusal) -> None:
    await change(ctx, ticket, result, action="not_solved", actor=ctx.sender.key)
    ctx.reply(Msg(_NOT_SOLVED_CLIENT, {"ref": ticket.ref}))
    ctx.send_staff(Msg(_NOT_SOLVED_STAFF, {"ref": ticket.ref}))


@router.effect(ResolutionAnswered)
async def on_resolution_answered(ctx: Context, effect: ResolutionAnswered) -> None:
    """The client of a request made by e-mail replied 1 or 2 to the mail saying it is solved
    (`handlers.mail`): what `!accept` and `!notsolved` (or `!reopen`, under the warranty) do
    in chat. An answer that no longer fits the ticket changes nothing: the mail is a note."""
    ticket = await locked(effect.ticket_id)
    state = repo.ticket_state(ticket)
    if effect.solved:
        if state.status is Status.RESOLVED:
            await _accept(ctx, ticket)
        return
    if state.status is Status.RESOLVED:
        result = lifecycle.reject_resolution(state)
        told = (_NOT_SOLVED_CLIENT, _NOT_SOLVED_STAFF)
    else:
        result = lifecycle.reopen(state, ctx.now)
        told = (_REOPENED_CLIENT, _REOPENED_STAFF)
    if isinstance(result, Refusal):
        return
    action = "not_solved" if state.status is Status.RESOLVED else "reopened"
    await change(ctx, ticket, result, action=action, actor=ctx.sender.key)
    await tell_client(ctx, ticket, Msg(told[0], {"ref": ticket.ref}))
    ctx.send_staff(Msg(told[1], {"ref": ticket.ref}))


# -- warranty -----------------------------------------------------------------------------------

_REOPENABLE = frozenset({Status.CLOSED, Status.RESOLVED})


@router.command(
    "reopen",
    "rouvrir",
    help=N_("Reopen a closed ticket during its one-week warranty."),
    usage="SP-…",
)
async def reopen(ctx: Context) -> None:
    ticket = await locked_client_ticket(ctx, _REOPENABLE)
    state = repo.ticket_state(ticket)
    if state.status is Status.RESOLVED:
        await _not_solved(ctx, ticket, lifecycle.reject_resolution(state))
        return
    result = lifecycle.reopen(state, ctx.now)
    if isinstance(result, Refusal):
        if state.status is Status.CLOSED and state.kind is Kind.TICKET:
            raise DomainError(Msg(_REOPEN_TOO_LATE, {"reason": result.msg}))
        raise DomainError(result.msg)
    await change(ctx, ticket, result, action="reopened", actor=ctx.sender.key)
    ctx.reply(Msg(_REOPENED_CLIENT, {"ref": ticket.ref}))
    ctx.send_staff(Msg(_REOPENED_STAFF, {"ref": ticket.ref}))


def _reason(ctx: Context, ref: str) -> str:
    reason = rest_of_args(ctx.args)
    if not reason:
        example = f"!{ctx.command} {ref} …"
        raise DomainError(Msg(_NEED_REASON, {"example": example}))
    return reason


@router.command(
    "refuse-warranty",
    "refuser-garantie",
    help=N_("Refuse a warranty reopening, with the reason told to the client."),
    usage="SP-… <reason>",
    staff=True,
)
async def refuse_warranty(ctx: Context) -> None:
    ticket = await locked_staff_ticket(ctx)
    reason = _reason(ctx, ticket.ref)
    result = lifecycle.refuse_warranty(repo.ticket_state(ticket))
    staff = ctx.sender.user_id
    await change(ctx, ticket, result, action="warranty_refused", detail=reason, actor=staff)
    await _save_extra(ticket, closed_reason=reason)
    ctx.reply(Msg(_WARRANTY_REFUSED_STAFF, {"ref": ticket.ref}))
    await tell_client(
        ctx, ticket, Msg(_WARRANTY_REFUSED_CLIENT, {"ref": ticket.ref, "reason": reason})
    )
    await ctx.try_emit(AskRating(ticket.id))


# -- unsolvable ---------------------------------------------------------------------------------


@router.command(
    "unsolvable",
    "insoluble",
    help=N_("Close a ticket support cannot solve and open a quote request (R11)."),
    usage="SP-… <reason>",
    staff=True,
)
async def unsolvable(ctx: Context) -> None:
    ticket = await locked_staff_ticket(ctx)
    reason = _reason(ctx, ticket.ref)
    staff = ctx.sender.user_id
    result = lifecycle.mark_unsolvable(repo.ticket_state(ticket))
    state = await change(ctx, ticket, result, action="unsolvable", detail=reason, actor=staff)
    await _save_extra(ticket, closed_reason=reason)
    quote = await _open_quote(ctx, ticket, reason)
    billed = lifecycle.billed_tickets(state)
    params = {"ref": ticket.ref, "quote": quote.ref, "tickets": _tickets(billed)}
    if state.status is Status.CANCELLED:
        client_msg, status = _UNSOLVABLE_CANCELLED_CLIENT, _STATUS_CANCELLED
    else:
        client_msg = _UNSOLVABLE_BILLED_CLIENT if billed else _UNSOLVABLE_FREE_CLIENT
        status = _STATUS_UNSOLVABLE
    ctx.reply(Msg(_UNSOLVABLE_STAFF, {**params, "status": Msg(status)}))
    await tell_client(ctx, ticket, Msg(client_msg, params))


async def _open_quote(ctx: Context, ticket: Ticket, reason: str) -> Ticket:
    """The quote request for a specific offer (R11), with its card in the staff room."""
    prefix = ctx.services.config.service.quote_prefix
    ref = await repo.allocate_ref(prefix, ctx.now.astimezone(ctx.tz).year)
    initial = lifecycle.initial_state(Kind.QUOTE, Channel.MESSAGING)
    quote = await Ticket.create(
        ref=ref,
        kind=str(initial.kind),
        status=str(initial.status),
        category=ticket.category,
        channel=str(initial.channel),
        client_id=ticket.client_id,  # type: ignore[attr-defined]
        room_id=ticket.room_id,
        locale=ticket.locale,
        # Staff-facing: the card shows why the offer is needed.
        description=f"{ticket.description}\n\n— {ticket.ref}: {reason}",
        instance_url=ticket.instance_url,
        instance_version=ticket.instance_version,
        survey_id=ticket.survey_id,
        email=ticket.email,
        created_at=ctx.now,
        converted_from=ticket.ref,
    )
    await repo.audit(
        quote, ctx.sender.user_id, "opened", None, quote.status, f"from {ticket.ref}", at=ctx.now
    )
    await post_card(ctx, quote)
    ctx.services.metrics.tickets.labels(kind=str(Kind.QUOTE)).inc()
    return quote
