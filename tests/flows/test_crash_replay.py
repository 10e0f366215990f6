"""Outside effects and the commit: the process dies after a handler's outside effects (a room
created, people invited, a meeting created, a consent e-mail prepared) and before its
transaction commits. The event is then delivered again, as the homeserver does after a
restart, and the client must see each effect once: one private room, one meeting, one e-mail
whose link works."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.config import MailConfig
from bot.consent import Confirmed, confirm
from bot.mail import Mailer
from bot.storage.models import Booking, ConfirmationToken, Conversation
from bot.testing.harness import BOT, STAFF, STAFF_ROOM, BotHarness, Crash, FakeClock
from bot.tokens import token_hash
from tests.flows.test_booking_flow import MONDAY_9H, open_call_ticket, use_jitsi
from tests.flows.test_interventions_flow import ALICE_MAIL, make_ticket, token_from

pytestmark = pytest.mark.postgres

ALICE = "@alice:test"
BOB = "@bob:test"
SHARED = "!shared:test"
DM = "!dm-alice:test"
DESCRIPTION = "Mon questionnaire n'enregistre plus les réponses depuis la mise à jour."


@pytest.fixture
async def bot(db_url: str) -> AsyncIterator[BotHarness]:
    async with BotHarness.open(db_url, clock=FakeClock(MONDAY_9H)) as harness:
        use_jitsi(harness)
        yield harness


async def crash_then_replay(bot: BotHarness, event: Any) -> list[Any]:
    """Deliver `event`, dying before its commit; restart; deliver it again."""
    with bot.crash_at_commit(), pytest.raises(Crash):
        await bot.deliver(event)
    transport = bot.transport  # the homeserver outlives the bot
    video = bot.services.video
    mailer = bot.services.mailer
    await bot.restart()
    assert bot.transport is transport
    bot.services.video = video
    bot.services.mailer = mailer
    return await bot.deliver(event)


async def test_a_request_moved_to_a_private_room_creates_one_room(bot):
    bot.transport.members[SHARED] = {BOT, ALICE, BOB, STAFF}
    sent = await crash_then_replay(bot, bot.text_event(SHARED, ALICE, DESCRIPTION))

    assert len(bot.transport.created_rooms) == 1  # the replay found the room of the first try
    private = bot.transport.created_rooms[0]["room_id"]
    conv = await Conversation.get(client_key=ALICE)
    assert conv.room_id == private
    assert [s.room_id for s in sent if s.room_id != SHARED] == [private]
    # Invited once: the replay saw the client already in the room.
    assert bot.transport.invites.count((private, ALICE)) <= 1


async def test_a_booked_call_gets_one_booking_and_one_meeting(bot):
    meetings: list[str] = []
    provider = bot.services.video
    create = provider.create_meeting

    async def counting_create(**kwargs: Any) -> Any:
        meetings.append(kwargs["booking_id"])
        return await create(**kwargs)

    provider.create_meeting = counting_create  # type: ignore[method-assign]
    ticket = await open_call_ticket(bot, DM, ALICE)
    sent = await crash_then_replay(bot, bot.text_event(DM, ALICE, "1"))

    (booking,) = await Booking.filter(ticket_id=ticket.id, status="active")
    assert booking.client_url is not None
    # Asked twice (before the crash and on the replay), for the same meeting both times.
    assert len(meetings) == 2 and len(set(meetings)) == 1
    assert sum(booking.client_url in s.body for s in sent if s.room_id == DM) == 1


async def test_a_consent_mail_is_sent_once_after_the_commit_and_its_link_works(bot, smtp):
    inbox, port = smtp
    bot.services.mailer = Mailer(MailConfig(host="127.0.0.1", port=port), timeout=5)
    ticket = await make_ticket(bot, email_address=ALICE_MAIL)
    event = bot.text_event(STAFF_ROOM, STAFF, f"!estimate {ticket.ref} 3h")

    with bot.crash_at_commit(), pytest.raises(Crash):
        await bot.deliver(event)
    assert inbox.messages == []  # nothing is mailed for a change that was never committed
    assert not await ConfirmationToken.exists()

    mailer = bot.services.mailer
    await bot.restart()
    bot.services.mailer = mailer
    await bot.deliver(event)

    assert len(inbox.messages) == 1
    recipients, message = inbox.messages[0]
    assert recipients == [ALICE_MAIL]
    token = token_from(message)
    stored = await ConfirmationToken.get(ticket_id=ticket.id)
    assert stored.token_hash == token_hash(token, bot.config.web.secret)
    result = await confirm(token, now=bot.clock(), secret=bot.config.web.secret)
    assert isinstance(result, Confirmed)
