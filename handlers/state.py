"""What the author of a plain-text message is in the middle of, loaded once per message.

The dispatcher calls `load_state` after taking the (room, sender) lock and routes the text to
the one handler declared for the situation found. The order is the product's:

1. the thread of a request's card in the staff room (staff answering a request made by
   e-mail), the rest of the staff room, then staff writing in a client's room;
2. a bridge account speaking in its own name (not a person: ignored);
3. a running intake, in this room or, when this room is shared, in the client's private room
   (its answers may be numbers, so it comes before slot choices);
4. a slot number while the client has an offer waiting in this room;
5. otherwise nothing is running: a new request.

Reading only: nothing here writes or sends.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.domain.intake import IntakeStep
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
