"""The router, error boundary and exactly-once outbox, through the real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.matrix.inbound import IncomingUnreadable
from bot.routing import CommandSpec, Context, txn_base
from bot.storage.models import HandledEvent, OutboxItem
from bot.testing.harness import STAFF, STAFF_ROOM, BotHarness
from bot.testing.harness import test_config as make_config

DM = "!dm-alice:test"
ALICE = "@alice:test"


@pytest.fixture
async def bot(db_url):
    async with BotHarness.open(db_url) as harness:
        yield harness


async def test_help_is_french_by_default_then_english_after_lang(bot):
    sent = await bot.say(DM, ALICE, "!aide")
    assert len(sent) == 1
    assert sent[0].content["msgtype"] == "m.notice"
    assert "Voici ce que je comprends" in sent[0].body
    assert "!help / !aide" in sent[0].body
    # Clients are not shown staff commands.
    assert "!queue" not in sent[0].body

    sent = await bot.say(DM, ALICE, "!lang en")
    assert sent[0].body == "Understood, I will now write to you in English."
    sent = await bot.say(DM, ALICE, "!help")
    assert "Here is what I understand" in sent[0].body


async def test_lang_back_to_french_and_bad_value(bot):
    await bot.say(DM, ALICE, "!lang en")
    sent = await bot.say(DM, ALICE, "!lang klingon")
    assert "fr, en" in sent[0].body
    sent = await bot.say(DM, ALICE, "!langue fr")
    assert "français" in sent[0].body


async def test_unknown_command_gets_a_hint(bot):
    sent = await bot.say(DM, ALICE, "!frobnicate now")
    assert "!frobnicate" in sent[0].body
    assert "!aide" in sent[0].body or "!help" in sent[0].body


async def test_html_is_escaped_in_replies(bot):
    sent = await bot.say(DM, ALICE, "!<script>")
    for message in sent:
        assert "<script>" not in (message.html or "")


async def test_handler_exception_gives_apology_with_reference_and_next_message_works(bot):
    async def boom(ctx: Context) -> None:
        raise RuntimeError("handler bug")

    bot.dispatcher.router.commands.insert(0, CommandSpec(("boom",), "x", handler=boom))
    sent = await bot.say(DM, ALICE, "!boom")
    assert len(sent) == 1
    assert "référence" in sent[0].body
    # The event is recorded as handled: a redelivery does not apologise twice.
    assert await HandledEvent.filter(room_id=DM).count() == 1
    sent = await bot.say(DM, ALICE, "!aide")
    assert "Voici ce que je comprends" in sent[0].body


async def test_redelivered_event_is_answered_once(bot):
    first = await bot.say(DM, ALICE, "!aide", event_id="$same")
    again = await bot.say(DM, ALICE, "!aide", event_id="$same")
    assert len(first) == 1
    assert again == []


async def test_failed_send_stays_in_outbox_and_is_sent_once_later(bot):
    bot.transport.fail_next = 100  # homeserver unreachable for this pass
    from bot import outbox

    outbox_max = outbox.MAX_ATTEMPTS
    outbox.MAX_ATTEMPTS = 1_000_000
    try:
        import asyncio

        task = asyncio.create_task(bot.say(DM, ALICE, "!aide"))
        await asyncio.sleep(0.2)
        assert bot.transport.sent == []
        assert await OutboxItem.filter(sent_at=None).count() == 1
        task.cancel()
    finally:
        outbox.MAX_ATTEMPTS = outbox_max
    bot.transport.fail_next = 0
    await bot.restart()
    await bot.deliverer.deliver_pending()
    assert len(bot.transport.sent) == 1
    await bot.deliverer.deliver_pending()
    assert len(bot.transport.sent) == 1


async def test_staff_command_refused_for_clients_and_bridges(bot):
    sent = await bot.say(DM, ALICE, "!queue")
    assert len(sent) == 1
    assert "équipe" in sent[0].body or "staff" in sent[0].body


async def test_staff_sees_staff_commands_in_help(bot):
    sent = await bot.say(STAFF_ROOM, STAFF, "!aide")
    assert "!queue" in sent[0].body


async def test_too_long_message_is_refused_politely(bot):
    sent = await bot.say(DM, ALICE, "x" * 20_001)
    assert len(sent) == 1
    assert "20000" in sent[0].body.replace("\u202f", "").replace(" ", "")


async def test_restart_keeps_language(bot):
    await bot.say(DM, ALICE, "!lang en")
    await bot.restart()
    sent = await bot.say(DM, ALICE, "!help")
    assert "Here is what I understand" in sent[0].body


async def test_a_flooding_client_is_told_once_and_every_message_is_handled(bot):
    answers = []
    ids = []
    for n in range(25):
        ids.append(bot.next_event_id())
        answers.append(await bot.say(DM, ALICE, f"!aide {n}", event_id=ids[-1]))
    # The messages over the limit wait (nothing sleeps on the sync path); a minute later they
    # have all been handled, each answer with the transaction ids of its own message.
    bot.clock.advance(timedelta(minutes=1))
    for late in await bot.sweep():
        n = next(n for n, eid in enumerate(ids) if late.txn_id.startswith(replayed(eid)))
        answers[n].append(late)
    # Every message was answered (nothing dropped)…
    assert all(any("Voici ce que je comprends" in m.body for m in sent) for sent in answers)
    # …and the client was told once, on the 21st message, that answers slow down.
    told = [n for n, sent in enumerate(answers) if any("très rapidement" in m.body for m in sent)]
    assert told == [20]
    # Staff are never slowed.
    for _ in range(25):
        sent = await bot.say(STAFF_ROOM, STAFF, "!aide")
        assert not any("très rapidement" in m.body for m in sent)


def replayed(event_id: str) -> str:
    """The transaction-id prefix of the answers to a deferred message."""
    return txn_base("deferred:" + event_id)


def test_database_outages_are_told_apart_from_handler_bugs():
    import asyncpg
    from tortoise.exceptions import OperationalError

    from bot.dispatch import is_database_outage

    lost = OperationalError("terminating connection")
    lost.__cause__ = asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")
    assert is_database_outage(lost)
    refused = OperationalError("invalid byte sequence")  # a query the database refused
    assert not is_database_outage(refused)
    assert not is_database_outage(ConnectionRefusedError("smtp down"))  # not the database


async def test_a_dropped_database_connection_is_retried_not_apologised_for(bot, monkeypatch):
    import asyncpg
    from tortoise.exceptions import OperationalError

    async def drop(ctx: Context) -> None:
        error = OperationalError("terminating connection due to administrator command")
        error.__cause__ = asyncpg.exceptions.AdminShutdownError("admin shutdown")
        raise error

    bot.dispatcher.router.commands.insert(0, CommandSpec(("drop",), "x", handler=drop))
    with pytest.raises(OperationalError):
        await bot.say(DM, ALICE, "!drop", event_id="$drop")
    # Not marked handled, nothing said: the shell retries the batch once the database is back.
    assert not await HandledEvent.exists(event_id="$drop")
    assert bot.transport.sent == []


async def test_a_message_the_bot_could_never_decrypt_is_asked_again_once(db_url):
    config = make_config(bridges=[{"user_id": "@talk-bridge:test"}])
    async with BotHarness.open(db_url, config=config) as bot:
        sent_at = datetime(2026, 11, 25, 8, 30, tzinfo=UTC)  # 09:30 in Paris
        lost = IncomingUnreadable("$sealed", DM, ALICE, sent_at)
        sent = await bot.deliver(lost)
        assert [m.body for m in sent] == [
            "Je n’ai pas pu lire le message chiffré que vous avez envoyé le mercredi "
            "25 novembre 2026 à 09:30 : ses clés ne me sont jamais parvenues. "
            "Merci de l’envoyer à nouveau."
        ]
        assert await bot.deliver(lost) == []  # the same event again: told once only

        await bot.say(DM, ALICE, "!lang en")
        sent = await bot.deliver(IncomingUnreadable("$sealed2", DM, ALICE, sent_at))
        assert sent[0].body.startswith(
            "I could not read the encrypted message you sent on Wednesday, November 25, 2026"
        )
        # A bridge account's unreadable message: nobody in particular to tell.
        unreadable = IncomingUnreadable("$sealed3", "!talk:test", "@talk-bridge:test", sent_at)
        assert await bot.deliver(unreadable) == []
