"""Reactions and their redactions act only in the room of the event they point at, and a ✅
is taken back only by someone who is staff at that moment (confidentiality issue, item 11: a
staff member confirmed a ticket with ✅, was demoted and left, then redacted that ✅ from
another room, and the ticket went back from confirmed to awaiting).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.domain.tickets import Channel, Status
from bot.storage.models import HandledEvent, Reaction, Ticket
from bot.testing.harness import STAFF, STAFF_ROOM, BotHarness, FakeClock
from tests.flows.test_booking_flow import (
    MONDAY_9H,
    active_bookings,
    offer_of,
    open_call_ticket,
    use_jitsi,
)
from tests.flows.test_staff_flow import open_ticket

pytestmark = pytest.mark.postgres

ALICE = "@alice:test"
DM = "!dm-alice:test"
LEAD = "@lead:test"  # staff through the staff room's power levels, not the config
LEAD_DM = "!dm-lead:test"
ROOM_A, ROOM_ELSEWHERE = "!alice-room:test", "!alice-elsewhere:test"


@pytest.fixture
async def bot(db_url: str) -> AsyncIterator[BotHarness]:
    async with BotHarness.open(db_url, clock=FakeClock(MONDAY_9H)) as harness:
        use_jitsi(harness)
        harness.transport.members[STAFF_ROOM].add(LEAD)
        harness.transport.powers[STAFF_ROOM][LEAD] = 50
        yield harness


async def confirmed_by(bot: BotHarness, staff: str) -> tuple[Ticket, str]:
    """An intervention estimated and confirmed by `staff`'s ✅ on its (real) card; the ✅."""
    ticket = await open_ticket(bot, channel=Channel.INTERVENTION)
    await bot.say(STAFF_ROOM, STAFF, f"!estimate {ticket.ref} 1h")
    assert ticket.card_event_id is not None
    await bot.react(STAFF_ROOM, staff, ticket.card_event_id, "✅")
    await ticket.refresh_from_db()
    assert ticket.status == Status.CONFIRMED and ticket.staff_confirmed_by == staff
    return ticket, bot.last_reaction_id


def demote(bot: BotHarness, user: str) -> None:
    bot.transport.powers[STAFF_ROOM].pop(user, None)
    bot.transport.members[STAFF_ROOM].discard(user)


async def status_of(ticket: Ticket) -> Status:
    await ticket.refresh_from_db()
    return Status(ticket.status)


async def test_a_demoted_member_cannot_take_back_their_check_from_another_room(bot):
    ticket, check = await confirmed_by(bot, LEAD)
    demote(bot, LEAD)
    # The path: from their direct chat with the bot…
    assert await bot.redact(LEAD_DM, LEAD, check) == []
    assert await status_of(ticket) == Status.CONFIRMED
    # …nor from the staff room itself (not staff any more), were they still in it.
    bot.transport.members[STAFF_ROOM].add(LEAD)
    assert await bot.redact(STAFF_ROOM, LEAD, check) == []
    assert await status_of(ticket) == Status.CONFIRMED
    assert ticket.staff_confirmed_by == LEAD
    assert await Reaction.exists(event_id=check)  # still the ✅ that confirmed it


async def test_a_check_is_taken_back_only_in_its_own_room(bot):
    ticket, check = await confirmed_by(bot, STAFF)
    assert await bot.redact(LEAD_DM, STAFF, check) == []
    assert await status_of(ticket) == Status.CONFIRMED
    # In the staff room, by staff: it works as before.
    sent = await bot.redact(STAFF_ROOM, STAFF, check)
    assert any(ticket.ref in s.body for s in sent)
    assert await status_of(ticket) == Status.AWAITING_STAFF_CONFIRMATION


async def test_the_handler_checks_the_room_even_when_the_dispatcher_cannot_tell(bot):
    # A ✅ recorded while its event is no longer known as handled (rows from an older
    # version): the dispatcher lets the redaction through, the handler still refuses it.
    ticket, check = await confirmed_by(bot, STAFF)
    await HandledEvent.filter(event_id=check).delete()
    assert await bot.redact(LEAD_DM, STAFF, check) == []
    assert await status_of(ticket) == Status.CONFIRMED
    assert await Reaction.exists(event_id=check)


async def test_a_check_on_a_card_from_another_room_does_nothing(bot):
    ticket = await open_ticket(bot, channel=Channel.INTERVENTION)
    await bot.say(STAFF_ROOM, STAFF, f"!estimate {ticket.ref} 1h")
    assert ticket.card_event_id is not None
    for key in ("✅", "👀", "❌"):
        assert await bot.react(LEAD_DM, STAFF, ticket.card_event_id, key) == []
    assert await status_of(ticket) == Status.AWAITING_STAFF_CONFIRMATION
    assert ticket.assigned_to is None
    assert not await Reaction.exists()


async def test_a_keycap_on_an_offer_counts_only_in_the_offer_s_room(bot):
    ticket = await open_call_ticket(bot, ROOM_A, ALICE)
    offer = await offer_of(ticket)
    assert offer.event_id is not None
    # The client themselves, from another room of theirs: nothing booked, nothing said.
    assert await bot.react(ROOM_ELSEWHERE, ALICE, offer.event_id, "2️⃣") == []
    assert await active_bookings() == []
    await bot.react(ROOM_A, ALICE, offer.event_id, "2️⃣")
    assert len(await active_bookings()) == 1
