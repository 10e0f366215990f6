"""The staff side through the real router, outbox and database: 👀, !queue, !take, !ticket,
!convert, the first staff answer in a client's room, and the SLA watcher (SPEC §4, R3).

Tickets are made by `open_ticket` (rows + a card posted by the real `post_card`), so these
tests do not depend on the intake conversation.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bot.domain.tickets import Channel, Kind, Status, initial_state, sla_business_days
from bot.storage import repo
from bot.storage.models import AuditEntry, Notice, Reaction, Ticket, TicketNote
from bot.testing.harness import BOT, STAFF, STAFF_ROOM, BotHarness, Sent
from bot.testing.harness import test_config as make_config
from handlers.common import post_card

PARIS = ZoneInfo("Europe/Paris")
ALICE = "@alice:test"
BOB = "@bob:test"
DM = "!dm-alice:test"
BOB_DM = "!dm-bob:test"
BRIDGE = "@nctalk:test"
LEAD = "@lead:test"  # staff through the staff room's power levels, not the config
TALK_ROOM = "!talk:test"


def paris(*args: int) -> datetime:
    return datetime(*args, tzinfo=PARIS)


def english(service=None, **sections):
    return make_config(service={"default_locale": "en", **(service or {})}, **sections)


@pytest.fixture
async def bot(db_url):
    async with BotHarness.open(db_url, english()) as harness:
        yield harness


async def open_ticket(
    bot: BotHarness,
    *,
    client: str = ALICE,
    room: str = DM,
    kind: Kind = Kind.TICKET,
    channel: Channel = Channel.MESSAGING,
    status: Status | None = None,
    created_at: datetime | None = None,
    description: str = "The survey does not send its invitations since yesterday.",
    locale: str = "en",
    display_name: str | None = None,
    post: bool = True,
) -> Ticket:
    """A ticket as the intake leaves it: rows, SLA due time, and its card in the staff room."""
    now = created_at or bot.clock()
    service = bot.config.service
    owner = await repo.get_or_create_client(client, now=now, display_name=display_name)
    prefix = {
        Kind.TICKET: service.ticket_prefix,
        Kind.QUESTION: service.question_prefix,
        Kind.QUOTE: service.quote_prefix,
    }[kind]
    ticket = await Ticket.create(
        ref=await repo.allocate_ref(prefix, now.astimezone(PARIS).year),
        kind=str(kind),
        status=str(status or initial_state(kind, channel).status),
        category="configuration",
        channel=str(channel),
        client=owner,
        room_id=room,
        locale=locale,
        description=description,
        created_at=now,
        sla_due=bot.services.calendar.deadline(now, sla_business_days(channel)),
    )
    bot.transport.members.setdefault(room, {BOT, client})
    if post:

        async def job(ctx):
            await post_card(ctx, ticket)

        assert bot.services.jobs is not None
        await bot.services.jobs.run_job(f"test-card:{ticket.id}", job, room_id=STAFF_ROOM)
        await bot.deliverer.deliver_pending()
        await ticket.refresh_from_db()
        assert ticket.card_event_id is not None
    return ticket


def edits_of(sent: list[Sent], ticket: Ticket) -> list[Sent]:
    return [
        s
        for s in sent
        if s.room_id == STAFF_ROOM
        and s.content.get("m.relates_to")
        == {"rel_type": "m.replace", "event_id": ticket.card_event_id}
    ]


async def fresh(ticket: Ticket) -> Ticket:
    return await Ticket.get(id=ticket.id)


async def actions(ticket: Ticket) -> list[str]:
    return [e.action for e in await AuditEntry.filter(ticket_id=ticket.id).order_by("id")]


# --- 👀 ------------------------------------------------------------------------------------


async def test_eyes_by_staff_takes_the_ticket_and_tells_the_client(bot):
    ticket = await open_ticket(bot)
    bot.clock.advance(timedelta(hours=1))
    sent = await bot.react(STAFF_ROOM, STAFF, ticket.card_event_id, "👀")

    taken = await fresh(ticket)
    assert taken.assigned_to == STAFF
    assert taken.first_response_at == bot.clock()
    assert taken.status == Status.IN_PROGRESS
    entry = await AuditEntry.get(ticket_id=ticket.id, action="taken")
    assert (entry.actor, entry.from_status, entry.to_status) == (STAFF, "open", "in_progress")

    # The card is edited in place, the client told; nothing else is posted.
    assert len(sent) == 2
    [edit] = edits_of(sent, ticket)
    assert f"Assigned to: {STAFF}" in edit.content["m.new_content"]["body"]
    [told] = [s for s in sent if s.room_id == DM]
    assert told.body == f"{STAFF} from the support team has taken your request {ticket.ref}."

    reaction = await Reaction.get(event_id=bot.last_reaction_id)
    assert (reaction.target_event_id, reaction.sender, reaction.key) == (
        ticket.card_event_id,
        STAFF,
        "👀",
    )


async def test_eyes_with_variation_selector_also_takes(bot):
    ticket = await open_ticket(bot)
    await bot.react(STAFF_ROOM, STAFF, ticket.card_event_id, "👀\ufe0f")
    assert (await fresh(ticket)).assigned_to == STAFF


async def test_client_is_told_in_their_language(bot):
    ticket = await open_ticket(bot, locale="fr")
    sent = await bot.react(STAFF_ROOM, STAFF, ticket.card_event_id, "👀")
    [told] = [s for s in sent if s.room_id == DM]
    # Whatever the translation, it names the staff member and the request, and nothing more.
    assert STAFF in told.body and ticket.ref in told.body
    assert told.content["m.mentions"] == {}


async def assert_untouched(ticket: Ticket) -> None:
    now = await fresh(ticket)
    assert (now.assigned_to, now.first_response_at, now.status) == (None, None, "open")
    assert await actions(ticket) == []
    assert await Reaction.all().count() == 0


async def test_eyes_by_a_non_staff_member_is_ignored_silently(bot):
    ticket = await open_ticket(bot)
    bot.transport.members[STAFF_ROOM].add(ALICE)
    assert await bot.react(STAFF_ROOM, ALICE, ticket.card_event_id, "👀") == []
    await assert_untouched(ticket)


async def test_eyes_by_a_bridge_account_is_ignored_even_with_power(db_url):
    config = english(bridges=[{"user_id": BRIDGE}])
    async with BotHarness.open(db_url, config) as bot:
        ticket = await open_ticket(bot)
        bot.transport.members[STAFF_ROOM].add(BRIDGE)
        bot.transport.powers[STAFF_ROOM][BRIDGE] = 100
        assert await bot.react(STAFF_ROOM, BRIDGE, ticket.card_event_id, "👀") == []
        await assert_untouched(ticket)


async def test_eyes_outside_the_staff_room_or_not_on_a_card_is_ignored(bot):
    ticket = await open_ticket(bot)
    assert await bot.react(DM, STAFF, ticket.card_event_id, "👀") == []
    assert await bot.react(STAFF_ROOM, STAFF, "$not-a-card", "👀") == []
    assert await bot.react(STAFF_ROOM, STAFF, ticket.card_event_id, "🎉") == []
    await assert_untouched(ticket)


async def test_eyes_after_a_restart_still_finds_the_card(bot):
    ticket = await open_ticket(bot)
    await bot.restart()
    sent = await bot.react(STAFF_ROOM, STAFF, ticket.card_event_id, "👀")
    assert (await fresh(ticket)).assigned_to == STAFF
    assert len(edits_of(sent, ticket)) == 1


async def test_eyes_again_by_the_same_staff_does_nothing_more(bot):
    ticket = await open_ticket(bot)
    await bot.react(STAFF_ROOM, STAFF, ticket.card_event_id, "👀")
    first = (await fresh(ticket)).first_response_at
    bot.clock.advance(timedelta(minutes=5))
    assert await bot.react(STAFF_ROOM, STAFF, ticket.card_event_id, "👀") == []
    assert (await fresh(ticket)).first_response_at == first
    assert await actions(ticket) == ["taken"]


async def test_eyes_by_another_staff_member_reassigns(bot):
    ticket = await open_ticket(bot)
    bot.transport.members[STAFF_ROOM].add(LEAD)
    bot.transport.powers[STAFF_ROOM][LEAD] = 50
    await bot.react(STAFF_ROOM, STAFF, ticket.card_event_id, "👀")
    first = (await fresh(ticket)).first_response_at
    bot.clock.advance(timedelta(hours=2))
    sent = await bot.react(STAFF_ROOM, LEAD, ticket.card_event_id, "👀")
    again = await fresh(ticket)
    assert again.assigned_to == LEAD
    assert again.first_response_at == first  # the first answer stays the first
    entry = await AuditEntry.filter(ticket_id=ticket.id, action="taken").order_by("-id").first()
    assert entry is not None and entry.actor == LEAD and STAFF in (entry.detail or "")
    assert [s.body for s in sent if s.room_id == DM] == [
        f"{LEAD} from the support team has taken your request {ticket.ref}."
    ]


async def test_eyes_on_an_ended_ticket_is_refused_in_the_staff_room(bot):
    ticket = await open_ticket(bot, status=Status.CANCELLED)
    sent = await bot.react(STAFF_ROOM, STAFF, ticket.card_event_id, "👀")
    assert [(s.room_id, s.body) for s in sent] == [(STAFF_ROOM, "This ticket has been cancelled.")]
    assert (await fresh(ticket)).assigned_to is None
    assert await Reaction.all().count() == 0


# --- !queue ----------------------------------------------------------------------------------


async def test_queue_lists_open_work_overdue_first(bot):
    late = await open_ticket(bot, created_at=paris(2026, 11, 20, 10, 0))  # due Tue 24th
    later = await open_ticket(bot, client=BOB, room=BOB_DM)  # due Mon 30th
    soon = await open_ticket(bot, created_at=paris(2026, 11, 25, 11, 0))  # due Fri 27th
    done = await open_ticket(bot, status=Status.CLOSED)
    answered = await open_ticket(bot, created_at=paris(2026, 11, 19, 10, 0))
    await bot.react(STAFF_ROOM, STAFF, answered.card_event_id, "👀")  # late, but answered

    [answer] = await bot.say(STAFF_ROOM, STAFF, "!queue")
    body = answer.body
    assert body.startswith("Queue: 4 open items")
    positions = [body.index(t.ref) for t in (late, answered, soon, later)]
    assert positions == sorted(positions)
    assert done.ref not in body
    late_line = next(line for line in body.splitlines() if late.ref in line)
    assert late_line.startswith("• ⚠️") and "OVERDUE since Tuesday, November 24, 2026" in late_line
    answered_line = next(line for line in body.splitlines() if answered.ref in line)
    assert "OVERDUE" not in answered_line and STAFF in answered_line
    assert "unassigned" in late_line
    assert "<b>" in (answer.html or "")


async def test_queue_empty(bot):
    [answer] = await bot.say(STAFF_ROOM, STAFF, "!queue")
    assert answer.body == "The queue is empty: no open work."


async def test_queue_refused_to_a_client(db_url):
    async with BotHarness.open(db_url) as bot:  # French, the default
        await open_ticket(bot)
        [answer] = await bot.say(DM, ALICE, "!queue")
        assert answer.body == (
            "« !queue » est une commande de l’équipe support : elle lui est réservée."
        )
        assert "SP-" not in answer.body


async def test_queue_is_not_shown_in_a_client_room(bot):
    ticket = await open_ticket(bot)
    bot.transport.members[DM].add(STAFF)
    [answer] = await bot.say(DM, STAFF, "!queue")
    assert ticket.ref not in answer.body
    assert "staff room" in answer.body


async def test_queue_in_a_direct_chat_between_staff_and_bot(bot):
    ticket = await open_ticket(bot)
    bot.transport.members["!staff-dm:test"] = {BOT, STAFF}
    [answer] = await bot.say("!staff-dm:test", STAFF, "!queue")
    assert ticket.ref in answer.body


# --- !take -----------------------------------------------------------------------------------


async def test_take_command(bot):
    ticket = await open_ticket(bot)
    sent = await bot.say(STAFF_ROOM, STAFF, f"!take {ticket.ref.lower()}")
    assert (await fresh(ticket)).assigned_to == STAFF
    assert len(edits_of(sent, ticket)) == 1
    assert [s.body for s in sent if s.room_id == DM] == [
        f"{STAFF} from the support team has taken your request {ticket.ref}."
    ]
    [reply] = [s for s in sent if s.room_id == STAFF_ROOM and "m.relates_to" not in s.content]
    assert reply.body == f"{ticket.ref} is now assigned to you."

    sent = await bot.say(STAFF_ROOM, STAFF, f"!take {ticket.ref}")
    assert [s.body for s in sent] == [f"{ticket.ref} is already assigned to you."]


async def test_take_without_or_with_an_unknown_reference(bot):
    [answer] = await bot.say(STAFF_ROOM, STAFF, "!take")
    assert "!take SP-2026-0042" in answer.body
    [answer] = await bot.say(STAFF_ROOM, STAFF, "!take SP-2026-9999")
    assert "SP-2026-9999" in answer.body


async def test_take_in_the_ticket_s_own_room_but_not_in_another_client_s(bot):
    alice = await open_ticket(bot)
    bob = await open_ticket(bot, client=BOB, room=BOB_DM)
    bot.transport.members[DM].add(STAFF)
    [refusal] = await bot.say(DM, STAFF, f"!take {bob.ref}")
    assert "staff room" in refusal.body and bob.ref not in refusal.body
    assert (await fresh(bob)).assigned_to is None
    sent = await bot.say(DM, STAFF, f"!take {alice.ref}")
    assert (await fresh(alice)).assigned_to == STAFF
    assert f"{alice.ref} is now assigned to you." in [s.body for s in sent]


async def test_take_is_a_staff_command(bot):
    ticket = await open_ticket(bot)
    [answer] = await bot.say(DM, ALICE, f"!take {ticket.ref}")
    assert "staff command" in answer.body
    assert (await fresh(ticket)).assigned_to is None


# --- !ticket ---------------------------------------------------------------------------------


async def test_ticket_shows_card_notes_and_history(bot):
    ticket = await open_ticket(bot, display_name="Alice Martin")
    await TicketNote.create(
        ticket=ticket, author_key=ALICE, text="Also: @room <b>it is urgent</b>", at=bot.clock()
    )
    await bot.say(STAFF_ROOM, STAFF, f"!take {ticket.ref}")
    [answer] = await bot.say(STAFF_ROOM, STAFF, f"!ticket {ticket.ref}")
    body = answer.body
    assert body.startswith(f"🎫 {ticket.ref} · Ticket · in progress")
    assert "The survey does not send its invitations" in body
    assert "Client notes:" in body
    assert "Alice Martin: Also: @\u2060room <b>it is urgent</b>" in body
    assert "Recent history:" in body
    assert f"{STAFF} · taken (open → in progress)" in body
    markup = answer.html or ""
    assert "<b>it is urgent</b>" not in markup and "&lt;b&gt;it is urgent" in markup


async def test_ticket_without_notes_and_with_a_long_description(bot):
    text = "word " * 2000  # 10 000 characters: the card shows a preview only
    ticket = await open_ticket(bot, description=text.strip())
    sent = await bot.say(STAFF_ROOM, STAFF, f"!ticket {ticket.ref}")
    assert "No notes from the client." in sent[0].body
    parts = sent[1:]
    assert [p.body.splitlines()[0] for p in parts] == [
        f"Full description of {ticket.ref} ({n}/3):" for n in (1, 2, 3)
    ]
    assert "".join(p.body.split("\n", 1)[1] for p in parts) == text.strip()


async def test_ticket_is_not_shown_in_a_client_room(bot):
    ticket = await open_ticket(bot)
    bot.transport.members[DM].add(STAFF)
    [answer] = await bot.say(DM, STAFF, f"!ticket {ticket.ref}")
    assert "staff room" in answer.body
    assert "invitations" not in answer.body


# --- !convert --------------------------------------------------------------------------------


async def test_convert_a_question_to_a_ticket(bot):
    await open_ticket(bot, client=BOB, room=BOB_DM)  # SP-2026-0001 is taken
    question = await open_ticket(bot, kind=Kind.QUESTION)
    assert question.ref == "Q-2026-0001"
    sent = await bot.say(STAFF_ROOM, STAFF, "!convert Q-2026-0001")

    converted = await fresh(question)
    assert (converted.kind, converted.ref, converted.converted_from) == (
        "ticket",
        "SP-2026-0002",
        "Q-2026-0001",
    )
    assert converted.card_event_id == question.card_event_id
    [edit] = edits_of(sent, question)
    new_body = edit.content["m.new_content"]["body"]
    assert new_body.startswith("🎫 SP-2026-0002 · Ticket")
    assert "Converted from Q-2026-0001" in new_body
    [told] = [s for s in sent if s.room_id == DM]
    assert "Q-2026-0001" in told.body and "SP-2026-0002" in told.body
    assert "Q-2026-0001 is now the ticket SP-2026-0002." in [s.body for s in sent]
    entry = await AuditEntry.get(ticket_id=question.id, action="converted")
    assert entry.detail == "Q-2026-0001 → SP-2026-0002"
    assert await repo.ticket_by_ref("SP-2026-0002") is not None


async def test_convert_refuses_a_ticket_and_keeps_the_counter(bot):
    ticket = await open_ticket(bot)
    [answer] = await bot.say(STAFF_ROOM, STAFF, f"!convert {ticket.ref}")
    assert (await fresh(ticket)).ref == ticket.ref
    assert answer.room_id == STAFF_ROOM
    assert await repo.allocate_ref("SP", 2026) == "SP-2026-0002"


async def test_convert_an_intervention_question_awaits_an_estimate(bot):
    question = await open_ticket(bot, kind=Kind.QUESTION, channel=Channel.INTERVENTION)
    await bot.say(STAFF_ROOM, STAFF, f"!convert {question.ref}")
    converted = await fresh(question)
    assert (converted.kind, converted.status) == ("ticket", "awaiting_estimate")


# --- First response (R3) ---------------------------------------------------------------------


async def test_staff_writing_in_the_client_room_is_the_first_response(bot):
    ticket = await open_ticket(bot)
    other = await open_ticket(bot, client=BOB, room=BOB_DM)
    bot.transport.members[DM].add(STAFF)
    bot.clock.advance(timedelta(hours=3))
    sent = await bot.say(DM, STAFF, "Hello Alice, could you send a screenshot?")

    answered = await fresh(ticket)
    assert answered.first_response_at == bot.clock()
    assert answered.assigned_to is None and answered.status == "open"
    assert await actions(ticket) == ["first_response"]
    assert [s.room_id for s in sent] == [STAFF_ROOM]  # the card edit, no reply
    assert "Answered:" in edits_of(sent, ticket)[0].content["m.new_content"]["body"]
    assert (await fresh(other)).first_response_at is None

    # Later messages change nothing.
    bot.clock.advance(timedelta(hours=1))
    assert await bot.say(DM, STAFF, "Thanks!") == []
    assert (await fresh(ticket)).first_response_at == answered.first_response_at


async def test_staff_text_in_the_staff_room_or_a_client_text_is_no_answer(bot):
    ticket = await open_ticket(bot)
    await bot.say(STAFF_ROOM, STAFF, f"Who takes {ticket.ref}?")
    await bot.say(DM, ALICE, "Any news?")
    assert (await fresh(ticket)).first_response_at is None


async def test_staff_answer_in_a_bridged_room_answers_the_client_named(db_url):
    config = english(bridges=[{"user_id": BRIDGE}])
    async with BotHarness.open(db_url, config) as bot:
        anna = await open_ticket(bot, client=f"bridge:{TALK_ROOM}:Anna", room=TALK_ROOM)
        ben = await open_ticket(bot, client=f"bridge:{TALK_ROOM}:Ben", room=TALK_ROOM)
        bot.transport.members[TALK_ROOM] = {BOT, BRIDGE, STAFF}
        await bot.say(TALK_ROOM, STAFF, "Ben: which version do you run?")
        assert (await fresh(ben)).first_response_at is not None
        assert (await fresh(anna)).first_response_at is None
        # Naming nobody answers everyone still waiting in the room.
        await bot.say(TALK_ROOM, STAFF, "We are looking into it.")
        assert (await fresh(anna)).first_response_at is not None


# --- SLA watcher -----------------------------------------------------------------------------


def staff_notices(sent: list[Sent]) -> list[str]:
    return [s.body for s in sent if s.room_id == STAFF_ROOM and "m.relates_to" not in s.content]


async def test_sla_warning_four_working_hours_before_then_missed_each_once(bot):
    bot.clock.now = paris(2026, 11, 26, 10, 0)  # Thursday
    ticket = await open_ticket(bot)
    assert ticket.sla_due == paris(2026, 11, 30, 18, 0)  # Monday

    for moment in (
        paris(2026, 11, 27, 17, 0),
        paris(2026, 11, 28, 12, 0),
        paris(2026, 11, 30, 13, 59),
    ):
        bot.clock.now = moment
        assert await bot.sweep() == []

    bot.clock.now = paris(2026, 11, 30, 14, 0)
    sent = await bot.sweep()
    assert staff_notices(sent) == [
        f"⚠️ {ticket.ref} is due Monday, November 30, 2026 at 6:00 PM (in 4 working hours) "
        "and nobody has answered yet."
    ]
    assert len(edits_of(sent, ticket)) == 1
    assert (await fresh(ticket)).sla_warned_at == bot.clock()

    bot.clock.now = paris(2026, 11, 30, 17, 0)
    assert await bot.sweep() == []
    await bot.restart()
    assert await bot.sweep() == []

    bot.clock.now = paris(2026, 11, 30, 18, 0, 1)
    sent = await bot.sweep()
    assert staff_notices(sent) == [
        f"🚨 SLA missed for {ticket.ref}: it was due Monday, November 30, 2026 at 6:00 PM and "
        "nobody has answered yet."
    ]
    [edit] = edits_of(sent, ticket)
    assert "⚠️ Overdue: the answer was due" in edit.content["m.new_content"]["body"]
    assert (await fresh(ticket)).sla_missed_at == bot.clock()
    assert await actions(ticket) == ["sla_warning", "sla_missed"]

    for _ in range(2):
        bot.clock.advance(timedelta(hours=5))
        assert await bot.sweep() == []
    await bot.restart()
    assert await bot.sweep() == []
    assert sorted(n.key for n in await Notice.filter(key__startswith="sla-")) == [
        f"sla-missed:{ticket.id}",
        f"sla-warn:{ticket.id}",
    ]


@pytest.mark.parametrize(
    ("received", "due", "before", "at"),
    [
        # Across a week-end: Monday 18:00 minus 12 working hours is Friday 15:00.
        (
            paris(2026, 11, 26, 10, 0),
            paris(2026, 11, 30, 18, 0),
            paris(2026, 11, 27, 14, 59),
            paris(2026, 11, 27, 15, 0),
        ),
        # Across a holiday (Wednesday 11 November): Thursday 18:00 minus 12 working hours is
        # Tuesday 15:00, not Wednesday.
        (
            paris(2026, 11, 9, 10, 0),
            paris(2026, 11, 12, 18, 0),
            paris(2026, 11, 10, 14, 59),
            paris(2026, 11, 10, 15, 0),
        ),
    ],
    ids=["week-end", "holiday"],
)
async def test_sla_warning_counts_working_hours(db_url, received, due, before, at):
    config = english(service={"default_locale": "en", "sla_warning_hours": 12})
    async with BotHarness.open(db_url, config) as bot:
        bot.clock.now = received
        ticket = await open_ticket(bot)
        assert ticket.sla_due == due
        bot.clock.now = before
        assert await bot.sweep() == []
        bot.clock.now = at
        [notice] = staff_notices(await bot.sweep())
        assert "(in 12 working hours)" in notice
        bot.clock.advance(timedelta(days=1))  # e.g. Wednesday the 11th, a holiday
        assert await bot.sweep() == []


async def test_no_sla_notice_for_an_answered_or_inactive_ticket(bot):
    bot.clock.now = paris(2026, 11, 26, 10, 0)
    answered = await open_ticket(bot)
    await bot.react(STAFF_ROOM, STAFF, answered.card_event_id, "👀")
    await open_ticket(bot, status=Status.CANCELLED)
    await open_ticket(bot, status=Status.AWAITING_CLIENT_CONFIRMATION)
    for moment in (paris(2026, 11, 30, 14, 0), paris(2026, 12, 1, 9, 0)):
        bot.clock.now = moment
        assert await bot.sweep() == []
    assert await Notice.filter(key__startswith="sla-").count() == 0


async def test_a_bot_down_through_the_warning_only_says_missed(bot):
    bot.clock.now = paris(2026, 11, 26, 10, 0)
    ticket = await open_ticket(bot)
    bot.clock.now = paris(2026, 12, 2, 9, 0)
    notices = staff_notices(await bot.sweep())
    assert len(notices) == 1 and notices[0].startswith(f"🚨 SLA missed for {ticket.ref}")
    assert (await fresh(ticket)).sla_warned_at is None
    assert await bot.sweep() == []


async def test_sla_warning_disabled_with_zero_hours(db_url):
    config = english(service={"default_locale": "en", "sla_warning_hours": 0})
    async with BotHarness.open(db_url, config) as bot:
        bot.clock.now = paris(2026, 11, 26, 10, 0)
        await open_ticket(bot)
        bot.clock.now = paris(2026, 11, 30, 17, 59)
        assert await bot.sweep() == []


async def test_taking_after_the_warning_stops_the_missed_notice(bot):
    bot.clock.now = paris(2026, 11, 26, 10, 0)
    ticket = await open_ticket(bot)
    bot.clock.now = paris(2026, 11, 30, 15, 0)
    assert len(staff_notices(await bot.sweep())) == 1
    await bot.react(STAFF_ROOM, STAFF, ticket.card_event_id, "👀")
    bot.clock.now = paris(2026, 12, 1, 9, 0)
    assert await bot.sweep() == []
    # Answered late: no longer overdue in the queue.
    [answer] = await bot.say(STAFF_ROOM, STAFF, "!queue")
    assert "OVERDUE" not in answer.body


async def test_two_staff_members_taking_at_once_are_decided_one_after_the_other(bot):
    from bot.matrix.inbound import IncomingReaction

    ticket = await open_ticket(bot)
    bot.transport.members[STAFF_ROOM].add(LEAD)
    bot.transport.powers[STAFF_ROOM][LEAD] = 50
    events = [
        IncomingReaction(
            bot.next_event_id(), STAFF_ROOM, who, ticket.card_event_id, "👀", bot.clock()
        )
        for who in (STAFF, LEAD)
    ]
    await bot.dispatcher.on_batch(events)
    await bot.deliverer.deliver_pending()
    taken = await AuditEntry.filter(ticket_id=ticket.id, action="taken").order_by("id")
    assert len(taken) == 2
    # The second decision saw the first: it is a reassignment, and the row says who won.
    assert taken[1].from_status == "in_progress"
    assert taken[0].actor in (taken[1].detail or "")
    assert (await fresh(ticket)).assigned_to == taken[1].actor


async def test_eyes_on_a_card_the_intake_posted(bot):
    """With the real intake conversation (skipped while `handlers.intake` does not exist)."""
    pytest.importorskip("handlers.intake")
    await bot.say(DM, ALICE, "!lang en")
    for answer in (
        "My survey no longer sends the invitation e-mails since Monday.",
        "5",
        "https://survey.example.org 6.4.2 123456",
        "1",
        "alice@example.org",
        "yes",
    ):
        await bot.say(DM, ALICE, answer)
    ticket = await Ticket.get(ref="SP-2026-0001")
    assert ticket.card_event_id is not None
    sent = await bot.react(STAFF_ROOM, STAFF, ticket.card_event_id, "👀")
    assert (await fresh(ticket)).assigned_to == STAFF
    assert len(edits_of(sent, ticket)) == 1
    assert [s.body for s in sent if s.room_id == DM] == [
        f"{STAFF} from the support team has taken your request SP-2026-0001."
    ]
