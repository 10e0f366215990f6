"""Call booking through the real router, dispatcher, outbox and database (SQLite, PostgreSQL).

Tickets are inserted directly and offered slots inside a job, as the intake module does right
after opening a call ticket, so these tests do not depend on the intake conversation.

The clock starts on Monday 2026-11-30 at 09:00 in Paris: the R4 window ends on Thursday
2026-12-03 at 18:00, and with 4 hours of notice the first free slot is Monday 14:00.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import icalendar
import jwt
import pytest
import yarl

from bot.config import Config
from bot.matrix.inbound import IncomingText
from bot.routing import Context
from bot.storage import repo
from bot.storage.models import (
    AuditEntry,
    Block,
    Booking,
    Conversation,
    Notice,
    Reminder,
    SlotOffer,
    StaffFeed,
    Ticket,
)
from bot.testing.fake_bbb import FakeBigBlueButton
from bot.testing.harness import STAFF, STAFF_ROOM, BotHarness, FakeClock, Sent
from bot.testing.harness import test_config as make_config
from bot.tokens import token_hash
from bot.video import Meeting, VideoError, build_provider
from bot.video.jitsi import JitsiProvider
from handlers import booking, meetings
from handlers.booking import offer_slots

PARIS = ZoneInfo("Europe/Paris")
MONDAY_9H = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)  # 09:00 in Paris
WINDOW_END = datetime(2026, 12, 3, 18, 0, tzinfo=PARIS)
ALICE, BOB = "@alice:test", "@bob:test"
ROOM_A, ROOM_B = "!alice-room:test", "!bob-room:test"
BBB_SECRET = "8cd8ef52e8e101574e400365b55e11a6"
KEYCAPS = ("1️⃣", "2️⃣", "3️⃣", "4️⃣", "5️⃣")


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture
async def bot(db_url: str) -> AsyncIterator[BotHarness]:
    async with BotHarness.open(db_url, clock=FakeClock(MONDAY_9H)) as harness:
        use_jitsi(harness)
        yield harness


def use_jitsi(bot: BotHarness, config: Config | None = None) -> None:
    bot.services.video = JitsiProvider((config or bot.config).video.jitsi, now=bot.clock)


async def open_call_ticket(
    bot: BotHarness,
    room: str,
    user: str,
    number: int = 1,
    *,
    channel: str = "video",
    email: str | None = "client@example.org",
) -> Ticket:
    """Insert a call ticket and offer its slots inside a job (as the intake module does)."""
    ref = f"SP-2026-{number:04d}"

    async def job(ctx: Context) -> None:
        client = await repo.get_or_create_client(user, now=ctx.now)
        ticket = await Ticket.create(
            ref=ref,
            kind="ticket",
            status="open",
            category="usage",
            channel=channel,
            client=client,
            room_id=room,
            locale="fr",
            description="Les quotas ne se déclenchent pas comme prévu.",
            email=email,
            created_at=ctx.now,
            sla_due=ctx.services.calendar.deadline(ctx.now, 3),
        )
        await offer_slots(ctx, ticket)

    assert await bot.dispatcher.run_job(f"test-offer:{ref}", job, room_id=room)
    await bot.deliverer.deliver_pending()
    return await Ticket.get(ref=ref)


async def offer_of(ticket: Ticket) -> SlotOffer:
    offer = await SlotOffer.filter(ticket_id=ticket.id, active=True).first()
    assert offer is not None
    return offer


def starts(offer: SlotOffer) -> list[datetime]:
    return [datetime.fromisoformat(slot["start"]) for slot in offer.slots]


def offer_messages(bot: BotHarness, room: str) -> list[Sent]:
    return [s for s in bot.in_room(room) if s.type == "m.room.message" and "1️⃣" in s.body]


def files(bot: BotHarness, room: str) -> list[Sent]:
    return [s for s in bot.in_room(room) if s.content.get("msgtype") == "m.file"]


def ics_of(bot: BotHarness, index: int = -1) -> icalendar.Event:
    data, mimetype, filename = bot.transport.uploads[index]
    assert mimetype == "text/calendar"
    assert filename.endswith(".ics")
    calendar = icalendar.Calendar.from_ical(data)
    (event,) = calendar.walk("VEVENT")
    return event


def fr(bot: BotHarness, text: str, **params: Any) -> str:
    """A booking message as the French client reads it (whatever the catalog holds)."""
    from bot.i18n import Msg

    return bot.catalogs.get("fr").render(Msg(text, params), bot.services.tz)


def when_fr(bot: BotHarness, moment: datetime) -> str:
    return bot.catalogs.get("fr").format_datetime_long(moment, bot.services.tz)


async def active_bookings() -> list[Booking]:
    return await Booking.filter(status="active").order_by("start")


# --- offers ----------------------------------------------------------------------------------


async def test_offer_lists_five_spread_slots_inside_the_window(bot):
    ticket = await open_call_ticket(bot, ROOM_A, ALICE)
    offer = await offer_of(ticket)
    slot_starts = starts(offer)
    assert len(slot_starts) == 5
    assert slot_starts == sorted(slot_starts)
    assert all(s >= MONDAY_9H + timedelta(hours=4) for s in slot_starts)
    assert all(s + timedelta(minutes=45) <= WINDOW_END for s in slot_starts)
    assert len({s.astimezone(PARIS).date() for s in slot_starts}) >= 3  # spread over days
    (message,) = offer_messages(bot, ROOM_A)
    # One keycap line per slot, in French, in the service time zone.
    assert "1️⃣ lundi 30 novembre 2026 à 14:00" in message.body
    for n, start in enumerate(slot_starts):
        assert f"{KEYCAPS[n]} {when_fr(bot, start)}" in message.body
    assert "!rdv SP-2026-0001" in message.body  # the French alias of !book
    # The event id is remembered at delivery, for keycap reactions (and after a restart).
    assert offer.event_id == message.event_id
    assert await AuditEntry.filter(ticket_id=ticket.id, action="slots_offered").exists()


async def test_no_slot_in_the_window_offers_later_ones_and_warns_staff(bot):
    # Everyone away until the end of the window: the first slots after it are offered.
    await bot.say(STAFF_ROOM, STAFF, "!block 2026-11-30 2026-12-03")
    ticket = await open_call_ticket(bot, ROOM_A, ALICE)
    slot_starts = starts(await offer_of(ticket))
    assert slot_starts and all(s > WINDOW_END for s in slot_starts)
    assert slot_starts[0] == datetime(2026, 12, 4, 9, 0, tzinfo=PARIS)
    (warning,) = [s for s in bot.in_room(STAFF_ROOM) if "SP-2026-0001" in s.body and "⚠️" in s.body]
    assert when_fr(bot, WINDOW_END) in warning.body
    assert when_fr(bot, slot_starts[0]) in warning.body


async def test_nothing_free_at_all_tells_client_and_staff(bot):
    await bot.say(STAFF_ROOM, STAFF, "!block 2026-11-30 2026-12-31")
    ticket = await open_call_ticket(bot, ROOM_A, ALICE)
    assert not await SlotOffer.filter(ticket_id=ticket.id).exists()
    assert bot.in_room(ROOM_A)[-1].body == fr(bot, booking.NO_SLOTS_CLIENT, ref=ticket.ref)
    assert any("🚨" in s.body and ticket.ref in s.body for s in bot.in_room(STAFF_ROOM))


# --- choosing --------------------------------------------------------------------------------


async def test_choose_by_number_books_sends_link_ics_and_tells_staff(bot):
    ticket = await open_call_ticket(bot, ROOM_A, ALICE)
    offer = await offer_of(ticket)
    chosen = starts(offer)[3]  # Wednesday 11:00

    sent = await bot.say(ROOM_A, ALICE, "4")

    (call,) = await active_bookings()
    assert call.ticket_id == ticket.id
    assert call.start == chosen and call.end == chosen + timedelta(minutes=45)
    assert call.staff == STAFF
    assert call.slot_lock == f"{STAFF}|{chosen.astimezone(UTC).isoformat()}"
    assert call.provider == "jitsi" and call.client_url and call.staff_url
    assert call.client_url.startswith("https://jitsi.test/support-")

    client_messages = [s for s in sent if s.room_id == ROOM_A]
    confirmation = client_messages[0]
    assert "mercredi 2 décembre 2026 à 11:00" in confirmation.body
    assert call.client_url in confirmation.body
    assert confirmation.content["msgtype"] == "m.notice"
    # The invitation is uploaded to the client's room as a file.
    (file_event,) = files(bot, ROOM_A)
    assert file_event.content["info"]["mimetype"] == "text/calendar"
    event = ics_of(bot)
    assert event.decoded("dtstart") == call.start
    assert event.decoded("dtend") == call.end
    assert event["dtstart"].params["TZID"] == "Europe/Paris"
    assert str(event["location"]) == call.client_url
    assert str(event["uid"]) == "support-call-sp-2026-0001@127.0.0.1"
    assert str(event["organizer"]) == "mailto:support@localhost"
    assert str(event["attendee"]) == "mailto:client@example.org"
    assert event.walk("VALARM")
    calendar = icalendar.Calendar.from_ical(bot.transport.uploads[-1][0])
    assert calendar.walk("VTIMEZONE")[0]["tzid"] == "Europe/Paris"
    assert str(calendar["method"]) == "REQUEST"

    staff_notes = [s for s in sent if s.room_id == STAFF_ROOM and call.staff_url in s.body]
    assert staff_notes and ticket.ref in staff_notes[0].body
    assert "mercredi 2 décembre 2026 à 11:00" in staff_notes[0].body
    # The card shows the call; the offer is used up; reminders are stored; audited.
    assert any("Call:" in s.body or "Appel" in s.body for s in sent if s.room_id == STAFF_ROOM)
    assert not await SlotOffer.filter(ticket_id=ticket.id, active=True).exists()
    offsets = sorted(r.offset_minutes for r in await Reminder.filter(booking_id=call.id))
    assert offsets == [15, 24 * 60]
    assert await AuditEntry.filter(ticket_id=ticket.id, action="booked").exists()


async def test_choose_by_keycap_reaction_on_the_offer(bot):
    ticket = await open_call_ticket(bot, ROOM_A, ALICE)
    offer = await offer_of(ticket)
    # Someone else's reaction, and a keycap on another message, do nothing.
    assert await bot.react(ROOM_A, BOB, offer.event_id, "2️⃣") == []
    assert await bot.react(ROOM_A, ALICE, "$not-the-offer", "2️⃣") == []
    assert await active_bookings() == []

    await bot.react(ROOM_A, ALICE, offer.event_id, "4️⃣")
    (call,) = await active_bookings()
    assert call.start == starts(offer)[3]
    # Without the emoji variation selector, as some clients send it; the offer is used up.
    sent = await bot.react(ROOM_A, ALICE, offer.event_id, "1\u20e3")
    assert [s.body for s in sent] == [fr(bot, booking.OFFER_OUTDATED, ref=ticket.ref)]
    assert len(await active_bookings()) == 1


async def test_keycap_reaction_works_after_a_restart(bot):
    ticket = await open_call_ticket(bot, ROOM_A, ALICE)
    offer = await offer_of(ticket)
    await bot.restart()
    use_jitsi(bot)
    await bot.react(ROOM_A, ALICE, offer.event_id, "2️⃣")
    (call,) = await active_bookings()
    assert call.start == starts(offer)[1]


async def test_numbers_out_of_range_and_other_text(bot):
    ticket = await open_call_ticket(bot, ROOM_A, ALICE)
    # 6–9 are answered with the range (a bare number is not a new request either).
    sent = await bot.say(ROOM_A, ALICE, "7")
    assert [s.body for s in sent] == [
        bot.catalogs.get("fr").render(booking_msg(booking.CHOOSE_RANGE, n=5), bot.services.tz)
    ]
    # A number from someone without an offer in this room books nothing.
    await bot.say(ROOM_A, BOB, "1")
    # Other text is not a choice (the intake module reads it).
    await bot.say(ROOM_A, ALICE, "12")
    await bot.say(ROOM_A, ALICE, "Merci beaucoup !")
    assert await active_bookings() == []
    assert (await offer_of(ticket)).active


def booking_msg(pair: tuple[str, str], n: int) -> Any:
    from bot.i18n import Msg

    return Msg(pair[0], {}, pair[1], n)


async def test_a_number_during_an_intake_is_left_to_the_intake(bot):
    ticket = await open_call_ticket(bot, ROOM_A, ALICE)
    conv = await Conversation.create(
        room_id=ROOM_A, client_key=ALICE, step="category", data={}, updated_at=bot.clock()
    )
    assert not await booking.is_slot_choice(ROOM_A, ALICE, "2")
    await booking.choose_by_number(_text_ctx(bot, ROOM_A, ALICE, "2"))
    assert await active_bookings() == []
    # Once the intake is over, the number is a slot choice again.
    conv.step = "done"
    await conv.save()
    assert await booking.is_slot_choice(ROOM_A, ALICE, "2")
    await bot.say(ROOM_A, ALICE, "2")
    (call,) = await active_bookings()
    assert call.ticket_id == ticket.id


def _text_ctx(bot: BotHarness, room: str, sender: str, text: str) -> Context:
    from bot.identity import Sender

    event = IncomingText(
        event_id=bot.next_event_id(),
        room_id=room,
        sender=sender,
        body=text,
        ts=bot.clock(),
        msgtype="m.text",
    )
    return Context(
        event=event,
        room_id=room,
        sender=Sender(sender, sender),
        services=bot.services,
        now=bot.clock(),
        tr=bot.catalogs.get("fr"),
        is_staff=False,
        args=text,
    )


async def test_english_client_gets_english_dates(bot):
    await bot.say(ROOM_A, ALICE, "!lang en")
    ticket = await open_call_ticket(bot, ROOM_A, ALICE)
    assert "Tuesday, December 1, 2026 at 9:00 AM" in offer_messages(bot, ROOM_A)[-1].body
    sent = await bot.say(ROOM_A, ALICE, "3")
    assert "Tuesday, December 1, 2026 at 9:00 AM" in sent[0].body
    assert ticket.ref in sent[0].body


async def test_bridged_client_chooses_by_number(db_url):
    config = make_config(bridges=[{"user_id": "@bridge:test"}])
    async with BotHarness.open(db_url, config=config, clock=FakeClock(MONDAY_9H)) as bot:
        use_jitsi(bot)
        talk_room = "!talk:test"
        client_key = f"bridge:{talk_room}:Alice"
        await open_call_ticket(bot, talk_room, client_key)
        (offer_message,) = offer_messages(bot, talk_room)
        assert offer_message.body.startswith("Alice: ")
        assert "formatted_body" not in offer_message.content  # plain text only
        assert fr(bot, booking.OFFER_HOW_BRIDGED, ref="SP-2026-0001") in offer_message.body
        assert fr(bot, booking.OFFER_HOW, ref="SP-2026-0001") not in offer_message.body

        sent = await bot.say(talk_room, "@bridge:test", "[nctalk] <Alice> 2")
        (call,) = await active_bookings()
        assert sent[0].body.startswith("Alice: ") and call.client_url in sent[0].body
        # Another nickname behind the same bridge has no offer.
        await bot.say(talk_room, "@bridge:test", "[nctalk] <Bob> 1")
        assert len(await active_bookings()) == 1


# --- atomic booking --------------------------------------------------------------------------


@pytest.mark.parametrize("precheck", [True, False], ids=["with-precheck", "constraint-only"])
async def test_two_clients_choosing_the_same_slot_at_once_get_one_booking(
    bot, monkeypatch, precheck
):
    if not precheck:
        # Leave only the database constraint between the two transactions.
        async def no_conflict(*args: object) -> bool:
            return False

        monkeypatch.setattr(booking, "_conflicts", no_conflict)
    alice_ticket = await open_call_ticket(bot, ROOM_A, ALICE, 1)
    bob_ticket = await open_call_ticket(bot, ROOM_B, BOB, 2)
    shared = starts(await offer_of(alice_ticket))[0]
    assert starts(await offer_of(bob_ticket))[0] == shared
    before = len(bot.transport.sent)

    events = [
        IncomingText(
            event_id=bot.next_event_id(),
            room_id=room,
            sender=user,
            body="1",
            ts=bot.clock(),
            msgtype="m.text",
        )
        for room, user in ((ROOM_A, ALICE), (ROOM_B, BOB))
    ]
    await bot.dispatcher.on_batch(events)  # both senders handled concurrently
    await bot.deliverer.deliver_pending()

    (call,) = await Booking.filter(start=shared)
    assert call.status == "active"
    winner, loser = (
        (alice_ticket, bob_ticket)
        if call.ticket_id == alice_ticket.id
        else (bob_ticket, alice_ticket)
    )
    assert await active_bookings() == [call]
    loser_room = loser.room_id
    told = [s.body for s in bot.transport.sent[before:] if s.room_id == loser_room]
    assert told[0] == fr(bot, booking.SLOT_TAKEN)
    fresh = await offer_of(loser)
    assert shared not in starts(fresh)
    assert len(starts(fresh)) == 5
    assert offer_messages(bot, loser_room)[-1].event_id == fresh.event_id
    # The loser can book from the new offer.
    await bot.say(loser_room, ALICE if loser is alice_ticket else BOB, "1")
    assert len(await active_bookings()) == 2
    assert winner.id != loser.id


async def test_the_database_refuses_a_second_active_booking_of_a_slot(bot):
    ticket = await open_call_ticket(bot, ROOM_A, ALICE)
    start = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    lock = booking.slot_lock(STAFF, start)
    common = {
        "ticket": ticket,
        "staff": STAFF,
        "start": start,
        "end": start + timedelta(minutes=45),
    }
    first = await Booking.create(slot_lock=lock, created_at=bot.clock(), **common)
    from tortoise.exceptions import IntegrityError

    with pytest.raises(IntegrityError):
        await Booking.create(slot_lock=lock, created_at=bot.clock(), **common)
    # A cancelled booking releases its lock (NULLs never collide).
    first.slot_lock, first.status = None, "cancelled"
    await first.save()
    await Booking.create(slot_lock=None, status="cancelled", created_at=bot.clock(), **common)
    await Booking.create(slot_lock=lock, created_at=bot.clock(), **common)


async def test_a_block_added_after_the_offer_makes_the_slot_taken(bot):
    ticket = await open_call_ticket(bot, ROOM_A, ALICE)
    first = starts(await offer_of(ticket))[0]
    local = first.astimezone(PARIS)
    await bot.say(STAFF_ROOM, STAFF, f"!block {local:%Y-%m-%d} {local:%H:%M}-{local.hour + 1}:00")
    sent = await bot.say(ROOM_A, ALICE, "1")
    assert await active_bookings() == []
    assert sent[0].body == fr(bot, booking.SLOT_TAKEN)
    assert first not in starts(await offer_of(ticket))


async def test_a_slot_too_close_to_now_is_refused_with_new_times(bot):
    ticket = await open_call_ticket(bot, ROOM_A, ALICE)
    first = starts(await offer_of(ticket))[0]
    bot.clock.now = first - timedelta(minutes=30)
    sent = await bot.say(ROOM_A, ALICE, "1")
    assert await active_bookings() == []
    assert sent[0].body == fr(bot, booking.SLOT_TOO_LATE)
    assert all(s > bot.clock.now for s in starts(await offer_of(ticket)))


# --- rescheduling and cancelling -------------------------------------------------------------


async def test_book_again_reschedules_and_frees_the_old_slot(bot):
    alice_ticket = await open_call_ticket(bot, ROOM_A, ALICE, 1)
    await bot.say(ROOM_A, ALICE, "1")
    (old,) = await active_bookings()
    old_start = old.start
    # While Alice holds it, nobody is offered her slot.
    bob_ticket = await open_call_ticket(bot, ROOM_B, BOB, 2)
    assert old_start not in starts(await offer_of(bob_ticket))

    sent = await bot.say(ROOM_A, ALICE, "!rdv SP-2026-0001")
    assert when_fr(bot, old_start) in sent[0].body  # "currently booked for …"
    assert (await Booking.get(id=old.id)).status == "active"  # kept until a new choice
    new_offer = await offer_of(alice_ticket)
    target = starts(new_offer)[2]
    await bot.say(ROOM_A, ALICE, "3")

    old = await Booking.get(id=old.id)
    assert old.status == "cancelled" and old.slot_lock is None
    assert not await Reminder.filter(booking_id=old.id).exists()
    (current,) = await Booking.filter(ticket_id=alice_ticket.id, status="active")
    assert current.start == target
    assert await Reminder.filter(booking_id=current.id).exists()
    assert any(
        when_fr(bot, old_start) in s.body and current.staff_url in s.body
        for s in bot.in_room(STAFF_ROOM)
    )
    # The calendar event is moved (same UID, higher SEQUENCE), not duplicated.
    first_ics, second_ics = ics_of(bot, 0), ics_of(bot, -1)
    assert first_ics["uid"] == second_ics["uid"]
    assert int(second_ics["sequence"]) > int(first_ics["sequence"])
    assert await AuditEntry.filter(ticket_id=alice_ticket.id, action="rebooked").exists()

    # Alice's old slot is free again: Bob is offered it (the soonest slot) and books it.
    await bot.say(ROOM_B, BOB, "!book")
    assert starts(await offer_of(bob_ticket))[0] == old_start
    await bot.say(ROOM_B, BOB, "1")
    (bobs,) = await Booking.filter(ticket_id=bob_ticket.id, status="active")
    assert bobs.start == old_start


async def test_book_refuses_other_clients_tickets_and_non_call_tickets(bot):
    await open_call_ticket(bot, ROOM_A, ALICE, 1)
    await open_call_ticket(bot, ROOM_B, BOB, 2, channel="messaging")
    sent = await bot.say(ROOM_B, BOB, "!book SP-2026-0001")
    assert "SP-2026-0001" in sent[0].body
    assert not await SlotOffer.filter(ticket__client__key=BOB).exists()
    sent = await bot.say(ROOM_B, BOB, "!book SP-2026-0002")
    assert sent[0].body == fr(bot, booking.NOT_BOOKABLE, ref="SP-2026-0002")


async def test_staff_book_sends_new_times_to_the_client(bot):
    ticket = await open_call_ticket(bot, ROOM_A, ALICE)
    first_offer = await offer_of(ticket)
    sent = await bot.say(STAFF_ROOM, STAFF, "!book SP-2026-0001")
    assert any(s.room_id == STAFF_ROOM for s in sent)
    assert len(offer_messages(bot, ROOM_A)) == 2
    assert not (await SlotOffer.get(id=first_offer.id)).active


async def test_unbook_cancels_the_call_and_frees_the_slot(bot):
    ticket = await open_call_ticket(bot, ROOM_A, ALICE)
    await bot.say(ROOM_A, ALICE, "2")
    (call,) = await active_bookings()
    sent = await bot.say(ROOM_A, ALICE, "!annuler-rdv SP-2026-0001")
    call = await Booking.get(id=call.id)
    assert call.status == "cancelled" and call.slot_lock is None
    assert not await Reminder.filter(booking_id=call.id).exists()
    assert when_fr(bot, call.start) in sent[0].body
    cancelled = ics_of(bot)
    assert str(cancelled["status"]) == "CANCELLED"
    assert any(s.room_id == STAFF_ROOM and "🗑" in s.body for s in sent)
    assert await AuditEntry.filter(ticket_id=ticket.id, action="booking_cancelled").exists()
    sent = await bot.say(ROOM_A, ALICE, "!unbook SP-2026-0001")
    assert sent[0].body == fr(bot, booking.NO_BOOKING, ref="SP-2026-0001")


# --- reminders -------------------------------------------------------------------------------


async def _book_wednesday(bot: BotHarness) -> Booking:
    ticket = await open_call_ticket(bot, ROOM_A, ALICE)
    slot_starts = starts(await offer_of(ticket))
    index = next(i for i, s in enumerate(slot_starts) if s - bot.clock() > timedelta(days=1))
    await bot.say(ROOM_A, ALICE, str(index + 1))
    (call,) = await active_bookings()
    return call


def reminders_in(bot: BotHarness, sent: list[Sent], call: Booking) -> list[Sent]:
    return [s for s in sent if s.room_id == ROOM_A and call.client_url in s.body]


async def test_reminders_24h_and_15min_once_each_across_restarts(bot):
    call = await _book_wednesday(bot)
    assert await bot.sweep() == []  # nothing due yet

    bot.clock.now = call.start - timedelta(hours=24)
    sent = await bot.sweep()
    (day_before,) = reminders_in(bot, sent, call)
    assert when_fr(bot, call.start) in day_before.body
    assert reminders_in(bot, await bot.sweep(), call) == []
    await bot.restart()
    use_jitsi(bot)
    assert reminders_in(bot, await bot.sweep(), call) == []

    bot.clock.now = call.start - timedelta(minutes=14)
    await bot.restart()
    use_jitsi(bot)
    sent = await bot.sweep()
    (soon,) = reminders_in(bot, sent, call)
    assert call.start.astimezone(PARIS).strftime("%H:%M") in soon.body
    staff = [s for s in sent if s.room_id == STAFF_ROOM and call.staff_url in s.body]
    assert len(staff) == 1
    for _ in range(3):
        assert await bot.sweep() == []
    await bot.restart()
    assert await bot.sweep() == []
    reminders = await Reminder.filter(booking_id=call.id)
    assert all(r.sent_at is not None for r in reminders)
    assert await Notice.filter(key__startswith="reminder:").count() == 2


async def test_after_downtime_only_the_nearest_reminder_is_sent(bot):
    call = await _book_wednesday(bot)
    bot.clock.now = call.start - timedelta(minutes=10)
    await bot.restart()
    use_jitsi(bot)
    sent = await bot.sweep()
    assert len(reminders_in(bot, sent, call)) == 1
    assert await Reminder.filter(booking_id=call.id, sent_at=None).count() == 0


async def test_no_reminder_once_the_call_has_started(bot):
    call = await _book_wednesday(bot)
    bot.clock.now = call.start + timedelta(minutes=5)
    await bot.restart()
    use_jitsi(bot)
    assert reminders_in(bot, await bot.sweep(), call) == []
    assert await Reminder.filter(booking_id=call.id, sent_at=None).count() == 0


async def test_a_cancelled_call_gets_no_reminder(bot):
    call = await _book_wednesday(bot)
    await bot.say(ROOM_A, ALICE, "!unbook")
    bot.clock.now = call.start - timedelta(minutes=10)
    sent = await bot.sweep()
    assert reminders_in(bot, sent, call) == []


async def test_an_ended_ticket_gets_no_reminder(bot):
    call = await _book_wednesday(bot)
    await Ticket.filter(id=call.ticket_id).update(status="declined")
    bot.clock.now = call.start - timedelta(minutes=10)
    sent = await bot.sweep()
    assert reminders_in(bot, sent, call) == []
    assert await Reminder.filter(booking_id=call.id, sent_at=None).count() == 0


# --- staff: !block, !slots, !unblock, !calendar ----------------------------------------------


async def test_block_removes_slots_and_slots_lists_them(bot):
    sent = await bot.say(STAFF_ROOM, STAFF, "!block 2026-12-01")
    (row,) = await Block.all()
    assert row.staff is None
    assert f"!debloquer {row.id}" in sent[0].body  # the French alias of !unblock
    sent = await bot.say(STAFF_ROOM, STAFF, f"!block {STAFF} 2026-12-02 09:00-12:00")
    assert (await Block.get(id=row.id + 1)).staff == STAFF

    ticket = await open_call_ticket(bot, ROOM_A, ALICE)
    local = [s.astimezone(PARIS) for s in starts(await offer_of(ticket))]
    assert not any(s.day == 1 for s in local)
    assert not any(s.day == 2 and s.hour < 12 for s in local)

    await bot.say(ROOM_A, ALICE, "1")
    (call,) = await active_bookings()
    sent = await bot.say(STAFF_ROOM, STAFF, "!slots")
    listing = sent[0].body
    assert ticket.ref in listing and when_fr(bot, call.start) in listing
    assert f"#{row.id}" in listing and f"#{row.id + 1}" in listing

    sent = await bot.say(STAFF_ROOM, STAFF, f"!unblock {row.id}")
    assert not await Block.filter(id=row.id).exists()
    sent = await bot.say(STAFF_ROOM, STAFF, "!unblock 999")
    assert "999" in sent[0].body


async def test_block_input_errors_and_overlapping_calls(bot):
    sent = await bot.say(STAFF_ROOM, STAFF, "!block demain")
    assert "2026-12-03" in sent[0].body  # the format help
    sent = await bot.say(STAFF_ROOM, STAFF, "!block @nobody:test 2026-12-03")
    assert "@nobody:test" in sent[0].body
    sent = await bot.say(STAFF_ROOM, STAFF, "!block 2026-11-01")
    assert not await Block.exists()
    await open_call_ticket(bot, ROOM_A, ALICE)
    await bot.say(ROOM_A, ALICE, "1")  # Monday 14:00
    sent = await bot.say(STAFF_ROOM, STAFF, "!block 2026-11-30 13:00-18:00")
    assert "SP-2026-0001" in sent[0].body  # the call still booked in that period is named
    # Clients may not use staff commands.
    sent = await bot.say(ROOM_A, ALICE, "!block 2026-12-03")
    assert await Block.all().count() == 1


async def test_calendar_sends_the_feed_url_in_a_direct_message(bot):
    sent = await bot.say(STAFF_ROOM, STAFF, "!calendar")
    (dm,) = bot.transport.created_rooms
    assert dm["invite"] == [STAFF] and dm["is_direct"]
    (link_message,) = [s for s in sent if s.room_id == dm["room_id"]]
    prefix = f"{bot.config.web.public_url}/calendar/"
    url = next(word for word in link_message.body.split() if word.startswith(prefix))
    token = url[len(prefix) :].removesuffix(".ics")
    feed = await StaffFeed.get(staff=STAFF)
    assert feed.token_hash == token_hash(token, bot.config.web.secret)
    # The staff room is told, without the secret link.
    staff_reply = [s for s in sent if s.room_id == STAFF_ROOM]
    assert staff_reply and prefix not in staff_reply[0].body
    # Again: same direct room, a new token (the old one stops working).
    sent = await bot.say(STAFF_ROOM, STAFF, "!calendrier")
    assert len(bot.transport.created_rooms) == 1
    assert (await StaffFeed.get(staff=STAFF)).token_hash != feed.token_hash
    assert any(s.room_id == dm["room_id"] for s in sent)


async def test_calendar_feed_serves_the_booking(bot):
    from aiohttp.test_utils import TestClient, TestServer

    from bot.web.app import build_web_app

    await open_call_ticket(bot, ROOM_A, ALICE)
    await bot.say(ROOM_A, ALICE, "2")
    (call,) = await active_bookings()
    sent = await bot.say(STAFF_ROOM, STAFF, "!calendar")
    prefix = f"{bot.config.web.public_url}/calendar/"
    url = next(w for s in sent for w in s.body.split() if w.startswith(prefix))
    app = build_web_app(
        config=bot.config,
        catalogs=bot.catalogs,
        registry=bot.services.metrics.registry,
        on_confirmed=_never_confirmed,
        clock=bot.clock,
    )
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/calendar/" + url[len(prefix) :])
        assert response.status == 200
        feed = icalendar.Calendar.from_ical(await response.read())
    (event,) = feed.walk("VEVENT")
    assert event.decoded("dtstart") == call.start


# --- video providers -------------------------------------------------------------------------


async def test_jitsi_signed_links_moderator_for_staff_only(db_url):
    config = make_config(
        video={
            "provider": "jitsi",
            "jitsi": {
                "base_url": "https://meet.test",
                "app_id": "support",
                "app_secret": "a-jitsi-secret-of-at-least-32-bytes!",
            },
        }
    )
    async with BotHarness.open(db_url, config=config, clock=FakeClock(MONDAY_9H)) as bot:
        async with aiohttp.ClientSession() as session:
            bot.services.video = build_provider(config.video, session, now=bot.clock)
            await open_call_ticket(bot, ROOM_A, ALICE)
            await bot.say(ROOM_A, ALICE, "1")
        (call,) = await active_bookings()
        client_url, staff_url = yarl.URL(call.client_url), yarl.URL(call.staff_url)
        assert client_url.path == staff_url.path and client_url.host == "meet.test"
        room = client_url.path.strip("/")
        assert room.startswith("support-") and len(room) >= 40
        claims = {
            name: jwt.decode(
                url.query["jwt"],
                "a-jitsi-secret-of-at-least-32-bytes!",
                algorithms=["HS256"],
                audience="jitsi",
                options={"verify_iat": False, "verify_nbf": False, "verify_exp": False},
            )
            for name, url in (("client", client_url), ("staff", staff_url))
        }
        assert claims["client"]["context"]["user"]["moderator"] == "false"
        assert claims["staff"]["context"]["user"]["moderator"] == "true"
        assert claims["client"]["room"] == room
        # Valid from the booking until after the call, whatever the wall clock says.
        assert claims["client"]["nbf"] <= MONDAY_9H.timestamp()
        assert claims["client"]["exp"] >= (call.end).timestamp()
        # No personal data in the names carried by the links.
        assert "alice" not in str(claims).lower()


async def test_bigbluebutton_meeting_join_links_and_prepare(db_url):
    async with FakeBigBlueButton(secret=BBB_SECRET) as fake:
        config = make_config(
            video={
                "provider": "bigbluebutton",
                "bigbluebutton": {"url": fake.base_url, "secret": BBB_SECRET},
            }
        )
        clock = FakeClock(MONDAY_9H)
        async with (
            BotHarness.open(db_url, config=config, clock=clock) as bot,
            aiohttp.ClientSession() as session,
        ):
            bot.services.video = build_provider(config.video, session, now=bot.clock)
            ticket = await open_call_ticket(bot, ROOM_A, ALICE)
            offer = await offer_of(ticket)
            await bot.react(ROOM_A, ALICE, offer.event_id, "4️⃣")
            (call,) = await active_bookings()
            assert call.provider == "bigbluebutton"
            meeting = fake.meetings[call.meeting_id]
            assert meeting.name == "Support SP-2026-0001"
            assert not fake.refused
            assert "alice" not in str(meeting.params).lower()
            # The links are signed as the server checks them: client viewer, staff moderator.
            for url, role in ((call.client_url, "VIEWER"), (call.staff_url, "MODERATOR")):
                async with session.get(
                    yarl.URL(url, encoded=True), allow_redirects=False
                ) as response:
                    assert response.status == 302
                assert fake.joins[-1].role == role
                assert fake.joins[-1].meeting_id == call.meeting_id
            assert not fake.refused
            assert call.client_url in bot.in_room(ROOM_A)[-2].body
            assert any(call.staff_url in s.body for s in bot.in_room(STAFF_ROOM))

            # The server forgot the meeting (restart): the 15-minute reminder re-creates it.
            fake.meetings.clear()
            bot.clock.now = call.start - timedelta(minutes=15)
            await bot.sweep()
            assert fake.meetings[call.meeting_id].name == "Support SP-2026-0001"
            async with session.get(
                yarl.URL(call.client_url, encoded=True), allow_redirects=False
            ) as response:
                assert response.status == 302
            assert not fake.refused


async def _never_confirmed(ticket_id: int) -> None:
    raise AssertionError("no confirmation expected")


class FailingVideo:
    name = "jitsi"

    def __init__(self) -> None:
        self.calls = 0

    async def create_meeting(self, **kwargs: Any) -> Meeting:
        self.calls += 1
        raise VideoError("unreachable", "connection refused")

    async def prepare(self, meeting: Meeting) -> None:
        raise VideoError("unreachable", "connection refused")


async def test_video_failure_keeps_the_booking_and_the_link_follows(bot):
    failing = FailingVideo()
    bot.services.video = failing
    ticket = await open_call_ticket(bot, ROOM_A, ALICE)
    sent = await bot.say(ROOM_A, ALICE, "2")
    (call,) = await active_bookings()
    assert call.client_url is None and failing.calls == 1
    client_text = " ".join(s.body for s in sent if s.room_id == ROOM_A)
    assert "unreachable" not in client_text
    assert when_fr(bot, call.start) in client_text
    staff_text = " ".join(s.body for s in sent if s.room_id == STAFF_ROOM)
    assert "unreachable" in staff_text
    assert "LOCATION" not in ics_of(bot)  # the invitation comes without a place for now

    # The sweeper tries again (not on every pass), then sends the link when it works.
    await bot.sweep()
    await bot.sweep()
    assert failing.calls == 2
    use_jitsi(bot)
    bot.clock.advance(meetings.LINK_RETRY)
    sent = await bot.sweep()
    call = await Booking.get(id=call.id)
    assert call.client_url and call.client_url.startswith("https://jitsi.test/")
    assert any(call.client_url in s.body for s in sent if s.room_id == ROOM_A)
    assert any(call.staff_url in s.body for s in sent if s.room_id == STAFF_ROOM)
    updated = ics_of(bot)
    assert str(updated["location"]) == call.client_url and int(updated["sequence"]) == 1
    assert await bot.sweep() == []
    assert await AuditEntry.filter(ticket_id=ticket.id, action="meeting_created").exists()


async def test_no_video_provider_books_and_tells_staff(bot):
    bot.services.video = None
    await open_call_ticket(bot, ROOM_A, ALICE)
    sent = await bot.say(ROOM_A, ALICE, "1")
    assert len(await active_bookings()) == 1
    assert any("notConfigured" in s.body for s in sent if s.room_id == STAFF_ROOM)


async def test_phone_ticket_is_booked_too_without_attendee(bot):
    ticket = await open_call_ticket(bot, ROOM_A, ALICE, channel="phone", email=None)
    assert fr(bot, "phone call") in offer_messages(bot, ROOM_A)[0].body
    await bot.say(ROOM_A, ALICE, "1")
    (call,) = await active_bookings()
    assert call.ticket_id == ticket.id
    calendar = icalendar.Calendar.from_ical(bot.transport.uploads[-1][0])
    assert str(calendar["method"]) == "PUBLISH"
    assert "attendee" not in calendar.walk("VEVENT")[0]


async def test_concurrent_choices_by_the_same_client_book_once(bot):
    ticket = await open_call_ticket(bot, ROOM_A, ALICE)
    offer = await offer_of(ticket)
    await asyncio.gather(
        bot.say(ROOM_A, ALICE, "1"), bot.react(ROOM_A, ALICE, offer.event_id, "2️⃣")
    )
    assert len(await active_bookings()) == 1
