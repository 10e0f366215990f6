"""A ticket that ends (cancelled, declined, unsolvable) gives its future call's slot back."""

from __future__ import annotations

from datetime import timedelta

import pytest

from bot.storage.models import Booking, Client, Ticket
from bot.testing.harness import STAFF, STAFF_ROOM, BotHarness

DM = "!dm-alice:test"
ALICE = "@alice:test"


@pytest.fixture
async def bot(db_url):
    async with BotHarness.open(db_url) as harness:
        yield harness


async def _video_ticket_with_call(bot, start_in: timedelta) -> tuple[Ticket, Booking]:
    now = bot.clock()
    client = await Client.create(key=ALICE, created_at=now)
    ticket = await Ticket.create(
        ref="SP-2026-0001",
        kind="ticket",
        status="in_progress",
        category="usage",
        channel="video",
        client=client,
        room_id=DM,
        locale="fr",
        description="Les quotas ne se déclenchent pas.",
        created_at=now,
        first_response_at=now,
        assigned_to=STAFF,
    )
    start = now + start_in
    booking = await Booking.create(
        ticket=ticket,
        staff=STAFF,
        start=start,
        end=start + timedelta(minutes=45),
        slot_lock=f"{STAFF}|{start.isoformat()}",
        status="active",
        created_at=now,
    )
    return ticket, booking


async def test_unsolvable_frees_the_future_call(bot):
    ticket, booking = await _video_ticket_with_call(bot, timedelta(days=1))
    await bot.say(STAFF_ROOM, STAFF, "!unsolvable SP-2026-0001 needs a plugin change")
    booking = await Booking.get(id=booking.id)
    assert booking.status != "active" and booking.slot_lock is None
    assert (await Ticket.get(id=ticket.id)).status == "unsolvable"
    # The client hears the call is off.
    assert any(m.room_id == DM and "SP-2026-0001" in m.body for m in bot.transport.sent)


async def test_a_past_call_is_left_as_it_was(bot):
    _, booking = await _video_ticket_with_call(bot, -timedelta(days=1))
    await bot.say(STAFF_ROOM, STAFF, "!unsolvable SP-2026-0001 needs a plugin change")
    assert (await Booking.get(id=booking.id)).status == "active"
