"""Satisfaction inside the conversation (issue #16 §2) through the real router and database
(SQLite, and PostgreSQL when configured): the question asked once when a ticket closes, its
answers by reaction, typed digit, `!rate`, in bridged rooms, in French and English; the
comment; the precedence with slot choices and new requests; the report and the metrics.

Expected texts are rendered from the handlers' msgids with the same catalogs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import generate_latest

from bot.domain import rating as satisfaction
from bot.domain.tickets import Channel, Kind, Status
from bot.i18n import Msg
from bot.routing import Context, addressed
from bot.storage import repo
from bot.storage.models import AuditEntry, Conversation, Reaction, Ticket
from bot.testing.harness import BOT, STAFF, STAFF_ROOM, BotHarness, Sent
from handlers import billing, booking, closing
from handlers import satisfaction as rating
from tests.flows.test_interventions_flow import (
    ALICE,
    BOB,
    BOB_DM,
    BRIDGE,
    DM,
    config,
    make_ticket,
    messages,
    new_messages,
    reload,
)

pytestmark = pytest.mark.postgres

TALK = "!talk:test"
PACE = timedelta(seconds=5)  # under the flood limit between two messages of one client


@pytest.fixture
async def bot(db_url: str) -> AsyncIterator[BotHarness]:
    async with BotHarness.open(db_url, config()) as harness:
        harness.transport.members[DM] = {BOT, ALICE}
        harness.transport.members[BOB_DM] = {BOT, BOB}
        harness.transport.members[TALK] = {BOT, BRIDGE}
        yield harness


def text(bot: BotHarness, msgid: str, locale: str = "fr", **params: Any) -> str:
    return bot.catalogs.get(locale).render(Msg(msgid, params), bot.services.tz)


async def say(bot: BotHarness, room: str, sender: str, body: str) -> list[Sent]:
    bot.clock.advance(PACE)
    return await bot.say(room, sender, body)


async def close(
    bot: BotHarness, ticket: Ticket, room: str = DM, client: str = ALICE, accept: str = "!accepter"
) -> list[Sent]:
    """Resolve (staff) and accept (client): the ticket closes."""
    await bot.say(STAFF_ROOM, STAFF, f"!log {ticket.ref} 30")
    await bot.say(STAFF_ROOM, STAFF, f"!resolve {ticket.ref}")
    return await say(bot, room, client, f"{accept} {ticket.ref}")


def question_of(sent: list[Sent], room: str = DM) -> Sent:
    [question] = [s for s in messages(sent, room) if "1️⃣" in s.body or "1 (" in s.body]
    return question


def staff_news(sent: list[Sent]) -> list[str]:
    return new_messages(sent, STAFF_ROOM)


# -- asking -------------------------------------------------------------------------------------


async def test_accepting_asks_once_then_a_reaction_rates_and_the_next_message_comments(bot):
    ticket = await make_ticket(bot, channel=Channel.MESSAGING)
    sent = await close(bot, ticket)
    t = await reload(ticket)
    assert t.status == Status.CLOSED
    # The thanks for accepting, then the question, in French (the client's language).
    bodies = new_messages(sent, DM)
    assert bodies[0] == text(
        bot, closing._ACCEPTED_CLIENT, ref=t.ref, warranty_until=t.warranty_until
    )
    assert bodies[1:] == [text(bot, rating._QUESTION, ref=t.ref)]
    question = question_of(sent)
    assert t.rating_asked_at == bot.clock() and t.rating_event_id == question.event_id
    assert t.rating is None

    # The client reacts 4️⃣ on the question (after a restart: the tag is in the database).
    await bot.restart()
    bot.clock.advance(timedelta(minutes=1))
    sent = await bot.react(DM, ALICE, question.event_id, "4️⃣")
    t = await reload(ticket)
    assert (t.rating, t.rated_at, t.rating_comment) == (4, bot.clock(), None)
    assert new_messages(sent, DM) == [
        text(bot, rating._THANKS, ref=t.ref, stars=4) + " " + text(bot, rating._COMMENT_INVITE)
    ]
    assert text(bot, rating._RATED_STAFF, ref=t.ref, stars=4) in staff_news(sent)
    [card] = [s for s in messages(sent, STAFF_ROOM) if s.content.get("m.new_content")]
    assert "4/5" in card.content["m.new_content"]["body"]

    # Its comment: the next message, within ten minutes; @room in it pings nobody.
    sent = await say(bot, DM, ALICE, "Très clair, merci @room")
    t = await reload(ticket)
    assert t.rating_comment == "Très clair, merci @room"
    assert new_messages(sent, DM) == [text(bot, rating._COMMENT_THANKS, ref=t.ref)]
    [staff] = staff_news(sent)
    assert "Très clair" in staff and "@room" not in staff  # defused (word joiner)
    actions = [e.action for e in await AuditEntry.filter(ticket_id=t.id).order_by("id")]
    assert actions[-4:] == ["accepted", "rating_asked", "rated", "rating_comment"]
    assert all(
        "Très clair" not in (e.detail or "") for e in await AuditEntry.filter(ticket_id=t.id)
    )

    # A later message is a new request again, not a second comment.
    sent = await say(bot, DM, ALICE, "Autre chose : les invitations partent en double.")
    assert (await reload(ticket)).rating_comment == "Très clair, merci @room"
    assert await Conversation.filter(client_key=ALICE).exists()


async def test_accepting_with_a_check_on_the_resolved_message_asks_too(bot):
    ticket = await make_ticket(bot, channel=Channel.MESSAGING)
    await bot.say(STAFF_ROOM, STAFF, f"!log {ticket.ref} 30")
    sent = await bot.say(STAFF_ROOM, STAFF, f"!resolve {ticket.ref}")
    [resolved] = messages(sent, DM)
    sent = await bot.react(DM, ALICE, resolved.event_id, "✅")
    assert (await reload(ticket)).status == Status.CLOSED
    assert new_messages(sent, DM)[-1] == text(bot, rating._QUESTION, ref=ticket.ref)
    # A second ✅ (a redelivery, or from another client) asks nothing more.
    assert await bot.react(DM, ALICE, resolved.event_id, "✔️") == []


async def test_never_asked_twice_across_a_warranty_reopening(bot):
    ticket = await make_ticket(bot, channel=Channel.MESSAGING)
    await close(bot, ticket)
    await say(bot, DM, ALICE, f"!rouvrir {ticket.ref}")
    sent = await close(bot, ticket)
    assert (await reload(ticket)).status == Status.CLOSED
    assert new_messages(sent, DM) == [
        text(
            bot,
            closing._ACCEPTED_CLIENT,
            ref=ticket.ref,
            warranty_until=(await reload(ticket)).warranty_until,
        )
    ]
    # Closed by staff refusing the warranty: not asked either.
    await say(bot, DM, ALICE, f"!rouvrir {ticket.ref}")
    sent = await bot.say(STAFF_ROOM, STAFF, f"!refuse-warranty {ticket.ref} LimeSurvey update")
    assert (await reload(ticket)).status == Status.CLOSED
    assert all("1️⃣" not in body for body in new_messages(sent, DM))
    assert await AuditEntry.filter(ticket_id=ticket.id, action="rating_asked").count() == 1


@pytest.mark.parametrize("kind", [Kind.QUESTION, Kind.QUOTE])
async def test_questions_and_quote_requests_are_never_asked(bot, kind):
    request = await make_ticket(bot, kind=kind, channel=Channel.MESSAGING)
    await bot.say(STAFF_ROOM, STAFF, f"!resolve {request.ref}")
    sent = await say(bot, DM, ALICE, f"!accept {request.ref}")
    t = await reload(request)
    assert t.status == Status.CLOSED
    assert t.rating_asked_at is None
    assert new_messages(sent, DM) == [text(bot, closing._ACCEPTED_CLIENT_NO_WARRANTY, ref=t.ref)]
    sent = await say(bot, DM, ALICE, f"!rate {t.ref} 5")
    assert [s.body for s in sent] == [text(bot, rating._NOT_RATEABLE, ref=t.ref)]
    assert (await reload(request)).rating is None


async def test_declined_tickets_are_not_asked(bot):
    ticket = await make_ticket(bot, channel=Channel.MESSAGING)
    sent = await bot.react(STAFF_ROOM, STAFF, ticket.card_event_id or "", "❌")
    assert (await reload(ticket)).status == Status.DECLINED
    assert all("1️⃣" not in body for body in new_messages(sent, DM))
    assert (await reload(ticket)).rating_asked_at is None


# -- typed answers ------------------------------------------------------------------------------


async def test_typed_digit_with_comment_in_english(bot):
    ticket = await make_ticket(bot, channel=Channel.MESSAGING)
    await say(bot, DM, ALICE, "!lang en")
    sent = await close(bot, ticket, accept="!accept")
    assert text(bot, rating._QUESTION, "en", ref=ticket.ref) in new_messages(sent, DM)
    sent = await say(bot, DM, ALICE, "5 quick and clear")
    t = await reload(ticket)
    assert (t.rating, t.rating_comment) == (5, "quick and clear")
    assert new_messages(sent, DM) == [
        text(bot, rating._THANKS_WITH_COMMENT, "en", ref=t.ref, stars=5)
    ]
    staff = text(bot, rating._RATED_STAFF_COMMENT, ref=t.ref, stars=5, comment="quick and clear")
    assert staff in staff_news(sent)
    # Rated with its comment: the next message is not taken as a comment.
    await say(bot, DM, ALICE, "Another problem: the quotas stopped counting today.")
    assert (await reload(ticket)).rating_comment == "quick and clear"


@pytest.mark.parametrize("bad", ["0", "6", "10/10", "4,5", "0 nul"])
async def test_bad_numbers_get_a_clear_answer_and_change_nothing(bot, bad):
    ticket = await make_ticket(bot, channel=Channel.MESSAGING)
    await close(bot, ticket)
    sent = await say(bot, DM, ALICE, bad)
    assert [s.body for s in sent] == [text(bot, rating._BAD_NUMBER, ref=ticket.ref)]
    assert (await reload(ticket)).rating is None
    assert not await Conversation.filter(client_key=ALICE).exists()  # no intake started
    # The question still waits: a right digit then rates.
    await say(bot, DM, ALICE, "3")
    assert (await reload(ticket)).rating == 3


async def test_short_text_reminds_how_to_rate_and_long_text_is_a_new_request(bot):
    ticket = await make_ticket(bot, channel=Channel.MESSAGING)
    await close(bot, ticket)
    sent = await say(bot, DM, ALICE, "abc")
    assert [s.body for s in sent] == [text(bot, rating._HOW_TO_RATE, ref=ticket.ref)]
    assert not await Conversation.filter(client_key=ALICE).exists()
    # A real request is never swallowed by the waiting question.
    await say(bot, DM, ALICE, "Nos invitations partent deux fois depuis la mise à jour.")
    assert await Conversation.filter(client_key=ALICE).exists()
    assert (await reload(ticket)).rating is None


async def test_typed_numbers_are_ratings_only_for_48_hours(bot):
    ticket = await make_ticket(bot, channel=Channel.MESSAGING)
    await close(bot, ticket)
    bot.clock.advance(satisfaction.ANSWER_WINDOW + timedelta(minutes=1))
    await say(bot, DM, ALICE, "2 problèmes avec nos quotas depuis hier soir")
    assert (await reload(ticket)).rating is None
    assert await Conversation.filter(client_key=ALICE).exists()  # a new request
    # The reaction and !rate still work.
    sent = await say(bot, DM, ALICE, f"!noter {ticket.ref} 4 bien")
    t = await reload(ticket)
    assert (t.rating, t.rating_comment) == (4, "bien")
    assert new_messages(sent, DM) == [text(bot, rating._THANKS_WITH_COMMENT, ref=t.ref, stars=4)]


async def test_the_comment_window_closes_after_ten_minutes(bot):
    ticket = await make_ticket(bot, channel=Channel.MESSAGING)
    await close(bot, ticket)
    await say(bot, DM, ALICE, "4")
    assert (await reload(ticket)).rating == 4
    # "5" right after: a number alone rates again; it is not a comment.
    sent = await say(bot, DM, ALICE, "5")
    t = await reload(ticket)
    assert (t.rating, t.rating_comment) == (5, None)
    assert new_messages(sent, DM)[0].startswith(text(bot, rating._RATING_NOW, ref=t.ref, stars=5))
    bot.clock.advance(satisfaction.COMMENT_WINDOW + timedelta(seconds=1))
    await say(bot, DM, ALICE, "finalement très bien")
    assert (await reload(ticket)).rating_comment is None


async def test_rate_command(bot):
    ticket = await make_ticket(bot, channel=Channel.MESSAGING)
    sent = await say(bot, DM, ALICE, "!rate 4")
    assert [s.body for s in sent] == [text(bot, rating._NOTHING_TO_RATE)]
    await close(bot, ticket)
    sent = await say(bot, DM, ALICE, "!rate abc")
    assert [s.body for s in sent] == [text(bot, rating._RATE_USAGE, ref=ticket.ref)]
    sent = await say(bot, DM, ALICE, f"!rate {ticket.ref} 7")
    assert [s.body for s in sent] == [text(bot, rating._BAD_NUMBER, ref=ticket.ref)]
    await say(bot, DM, ALICE, "!rate 2 lent")  # their latest question: no reference needed
    t = await reload(ticket)
    assert (t.rating, t.rating_comment) == (2, "lent")
    # Someone else's ticket is "not found", and stays unrated by them.
    sent = await say(bot, BOB_DM, BOB, f"!rate {ticket.ref} 5")
    assert ticket.ref in sent[0].body and (await reload(ticket)).rating == 2


# -- reactions ----------------------------------------------------------------------------------


async def test_reactions_change_fall_back_and_withdraw_like_element_toggles(bot):
    ticket = await make_ticket(bot, channel=Channel.MESSAGING)
    question = question_of(await close(bot, ticket))
    # Someone else's keycap (here in the client's room) does nothing.
    assert await bot.react(DM, BOB, question.event_id, "5️⃣") == []
    await bot.react(DM, ALICE, question.event_id, "3️⃣")
    three = bot.last_reaction_id
    bot.clock.advance(timedelta(seconds=30))
    sent = await bot.react(DM, ALICE, question.event_id, "4️⃣")
    four = bot.last_reaction_id
    assert (await reload(ticket)).rating == 4  # the latest counts
    assert new_messages(sent, DM)[0].startswith(
        text(bot, rating._RATING_NOW, ref=ticket.ref, stars=4)
    )
    # Element: clicking 4️⃣ again removes it; the client's 3️⃣ is still there.
    await bot.redact(DM, ALICE, four)
    assert (await reload(ticket)).rating == 3
    bot.clock.advance(timedelta(seconds=30))
    await bot.react(DM, ALICE, question.event_id, "5️⃣")
    five = bot.last_reaction_id
    # Removing a reaction that is not the rating changes nothing.
    await bot.redact(DM, ALICE, three)
    assert (await reload(ticket)).rating == 5
    sent = await bot.redact(DM, ALICE, five)
    t = await reload(ticket)
    assert (t.rating, t.rated_at) == (None, None)
    assert new_messages(sent, DM) == [text(bot, rating._WITHDRAWN, ref=t.ref)]
    assert text(bot, rating._WITHDRAWN_STAFF, ref=t.ref) in staff_news(sent)
    assert await Reaction.filter(target_event_id=question.event_id).count() == 0
    # Only a redaction by the reactor counts.
    await bot.react(DM, ALICE, question.event_id, "2️⃣")
    assert await bot.redact(DM, BOB, bot.last_reaction_id) == []
    assert (await reload(ticket)).rating == 2


# -- precedence ---------------------------------------------------------------------------------


async def test_slot_number_wins_over_the_waiting_question_and_4_of_5_rates(bot):
    from bot.video.jitsi import JitsiProvider

    bot.services.video = JitsiProvider(bot.config.video.jitsi, now=bot.clock)
    closed = await make_ticket(bot, channel=Channel.MESSAGING)
    await close(bot, closed)
    call = await make_ticket(bot, channel=Channel.VIDEO)

    async def offer(ctx: Context) -> None:
        await booking.offer_slots(ctx, await Ticket.get(id=call.id))

    assert await bot.dispatcher.run_job("test-offer", offer, room_id=DM)
    await bot.deliverer.deliver_pending()
    await say(bot, DM, ALICE, "1")
    assert await repo.active_booking(call) is not None  # the slot, not a rating
    assert (await reload(closed)).rating is None
    await say(bot, DM, ALICE, "4/5")
    assert (await reload(closed)).rating == 4


# -- bridged rooms ------------------------------------------------------------------------------


async def test_bridged_client_rates_by_typing_and_other_nicknames_do_not(bot):
    alice_key = f"bridge:{TALK}:Alice"
    ticket = await make_ticket(bot, channel=Channel.MESSAGING, client_key=alice_key, room_id=TALK)
    await bot.say(STAFF_ROOM, STAFF, f"!log {ticket.ref} 30")
    await bot.say(STAFF_ROOM, STAFF, f"!resolve {ticket.ref}")
    sent = await say(bot, TALK, BRIDGE, f"[nctalk] <Alice> !accepter {ticket.ref}")
    question = text(bot, rating._QUESTION_TYPED, ref=ticket.ref)
    assert addressed("Alice", question) in new_messages(sent, TALK)
    assert all("1️⃣" not in body for body in new_messages(sent, TALK))
    # Bob, another nickname in the same conversation, typing a digit is not Alice's rating.
    await say(bot, TALK, BRIDGE, "[nctalk] <Bob> 1")
    assert (await reload(ticket)).rating is None
    sent = await say(bot, TALK, BRIDGE, "[nctalk] <Alice> 5 parfait")
    t = await reload(ticket)
    assert (t.rating, t.rating_comment) == (5, "parfait")
    thanks = text(bot, rating._THANKS_WITH_COMMENT, ref=t.ref, stars=5)
    assert new_messages(sent, TALK) == [addressed("Alice", thanks)]


# -- report and metrics -------------------------------------------------------------------------


async def test_report_and_metrics_count_and_average_ratings_never_comments(bot):
    a = await make_ticket(bot, channel=Channel.MESSAGING)
    b = await make_ticket(bot, channel=Channel.MESSAGING)
    c = await make_ticket(bot, channel=Channel.MESSAGING, client_key=BOB, room_id=BOB_DM)
    for ticket in (a, b):
        await close(bot, ticket)
    await close(bot, c, room=BOB_DM, client=BOB)
    await say(bot, DM, ALICE, f"!rate {a.ref} 5 secret-comment-words")
    await say(bot, DM, ALICE, f"!rate {b.ref} 4")
    await say(bot, BOB_DM, BOB, f"!rate {c.ref} 2")

    rows = {row["client"]: row for row in await repo.report_month(2026, 11, bot.services.tz)}
    assert (rows[ALICE]["ratings"], rows[ALICE]["rating_sum"]) == (2, 9)
    assert rows[ALICE]["rating_average"] == 4.5
    assert (rows[BOB]["ratings"], rows[BOB]["rating_average"]) == (1, 2.0)
    assert "secret-comment-words" not in repo.report_csv(rows.values())

    sent = await bot.say(STAFF_ROOM, STAFF, "!report 2026-11")
    # The clients' table (the prepaid tickets per organisation follow after a blank line).
    lines = sent[0].body.split("\n\n")[0].splitlines()
    cells = {
        line.split("|")[0].strip().replace("\u2060", ""): [c.strip() for c in line.split("|")[1:]]
        for line in lines
    }
    # … ratings, average, no-shows (French decimals)
    assert cells[ALICE][-3:] == ["2", "4,5", "0"]
    assert cells[BOB][-3:] == ["1", "2,0", "0"]
    assert cells[text(bot, billing._TOTAL)][-3:] == ["3", "3,67", "0"]

    await bot.services.metrics.refresh(bot.clock(), bot.services.calendar, 4.0)
    scraped = generate_latest(bot.services.metrics.registry).decode()
    assert "support_bot_rating_count 3.0" in scraped
    assert "support_bot_rating_sum 11.0" in scraped
    assert 'support_bot_ratings{stars="4"} 1.0' in scraped
    assert 'support_bot_ratings{stars="1"} 0.0' in scraped
    assert "secret-comment-words" not in scraped
