"""What several handler modules share: staff cards, audited state changes, telling a client,
and where a client's requests may be written.

Decisions worth knowing (SPEC §7):

* **Private rooms.** A client's requests are written only where nobody but the client, the bot
  and staff can read them (`room_is_private`). For a Matrix client a bridge account counts as
  other people: everyone in the bridged conversation reads what it relays. For a client behind
  a bridge the bridge is how they read, so it does not count; such a client cannot be invited
  into a Matrix room either.
* **Rooms that gain members.** Every message carrying a ticket's content to its client
  (`tell_client`, `client_room` for the booking side) checks the room's members first, not
  only when the request started. If others have joined, the client's tickets in that room move
  to their private room (created once, as the intake does) and the shared room is told why,
  without any content. Where the client cannot be moved (behind a bridge, or the room cannot
  be created) the content is held back: the client is pointed to the support e-mail in the
  room, staff are told.
* **Bridged rooms.** A nickname is not an identity (anyone in the conversation can take it)
  and everyone there reads the answer: commands that show or change stored requests are
  refused there with a pointer to a private channel (`refuse_if_bridged`).
* **Prepaid balances (issue #16 §1).** Every card shows its account's balance. Whatever
  changes what a ticket bills goes through `change` (or, for a new request, `ticket_opened`),
  which redraws the account's other open cards and, when the ticket bills more, tells staff
  and the client if the balance of a prepaid account fell to one ticket or less, or below zero
  (`billing_changed`): a comparison of before and after, so each crossing is told once and
  nothing needs remembering. Another path that changes billing calls `billing_changed`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr
from typing import TYPE_CHECKING

from bot.cards import BRIDGE_KEY_PREFIX, BalanceView, card_view, defuse, render_card
from bot.domain import balance as prepaid
from bot.domain.bridge import bridged_nick
from bot.domain.intake import OpenRequest
from bot.domain.tickets import (
    ENDED_STATUSES,
    REF_RE,
    Channel,
    Kind,
    Refusal,
    Status,
    TicketState,
    billed_tickets,
    initial_state,
    sla_business_days,
)
from bot.events import EMAIL_ROOM, IncomingReaction
from bot.i18n import N_, NP_, Msg, Translator
from bot.ports import TransportError
from bot.routing import Context, DomainError
from bot.storage import balances, repo
from bot.storage.balances import Account
from bot.storage.models import Booking, BotState, Client, Reaction, Ticket
from handlers.effects import FreeCall
from handlers.mail_thread import mail_about

if TYPE_CHECKING:
    from bot.services import Services

__all__ = ["bridged_nick"]  # re-exported for the handler modules

log = logging.getLogger(__name__)


NOT_FOUND = N_("I could not find {ref} among your requests. Type !tickets to list them.")
STAFF_NOT_FOUND = N_("No ticket, question or quote request has the reference {ref}.")
NEED_REF = N_("Please give the reference, for example: !{command} {example}")


def find_ref(text: str) -> str | None:
    match = REF_RE.search(text)
    return match.group(1).upper() if match else None


async def card_parts(ctx: Context, ticket: Ticket) -> tuple[str, str]:
    client = await Client.get(id=ticket.client_id)  # type: ignore[attr-defined]
    booking = await repo.active_booking(ticket)
    balance = await balance_view(await balances.account_of(client.id))
    view = card_view(ticket, client, booking, balance)
    return render_card(view, ctx.services.staff_tr(), ctx.tz)


async def balance_view(account: Account) -> BalanceView:
    """What a card shows of an account's prepaid balance."""
    balance = await balances.balance_of(account)
    return BalanceView(
        purchased=balance.purchased,
        billed=balance.billed,
        account=account.name if account.is_organisation else None,
        prepaid=await balances.is_prepaid(account),
    )


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
    billed_before = billed_tickets(repo.ticket_state(ticket))
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
    if billed_tickets(result) != billed_before:
        await billing_changed(ctx, ticket, billed_before)
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
    behind a bridge); several parts make one message, as sentences of one paragraph. The
    room's members are checked first (`client_room`). A request made by e-mail is answered
    by mail, in its thread; a client who follows their requests by e-mail gets a copy."""
    client = await Client.get(id=ticket.client_id)  # type: ignore[attr-defined]
    tr = await client_translator(ctx, ticket)
    by_mail = ticket.room_id == EMAIL_ROOM
    if (by_mail or client.follow_by_email) and client.erased_at is None:
        text = " ".join(ctx.render(part, tr) for part in parts)
        await mail_about(ctx, ticket, [text], tr=tr, kind="update")
    if by_mail:
        return
    room_id = await client_room(ctx, ticket, client, tr)
    if room_id is None:
        return  # held back: the client and staff were told
    text = " ".join(ctx.render(part, tr) for part in parts)
    ctx.to_client(room_id, client.key, text, on_sent=on_sent)


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


async def staff_direct_room(ctx: Context, user_id: str, name: str) -> str:
    """The bot's direct room with a staff member (for what only they should read: their
    calendar feed, their dashboard link): the one remembered in `BotState` under a hash of
    their id, re-invited if they left, or a new one named `name`."""
    transport = ctx.services.transport
    key = "staff-dm:" + hashlib.sha256(user_id.encode()).hexdigest()[:48]
    state = await BotState.get_or_none(key=key)
    if state is not None:
        await invite_back(ctx, state.value, user_id)
        return state.value
    room = await transport.create_room(
        name=name,
        invite=[user_id],
        is_direct=True,
        encrypted=False,
        key=ctx.services.room_key("staff-dm", user_id),
    )
    await BotState.update_or_create(defaults={"value": room}, key=key)
    return room


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


# -- opening a request (the chat intake and the e-mail channel) ---------------------------------

OPENED = {
    Kind.TICKET: N_("Your ticket {ref} is open."),
    Kind.QUESTION: N_("Your feasibility question {ref} is registered."),
    Kind.QUOTE: N_("Your quote request {ref} is registered."),
}
# Translators: {due} is a full date and time, e.g. "Tuesday, December 29, 2026 at 6:00 PM".
COMMITMENT = N_("It will be taken into account by {due} at the latest.")
NEXT_INTERVENTION = N_(
    "A member of the support team will estimate the work. If it may exceed two tickets, you "
    "will be asked to confirm it by e-mail before it starts."
)
NEXT_QUESTION = N_(
    "The support team will give you a feasibility opinion. No ticket is used, unless the team "
    "converts your question into a ticket because it needs support work."
)
NEXT_QUOTE = N_(
    "The support team will come back to you with an offer (development, training or project)."
)
TERMS = N_("Your requests are covered by the service terms: {url}")
#: Feasibility questions and quote requests bill nothing, but the client still gets a date:
#: the messaging commitment, by which the team comes back to them.
QUESTION_OR_QUOTE_DAYS = 2
_PREFIX_FIELD = {
    Kind.TICKET: "ticket_prefix",
    Kind.QUESTION: "question_prefix",
    Kind.QUOTE: "quote_prefix",
}


async def create_request(
    ctx: Context,
    effect: OpenRequest,
    client: Client,
    *,
    room_id: str,
    locale: str,
    received_at: datetime,
) -> Ticket:
    """The ticket, question or quote request an intake opens (chat or e-mail): its reference,
    its deadline counted from `received_at` (R3, R4), its audit entry, its staff card."""
    services = ctx.services
    kind, channel = Kind(effect.kind.value), Channel(effect.channel)
    prefix = getattr(services.config.service, _PREFIX_FIELD[kind])
    ref = await repo.allocate_ref(prefix, received_at.astimezone(ctx.tz).year)
    days = sla_business_days(channel) if kind is Kind.TICKET else QUESTION_OR_QUOTE_DAYS
    ticket = await Ticket.create(
        ref=ref,
        kind=kind.value,
        status=initial_state(kind, channel).status.value,
        category=effect.category,
        channel=channel.value,
        client=client,
        room_id=room_id,
        locale=locale,
        description=effect.description,
        instance_url=effect.instance_url,
        instance_version=effect.instance_version,
        survey_id=effect.survey_id,
        email=effect.email,
        created_at=received_at,
        sla_due=services.calendar.deadline(received_at, days),
    )
    await repo.audit(ticket, ctx.sender.key, "opened", None, ticket.status, at=ctx.now)
    await post_card(ctx, ticket)
    services.metrics.tickets.labels(kind=kind.value).inc()
    log.info("opened %s (%s, %s)", ref, kind.value, channel.value)
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


async def remember_reaction(ctx: Context, event: IncomingReaction) -> None:
    """Keep a reaction the bot acted on as a `Reaction` row, so that its redaction (even
    after a restart) finds what it pointed at and who gave it."""
    await Reaction.update_or_create(
        defaults={
            "room_id": event.room_id,
            "target_event_id": event.target_event_id,
            "sender": ctx.sender.user_id,
            "key": event.key,
            "at": ctx.now,
        },
        event_id=event.event_id,
    )


async def card_ticket(ctx: Context, target: str) -> Ticket | None:
    """The ticket whose card is `target`, locked, for a staff member's reaction in the staff
    room. Anyone else (clients, bridges) gets no answer at all."""
    if not ctx.in_staff_room or not ctx.is_staff:
        return None
    found = await Ticket.get_or_none(card_event_id=target)
    return None if found is None else await locked(found.id)


# -- prepaid balances (issue #16 §1) ------------------------------------------------------------

BALANCE_OWN = N_("Your prepaid ticket balance")
BALANCE_OF = N_("The prepaid ticket balance of {account}")
BALANCE_LINE = N_("{subject}: {remaining} (purchased: {purchased}, used: {billed}).")
BALANCE_NOTHING_BOUGHT = N_("{subject}: no tickets purchased in advance (used: {billed}).")
_LOW_CLIENT = N_(
    "{subject} is now {remaining} ({ref}). Your request goes on; to buy tickets, contact the "
    "support team."
)
_NEGATIVE_CLIENT = N_(
    "{subject} is now below zero: {remaining} ({ref}). Your request goes on; the support team "
    "will contact you about buying tickets."
)
_LOW_CLIENT_BRIDGED = N_(
    "{subject} is now low ({ref}). Your request goes on; to buy tickets, contact the support team."
)
_NEGATIVE_CLIENT_BRIDGED = N_(
    "{subject} is now below zero ({ref}). Your request goes on; the support team will contact "
    "you about buying tickets."
)
_LOW_STAFF = N_("⚠️ The prepaid balance of {account} is down to {remaining} ({ref}).")
_NEGATIVE_STAFF = N_("⚠️ The prepaid balance of {account} is below zero: {remaining} ({ref}).")
#: How many other open cards of an account are redrawn when its balance changes.
SIBLING_CARDS = 20


def balance_tickets(n: int) -> Msg:
    """A count of tickets that may be below zero: "−2 tickets"."""
    return Msg(_TICKETS[0], {"n": prepaid.signed(n)}, _TICKETS[1], abs(n))


def balance_subject(account: Account) -> Msg:
    """ "Your prepaid ticket balance", or the one of the client's organisation."""
    if not account.is_organisation:
        return Msg(BALANCE_OWN)
    return Msg(BALANCE_OF, {"account": defuse(account.name)})


async def balance_msg(account: Account, subject: Msg | None = None) -> Msg:
    """The balance of `account` as a sentence (`!solde`, `!tickets`, `!org show`)."""
    balance = await balances.balance_of(account)
    subject = subject or balance_subject(account)
    if not await balances.is_prepaid(account):
        return Msg(
            BALANCE_NOTHING_BOUGHT, {"subject": subject, "billed": tickets_msg(balance.billed)}
        )
    return Msg(
        BALANCE_LINE,
        {
            "subject": subject,
            "remaining": balance_tickets(balance.remaining),
            "purchased": balance_tickets(balance.purchased),
            "billed": tickets_msg(balance.billed),
        },
    )


@dataclass(frozen=True, slots=True)
class BalanceCrossing:
    """A prepaid account whose balance just fell into a worse level (`prepaid.crossing`)."""

    account: Account
    balance: prepaid.Balance
    level: prepaid.Level

    def for_client(self, ref: str, *, bridged: bool) -> Msg:
        """The client's warning; behind a bridge, where anyone may read along under any
        name, without the figure."""
        params: dict[str, object] = {"subject": balance_subject(self.account), "ref": ref}
        negative = self.level is prepaid.Level.NEGATIVE
        if bridged:
            return Msg(_NEGATIVE_CLIENT_BRIDGED if negative else _LOW_CLIENT_BRIDGED, params)
        params["remaining"] = balance_tickets(self.balance.remaining)
        return Msg(_NEGATIVE_CLIENT if negative else _LOW_CLIENT, params)

    def for_staff(self, ref: str) -> Msg:
        negative = self.level is prepaid.Level.NEGATIVE
        params = {
            "account": defuse(self.account.name),
            "remaining": balance_tickets(self.balance.remaining),
            "ref": ref,
        }
        return Msg(_NEGATIVE_STAFF if negative else _LOW_STAFF, params)


async def balance_crossing(ticket: Ticket, billed_before: int) -> BalanceCrossing | None:
    """Whether billing `ticket` more than `billed_before` (saved already) made its prepaid
    account's balance fall to one ticket or less, or below zero: told once per crossing,
    since a balance that stays low crosses nothing."""
    added = billed_tickets(repo.ticket_state(ticket)) - billed_before
    if added <= 0:
        return None
    account = await balances.account_of(ticket.client_id)  # type: ignore[attr-defined]
    if not await balances.is_prepaid(account):
        return None
    balance = await balances.balance_of(account)
    level = prepaid.crossing(balance.remaining + added, balance.remaining)
    return None if level is None else BalanceCrossing(account, balance, level)


async def billing_changed(ctx: Context, ticket: Ticket, billed_before: int) -> None:
    """`ticket` (saved) now bills other than `billed_before`: the other cards of its account
    are redrawn with the new balance, and when it bills more (logged time, a question made a
    ticket…) staff and the client are told if the balance crossed a threshold. Nothing is
    held up. `change` calls it; so does any other path that changes what a ticket bills."""
    account = await balances.account_of(ticket.client_id)  # type: ignore[attr-defined]
    await refresh_account_cards(ctx, account, skip=ticket.id)
    crossing = await balance_crossing(ticket, billed_before)
    if crossing is None:
        return
    ctx.send_staff(crossing.for_staff(ticket.ref))
    client = await Client.get(id=ticket.client_id)  # type: ignore[attr-defined]
    bridged = client.key.startswith(BRIDGE_KEY_PREFIX)
    await tell_client(ctx, ticket, crossing.for_client(ticket.ref, bridged=bridged))


async def ticket_opened(ctx: Context, ticket: Ticket) -> Msg | None:
    """A new request bills from its opening (a ticket: one, at least): the account's other
    cards are redrawn, staff are warned when the balance crossed a threshold, and the
    client's warning is returned, to go in the message that gives them the reference."""
    if billed_tickets(repo.ticket_state(ticket)) == 0:
        return None
    account = await balances.account_of(ticket.client_id)  # type: ignore[attr-defined]
    await refresh_account_cards(ctx, account, skip=ticket.id)
    crossing = await balance_crossing(ticket, 0)
    if crossing is None:
        return None
    ctx.send_staff(crossing.for_staff(ticket.ref))
    return crossing.for_client(ticket.ref, bridged=ctx.sender.bridged)


async def refresh_account_cards(
    ctx: Context, account: Account, *, skip: int | None = None
) -> None:
    """Redraw the cards of the account's open requests (the most recent `SIBLING_CARDS`):
    each card shows the account's balance."""
    if account.organisation_id is not None:
        clients = await balances.member_ids(account.organisation_id)
    else:
        clients = [account.client_id] if account.client_id is not None else []
    if not clients:
        return
    query = Ticket.filter(client_id__in=clients, card_event_id__isnull=False).exclude(
        status__in=[str(status) for status in _NOT_OPEN]
    )
    if skip is not None:
        query = query.exclude(id=skip)
    for ticket in await query.order_by("-created_at", "-id").limit(SIBLING_CARDS):
        await refresh_card(ctx, ticket)


_NOT_OPEN = ENDED_STATUSES | {Status.CLOSED}


#: A booking's status while its call stands (`repo.CANCELLED_BOOKING` once it is cancelled);
#: the booking side, the staff calendar and the meetings all filter on it.
ACTIVE_BOOKING = "active"


# -- where a client's requests may be written (SPEC §7) -----------------------------------------

ROOM_NAME = N_("Support request: {user}")
MOVED = N_(
    "I have invited you to a private room to keep your request confidential. Please accept "
    "the invitation: we continue there."
)
CONTINUE_PRIVATE = N_(
    "To keep your request confidential, I have answered you in your private room."
)
MOVED_JOINED = N_(
    "Other people have joined this room, so I no longer write about your requests here. I "
    "have invited you to a private room: please accept the invitation, we continue there."
)
CONTINUE_JOINED = N_(
    "Other people have joined this room, so I no longer write about your requests here: I "
    "have written to you in your private room."
)
HELD_BACK_CLIENT = N_(
    "Other people can now read this conversation, so I no longer write about your requests "
    "here. Please write to the support team at {email}."
)
HELD_BACK_STAFF = N_(
    "⚠️ {ref}: a message to the client was not sent, because others can now read their room. "
    "Please contact them by e-mail."
)
BRIDGED_REFUSED = N_(
    "To protect your data, I do not show or change your requests in a conversation relayed "
    "from another chat service, where other people can read along and use any name. Please "
    "write to the support team at {email}, or to me in a direct chat on Matrix."
)


def room_is_private(services: Services, room_id: str, client_key: str) -> bool:
    """Whether nobody but the client, the bot and staff is in `room_id`: where that client's
    requests may be written. Bridge accounts count as other people for a Matrix client, not
    for a client behind a bridge (it is how they read). A configured support room never is."""
    if room_id in services.config.matrix.support_rooms:
        return False
    identity = services.identity
    behind_bridge = bridged_nick(client_key, room_id) is not None
    for member in services.transport.joined_members(room_id):
        if member in (identity.bot_user_id(), client_key):
            continue
        if identity.is_bridge(member):
            if behind_bridge:
                continue
            return False
        if not identity.is_staff_user(member):
            return False
    return True


def support_address(services: Services) -> str:
    """The support team's e-mail address, for the clients pointed to a private channel."""
    return parseaddr(services.config.mail.from_)[1] or services.config.mail.from_


def refuse_if_bridged(ctx: Context) -> None:
    """Stored requests are neither shown nor changed through a bridge: the nickname proves
    nothing and everyone in the conversation reads the answer. A localized refusal that points
    to a private channel."""
    if ctx.sender.bridged:
        raise DomainError(Msg(BRIDGED_REFUSED, {"email": support_address(ctx.services)}))


async def private_room(
    ctx: Context,
    client: Client,
    from_room: str,
    *,
    tr: Translator | None = None,
    moved: str = MOVED,
    continued: str = CONTINUE_PRIVATE,
) -> str:
    """The client's private room (with the configured staff), created and remembered on the
    client the first time, the client invited back if they left it. `from_room` is told,
    without any content: `moved` when the room is new, `continued` otherwise. Raises
    `TransportError` when the room cannot be created."""
    transport = ctx.services.transport
    room_id = client.private_room_id
    if room_id is not None:
        await invite_back(ctx, room_id, client.key)
        _once(ctx, lambda: ctx.to_client(from_room, client.key, Msg(continued), tr=tr))
        return room_id
    config = ctx.services.config.matrix
    invite = [client.key]
    invite += [s for s in config.staff if s not in invite and s != config.user_id]
    room_id = await transport.create_room(
        name=ctx.render(Msg(ROOM_NAME, {"user": client.display_name or client.key}), tr),
        invite=invite,
        is_direct=False,
        encrypted=transport.is_encrypted(from_room),
        key=ctx.services.room_key("private", client.key),
    )
    client.private_room_id = room_id
    await client.save(update_fields=["private_room_id"])
    log.info("requests moved from shared room %s to private room %s", from_room, room_id)
    _once(ctx, lambda: ctx.to_client(from_room, client.key, Msg(moved), tr=tr))
    return room_id


async def client_room(ctx: Context, ticket: Ticket, client: Client, tr: Translator) -> str | None:
    """The room to write `ticket`'s content to its client, checked before every such message:
    its room while that is private (`room_is_private`); once others have joined, the client's
    private room, where their tickets of that room move. None when there is nowhere safe (a
    client behind a bridge, or no private room could be made): the client is told in the
    room, without content, and staff are told."""
    room_id = ticket.room_id
    if room_id == EMAIL_ROOM:
        return None  # a request made by e-mail has no room: `tell_client` mails it
    if client.erased_at is not None:
        # Nobody is known any more to check the room against, and nothing personal is left
        # in the ticket: written where it was, as before the erasure.
        return room_id
    if room_is_private(ctx.services, room_id, client.key):
        return room_id
    if client.key.startswith("@"):  # a Matrix account: it can be invited elsewhere
        try:
            private = await private_room(
                ctx, client, room_id, tr=tr, moved=MOVED_JOINED, continued=CONTINUE_JOINED
            )
        except TransportError as error:
            log.warning("could not create a private room: %s", error)
        else:
            await _move_tickets(ctx, client, room_id, private)
            ticket.room_id = private
            return private
    held = Msg(HELD_BACK_CLIENT, {"email": support_address(ctx.services)})
    _once(ctx, lambda: ctx.to_client(room_id, client.key, held, tr=tr))
    _once(ctx, lambda: ctx.send_staff(Msg(HELD_BACK_STAFF, {"ref": ticket.ref})))
    log.info("message for %s held back: room %s is no longer private", ticket.ref, room_id)
    return None


async def _move_tickets(ctx: Context, client: Client, shared: str, private: str) -> None:
    """All the client's tickets of the shared room now live in their private room (later
    messages, slot choices and reminders follow them there)."""
    tickets = await Ticket.filter(client_id=client.id, room_id=shared)
    await Ticket.filter(id__in=[ticket.id for ticket in tickets]).update(room_id=private)
    for ticket in tickets:
        status = ticket.status
        await repo.audit(ticket, "system", "moved_to_private_room", status, status, at=ctx.now)


def _once(ctx: Context, write: Callable[[], None]) -> None:
    """Run `write` unless this event already sends the same messages to the same rooms: one
    move, or one held-back notice, however many messages of the event it concerns."""
    before = len(ctx.outgoing)
    write()
    earlier, added = ctx.outgoing[:before], ctx.outgoing[before:]
    if added and all(
        any(old.room_id == new.room_id and old.content == new.content for old in earlier)
        for new in added
    ):
        del ctx.outgoing[before:]
