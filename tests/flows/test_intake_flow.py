"""The client intake through the real router, dispatcher, outbox and database (SPEC §3, §7, §9).

French assertions stick to what the catalog already translates (the state machine's questions,
dates) or to stable parts (references, dates, nicknames); the new texts of `handlers.intake`
are checked in English after `!lang en`.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from bot import outbox
from bot.cards import defuse
from bot.domain.tickets import billed_tickets
from bot.storage import repo
from bot.storage.models import (
    AuditEntry,
    Client,
    Conversation,
    Notice,
    SlotOffer,
    Ticket,
    TicketNote,
)
from bot.testing.harness import BOT, STAFF, STAFF_ROOM, BotHarness, FakeClock
from bot.testing.harness import test_config as make_config

DM = "!dm-alice:test"
ALICE = "@alice:test"
BOB = "@bob:test"
TALK = "!talk:test"
BRIDGE = "@nctalk:test"
# Thursday 24 December 2026, 10:00 in Paris: the SPEC's public vector (25 Dec is a holiday).
CHRISTMAS_EVE = datetime(2026, 12, 24, 9, 0, tzinfo=UTC)

DESCRIPTION_FR = "Mon questionnaire n'envoie plus les invitations par e-mail depuis lundi."
DESCRIPTION_EN = "My survey no longer sends the invitation e-mails since Monday."
INSTANCE = "https://survey.example.org 6.4.2 123456"
FR_CATEGORY_QUESTION = "Quelle catégorie correspond à votre demande"
FR_INSTANCE_QUESTION = "Quelle est l’adresse de votre LimeSurvey"
FR_CHANNEL_QUESTION = "Quel mode d’assistance préférez-vous"
FR_EMAIL_QUESTION = "À quelle adresse e-mail pouvons-nous vous contacter"
EN_CATEGORY_QUESTION = "Which category fits your request?"
EN_INSTANCE_QUESTION = "What is the address of your LimeSurvey"
EN_CHANNEL_QUESTION = "How would you like to be helped?"
EN_EMAIL_QUESTION = "Which e-mail address can we use to contact you?"
EN_SUMMARY = "Here is your request:"
EN_THANKS = "Thank you! I am registering your request."
FR_THANKS = "Merci ! J’enregistre votre demande."


@pytest.fixture
async def bot(db_url):
    async with BotHarness.open(db_url, clock=FakeClock(CHRISTMAS_EVE)) as harness:
        yield harness


def here(sent, room=DM) -> list:
    """The messages of one room (the outbox delivers rooms in parallel)."""
    return [message for message in sent if message.room_id == room]


def bodies(sent) -> list[str]:
    return [message.body for message in sent]


def joined(sent) -> str:
    return "\n".join(bodies(sent))


def only(sent, room=DM) -> str:
    """The body of the one message a step sent to `room`: each reply of the step is one
    of its paragraphs (a welcome and the first question, a thank-you and the opened ticket)."""
    messages = here(sent, room)
    assert len(messages) == 1, bodies(messages)
    return messages[0].body


def paragraphs(body: str) -> list[str]:
    return body.split("\n\n")


async def answer_all(bot, room, sender, answers):
    sent = []
    for text in answers:
        sent = await bot.say(room, sender, text)
    return sent


async def to_confirm(bot, room=DM, sender=ALICE, *, category="5", channel="1", desc=None):
    """Drive an intake up to the summary; returns what the last answer got."""
    return await answer_all(
        bot,
        room,
        sender,
        [desc or DESCRIPTION_EN, category, INSTANCE, channel, "alice@example.org"],
    )


async def open_ticket(bot, room=DM, sender=ALICE, **kwargs) -> Ticket:
    await to_confirm(bot, room, sender, **kwargs)
    before = await Ticket.all().count()
    await bot.say(room, sender, "yes")
    assert await Ticket.all().count() == before + 1
    return await Ticket.all().order_by("-id").first()


# -- the whole conversation -------------------------------------------------------------------


async def test_full_intake_in_french(bot):
    sent = await bot.say(DM, ALICE, DESCRIPTION_FR)
    welcome, question = paragraphs(only(sent))  # one message: the welcome, then the question
    assert "Bonjour !" in welcome
    assert FR_CATEGORY_QUESTION in question
    assert "1. " in question and "10. " in question
    sent = await bot.say(DM, ALICE, "5")
    assert FR_INSTANCE_QUESTION in sent[-1].body
    sent = await bot.say(DM, ALICE, INSTANCE)
    assert FR_CHANNEL_QUESTION in sent[-1].body
    sent = await bot.say(DM, ALICE, "1")
    assert FR_EMAIL_QUESTION in sent[-1].body
    sent = await bot.say(DM, ALICE, "alice@example.org")
    summary = sent[-1].body
    assert DESCRIPTION_FR in summary
    assert "alice@example.org" in summary and "https://survey.example.org" in summary

    sent = await bot.say(DM, ALICE, "oui")
    # The client's answer goes out first, the staff room's card after it.
    assert [m.room_id for m in sent] == [DM, STAFF_ROOM]
    client_messages = [m for m in sent if m.room_id == DM]
    # One answer: the thank-you and the opened ticket are paragraphs of the same message.
    assert len(client_messages) == 1
    assert client_messages[0].html is None  # plain text: line breaks show in every client
    opened = client_messages[0].body
    assert opened.startswith("Merci ! J’enregistre votre demande.\n\nVotre ticket SP-2026-0001")
    assert "SP-2026-0001" in opened
    assert "mardi 29 décembre 2026 à 18:00" in opened
    assert "https://support.sondages.pro/conditions" in opened  # first ticket: the terms
    cards = [m for m in sent if m.room_id == STAFF_ROOM]
    assert len(cards) == 1
    assert "SP-2026-0001" in cards[0].body
    assert DESCRIPTION_FR in cards[0].body
    assert "SP-2026-0001" in (cards[0].html or "")  # the card has markup of its own

    ticket = await Ticket.get(ref="SP-2026-0001").prefetch_related("client")
    assert (ticket.kind, ticket.status, ticket.category, ticket.channel) == (
        "ticket",
        "open",
        "data",
        "messaging",
    )
    assert ticket.room_id == DM and ticket.locale == "fr"
    assert ticket.description == DESCRIPTION_FR
    assert (ticket.instance_url, ticket.instance_version, ticket.survey_id) == (
        "https://survey.example.org",
        "6.4.2",
        "123456",
    )
    assert ticket.email == "alice@example.org"
    assert ticket.sla_due == datetime(2026, 12, 29, 17, 0, tzinfo=UTC)
    assert ticket.created_at == CHRISTMAS_EVE
    client = ticket.client
    assert client.key == ALICE and client.email == "alice@example.org"
    assert client.terms_shown_at == CHRISTMAS_EVE
    assert client.terms_url == "https://support.sondages.pro/conditions"
    audit = await AuditEntry.filter(ticket=ticket).values_list("action", "actor", "to_status")
    assert audit == [("opened", ALICE, "open")]
    conv = await Conversation.get(room_id=DM, client_key=ALICE)
    assert conv.step == "done" and conv.due_at is None
    assert bot.services.metrics.tickets.labels(kind="ticket")._value.get() == 1


async def test_the_staff_card_does_not_wait_for_a_stuck_client_room(bot, monkeypatch):
    """The card waits for the client's answer, but not forever: a room whose sends hang
    (a homeserver refusing that room for a while) holds back its own messages only."""
    monkeypatch.setattr(outbox, "HEAD_START_SECONDS", 0.2)
    await to_confirm(bot)
    release = asyncio.Event()
    send = bot.transport.send_event

    async def hanging_in_dm(room_id, event_type, content, txn_id):
        if room_id == DM:
            await release.wait()
        return await send(room_id, event_type, content, txn_id)

    monkeypatch.setattr(bot.transport, "send_event", hanging_in_dm)
    before = len(bot.transport.sent)
    confirming = asyncio.create_task(bot.say(DM, ALICE, "yes"))
    await asyncio.sleep(1.0)
    assert [m.room_id for m in bot.transport.sent[before:]] == [STAFF_ROOM]
    release.set()
    sent = await asyncio.wait_for(confirming, 10)
    assert [m.room_id for m in sent] == [STAFF_ROOM, DM]
    assert "SP-2026-0001" in sent[1].body


async def test_full_intake_in_english_and_remembered_email(bot):
    sent = await bot.say(DM, ALICE, "!lang en")
    sent = await bot.say(DM, ALICE, DESCRIPTION_EN)
    welcome, question = paragraphs(only(sent))  # one message: the welcome, then the question
    assert welcome.startswith("Hello! I will ask you a few questions")
    assert EN_CATEGORY_QUESTION in question
    await answer_all(bot, DM, ALICE, ["data", INSTANCE, "messaging"])
    sent = await bot.say(DM, ALICE, "alice@example.org")
    assert sent[-1].body.startswith(EN_SUMMARY)
    sent = await bot.say(DM, ALICE, "y")
    # One message: the thank-you, then the opened ticket.
    opened = only(sent)
    assert paragraphs(opened)[0] == EN_THANKS
    assert opened.startswith(f"{EN_THANKS}\n\nYour ticket SP-2026-0001 is open.")
    assert "Tuesday, December 29, 2026 at 6:00 PM" in opened
    assert "A member of the support team will answer you here before that date." in opened
    assert "!status SP-2026-0001" in opened
    assert "service terms: https://support.sondages.pro/conditions" in opened
    assert any(m.room_id == STAFF_ROOM and "SP-2026-0001" in m.body for m in sent)

    # The next request: the e-mail is offered back, the terms are not repeated.
    await bot.say(DM, ALICE, "!new")
    await answer_all(bot, DM, ALICE, [DESCRIPTION_EN, "2", "!skip", "1"])
    sent = await bot.say(DM, ALICE, "never mind")  # not yes, not an address
    assert "alice@example.org" in sent[-1].body
    sent = await bot.say(DM, ALICE, "yes")
    assert EN_SUMMARY in sent[-1].body
    opened = only(await bot.say(DM, ALICE, "yes"))
    assert opened.startswith(f"{EN_THANKS}\n\nYour ticket SP-2026-0002 is open.")
    assert "service terms" not in opened


async def test_every_wrong_answer_is_explained_and_the_question_asked_again(bot):
    await bot.say(DM, ALICE, "!lang en")
    sent = await bot.say(DM, ALICE, "Hi")
    welcome, question = paragraphs(only(sent))
    assert welcome.startswith("Hello!")
    assert "at least 20 characters" in question
    sent = await bot.say(DM, ALICE, "it is about my survey")
    assert EN_CATEGORY_QUESTION in sent[-1].body

    # Each time one message: the explanation, then the same question.
    why, question = only(await bot.say(DM, ALICE, "banana")).split("\n\n", 1)
    assert why == "That is not one of the categories."
    assert EN_CATEGORY_QUESTION in question
    why, question = only(await bot.say(DM, ALICE, "!skip")).split("\n\n", 1)
    assert why == "This question cannot be skipped."
    assert EN_CATEGORY_QUESTION in question
    sent = await bot.say(DM, ALICE, "1")
    assert EN_INSTANCE_QUESTION in sent[-1].body

    why, question = only(await bot.say(DM, ALICE, "survey.example.org")).split("\n\n", 1)
    assert "https://survey.example.org" in why
    assert EN_INSTANCE_QUESTION in question
    sent = await bot.say(DM, ALICE, INSTANCE)
    assert EN_CHANNEL_QUESTION in sent[-1].body

    why, question = only(await bot.say(DM, ALICE, "carrier pigeon")).split("\n\n", 1)
    assert why == "That is not one of the ways we can help."
    assert EN_CHANNEL_QUESTION in question
    sent = await bot.say(DM, ALICE, "1")
    assert EN_EMAIL_QUESTION in sent[-1].body

    why, question = only(await bot.say(DM, ALICE, "alice at example")).split("\n\n", 1)
    assert "does not look like an e-mail address" in why
    assert EN_EMAIL_QUESTION in question
    sent = await bot.say(DM, ALICE, "alice@example.org")
    assert EN_SUMMARY in sent[-1].body

    why, summary = only(await bot.say(DM, ALICE, "maybe")).split("\n\n", 1)
    assert why == "Please answer yes or no."
    assert EN_SUMMARY in summary
    # Nothing given was lost on the way.
    assert "it is about my survey" in summary
    assert "alice@example.org" in summary

    # "no" goes back to a step, then to the summary again.
    sent = await bot.say(DM, ALICE, "no")
    assert "Which part do you want to change?" in sent[-1].body
    sent = await bot.say(DM, ALICE, "4")
    assert EN_CHANNEL_QUESTION in sent[-1].body
    sent = await bot.say(DM, ALICE, "intervention")
    assert EN_SUMMARY in sent[-1].body
    opened = only(await bot.say(DM, ALICE, "yes"))
    assert opened.startswith(f"{EN_THANKS}\n\nYour ticket SP-2026-0001 is open.")
    assert "A member of the support team will estimate the work" in opened
    ticket = await Ticket.get(ref="SP-2026-0001")
    assert (ticket.channel, ticket.status) == ("intervention", "awaiting_estimate")


@pytest.mark.parametrize(
    ("category", "ref", "kind", "next_step"),
    [
        ("9", "Q-2026-0001", "question", "feasibility opinion"),
        ("10", "QR-2026-0001", "quote", "come back to you with an offer"),
    ],
)
async def test_feasibility_question_and_quote_request(bot, category, ref, kind, next_step):
    await bot.say(DM, ALICE, "!lang en")
    await to_confirm(bot, category=category)
    sent = await bot.say(DM, ALICE, "yes")
    opened = only(sent)  # the thank-you, then the registered request
    assert paragraphs(opened)[0] == EN_THANKS
    assert ref in paragraphs(opened)[1]
    assert ref in opened and next_step in opened
    assert "Tuesday, December 29, 2026 at 6:00 PM" in opened
    ticket = await Ticket.get(ref=ref)
    assert (ticket.kind, ticket.status) == (kind, "open")
    assert billed_tickets(repo.ticket_state(ticket)) == 0
    card = next(m for m in sent if m.room_id == STAFF_ROOM)
    assert ref in card.body
    assert bot.services.metrics.tickets.labels(kind=kind)._value.get() == 1


async def test_video_ticket_mentions_slots_and_has_three_business_days(bot):
    await bot.say(DM, ALICE, "!lang en")
    await to_confirm(bot, channel="video")
    sent = here(await bot.say(DM, ALICE, "yes"))
    opened = sent[0].body  # the thank-you and the opened ticket: one message
    assert opened.startswith(f"{EN_THANKS}\n\nYour ticket SP-2026-0001 is open.")
    assert "call slots" in opened
    assert "Wednesday, December 30, 2026 at 6:00 PM" in opened
    ticket = await Ticket.get(ref="SP-2026-0001")
    assert ticket.channel == "video"
    assert ticket.sla_due == datetime(2026, 12, 30, 17, 0, tzinfo=UTC)
    booking = pytest.importorskip("handlers.booking")
    if hasattr(booking, "offer_slots"):
        assert "I will now offer you call slots." in opened
        assert len(sent) == 2 and "SP-2026-0001" in sent[1].body  # the offer: a message of its own
        assert await SlotOffer.filter(ticket=ticket, active=True).exists()
    else:
        assert len(sent) == 1


async def test_a_failing_slot_offer_does_not_lose_the_ticket(bot, monkeypatch):
    booking = pytest.importorskip("handlers.booking")

    async def broken(ctx, ticket):
        await SlotOffer.create(ticket=ticket, slots=[], created_at=ctx.now, active=True)
        ctx.reply("half-written offer")
        raise RuntimeError("calendar bug")

    monkeypatch.setattr(booking, "offer_slots", broken, raising=False)
    await bot.say(DM, ALICE, "!lang en")
    await to_confirm(bot, channel="phone")
    sent = here(await bot.say(DM, ALICE, "yes"))
    # The opened ticket (one message with the thank-you), then the fallback of its own.
    assert len(sent) == 2, bodies(sent)
    assert sent[0].body.startswith(f"{EN_THANKS}\n\nYour ticket SP-2026-0001 is open.")
    assert sent[-1].body == "The support team will offer you call slots shortly."
    assert not any("half-written offer" in body for body in bodies(sent))
    assert await Ticket.filter(ref="SP-2026-0001", channel="phone").exists()
    assert not await SlotOffer.all().exists()  # rolled back to the savepoint


async def test_confirm_with_a_reaction(bot):
    sent = await to_confirm(bot)
    summary = sent[-1]
    # A staff member's ✅ in the client room does not confirm for the client.
    assert await bot.react(DM, STAFF, summary.event_id, "✅") == []
    sent = await bot.react(DM, ALICE, summary.event_id, "✅\ufe0f")
    assert any("SP-2026-0001" in m.body for m in sent)
    # Not at the summary any more: a ✅ does nothing.
    assert await bot.react(DM, ALICE, summary.event_id, "👍") == []
    assert await Ticket.all().count() == 1


async def test_client_text_echoed_in_the_summary_pings_nobody(bot):
    hostile = "@room help! See https://matrix.to/#/@staff:test for what I mean, please."
    await to_confirm(bot, desc=hostile)
    summary = bot.in_room(DM)[-1]
    assert "@room" not in summary.body and "matrix.to" not in summary.body
    assert "help! See https://matrix" in summary.body  # still readable
    assert summary.html is None  # plain text only: no markup to smuggle a link or a pill in


async def test_staff_text_in_a_client_room_starts_nothing(bot):
    assert await bot.say(DM, STAFF, "Hello Alice, I am looking at your survey now.") == []
    assert await Conversation.all().count() == 0


# -- cancelling ---------------------------------------------------------------------------


async def test_cancel_during_the_intake_drops_it(bot):
    await answer_all(bot, DM, ALICE, [DESCRIPTION_FR, "5"])
    sent = await bot.say(DM, ALICE, "!annuler")
    assert bodies(sent) == ["Demande abandonnée, aucun ticket n’a été ouvert."]
    assert await Ticket.all().count() == 0
    conv = await Conversation.get(room_id=DM, client_key=ALICE)
    assert conv.step == "cancelled" and conv.due_at is None
    # Nothing left to cancel; a new message starts again from the beginning.
    await bot.say(DM, ALICE, "!lang en")
    sent = await bot.say(DM, ALICE, "!cancel")
    assert bodies(sent) == ["There is no request in progress to cancel."]
    sent = await bot.say(DM, ALICE, DESCRIPTION_EN)
    assert sent[0].body.startswith("Hello!")


async def test_cancel_a_messaging_ticket_then_refusals(bot):
    await bot.say(DM, ALICE, "!lang en")
    ticket = await open_ticket(bot)
    sent = await bot.say(DM, ALICE, "!cancel")
    assert bodies(here(sent)) == ["SP-2026-0001 is cancelled: it will not be billed."]
    staff = here(sent, STAFF_ROOM)
    assert any(m.type == "m.room.message" and "SP-2026-0001" in m.body for m in staff)
    assert any("m.new_content" in m.content for m in staff)  # the card is edited in place
    await ticket.refresh_from_db()
    assert ticket.status == "cancelled"
    assert billed_tickets(repo.ticket_state(ticket)) == 0
    audit = await AuditEntry.filter(ticket=ticket).order_by("id").values_list("action", flat=True)
    assert audit == ["opened", "cancelled_by_client"]

    # A call ticket cannot be cancelled (R12), and the refusal says why.
    await bot.say(DM, ALICE, "!new")
    call = await open_ticket(bot, channel="2")
    sent = await bot.say(DM, ALICE, f"!cancel {call.ref}")
    assert "Only messaging assistance can be cancelled" in sent[0].body
    await call.refresh_from_db()
    assert call.status == "open"
    # Someone else's ticket is "not found", never "forbidden".
    sent = await bot.say("!dm-bob:test", BOB, "!cancel SP-2026-0002")
    assert "SP-2026-0002" in sent[0].body
    assert "could not find" in sent[0].body or "trouv" in sent[0].body
    await call.refresh_from_db()
    assert call.status == "open"


async def test_cancel_is_refused_once_staff_answered(bot):
    await bot.say(DM, ALICE, "!lang en")
    ticket = await open_ticket(bot)
    ticket.first_response_at = bot.clock()
    await ticket.save()
    sent = await bot.say(DM, ALICE, "!cancel SP-2026-0001")
    assert "a staff member has already answered" in sent[0].body


# -- R1: a second message with an open ticket -----------------------------------------------


async def test_open_ticket_asks_related_or_new_and_both_answers_work(bot):
    await bot.say(DM, ALICE, "!lang en")
    ticket = await open_ticket(bot)
    sent = await bot.say(DM, ALICE, "It also fails for the reminders, by the way.")
    assert "You already have an open ticket, SP-2026-0001" in sent[-1].body

    sent = await bot.say(DM, ALICE, "1")
    assert bodies(here(sent)) == ["I added your message to SP-2026-0001."]
    staff = here(sent, STAFF_ROOM)
    notice = next(m for m in staff if "Nouveau message du client" in m.body)
    assert "SP-2026-0001" in notice.body and "reminders" in notice.body
    notes = await TicketNote.filter(ticket=ticket).values_list("text", flat=True)
    assert notes == ["It also fails for the reminders, by the way."]
    actions = await AuditEntry.filter(ticket=ticket).values_list("action", flat=True)
    assert "note_added" in actions

    sent = await bot.say(DM, ALICE, "Another thing: my theme looks broken on mobile.")
    assert "You already have an open ticket" in sent[-1].body
    reply, question = only(await bot.say(DM, ALICE, "2")).split("\n\n", 1)
    assert reply == "All right, a new request."
    assert EN_CATEGORY_QUESTION in question
    await answer_all(bot, DM, ALICE, ["theme", "!skip", "1", "yes"])
    opened = only(await bot.say(DM, ALICE, "yes"))
    assert opened.startswith(f"{EN_THANKS}\n\nYour ticket SP-2026-0002 is open.")
    second = await Ticket.get(ref="SP-2026-0002")
    assert second.description == "Another thing: my theme looks broken on mobile."


async def test_new_skips_the_related_question(bot):
    await bot.say(DM, ALICE, "!lang en")
    await open_ticket(bot)
    welcome, question = paragraphs(only(await bot.say(DM, ALICE, "!new")))
    assert welcome.startswith("Hello!")
    assert "describe the problem" in question
    sent = await bot.say(DM, ALICE, "!nouveau Exports to SPSS crash with a timeout error.")
    assert EN_CATEGORY_QUESTION in sent[-1].body


async def test_adding_to_a_ticket_closed_meanwhile_is_refused(bot):
    await bot.say(DM, ALICE, "!lang en")
    ticket = await open_ticket(bot)
    await bot.say(DM, ALICE, "One more detail about the invitations problem.")
    ticket.status = "cancelled"
    await ticket.save()
    sent = await bot.say(DM, ALICE, "1")
    assert "SP-2026-0001 is no longer open" in sent[0].body
    assert await TicketNote.all().count() == 0
    sent = await bot.say(DM, ALICE, "2")
    assert EN_CATEGORY_QUESTION in sent[-1].body


async def test_a_bare_number_is_left_to_the_booking_module_while_slots_are_offered(bot):
    ticket = await open_ticket(bot, channel="2")
    if not await SlotOffer.filter(ticket=ticket, active=True).exists():  # no booking module
        await SlotOffer.create(ticket=ticket, slots=[], created_at=bot.clock(), active=True)
    before = await Conversation.get(room_id=DM, client_key=ALICE)
    sent = await bot.say(DM, ALICE, "2")
    assert not any("Vous avez déjà un ticket ouvert" in m.body for m in sent)  # no R1 question
    after = await Conversation.get(room_id=DM, client_key=ALICE)
    assert after.version == before.version and after.step == "done"


# -- client commands ----------------------------------------------------------------------


async def test_tickets_and_status(bot):
    await bot.say(DM, ALICE, "!lang en")
    sent = await bot.say(DM, ALICE, "!tickets")
    assert bodies(sent) == [
        "You have no requests yet. Describe your problem in a message to open one."
    ]
    await open_ticket(bot)
    await bot.say(DM, ALICE, "!new")
    await open_ticket(bot, category="9")
    sent = await bot.say(DM, ALICE, "!tickets")
    listing = sent[0].body
    assert listing.startswith("Your requests:")
    assert "Q-2026-0001 · Feasibility question · open" in listing
    assert "SP-2026-0001 · Ticket · open · answer due by Tuesday, December 29, 2026" in listing

    sent = await bot.say(DM, ALICE, "!status sp-2026-0001")
    status = sent[0].body
    assert status.startswith("SP-2026-0001 · Ticket · open")
    assert "Answer due by: Tuesday, December 29, 2026 at 6:00 PM" in status
    assert "Data import, invitations" in status

    # Another client: not found, exactly as an unknown reference.
    sent = await bot.say("!dm-bob:test", BOB, "!statut SP-2026-0001")
    unknown = await bot.say("!dm-bob:test", BOB, "!statut SP-2026-0999")
    assert sent[0].body == unknown[0].body.replace("0999", "0001")


async def test_skip_command(bot):
    await bot.say(DM, ALICE, "!lang en")
    sent = await bot.say(DM, ALICE, "!skip")
    assert bodies(sent) == ["There is no question to skip right now."]
    await answer_all(bot, DM, ALICE, [DESCRIPTION_EN, "1"])
    sent = await bot.say(DM, ALICE, "!passer")
    assert EN_CHANNEL_QUESTION in sent[-1].body
    sent = await bot.say(DM, ALICE, "!skip")
    assert "This question cannot be skipped." in sent[0].body


async def test_help_lists_the_client_commands(bot):
    await bot.say(DM, ALICE, "!lang en")
    sent = await bot.say(DM, ALICE, "!help")
    for line in ("!new / !nouveau", "!tickets", "!status / !statut SP-…", "!cancel / !annuler"):
        assert line in sent[0].body


# -- restarts and time-outs ---------------------------------------------------------------


async def test_restart_in_the_middle_resumes_at_the_same_step(bot):
    await answer_all(bot, DM, ALICE, [DESCRIPTION_FR, "5"])
    await bot.restart()
    sent = await bot.say(DM, ALICE, INSTANCE)
    assert FR_CHANNEL_QUESTION in sent[-1].body
    await bot.restart()
    sent = await bot.say(DM, ALICE, "vidéo")
    assert FR_EMAIL_QUESTION in sent[-1].body
    await bot.restart()
    await bot.say(DM, ALICE, "alice@example.org")
    await bot.restart()
    sent = here(await bot.say(DM, ALICE, "oui"))
    # The thank-you and the opened ticket are one message (a slot offer may follow).
    assert sent[0].body.startswith(f"{FR_THANKS}\n\nVotre ticket SP-2026-0001 est ouvert.")
    ticket = await Ticket.get(ref="SP-2026-0001")
    assert ticket.description == DESCRIPTION_FR and ticket.channel == "video"


async def test_reminder_once_after_24h_even_across_restarts_then_expiry(bot):
    await answer_all(bot, DM, ALICE, [DESCRIPTION_FR, "5"])
    bot.clock.advance(timedelta(hours=23))
    assert await bot.sweep() == []
    bot.clock.advance(timedelta(hours=1))
    sent = await bot.sweep()
    assert len(sent) == 2
    assert sent[0].room_id == DM and sent[0].body.startswith("Rappel")
    assert "6 jours" in sent[0].body
    assert FR_INSTANCE_QUESTION in sent[1].body  # the pending question again
    assert await bot.sweep() == []
    await bot.restart()
    bot.clock.advance(timedelta(hours=5))
    assert await bot.sweep() == []
    assert await Notice.filter(key__startswith="intake-remind:").count() == 1

    bot.clock.advance(timedelta(days=6))  # 7 days since the last message
    sent = await bot.sweep()
    assert len(sent) == 1 and "7 jours" in sent[0].body
    assert await bot.sweep() == []
    conv = await Conversation.get(room_id=DM, client_key=ALICE)
    assert conv.step == "expired" and conv.due_at is None
    assert await Ticket.all().count() == 0
    sent = await bot.say(DM, ALICE, DESCRIPTION_FR)
    assert FR_CATEGORY_QUESTION in sent[-1].body


async def test_a_client_message_makes_the_pending_reminder_void(bot):
    await bot.say(DM, ALICE, DESCRIPTION_FR)
    bot.clock.advance(timedelta(hours=20))
    await bot.say(DM, ALICE, "5")
    bot.clock.advance(timedelta(hours=5))  # 25 h after the first, 5 h after the last
    assert await bot.sweep() == []
    bot.clock.advance(timedelta(hours=19))
    sent = await bot.sweep()
    assert FR_INSTANCE_QUESTION in sent[-1].body
    # After the reminder, the client answers: a new silence gets a new reminder.
    await bot.say(DM, ALICE, INSTANCE)
    bot.clock.advance(timedelta(hours=24))
    sent = await bot.sweep()
    assert FR_CHANNEL_QUESTION in sent[-1].body


# -- bridged Nextcloud Talk rooms ---------------------------------------------------------


@pytest.fixture
async def bridged(db_url):
    config = make_config(bridges=[{"user_id": BRIDGE}])
    async with BotHarness.open(db_url, config, clock=FakeClock(CHRISTMAS_EVE)) as harness:
        harness.transport.members[TALK] = {BOT, BRIDGE}
        yield harness


async def talk(bot, nick: str, text: str):
    return await bot.say(TALK, BRIDGE, f"[nctalk] <{nick}> {text}")


async def test_bridged_intake_addresses_the_nickname_in_plain_text(bridged):
    sent = await talk(bridged, "Alice", DESCRIPTION_FR)
    assert sent and all(m.body.startswith("Alice: ") for m in sent)
    assert all("formatted_body" not in m.content for m in sent)
    # One message, addressed once: the welcome, then the question.
    first = only(sent, TALK)
    assert first.startswith("Alice: Bonjour !") and first.count("Alice: ") == 1
    assert FR_CATEGORY_QUESTION in paragraphs(first)[1]
    for text in ("5", "!passer", "1", "alice@example.org"):
        sent = await talk(bridged, "Alice", text)
        assert all(m.body.startswith("Alice: ") for m in sent)
    sent = await talk(bridged, "Alice", "oui")
    in_room = [m for m in sent if m.room_id == TALK]
    assert all(m.body.startswith("Alice: ") for m in in_room)
    assert all("formatted_body" not in m.content for m in in_room)
    opened = only(sent, TALK)  # the thank-you and the opened ticket, addressed once
    assert opened.startswith(f"Alice: {FR_THANKS}\n\nVotre ticket SP-2026-0001 est ouvert.")
    assert opened.count("Alice: ") == 1
    assert "SP-2026-0001" in opened
    assert "mardi 29 décembre 2026 à 18:00" in opened
    ticket = await Ticket.get(ref="SP-2026-0001").prefetch_related("client")
    assert ticket.client.key == f"bridge:{TALK}:Alice"
    assert ticket.room_id == TALK and ticket.instance_url is None
    assert bridged.transport.created_rooms == []  # bridged rooms are never moved


async def test_two_nicknames_are_two_conversations(bridged):
    await talk(bridged, "Alice", DESCRIPTION_FR)
    sent = await talk(bridged, "Bob", "Bonjour")
    assert all(m.body.startswith("Bob: ") for m in sent)
    assert "Bonjour !" in sent[0].body  # Bob starts his own intake
    sent = await talk(bridged, "Alice", "5")
    assert FR_INSTANCE_QUESTION in sent[-1].body
    sent = await talk(bridged, "Bob", "Mes quotas ne se déclenchent jamais.")
    assert sent[-1].body.startswith("Bob: ") and FR_CATEGORY_QUESTION in sent[-1].body
    keys = set(await Conversation.all().values_list("client_key", flat=True))
    assert keys == {f"bridge:{TALK}:Alice", f"bridge:{TALK}:Bob"}


async def test_a_nickname_equal_to_a_staff_name_is_not_staff(bridged):
    sent = await talk(bridged, STAFF, DESCRIPTION_FR)
    assert sent[-1].body.startswith(f"{defuse(STAFF)}: ")  # addressed, but not as a pill
    assert FR_CATEGORY_QUESTION in sent[-1].body
    sent = await talk(bridged, "staff", "Je suis du support, promis")
    assert sent[0].body.startswith("staff: ")


async def test_the_bridge_account_itself_starts_nothing(bridged):
    assert await bridged.say(TALK, BRIDGE, "Alice joined the conversation") == []


async def test_bridged_reminder_addresses_the_nickname(bridged):
    await talk(bridged, "Alice", DESCRIPTION_FR)
    bridged.clock.advance(timedelta(hours=24))
    sent = await bridged.sweep()
    assert len(sent) == 2
    assert all(m.body.startswith("Alice: ") and m.room_id == TALK for m in sent)
    assert all("formatted_body" not in m.content for m in sent)


# -- confidentiality: shared rooms --------------------------------------------------------

SHARED = "!shared:test"


async def test_request_in_a_shared_room_moves_to_a_private_room(bot):
    bot.transport.members[SHARED] = {BOT, ALICE, BOB, STAFF}
    bot.transport.encrypted.add(SHARED)
    calls = []
    create_room = bot.transport.create_room

    async def recording_create_room(**kwargs):
        calls.append(kwargs)
        return await create_room(**kwargs)

    bot.transport.create_room = recording_create_room
    sent = await bot.say(SHARED, ALICE, DESCRIPTION_FR)
    assert len(bot.transport.created_rooms) == 1
    private = bot.transport.created_rooms[0]["room_id"]
    assert calls[0]["invite"] == [ALICE, STAFF]
    assert calls[0]["encrypted"] is True and calls[0]["is_direct"] is False
    in_shared = [m for m in sent if m.room_id == SHARED]
    assert len(in_shared) == 1
    assert "invit" in in_shared[0].body  # "I have invited you to a private room…"
    assert "invitations" not in in_shared[0].body  # nothing of the request
    in_private = [m for m in sent if m.room_id == private]
    assert FR_CATEGORY_QUESTION in in_private[-1].body
    assert (await Client.get(key=ALICE)).private_room_id == private

    # Answers typed in the shared room are answered in the private room.
    sent = await bot.say(SHARED, ALICE, "5")
    assert [m.room_id for m in sent if FR_INSTANCE_QUESTION in m.body] == [private]
    shared_texts = [m.body for m in sent if m.room_id == SHARED]
    assert len(shared_texts) == 1 and "5" not in shared_texts[0]
    for text in (INSTANCE, "1", "alice@example.org", "oui"):
        sent = await bot.say(private, ALICE, text)
    ticket = await Ticket.get(ref="SP-2026-0001")
    assert ticket.room_id == private
    assert ticket.description == DESCRIPTION_FR

    # Nothing of the request was ever written in the shared room.
    for message in bot.in_room(SHARED):
        assert "SP-2026" not in message.body
        assert "invitations par e-mail" not in message.body
        assert "alice@example.org" not in message.body
    # The private room is reused for the next request.
    await bot.say(SHARED, ALICE, "!nouveau")
    assert len(bot.transport.created_rooms) == 1


async def test_configured_support_room_is_treated_as_shared(db_url):
    config = make_config(
        matrix={
            "homeserver": "http://127.0.0.1:1",
            "user_id": BOT,
            "password": "test-password-not-used",
            "staff_room": STAFF_ROOM,
            "staff": [STAFF],
            "support_rooms": [SHARED],
        }
    )
    async with BotHarness.open(db_url, config, clock=FakeClock(CHRISTMAS_EVE)) as bot:
        bot.transport.members[SHARED] = {BOT, ALICE}
        await bot.say(SHARED, ALICE, DESCRIPTION_FR)
        assert len(bot.transport.created_rooms) == 1
        # A room with only the client, staff and the bot is private: no move.
        bot.transport.members["!own:test"] = {BOT, BOB, STAFF}
        sent = await bot.say("!own:test", BOB, DESCRIPTION_FR)
        assert len(bot.transport.created_rooms) == 1
        assert FR_CATEGORY_QUESTION in sent[-1].body and sent[-1].room_id == "!own:test"


async def test_tickets_listing_in_a_shared_room_goes_to_the_private_room(bot):
    await bot.say(DM, ALICE, "!lang en")
    await open_ticket(bot)
    bot.transport.members[SHARED] = {BOT, ALICE, BOB}
    sent = await bot.say(SHARED, ALICE, "!tickets")
    private = bot.transport.created_rooms[0]["room_id"]
    assert [m.room_id for m in sent if "SP-2026-0001" in m.body] == [private]


# -- concurrency ------------------------------------------------------------------------------


async def test_twenty_intakes_confirmed_concurrently_get_consecutive_refs(bot):
    clients = [(f"!dm-{n}:test", f"@client{n}:test") for n in range(20)]
    for step in [DESCRIPTION_FR, "5", "!passer", "1", "client@example.org"]:
        await asyncio.gather(*(bot.say(room, user, step) for room, user in clients))
    await asyncio.gather(*(bot.say(room, user, "oui") for room, user in clients))
    refs = sorted(await Ticket.all().values_list("ref", flat=True))
    assert refs == [f"SP-2026-{n:04d}" for n in range(1, 21)]
    owners = await Ticket.all().values_list("client__key", flat=True)
    assert sorted(owners) == sorted(user for _, user in clients)
    # Each client was told their own reference.
    for room, _ in clients:
        ticket = await Ticket.get(room_id=room)
        assert any(ticket.ref in m.body for m in bot.in_room(room))
