"""No-shows (issue #16 §3) through the real router, outbox and database (SQLite, and PostgreSQL
when configured): 🚫 on a call's staff-room message or `!noshow REF`, recorded on the booking
and in the audit, told to the client in their language with how to book again, counted in the
report and the metrics; `service.no_show_billed` logs one call (45 minutes, one ticket).

The clock starts on Monday 2026-11-30 at 09:00 in Paris; the first free slot is 14:00.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from prometheus_client import generate_latest

from bot.domain import calls
from bot.domain import tickets as lifecycle
from bot.i18n import Msg
from bot.routing import addressed
from bot.storage import repo
from bot.storage.models import AuditEntry, Booking, Ticket, TimeLog
from bot.testing.harness import BOT, STAFF, STAFF_ROOM, BotHarness, FakeClock, Sent
from bot.testing.harness import test_config as make_config
from handlers import billing, booking, meetings, noshow
from tests.flows.test_booking_flow import (
    ALICE,
    BOB,
    MONDAY_9H,
    ROOM_A,
    ROOM_B,
    fr,
    open_call_ticket,
    use_jitsi,
)

pytestmark = pytest.mark.postgres

BRIDGE, TALK = "@nctalk:test", "!talk:test"


def config(**service: object):
    return make_config(service=service, bridges=[{"user_id": BRIDGE}])


@pytest.fixture
async def bot(db_url: str) -> AsyncIterator[BotHarness]:
    async with BotHarness.open(db_url, config(), clock=FakeClock(MONDAY_9H)) as harness:
        use_jitsi(harness)
        yield harness


async def book_first_slot(
    bot: BotHarness, room: str = ROOM_A, user: str = ALICE, number: int = 1
) -> Booking:
    """A call ticket of `user` (a nickname behind the bridge in TALK), its first slot chosen."""
    if room == TALK:
        ticket = await open_call_ticket(bot, room, f"bridge:{TALK}:{user}", number)
        await bot.say(room, BRIDGE, f"[nctalk] <{user}> 1")
    else:
        ticket = await open_call_ticket(bot, room, user, number)
        await bot.say(room, user, "1")
    call = await repo.active_booking(ticket)
    assert call is not None
    return call


def call_message(bot: BotHarness, call: Booking) -> Sent:
    """The staff-room message announcing the call (its id is recorded on the booking)."""
    [message] = [s for s in bot.in_room(STAFF_ROOM) if s.event_id == call.staff_event_id]
    return message


async def reload(call: Booking) -> Booking:
    return await Booking.get(id=call.id)


def staff_bodies(sent: list[Sent]) -> list[str]:
    return [
        s.body
        for s in sent
        if s.room_id == STAFF_ROOM
        and s.type == "m.room.message"
        and "m.new_content" not in s.content
    ]


async def test_check_on_the_call_message_marks_a_no_show_and_tells_the_client(bot):
    call = await book_first_slot(bot)
    ticket = await Ticket.get(id=call.ticket_id)
    message = call_message(bot, call)
    hint = fr(bot, meetings.NO_SHOW_HINT, ref=ticket.ref)
    assert message.body.endswith(hint) and call.staff_url in message.body

    # Before the call starts: refused, with the reason.
    sent = await bot.react(STAFF_ROOM, STAFF, message.event_id, "🚫")
    reason = Msg(calls._NOT_STARTED, {"when": call.start})
    assert [s.body for s in sent] == [fr(bot, noshow._REFUSED, ref=ticket.ref, reason=reason)]
    assert (await reload(call)).no_show_at is None

    # Ten minutes into the call, after a restart: the 🚫 still finds the call.
    bot.clock.now = call.start + timedelta(minutes=10)
    await bot.restart()
    use_jitsi(bot)
    sent = await bot.react(STAFF_ROOM, STAFF, message.event_id, "🚫")
    missed = await reload(call)
    assert (missed.no_show_at, missed.no_show_by) == (bot.clock(), STAFF)
    assert missed.status == "active"  # the history keeps it; nothing is cancelled
    [told] = [s.body for s in sent if s.room_id == ROOM_A]
    kind = meetings.call_kind(ticket)
    assert told == " ".join(
        [
            fr(bot, noshow._MISSED_CLIENT, kind=kind, when=call.start, ref=ticket.ref),
            fr(bot, noshow._BOOK_AGAIN_CLIENT, ref=ticket.ref),
        ]
    )
    marked = fr(bot, noshow._MARKED_STAFF, ref=ticket.ref, staff=STAFF, kind=kind, when=call.start)
    assert staff_bodies(sent) == [marked]
    [card] = [s for s in sent if s.room_id == STAFF_ROOM and "m.new_content" in s.content]
    assert fr(bot, "The client did not join this call (no-show).") in card.body
    entry = await AuditEntry.get(ticket_id=ticket.id, action="no_show")
    assert entry.actor == STAFF
    # Not billed by default: nothing logged.
    t = await Ticket.get(id=ticket.id)
    assert t.minutes_logged == 0 and not await TimeLog.exists(ticket_id=ticket.id)

    # Twice: refused, saying by whom.
    sent = await bot.say(STAFF_ROOM, STAFF, f"!noshow {ticket.ref}")
    reason = Msg(calls._ALREADY, {"when": call.start, "staff": STAFF})
    assert [s.body for s in sent] == [fr(bot, noshow._REFUSED, ref=ticket.ref, reason=reason)]

    # Booking again is a new call, not a move of the missed one.
    sent = await bot.say(ROOM_A, ALICE, f"!rdv {ticket.ref}")
    head = fr(
        bot,
        booking.OFFER_HEAD,
        kind=kind,
        ref=ticket.ref,
        minutes=bot.config.service.slot_minutes,
    )
    assert sent[0].body.startswith(head)
    await bot.say(ROOM_A, ALICE, "1")
    assert (await reload(call)).status == "active" and (await reload(call)).no_show_at
    current = await repo.active_booking(ticket)
    assert current is not None and current.id != call.id and current.no_show_at is None


async def test_noshow_command_the_reminder_message_and_a_moved_call(bot):
    call = await book_first_slot(bot)
    ticket = await Ticket.get(id=call.ticket_id)
    booked_message = call_message(bot, call)
    # The ⏰ reminder to staff is a call message too: it becomes the call's latest one.
    bot.clock.now = call.start - timedelta(minutes=15)
    sent = await bot.sweep()
    hint = fr(bot, meetings.NO_SHOW_HINT, ref=ticket.ref)
    [reminder] = [s for s in sent if s.room_id == STAFF_ROOM and s.body.endswith(hint)]
    assert (await reload(call)).staff_event_id == reminder.event_id

    # A client cannot use the staff command; nor does a client's or a bridge's 🚫 count.
    sent = await bot.say(ROOM_A, ALICE, f"!noshow {ticket.ref}")
    assert ticket.ref not in sent[0].body and (await reload(call)).no_show_at is None
    bot.transport.members[STAFF_ROOM].add(BRIDGE)
    bot.clock.now = call.start + timedelta(minutes=5)
    assert await bot.react(STAFF_ROOM, BRIDGE, reminder.event_id, "🚫") == []
    assert await bot.react(STAFF_ROOM, STAFF, "$not-a-call", "🚫") == []
    assert (await reload(call)).no_show_at is None

    # The earlier booking message still finds the call (its outbox row keeps its tag).
    await bot.react(STAFF_ROOM, STAFF, booked_message.event_id, "🚫")
    assert (await reload(call)).no_show_by == STAFF

    # A call moved since: its old message is refused with the reason.
    other = await book_first_slot(bot, ROOM_B, BOB, 2)
    other_ticket = await Ticket.get(id=other.ticket_id)
    old_message = call_message(bot, other)
    await bot.say(ROOM_B, BOB, f"!rdv {other_ticket.ref}")
    await bot.say(ROOM_B, BOB, "2")
    assert (await reload(other)).status == "cancelled"
    sent = await bot.react(STAFF_ROOM, STAFF, old_message.event_id, "🚫")
    reason = Msg(noshow._MOVED, {"ref": other_ticket.ref})
    assert [s.body for s in sent] == [
        fr(bot, noshow._REFUSED, ref=other_ticket.ref, reason=reason)
    ]


async def test_billed_no_show_logs_one_call_and_a_new_call_starts_a_second_ticket(db_url):
    clock = FakeClock(MONDAY_9H)
    async with BotHarness.open(db_url, config(no_show_billed=True), clock=clock) as bot:
        use_jitsi(bot)
        call = await book_first_slot(bot)
        ticket = await Ticket.get(id=call.ticket_id)
        bot.clock.now = call.start + timedelta(minutes=20)
        sent = await bot.say(STAFF_ROOM, STAFF, f"!absent {ticket.ref}")
        t = await Ticket.get(id=ticket.id)
        assert t.minutes_logged == calls.NO_SHOW_MINUTES == 45
        state = repo.ticket_state(t)
        assert lifecycle.billed_tickets(state) == 1
        [log] = await TimeLog.filter(ticket_id=t.id)
        assert (log.staff, log.minutes) == (STAFF, 45)
        assert log.note == fr(bot, noshow._NOTE)
        [told] = [s.body for s in sent if s.room_id == ROOM_A]
        assert fr(bot, noshow._MISSED_BILLED_CLIENT) in told
        logged = fr(
            bot,
            billing._LOGGED_STAFF,
            ref=t.ref,
            duration="45 min",
            total="45 min",
            tickets=billing._tickets(1),
        )
        assert logged in staff_bodies(sent)

        # The call booked again and held: 45 more minutes make the second ticket.
        await bot.say(ROOM_A, ALICE, f"!rdv {t.ref}")
        await bot.say(ROOM_A, ALICE, "1")
        await bot.say(STAFF_ROOM, STAFF, f"!log {t.ref} 45")
        assert lifecycle.billed_tickets(repo.ticket_state(await Ticket.get(id=t.id))) == 2


async def test_billed_no_show_on_a_ticket_that_takes_no_time_is_recorded_unbilled(db_url):
    clock = FakeClock(MONDAY_9H)
    async with BotHarness.open(db_url, config(no_show_billed=True), clock=clock) as bot:
        use_jitsi(bot)
        call = await book_first_slot(bot)
        ticket = await Ticket.get(id=call.ticket_id)
        await bot.say(STAFF_ROOM, STAFF, f"!resolve {ticket.ref}")
        await bot.say(ROOM_A, ALICE, f"!accept {ticket.ref}")  # closed: no more time on it
        bot.clock.now = call.start + timedelta(minutes=20)
        sent = await bot.say(STAFF_ROOM, STAFF, f"!noshow {ticket.ref}")
        assert (await reload(call)).no_show_at == bot.clock()
        reason = Msg(lifecycle._ENDED[lifecycle.Status.CLOSED])
        assert fr(bot, noshow._NOT_BILLED_STAFF, reason=reason) in staff_bodies(sent)
        assert (await Ticket.get(id=ticket.id)).minutes_logged == 0
        # Nothing to book any more (closed): the client is not told to book again.
        [told] = [s.body for s in sent if s.room_id == ROOM_A]
        assert "!rdv" not in told and "!book" not in told


async def test_english_and_bridged_clients_are_told_in_their_way(bot):
    bot.transport.members[TALK] = {BOT, BRIDGE}
    await bot.say(ROOM_A, ALICE, "!lang en")
    call = await book_first_slot(bot)
    talk_call = await book_first_slot(bot, TALK, "Carol", 2)
    bot.clock.now = max(call.start, talk_call.start) + timedelta(minutes=5)
    ticket = await Ticket.get(id=call.ticket_id)
    sent = await bot.say(STAFF_ROOM, STAFF, f"!noshow {ticket.ref}")
    [told] = [s.body for s in sent if s.room_id == ROOM_A]
    assert told.startswith("You did not join the video call of")
    assert told.endswith(f"To choose a new time, type !book {ticket.ref}")

    talk_ticket = await Ticket.get(id=talk_call.ticket_id)
    sent = await bot.say(STAFF_ROOM, STAFF, f"!noshow {talk_ticket.ref}")
    [told] = [s.body for s in sent if s.room_id == TALK]
    assert told.startswith(addressed("Carol", ""))
    assert told.endswith(fr(bot, noshow._BOOK_AGAIN_CLIENT, ref=talk_ticket.ref))


async def test_report_and_metrics_count_no_shows(bot):
    call = await book_first_slot(bot)
    ticket = await Ticket.get(id=call.ticket_id)
    bot.clock.now = call.start + timedelta(minutes=10)
    await bot.say(STAFF_ROOM, STAFF, f"!noshow {ticket.ref}")
    [row] = await repo.report_month(2026, 11, bot.services.tz)
    assert (row["client"], row["no_shows"], row["ratings"]) == (ALICE, 1, 0)
    assert row["rating_average"] is None
    assert "no_shows" in repo.report_csv([row]).splitlines()[0]
    await bot.services.metrics.refresh(bot.clock(), bot.services.calendar, 4.0)
    assert "support_bot_no_shows 1.0" in generate_latest(bot.services.metrics.registry).decode()
