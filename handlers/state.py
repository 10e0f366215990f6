"""What the author of a plain-text message is in the middle of, loaded once per message.

The dispatcher calls `load_state` after taking the (room, sender) lock and routes the text to
the one handler declared for the situation found. The order is the product's:

1. the thread of a request's card in the staff room (staff answering a request made by
   e-mail), the rest of the staff room, then staff writing in a client's room;
2. a bridge account speaking in its own name (not a person: ignored);
3. a running intake, in this room or, when this room is shared, in the client's private room
   (its answers may be numbers, so it comes before slot choices);
4. a slot number while the client has an offer waiting in this room (a bare number: with
   both an offer and a rating question waiting, "4" picks the slot; "4/5", "4 great" or
   `!rate` rate);
5. the client's rating question in this room (`bot.domain.rating`): within 10 minutes of a
   rating given alone, any text is its comment (a number alone there rates again); while the
   question waits (48 hours, until answered), a text starting with a number is the rating
   (a bad number gets a clear answer) and a short text (under the intake's minimum
   description) the reminder of how to rate; a longer text is a new request;
6. otherwise nothing is running: a new request.

Reading only: nothing here writes or sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tortoise.expressions import Q

from bot.domain import rating as satisfaction
from bot.domain.intake import MIN_DESCRIPTION_CHARS, IntakeStep
from bot.domain.rating import RatingText
from bot.domain.slots import parse_slot_choice
from bot.events import IncomingText
from bot.routing import Context, SenderState, Situation
from bot.storage.models import Client, Conversation, SlotOffer, Ticket
from handlers.common import room_is_private


@dataclass(frozen=True, slots=True)
class RunningIntake:
    """The conversation an intake answer belongs to, and the room it is held in."""

    room_id: str
    conversation: Conversation


async def load_state(ctx: Context) -> SenderState:
    if ctx.in_staff_room:
        event = ctx.event
        root = event.thread_root if isinstance(event, IncomingText) else None
        if root is not None and ctx.is_staff:
            ticket = await Ticket.get_or_none(card_event_id=root)
            if ticket is not None:
                return SenderState(Situation.STAFF_THREAD, ticket)
        return SenderState(Situation.STAFF_ROOM)
    if ctx.is_staff:
        return SenderState(Situation.STAFF_IN_CLIENT_ROOM)
    identity = ctx.services.identity
    if not ctx.sender.bridged and identity.is_bridge(ctx.sender.user_id):
        return SenderState(Situation.NOT_A_CLIENT)
    running = await running_intake(ctx)
    if running is not None:
        return SenderState(Situation.INTAKE, running)
    offer = await offer_chosen_from(ctx.room_id, ctx.sender.key, ctx.args)
    if offer is not None:
        return SenderState(Situation.SLOT_CHOICE, offer)
    rating = await rating_answer(ctx.room_id, ctx.sender.key, ctx.args, ctx.now)
    if rating is not None:
        return SenderState(Situation.RATING, rating)
    return SenderState(Situation.IDLE)


async def running_intake(ctx: Context) -> RunningIntake | None:
    """The client's unfinished intake: in this room, or in their private room if this room
    is shared."""
    conv = await conversation(ctx.room_id, ctx.sender.key)
    if conv is not None and is_running(conv):
        return RunningIntake(ctx.room_id, conv)
    if not is_shared(ctx):
        return None
    client = await Client.get_or_none(key=ctx.sender.key)
    if client is None or client.private_room_id is None:
        return None
    conv = await conversation(client.private_room_id, ctx.sender.key)
    if conv is None or not is_running(conv):
        return None
    return RunningIntake(client.private_room_id, conv)


async def conversation(room_id: str, client_key: str) -> Conversation | None:
    return await Conversation.get_or_none(room_id=room_id, client_key=client_key)


def is_running(conv: Conversation) -> bool:
    return not IntakeStep(conv.step).is_terminal


async def latest_offer(room_id: str, client_key: str) -> SlotOffer | None:
    """The client's most recent active offer in this room (numbers refer to it)."""
    return (
        await SlotOffer.filter(
            active=True, ticket__room_id=room_id, ticket__client__key=client_key
        )
        .order_by("-created_at", "-id")
        .first()
    )


async def offer_chosen_from(room_id: str, client_key: str, text: str) -> SlotOffer | None:
    """The offer `text` picks a slot from: a slot number, from a client with an active offer
    in this room and no intake running here (intake steps take numbers too)."""
    if parse_slot_choice(text) is None:
        return None
    conv = await conversation(room_id, client_key)
    if conv is not None and is_running(conv):
        return None
    return await latest_offer(room_id, client_key)


def is_shared(ctx: Context) -> bool:
    """Someone besides the sender, the bot and staff could read this room (§7), so the
    sender's requests are held in their private room. For a Matrix sender a bridge account is
    other people (everyone in the bridged conversation reads it); a sender behind a bridge is
    never moved (a Talk user cannot be invited into a Matrix room)."""
    if ctx.sender.bridged:
        return False
    return not room_is_private(ctx.services, ctx.room_id, ctx.sender.key)


@dataclass(frozen=True, slots=True)
class RatingAnswer:
    """What a client's text is to the rating of `ticket_id`: a typed rating (`typed`, its
    stars None when the number is not 1–5), the comment of a rating given alone (`comment`),
    or neither (a short text while the question waits: remind how to rate)."""

    ticket_id: int
    typed: RatingText | None = None
    comment: str | None = None


async def rating_answer(
    room_id: str, client_key: str, text: str, now: datetime
) -> RatingAnswer | None:
    """The client's answer to their latest rating question in this room, if `text` is one."""
    candidates = (
        await Ticket.filter(client__key=client_key, room_id=room_id)
        .filter(
            Q(rating_asked_at__gte=now - satisfaction.ANSWER_WINDOW, rated_at__isnull=True)
            | Q(rated_at__gte=now - satisfaction.COMMENT_WINDOW, rating_comment__isnull=True)
        )
        .order_by("-rating_asked_at", "-id")
        .limit(10)
    )
    typed = satisfaction.parse_rating(text)
    latest_first = sorted(candidates, key=lambda t: t.rated_at or t.rating_asked_at or now)
    for ticket in reversed(latest_first):
        if satisfaction.comment_open(ticket.rated_at, ticket.rating_comment, now):
            # A number alone rates again ("5" after "4"); "2 things: …" is a comment.
            if typed is not None and typed.comment is None:
                return RatingAnswer(ticket.id, typed=typed)
            return RatingAnswer(ticket.id, comment=text)
        if satisfaction.typed_answer_open(ticket.rating_asked_at, ticket.rated_at, now):
            if typed is not None:
                return RatingAnswer(ticket.id, typed=typed)
            if len(text.strip()) < MIN_DESCRIPTION_CHARS:
                return RatingAnswer(ticket.id)
            return None
    return None
