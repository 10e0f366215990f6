"""Confidentiality around bridges and rooms that change (SPEC §7): a Matrix client in a bridged
room is moved to a private room; behind a bridge a nickname is not an identity, so nothing
stored is shown back and stored requests are neither listed nor changed there; a room that
gains members after a ticket was opened stops receiving its content.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from bot.i18n import Msg
from bot.routing import addressed
from bot.storage.models import AuditEntry, Booking, Client, Conversation, Ticket
from bot.testing.harness import BOT, STAFF, STAFF_ROOM, BotHarness, FakeClock, Sent
from bot.testing.harness import test_config as make_config
from bot.video.jitsi import JitsiProvider
from handlers.common import (
    BRIDGED_REFUSED,
    CONTINUE_JOINED,
    HELD_BACK_CLIENT,
    HELD_BACK_STAFF,
    MOVED_JOINED,
)
from tests.flows.test_confidentiality import everything_in

pytestmark = pytest.mark.postgres

MONDAY_9H = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)  # 09:00 in Paris: slots from 14:00
BRIDGE, TALK = "@nctalk:test", "!talk:test"
ALICE, BOB, CAROL = "@alice:test", "@bob:test", "@carol:test"
DM = "!dm-alice:test"
ALICE_KEY = f"bridge:{TALK}:Alice"
ALICE_MAIL = "alice.secret@client-a.example"
BOB_MAIL = "bob@client-b.example"
CAROL_MAIL = "carol.private@client-c.example"
ALICE_TEXT = "Alice-only: the quota named ZEBRA-QUOTA never triggers on survey 4242."
BOB_TEXT = "Bob-only: the theme CASSIOPEE hides the submit button on phones."
CAROL_TEXT = "Carol-only: the ORCHID-TOKEN invitations bounce since Monday morning."
SUPPORT = "support@localhost"  # the test configuration's `mail.from`
PACE = timedelta(seconds=4)  # under the flood limit between two messages of one sender


@pytest.fixture
async def bot(db_url: str) -> AsyncIterator[BotHarness]:
    config = make_config(bridges=[{"user_id": BRIDGE}])
    async with BotHarness.open(db_url, config, clock=FakeClock(MONDAY_9H)) as harness:
        harness.services.video = JitsiProvider(config.video.jitsi, now=harness.clock)
        harness.transport.members[TALK] = {BOT, BRIDGE}
        harness.transport.members[DM] = {BOT, ALICE}
        yield harness


async def say(bot: BotHarness, room: str, sender: str, text: str) -> list[Sent]:
    bot.clock.advance(PACE)
    return await bot.say(room, sender, text)


async def talk(bot: BotHarness, nick: str, text: str) -> list[Sent]:
    return await say(bot, TALK, BRIDGE, f"[nctalk] <{nick}> {text}")


def fr(bot: BotHarness, text: str, **params: object) -> str:
    return bot.catalogs.get("fr").render(Msg(text, params), bot.services.tz)


def readable(bot: BotHarness, room: str) -> str:
    return "\n".join(everything_in(bot, sent) for sent in bot.in_room(room))


# --- a Matrix client in a bridged room -----------------------------------------------------------


async def test_a_matrix_client_in_a_bridged_room_is_moved_to_a_private_room(bot):
    mixed = "!mixed:test"
    bot.transport.members[mixed] = {BOT, BRIDGE, CAROL}
    sent = await say(bot, mixed, CAROL, CAROL_TEXT)
    (created,) = bot.transport.created_rooms
    private = created["room_id"]
    assert created["invite"] == [CAROL, STAFF]
    assert [s.room_id for s in sent if s.room_id != STAFF_ROOM] == [mixed, private]
    for text in ("5", "!passer", "1", CAROL_MAIL, "oui"):
        await say(bot, mixed, CAROL, text)  # answered in the private room
    ticket = await Ticket.get(client__key=CAROL)
    assert ticket.room_id == private
    in_private = readable(bot, private)
    assert CAROL_MAIL in in_private and "ORCHID-TOKEN" in in_private  # her summary, in private
    in_mixed = readable(bot, mixed)
    assert in_mixed  # told where the conversation went
    for secret in ("ORCHID-TOKEN", CAROL_MAIL, ticket.ref):
        assert secret not in in_mixed, secret


# --- a nickname is not an identity ---------------------------------------------------------------


async def alice_opens_a_call_ticket(bot: BotHarness) -> Ticket:
    for text in (ALICE_TEXT, "8", "!passer", "2", ALICE_MAIL, "oui"):
        assert await talk(bot, "Alice", text), text
    ticket = await Ticket.get(client__key=ALICE_KEY)
    assert ticket.room_id == TALK and ticket.email == ALICE_MAIL
    return ticket


async def test_the_ics_of_a_bridged_client_carries_no_address(bot):
    await alice_opens_a_call_ticket(bot)
    sent = await talk(bot, "Alice", "1")
    (booking,) = await Booking.filter(status="active")
    assert any(booking.client_url in s.body for s in sent if s.room_id == TALK)
    (ics,) = [s for s in bot.in_room(TALK) if s.content.get("msgtype") == "m.file"]
    assert "BEGIN:VCALENDAR" in everything_in(bot, ics)
    assert ALICE_MAIL not in readable(bot, TALK).split("SP-2026-0001 est ouvert")[1]


async def test_someone_taking_a_bridged_nickname_sees_and_changes_nothing_stored(bot):
    ticket = await alice_opens_a_call_ticket(bot)
    # An address on file for the nickname (as an earlier version of the bot kept it).
    await Client.filter(key=ALICE_KEY).update(email=ALICE_MAIL)
    opened_at = len(bot.in_room(TALK))
    refused = addressed("Alice", fr(bot, BRIDGED_REFUSED, email=SUPPORT))

    # Bob renames himself "Alice" in the same Talk conversation.
    for command in (
        "!tickets",
        f"!status {ticket.ref}",
        f"!statut {ticket.ref.lower()}",
        f"!cancel {ticket.ref}",
        f"!annuler {ticket.ref}",
        "!cancel",
        "!status",
    ):
        sent = await talk(bot, "Alice", command)
        assert [(s.room_id, s.body) for s in sent] == [(TALK, refused)], command
    assert "Matrix" in refused and SUPPORT in refused  # the pointer to a private channel
    assert (await Ticket.get(id=ticket.id)).status == "open"
    assert not await AuditEntry.filter(ticket_id=ticket.id, action="cancelled_by_client")

    # A new request: the known address is neither offered nor taken with "oui".
    await talk(bot, "Alice", BOB_TEXT)  # R1: about the open ticket, or new?
    await talk(bot, "Alice", "2")
    for text in ("4", "!passer"):
        await talk(bot, "Alice", text)
    sent = await talk(bot, "Alice", "1")
    assert "À quelle adresse e-mail pouvons-nous vous contacter" in sent[-1].body
    sent = await talk(bot, "Alice", "oui")  # not an address: explained, asked again
    assert "adresse e-mail" in sent[-1].body
    summary = (await talk(bot, "Alice", BOB_MAIL))[-1].body
    assert BOB_MAIL in summary and "CASSIOPEE" in summary
    await talk(bot, "Alice", "oui")
    assert await Ticket.filter(email=BOB_MAIL, client__key=ALICE_KEY).count() == 1
    # The address on file is not changed from the bridged room.
    assert (await Client.get(key=ALICE_KEY)).email == ALICE_MAIL

    after = "\n".join(everything_in(bot, s) for s in bot.in_room(TALK)[opened_at:])
    assert ALICE_MAIL not in after
    assert "ZEBRA-QUOTA" not in after  # nothing of Alice's request either


async def test_a_bridged_intake_stored_with_a_known_address_does_not_show_it(bot):
    await talk(bot, "Alice", ALICE_TEXT)
    conv = await Conversation.get(client_key=ALICE_KEY)
    await Conversation.filter(id=conv.id).update(data={**conv.data, "known_email": ALICE_MAIL})
    sent = []
    for text in ("8", "!passer", "1"):
        sent += await talk(bot, "Alice", text)
    sent += await talk(bot, "Alice", "oui")
    assert not [s.body for s in sent if ALICE_MAIL in s.body]


async def test_the_owner_of_a_matrix_account_still_lists_and_cancels(bot):
    """The control: outside bridged rooms the same commands work."""
    for text in (ALICE_TEXT, "8", "!passer", "1", ALICE_MAIL, "oui"):
        await say(bot, DM, ALICE, text)
    ticket = await Ticket.get(client__key=ALICE)
    assert ticket.ref in (await say(bot, DM, ALICE, "!tickets"))[0].body
    assert ticket.ref in (await say(bot, DM, ALICE, f"!status {ticket.ref}"))[0].body
    await say(bot, DM, ALICE, f"!cancel {ticket.ref}")
    assert (await Ticket.get(id=ticket.id)).status == "cancelled"
    # A new request offers the address on file.
    for text in (BOB_TEXT, "4", "!passer"):
        await say(bot, DM, ALICE, text)
    assert ALICE_MAIL in (await say(bot, DM, ALICE, "1"))[-1].body


# --- a room that gains members -------------------------------------------------------------------


async def test_a_room_gaining_a_member_gets_a_notice_and_the_booking_goes_private(bot):
    for text in (ALICE_TEXT, "8", "!passer", "2", ALICE_MAIL, "oui"):
        await say(bot, DM, ALICE, text)
    ticket = await Ticket.get(client__key=ALICE)
    assert ticket.room_id == DM and "1️⃣" in bot.in_room(DM)[-1].body  # the offer
    shared_before = len(bot.in_room(DM))

    bot.transport.members[DM].add(BOB)  # someone else joins
    sent = await say(bot, DM, ALICE, "1")
    (booking,) = await Booking.filter(status="active")
    (created,) = bot.transport.created_rooms
    private = created["room_id"]
    assert created["invite"] == [ALICE, STAFF]

    # The confirmation with the link, and the .ics, go to the private room.
    in_private = [s for s in sent if s.room_id == private]
    assert any(booking.client_url and booking.client_url in s.body for s in in_private)
    assert [s for s in in_private if s.content.get("msgtype") == "m.file"]
    # The shared room only learns why, once and without content.
    in_shared = bot.in_room(DM)[shared_before:]
    assert [s.body for s in in_shared] == [fr(bot, MOVED_JOINED)]
    assert (await Ticket.get(id=ticket.id)).room_id == private
    assert await AuditEntry.filter(ticket_id=ticket.id, action="moved_to_private_room").exists()

    # What follows goes to the private room directly: staff take it, the reminder comes.
    await bot.react(STAFF_ROOM, STAFF, ticket.card_event_id or "", "👀")
    bot.clock.now = booking.start - timedelta(minutes=14)
    await bot.sweep()
    assert len(bot.in_room(DM)) == shared_before + 1
    assert booking.client_url and booking.client_url in bot.in_room(private)[-1].body
    since = "\n".join(everything_in(bot, s) for s in bot.in_room(DM)[shared_before:])
    for secret in ("ZEBRA-QUOTA", ALICE_MAIL, ticket.ref, booking.client_url):
        assert secret not in since, secret


async def test_an_existing_private_room_is_reused_and_said_so(bot):
    for text in (ALICE_TEXT, "8", "!passer", "1", ALICE_MAIL, "oui"):
        await say(bot, DM, ALICE, text)
    ticket = await Ticket.get(client__key=ALICE)
    bot.transport.members["!shared:test"] = {BOT, ALICE, BOB}
    await say(bot, "!shared:test", ALICE, "!tickets")  # creates her private room
    (created,) = bot.transport.created_rooms
    before = len(bot.in_room(DM))
    bot.transport.members[DM].add(CAROL)
    await bot.react(STAFF_ROOM, STAFF, ticket.card_event_id or "", "👀")
    assert [s.body for s in bot.in_room(DM)[before:]] == [fr(bot, CONTINUE_JOINED)]
    assert ticket.ref in bot.in_room(created["room_id"])[-1].body
    assert len(bot.transport.created_rooms) == 1


async def test_a_bridged_room_gaining_a_matrix_member_holds_ticket_content_back(bot):
    ticket = await alice_opens_a_call_ticket(bot)
    before = len(bot.in_room(TALK))
    bot.transport.members[TALK].add(CAROL)
    sent = await talk(bot, "Alice", "1")  # her slot choice: booked, but not said there
    (booking,) = await Booking.filter(status="active")
    in_talk = [s for s in sent if s.room_id == TALK]
    assert [s.body for s in in_talk] == [
        addressed("Alice", fr(bot, HELD_BACK_CLIENT, email=SUPPORT))
    ]
    staff = [s.body for s in sent if s.room_id == STAFF_ROOM]
    assert fr(bot, HELD_BACK_STAFF, ref=ticket.ref) in staff
    assert booking.client_url not in readable(bot, TALK)
    assert len(bot.in_room(TALK)) == before + 1
    assert bot.transport.created_rooms == []  # a Talk user cannot be invited


async def test_an_intake_reminder_in_a_room_that_gained_members_restates_nothing(bot):
    for text in (ALICE_TEXT, "8", "!passer", "1", ALICE_MAIL):
        await say(bot, DM, ALICE, text)  # at the summary
    bot.transport.members[DM].add(BOB)
    bot.clock.advance(timedelta(hours=25))
    sent = await bot.sweep()
    (reminder,) = [s for s in sent if s.room_id == DM]
    assert reminder.body.startswith("Rappel")
    assert "ZEBRA-QUOTA" not in reminder.body and ALICE_MAIL not in reminder.body


async def test_forget_me_and_confirm_are_refused_behind_a_bridge(bot):
    """A nickname proves nothing: neither erasing nor consenting to billing on its word."""
    from bot.domain.tickets import Status
    from tests.flows.test_interventions_flow import make_ticket

    ticket = await make_ticket(
        bot,
        client_key=f"bridge:{TALK}:Alice",
        room_id=TALK,
        status=Status.AWAITING_CLIENT_CONFIRMATION,
    )
    for command in ("!forget-me confirm", f"!confirm {ticket.ref}"):
        sent = await bot.say(TALK, BRIDGE, f"[nctalk] <Alice> {command}")
        assert len(sent) == 1
        assert sent[0].room_id == TALK
        assert "discussion directe sur Matrix" in sent[0].body  # French first
    again = await Ticket.get(id=ticket.id)
    assert again.status == Status.AWAITING_CLIENT_CONFIRMATION  # nothing was confirmed
