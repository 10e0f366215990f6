"""A staff ✅ on a real card, end to end: the bot process on Synapse, real nio clients.

The ticket row is written straight into the bot's database (as the intake would have opened
it); `!estimate` then makes the bot post its card, the staff member reacts ✅ on it, and after
a SIGKILL and restart removing that ✅ still undoes the confirmation.
"""

from __future__ import annotations

import pytest
from nio import RoomRedactResponse, RoomSendResponse

from bot.domain.tickets import Status
from bot.storage.models import Ticket
from bot.testing.matrix import discard_messages, send_text, wait_for_message

from .conftest import intervention_ticket

pytestmark = pytest.mark.e2e

REF = "SP-2026-0901"


def plain_from(sender: str):
    """A new message (not an edit) from `sender`."""

    def match(event) -> bool:
        content = event.source.get("content", {})
        return event.sender == sender and "m.relates_to" not in content

    return match


async def test_staff_check_on_a_real_card_confirms_and_its_removal_after_restart_undoes(
    running_bot, bot_db
):
    bot_id = running_bot.bot_user_id
    staff = running_bot.staff
    staff_id = staff.user_id
    room = running_bot.staff_room_id
    await running_bot.wait_joined(staff, room)
    client, dm = await running_bot.new_client("alice")

    ticket = await intervention_ticket(REF, client.user_id, dm)

    # The estimate makes the bot post the card (it had none yet) and tell the client.
    await send_text(staff, room, f"!estimate {REF} 2h")
    card = await wait_for_message(
        staff, room, lambda e: e.sender == bot_id and e.body.startswith(f"🎫 {REF}"), timeout=30
    )
    estimate = await wait_for_message(client, dm, plain_from(bot_id), timeout=30)
    assert REF in estimate.body and "2h" in estimate.body
    assert (await Ticket.get(id=ticket.id)).card_event_id == card.event_id

    reacted = await staff.room_send(
        room,
        "m.reaction",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": card.event_id, "key": "✅"}},
    )
    assert isinstance(reacted, RoomSendResponse), reacted
    confirmed = await wait_for_message(
        staff,
        room,
        lambda e: plain_from(bot_id)(e) and REF in e.body and staff_id in e.body,
        timeout=30,
    )
    assert "2" in confirmed.body
    told = await wait_for_message(client, dm, plain_from(bot_id), timeout=30)
    assert REF in told.body
    row = await Ticket.get(id=ticket.id)
    assert row.status == Status.CONFIRMED
    assert row.staff_confirmed_by == staff_id
    assert row.confirmed_tickets == 2

    # A crash, then the staff member removes the ✅: the stored reaction still maps to the card.
    await running_bot.restart(kill=True)
    discard_messages(staff)
    redacted = await staff.room_redact(room, reacted.event_id)
    assert isinstance(redacted, RoomRedactResponse), redacted
    withdrawn = await wait_for_message(
        staff, room, lambda e: plain_from(bot_id)(e) and REF in e.body, timeout=40
    )
    assert staff_id in withdrawn.body
    row = await Ticket.get(id=ticket.id)
    assert row.status == Status.AWAITING_STAFF_CONFIRMATION
    assert row.staff_confirmed_by is None
