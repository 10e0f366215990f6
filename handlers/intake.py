"""The client side of the front desk: the intake conversation and the client commands around it.

The conversation itself is the pure state machine of `bot.domain.intake`; this module is its
shell. For each client message: load the (room, client) `Conversation` row, `advance` (or
`start`), save the new step, data, version and sweep time, execute the effects (open a ticket,
question or quote request; add a message to an open ticket), then answer. All of it happens in
the dispatcher's transaction, together with the outbox rows of the answers: a restart resumes
at the stored step and never answers twice.

Decisions worth knowing:

* **Who is a client.** Staff writing in a client room are answering the client (the staff
  module records that), not opening a request: their text is ignored here. So is text a bridge
  account posts in its own name (not in the `[nctalk] <nick>` form): it is the bridge talking,
  not a person.
* **Shared rooms (SPEC §7).** Before a request *starts* in a room that holds anyone besides the
  client, the bot, staff and bridge accounts (or in a configured `support_rooms` room), the
  conversation moves to a private room with the client and the configured staff, created once
  and remembered on the client (`Client.private_room_id`). The shared room is only told that it
  moved; nothing of the request is written there. Later messages in the shared room are
  answered in the private room. For a Matrix sender a bridge account is other people: every
  participant of the bridged conversation reads it. Bridged senders are never moved (a Talk
  user cannot be invited into a Matrix room); an intake already running in a room goes on
  where it is. The rule and the room itself are `handlers.common`'s (`room_is_private`,
  `private_room`): messages about a ticket check it again when they are sent.
* **Bridged rooms.** A nickname is not an identity: anyone in the Talk conversation can take
  it, and everyone there reads the answers. So nothing stored is shown back there: an e-mail
  address known from an earlier request is neither offered nor reused (the client types it for
  each request, and the address on file is not changed from there), and `!tickets`, `!status`
  and `!cancel` of a ticket are refused with a pointer to the support e-mail or a direct chat.
  What the client typed for the request being made (its summary) is shown, as elsewhere.
  Someone else's reference still answers "not found", exactly as one that does not exist.
* **Slot choices.** After a call ticket the booking module offers numbered slots and reads the
  client's number as plain text. A bare number (or keycap) while the client has an active slot
  offer in this room and no intake running is routed to the booking module (the situation
  `SLOT_CHOICE`, see `handlers.state`) instead of starting a new request here (R1 would
  otherwise ask "about your open ticket, or a new problem?").
* **Deadlines.** Tickets: `sla_business_days(channel)` (2 for messaging and interventions, 3 for
  calls: R3, R4). Feasibility questions and quote requests bill nothing, but the client still
  gets a date: 2 business days, the messaging commitment, by which the team comes back to them
  (opinion, or an offer to discuss). The same `sla_due` lets staff see them in the queue.
* **Calls.** Slots are offered for call *tickets* only (a question or quote asked "by video"
  is first answered by the team). They are asked for with the `OfferSlots` effect; if no
  module offers slots or the offer fails, the ticket is still opened and the client is told
  the team will offer slots (the failed attempt is rolled back to a savepoint).
* **Time-outs.** `Conversation.due_at` is when the sweeper must look again (reminder, then
  expiry). Each reminder or expiry is a `run_job` keyed by conversation id *and version*: the
  key is unique in the database, so it happens once even across restarts, and any client
  message (a new version) makes the pending one void.
* **Concurrent writers.** A conversation row is updated only if its version is the one loaded
  (optimistic locking): a sweeper job or a second room writing the same conversation at the
  same time loses cleanly instead of overwriting.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from bot.cards import CHANNEL_LABELS, KIND_LABELS, STATUS_LABELS, defuse
from bot.domain.intake import (
    CATEGORIES,
    AddToTicket,
    Intake,
    IntakeStep,
    OpenRequest,
    Transition,
    advance,
    cancel,
    due_at,
    expire,
    intake_from_data,
    intake_to_data,
    remind,
    start,
    timeout_due,
)
from bot.domain.tickets import (
    ENDED_STATUSES,
    Channel,
    Kind,
    Status,
    cancel_by_client,
)
from bot.events import EMAIL_ROOM
from bot.i18n import N_, Msg
from bot.ports import TransportError
from bot.routing import Context, DomainError, Router, Situation
from bot.storage import repo
from bot.storage.balances import account_of
from bot.storage.models import Client, Conversation, Ticket, TicketNote
from handlers.common import (
    COMMITMENT,
    NEXT_INTERVENTION,
    NEXT_QUESTION,
    NEXT_QUOTE,
    OPENED,
    TERMS,
    balance_msg,
    change,
    client_ticket,
    create_request,
    find_ref,
    private_room,
    refresh_card,
    refuse_if_bridged,
    room_is_private,
    ticket_opened,
)
from handlers.effects import OfferSlots, RequestOpened
from handlers.state import RunningIntake, running_intake
from handlers.state import conversation as _conversation
from handlers.state import is_shared as _is_shared

if TYPE_CHECKING:
    from bot.services import Services

log = logging.getLogger(__name__)

router = Router("intake")

# -- messages --------------------------------------------------------------------------------

NEXT_MESSAGING = N_("A member of the support team will answer you here before that date.")
NEXT_CALL_SLOTS = N_("I will now offer you call slots.")
NEXT_CALL_LATER = N_("The support team will offer you call slots shortly.")
FOLLOW_UP = N_("Quote {ref} when you write to us about it; !status {ref} shows where it stands.")

NOTE_STAFF = N_("New message from the client on {ref}:\n{text}")
NOTE_TICKET_GONE = N_(
    "{ref} is no longer open, so I could not add your message to it. Answer 2 to make it a "
    "new request."
)

ROOM_FAILED = N_(
    "I could not open a private room for your request. Please write to me in a direct chat "
    "instead."
)
CONFLICT = N_("Your message crossed another one. Please send it again.")

HELP_NEW = N_("Start a new request, even while another one is open.")
HELP_TICKETS = N_("List your requests, where they stand, and your prepaid ticket balance.")
HELP_STATUS = N_("Show where one of your requests stands.")
HELP_CANCEL = N_(
    "Drop the request in progress, or cancel a messaging ticket before anyone has answered."
)
HELP_SKIP = N_("Skip a question that does not apply (the LimeSurvey instance).")
NOTHING_TO_SKIP = N_("There is no question to skip right now.")
NOTHING_TO_CANCEL = N_("There is no request in progress to cancel.")
NOT_IN_STAFF_ROOM = N_("Client requests are made from a client room, not from the staff room.")

TICKETS_NONE = N_("You have no requests yet. Describe your problem in a message to open one.")
TICKETS_TITLE = N_("Your requests:")
TICKET_LINE = N_("{ref} · {kind} · {status} · answer due by {due}")
TICKET_LINE_NO_DUE = N_("{ref} · {kind} · {status}")
STATUS_TEXT = N_(
    "{ref} · {kind} · {status}\nCategory: {category}\nChannel: {channel}\nOpened on {created}"
)
STATUS_DUE = N_("Answer due by: {due}")
STATUS_ANSWERED = N_("Answered on {when}")
CANCELLED_CLIENT = N_("{ref} is cancelled: it will not be billed.")
CANCELLED_STAFF = N_("The client cancelled {ref} (not billed).")

TICKETS_LISTED = 20  # the most recent ones; !status shows any of them
STAFF_NOTE_CHARS = 1_000  # staff read the rest with !ticket
_CALLS = frozenset({Channel.VIDEO, Channel.PHONE})
_NOT_OPEN = ENDED_STATUSES | {Status.CLOSED}
_DROPPED = frozenset({IntakeStep.CANCELLED, IntakeStep.EXPIRED})


# -- the conversation ------------------------------------------------------------------------


@router.text(Situation.INTAKE)
async def on_answer(ctx: Context) -> None:
    """A client's message while their intake runs: the next answer."""
    assert ctx.state is not None
    here, conv = await _answered_where(ctx, ctx.state.found)
    await _advance(here, conv, ctx.args)


@router.text(Situation.IDLE)
async def on_new_text(ctx: Context) -> None:
    """A client's message while nothing runs: a new request (R1 first asks whether it is
    about their open ticket)."""
    here = await _conversation_context(ctx)
    conv = await _conversation(here.room_id, ctx.sender.key)
    await _start(here, conv, ctx.args, related=True)


@router.reaction("✅", "✔️", "👍")
async def on_confirm_reaction(ctx: Context) -> None:
    """✅ from the client at the summary means "yes" (staff ✅ on cards belong elsewhere)."""
    if not _is_client(ctx):
        return
    conv = await _conversation(ctx.room_id, ctx.sender.key)
    if conv is None:
        return
    intake = intake_from_data(conv.data)
    if intake.step is not IntakeStep.CONFIRM:
        return
    await _apply(ctx, conv, advance(intake, "yes", now=ctx.now))


@router.command("new", "nouveau", help=HELP_NEW)
async def new_request(ctx: Context) -> None:
    if ctx.in_staff_room:
        ctx.reply(Msg(NOT_IN_STAFF_ROOM))
        return
    here = await _conversation_context(ctx)
    conv = await _conversation(here.room_id, ctx.sender.key)
    await _start(here, conv, ctx.args, related=False)


@router.command("skip", "passer", help=HELP_SKIP)
async def skip_question(ctx: Context) -> None:
    # The dispatcher reads "!skip" as a command; for the state machine it is an answer.
    found = await _active_conversation(ctx) if not ctx.in_staff_room else None
    if found is None:
        ctx.reply(Msg(NOTHING_TO_SKIP))
        return
    here, conv = found
    await _advance(here, conv, "!skip")


@router.command("cancel", "annuler", help=HELP_CANCEL, usage="[SP-…]")
async def cancel_request(ctx: Context) -> None:
    ref = find_ref(ctx.args)
    if ref is None and not ctx.in_staff_room:
        found = await _active_conversation(ctx, note=False)
        if found is not None:
            here, conv = found
            # Answered where !cancel was typed: the answer names nothing of the request.
            transition = cancel(intake_from_data(conv.data), ctx.now)
            await _save(here, conv, transition.intake)
            for msg in transition.replies:
                ctx.reply(msg)
            return
        refuse_if_bridged(ctx)  # not even whether the nickname has open tickets
        if not await repo.open_tickets_for(ctx.sender.key):
            ctx.reply(Msg(NOTHING_TO_CANCEL))
            return
    ticket = await client_ticket(ctx)  # someone else's ticket is "not found", bridged or not
    refuse_if_bridged(ctx)
    await change(
        ctx, ticket, cancel_by_client(repo.ticket_state(ticket)), action="cancelled_by_client"
    )
    ctx.reply(Msg(CANCELLED_CLIENT, {"ref": ticket.ref}))
    ctx.send_staff(Msg(CANCELLED_STAFF, {"ref": ticket.ref}))
    log.info("%s cancelled by its client", ticket.ref)


@router.command("tickets", help=HELP_TICKETS)
async def list_tickets(ctx: Context) -> None:
    refuse_if_bridged(ctx)
    here = await _conversation_context(ctx)
    tickets = (
        await Ticket.filter(client__key=ctx.sender.key)
        .order_by("-created_at", "-id")
        .limit(TICKETS_LISTED)
    )
    client = await Client.get_or_none(key=ctx.sender.key)
    balance = None if client is None else await balance_msg(await account_of(client.id))
    if not tickets:
        here.reply("\n".join(here.render(m) for m in (Msg(TICKETS_NONE), balance) if m))
        return
    lines = []
    for ticket in tickets:
        params = {
            "ref": ticket.ref,
            "kind": Msg(KIND_LABELS[Kind(ticket.kind)]),
            "status": Msg(STATUS_LABELS[Status(ticket.status)]),
        }
        if ticket.sla_due is not None and Status(ticket.status) not in _NOT_OPEN:
            lines.append(Msg(TICKET_LINE, {**params, "due": ticket.sla_due}))
        else:
            lines.append(Msg(TICKET_LINE_NO_DUE, params))
    if balance is not None:
        lines.append(balance)
    here.reply("\n".join([here.render(Msg(TICKETS_TITLE)), *map(here.render, lines)]))


@router.command("status", "statut", help=HELP_STATUS, usage="SP-…")
async def show_status(ctx: Context) -> None:
    ticket = await client_ticket(ctx)  # someone else's ticket is "not found"
    refuse_if_bridged(ctx)
    here = await _conversation_context(ctx)
    category = next((c.label for c in CATEGORIES if c.key == ticket.category), ticket.category)
    parts = [
        Msg(
            STATUS_TEXT,
            {
                "ref": ticket.ref,
                "kind": Msg(KIND_LABELS[Kind(ticket.kind)]),
                "status": Msg(STATUS_LABELS[Status(ticket.status)]),
                "category": Msg(category),
                "channel": Msg(CHANNEL_LABELS[Channel(ticket.channel)]),
                "created": ticket.created_at,
            },
        )
    ]
    if ticket.first_response_at is not None:
        parts.append(Msg(STATUS_ANSWERED, {"when": ticket.first_response_at}))
    elif ticket.sla_due is not None and Status(ticket.status) not in _NOT_OPEN:
        parts.append(Msg(STATUS_DUE, {"due": ticket.sla_due}))
    here.reply("\n".join(map(here.render, parts)))


# -- steps -----------------------------------------------------------------------------------


async def _start(ctx: Context, conv: Conversation | None, text: str, *, related: bool) -> None:
    """A new intake in `ctx.room_id` (replacing a finished or, for !new, a running one)."""
    client = await Client.get_or_none(key=ctx.sender.key)
    open_ref = await _open_ticket_ref(ctx.sender.key, ctx.room_id) if related else None
    # Behind a bridge a known address would be shown to whoever took the nickname.
    known = client.email if client is not None and not ctx.sender.bridged else None
    transition = start(now=ctx.now, text=text, known_email=known, open_ticket_ref=open_ref)
    await _apply(ctx, conv, transition)


async def _advance(ctx: Context, conv: Conversation, text: str) -> None:
    intake = intake_from_data(conv.data)
    if ctx.sender.bridged:  # an intake stored before known addresses were kept out of bridges
        intake = dataclasses.replace(intake, known_email=None)
    await _apply(ctx, conv, advance(intake, text, now=ctx.now))


async def _apply(ctx: Context, conv: Conversation | None, transition: Transition) -> None:
    """Save the new state, answer, then run the effects (whose answers follow).

    The client gets one message per step: the step's replies (a welcome and the first
    question, a thank-you and the opened ticket) are paragraphs of the same message, so the
    client never waits for a second message to arrive to know what to answer."""
    await _save(ctx, conv, transition.intake)
    log.debug("intake in %s now at %s", ctx.room_id, transition.intake.step.value)
    # The summary and some explanations echo what the client typed: defused, so a
    # "@room" or a matrix.to link in a description notifies nobody.
    paragraphs = [defuse(ctx.render(msg)) for msg in transition.replies]
    for effect in transition.effects:
        if isinstance(effect, OpenRequest):
            await _open_request(ctx, effect, before=paragraphs)
            paragraphs = []
        elif isinstance(effect, AddToTicket):
            await _add_to_ticket(ctx, effect)
    if paragraphs:
        ctx.reply("\n\n".join(paragraphs))


async def _save(ctx: Context, conv: Conversation | None, intake: Intake) -> None:
    remind_after, expire_after = _timeouts(ctx.services)
    values = {
        "step": intake.step.value,
        "data": _stored_data(intake),
        "updated_at": ctx.now,
        "due_at": due_at(intake, remind_after=remind_after, expire_after=expire_after),
    }
    if conv is None:
        await Conversation.create(
            room_id=ctx.room_id, client_key=ctx.sender.key, version=1, **values
        )
        return
    updated = await Conversation.filter(id=conv.id, version=conv.version).update(
        version=conv.version + 1, **values
    )
    if not updated:
        raise DomainError(Msg(CONFLICT))


def _stored_data(intake: Intake) -> dict[str, Any]:
    """The conversation's `data`. A request that was dropped (cancelled, expired) keeps only
    its step and times: nothing will come of what the client typed for it, so it is not kept
    (the row stays, for its version and step)."""
    if intake.step in _DROPPED:
        intake = Intake(intake.step, intake.started_at, intake.last_activity_at)
    return intake_to_data(intake)


async def _open_request(ctx: Context, effect: OpenRequest, *, before: list[str]) -> None:
    """Open the ticket; `before`: paragraphs the client's answer starts with."""
    services = ctx.services
    kind, channel = Kind(effect.kind.value), Channel(effect.channel)
    client = await _client(ctx)
    ticket = await create_request(
        ctx, effect, client, room_id=ctx.room_id, locale=ctx.tr.locale, received_at=ctx.now
    )
    ref = ticket.ref
    if not ctx.sender.bridged:  # behind a bridge, the address stays with its request
        client.email = effect.email
    first_request = client.terms_shown_at is None
    if first_request:
        client.terms_shown_at = ctx.now
        client.terms_url = services.config.service.terms_url
    await client.save(update_fields=["email", "terms_shown_at", "terms_url"])
    balance_warning = await ticket_opened(ctx, ticket)

    calls = kind is Kind.TICKET and channel in _CALLS
    can_offer = calls and ctx.handles(OfferSlots)
    lines = [
        Msg(OPENED[kind], {"ref": ref}),
        Msg(COMMITMENT, {"due": ticket.sla_due}),
        Msg(_next_step(kind, channel, can_offer=can_offer)),
        Msg(FOLLOW_UP, {"ref": ref}),
    ]
    if balance_warning is not None:
        lines.append(balance_warning)
    if first_request:
        lines.append(Msg(TERMS, {"url": services.config.service.terms_url}))
    ctx.reply("\n\n".join([*before, *(ctx.render(line) for line in lines)]))
    # The same receipt by e-mail, when a module sends it (a failure there loses nothing).
    await ctx.try_emit(RequestOpened(ticket.id, first_request=first_request))
    # Slots right after the ticket; a failure there must not lose the ticket.
    if can_offer and not await ctx.try_emit(OfferSlots(ticket.id)):
        ctx.reply(Msg(NEXT_CALL_LATER))


def _next_step(kind: Kind, channel: Channel, *, can_offer: bool) -> str:
    if kind is Kind.QUESTION:
        return NEXT_QUESTION
    if kind is Kind.QUOTE:
        return NEXT_QUOTE
    if channel in _CALLS:
        return NEXT_CALL_SLOTS if can_offer else NEXT_CALL_LATER
    if channel is Channel.INTERVENTION:
        return NEXT_INTERVENTION
    return NEXT_MESSAGING


async def _add_to_ticket(ctx: Context, effect: AddToTicket) -> None:
    ticket = await repo.ticket_for_client(effect.ref, ctx.sender.key)
    if ticket is None or Status(ticket.status) in _NOT_OPEN:
        # Rolled back: the client is still asked "about {ref} or new?" and can answer 2.
        raise DomainError(Msg(NOTE_TICKET_GONE, {"ref": effect.ref}))
    await TicketNote.create(ticket=ticket, author_key=ctx.sender.key, text=effect.text, at=ctx.now)
    await repo.audit(
        ticket, ctx.sender.key, "note_added", ticket.status, ticket.status, at=ctx.now
    )
    await refresh_card(ctx, ticket)
    text = effect.text
    if len(text) > STAFF_NOTE_CHARS:
        text = text[:STAFF_NOTE_CHARS].rstrip() + " […]"
    ctx.send_staff(Msg(NOTE_STAFF, {"ref": ticket.ref, "text": defuse(text)}))
    log.info("client message added to %s", ticket.ref)


async def _open_ticket_ref(client_key: str, room_id: str) -> str | None:
    """R1: the open ticket a new message may be about (the latest, preferably in this room)."""
    tickets = await repo.open_tickets_for(client_key)
    here = [ticket for ticket in tickets if ticket.room_id == room_id]
    chosen = here or tickets
    return chosen[-1].ref if chosen else None


# -- rooms -----------------------------------------------------------------------------------


def _is_client(ctx: Context) -> bool:
    if ctx.is_staff or ctx.in_staff_room:
        return False
    # A bridge account speaking in its own name (not "[nctalk] <nick> …") is no client.
    return ctx.sender.bridged or not ctx.services.identity.is_bridge(ctx.sender.user_id)


async def _client(ctx: Context) -> Client:
    return await repo.get_or_create_client(
        ctx.sender.key, now=ctx.now, display_name=ctx.sender.nick
    )


def _in_room(ctx: Context, room_id: str) -> Context:
    """The same event, answered in another room (answers still go to the same outbox)."""
    return dataclasses.replace(ctx, room_id=room_id, outgoing=ctx.outgoing)


async def _active_conversation(
    ctx: Context, *, note: bool = True
) -> tuple[Context, Conversation] | None:
    """The client's running intake: in this room, or in their private room if this is shared
    (with `note`, the shared room is told the answer is in the private room)."""
    running = await running_intake(ctx)
    if running is None:
        return None
    if not note:
        return _in_room(ctx, running.room_id), running.conversation
    return await _answered_where(ctx, running)


async def _answered_where(ctx: Context, running: RunningIntake) -> tuple[Context, Conversation]:
    """Where an intake answer is handled: here, or the private room it runs in (the shared
    room is then told so, and the client invited back if they left it)."""
    if running.room_id == ctx.room_id:
        return ctx, running.conversation
    client = await Client.get(key=ctx.sender.key)
    await _private_room(ctx, client)
    return _in_room(ctx, running.room_id), running.conversation


async def _conversation_context(ctx: Context) -> Context:
    """Where a new request is held: here, or the client's private room if this room is shared."""
    if not _is_shared(ctx):
        return ctx
    client = await _client(ctx)
    return _in_room(ctx, await _private_room(ctx, client))


async def _private_room(ctx: Context, client: Client) -> str:
    """The client's private room (created the first time); the shared room is told so."""
    try:
        return await private_room(ctx, client, ctx.room_id)
    except TransportError as error:
        log.warning("could not create a private room: %s", error)
        raise DomainError(Msg(ROOM_FAILED)) from None


def _timeouts(services: Services) -> tuple[timedelta, timedelta]:
    service = services.config.service
    return (
        timedelta(hours=service.intake_reminder_hours),
        timedelta(days=service.intake_expiry_days),
    )


# -- time-outs -------------------------------------------------------------------------------


async def sweep_intakes(services: Services, now: datetime) -> None:
    """Remind once after a silence, drop after the expiry delay (each exactly once)."""
    jobs = services.jobs
    if jobs is None:
        return
    remind_after, expire_after = _timeouts(services)
    # Intakes by e-mail (`EMAIL_ROOM`) have their own sweeper (`handlers.mail`).
    due = (
        await Conversation.filter(due_at__lte=now)
        .exclude(room_id=EMAIL_ROOM)
        .order_by("due_at", "id")
        .limit(500)
    )
    for conv in due:
        action, later = timeout_due(
            intake_from_data(conv.data), now, remind_after=remind_after, expire_after=expire_after
        )
        if action is None:  # nothing to do yet: look again when it is due
            await Conversation.filter(id=conv.id, version=conv.version).update(due_at=later)
            continue
        locale = await repo.locale_for(conv.client_key, services.config.service.default_locale)
        await jobs.run_job(
            f"intake-{action}:{conv.id}:{conv.version}",
            partial(_time_out, conv.id, conv.version, action),
            room_id=conv.room_id,
            locale=locale,
        )


async def _time_out(conv_id: int, version: int, action: str, ctx: Context) -> None:
    conv = await Conversation.get_or_none(id=conv_id)
    if conv is None or conv.version != version:
        return  # the client wrote meanwhile: this reminder is void
    remind_after, expire_after = _timeouts(ctx.services)
    intake = intake_from_data(conv.data)
    if action == "expire":
        transition = expire(intake, ctx.now, expire_after)
    else:
        transition = remind(intake, ctx.now, expire_after)
    updated = await Conversation.filter(id=conv.id, version=version).update(
        step=transition.intake.step.value,
        data=_stored_data(transition.intake),
        version=version + 1,
        updated_at=ctx.now,
        due_at=due_at(transition.intake, remind_after=remind_after, expire_after=expire_after),
    )
    if not updated:
        return
    replies = transition.replies
    if not room_is_private(ctx.services, conv.room_id, conv.client_key):
        # Others joined since the intake started: only the note (the first reply) says
        # nothing of the request; the question restated after it may be the summary.
        replies = replies[:1]
    for msg in replies:
        # A reminder may restate the summary: defused like every echo of the client's text.
        ctx.to_client(conv.room_id, conv.client_key, defuse(ctx.render(msg)))


SWEEPERS = [sweep_intakes]
