"""The e-mail channel end to end with real servers: mails delivered into a real Dovecot
(tests/imap.py) are read by the IMAP reader (`bot.mailbox.imap.MailboxReader`) and handed to
the channel's sink (`bot.mailin.ChannelSink`) over the real router and database; what the bot
mails is received by a real SMTP server (aiosmtpd). SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

import pytest

from bot.events import EMAIL_ROOM
from bot.mail import Mailer
from bot.mailbox.raw import RawMail
from bot.mailbox.reader import MailboxReader
from bot.mailin import ChannelSink
from bot.storage.models import MailMessage, Ticket, TicketNote
from bot.testing.harness import STAFF, STAFF_ROOM, BotHarness, Crash
from bot.testing.harness import test_config as base_config

SUPPORT = "support@test.example"
CLIENT = "claire.martin@example.org"
WAIT = 30.0


@pytest.fixture
async def bot(db_url: str, smtp: Any) -> AsyncIterator[BotHarness]:
    inbox, port = smtp
    config = base_config(
        mail={"host": "127.0.0.1", "port": port, "tls": "none", "from": f"Support <{SUPPORT}>"}
    )
    async with BotHarness.open(db_url, config) as harness:
        harness.services.mailer = Mailer(config.mail, timeout=10)
        harness.inbox = inbox  # type: ignore[attr-defined]
        yield harness


def client_mail(
    body: str,
    *,
    subject: str,
    in_reply_to: str | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    message = EmailMessage()
    message["From"] = f"Claire Martin <{CLIENT}>"
    message["To"] = SUPPORT
    message["Subject"] = subject
    message["Date"] = format_datetime(__import__("datetime").datetime.now().astimezone())
    message["Message-ID"] = make_msgid(domain="example.org")
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
        message["References"] = in_reply_to
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(body)
    return message.as_bytes(policy=email.policy.SMTP)


def mails(bot: BotHarness) -> list[EmailMessage]:
    return [m for to, m in bot.inbox.messages if CLIENT in to]  # type: ignore[attr-defined]


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return part.get_content().replace("\r\n", "\n")


async def eventually(condition: Callable[[], Any], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"not within {WAIT} s: {what}")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def reading(bot: BotHarness, server: Any, sink: Any = None) -> AsyncIterator[MailboxReader]:
    """The IMAP reader in the background, its mails going to the e-mail channel; the
    outbox is delivered after each mail (what the running bot's deliverer does)."""
    channel = sink or ChannelSink(bot.dispatcher, own_address=SUPPORT, clock=bot.clock)

    async def sink_then_deliver(mail: RawMail) -> bool:
        handled = await channel(mail)
        await bot.deliverer.deliver_pending()
        return bool(handled)

    reader = MailboxReader(
        server.inbound(poll_interval=1), sink_then_deliver, backoff=(0.1, 0.5), timeout=10.0
    )
    stop = asyncio.Event()
    task = asyncio.create_task(reader.run(stop))
    try:
        yield reader
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)


async def test_a_mail_in_imap_becomes_a_request_answered_and_threaded_both_ways(
    bot: BotHarness, imap_server: Any
) -> None:
    server = imap_server()
    async with reading(bot, server):
        await server.append(
            client_mail(
                "Bonjour, les relances d'invitations ne partent plus depuis lundi.",
                subject="Relances bloquées",
            )
        )
        await eventually(lambda: len(mails(bot)) == 1, "the questions by mail")
        questions = mails(bot)[0]
        assert "1. Quelle catégorie" in text_of(questions)
        await server.append(
            client_mail(
                "1. 5\n2. https://sondage.example.org 6.4.2 123456\n3. 1\n\n> citation",
                subject="Re: Relances bloquées",
                in_reply_to=questions["Message-ID"],
            )
        )
        await eventually(lambda: Ticket.exists(room_id=EMAIL_ROOM), "a ticket")
        await eventually(lambda: len(mails(bot)) == 2, "the receipt")
        await eventually(
            lambda: Ticket.exists(room_id=EMAIL_ROOM, card_event_id__not_isnull=True),
            "the staff card",
        )
        ticket = await Ticket.get(room_id=EMAIL_ROOM)
        assert (ticket.category, ticket.survey_id) == ("data", "123456")
        receipt = mails(bot)[1]
        assert receipt["Subject"] == f"[{ticket.ref}] Relances bloquées"

        await bot.say(STAFF_ROOM, STAFF, f"!reply {ticket.ref} Pouvez-vous m'envoyer l'export ?")
        await eventually(lambda: len(mails(bot)) == 3, "the staff answer")
        answer = mails(bot)[2]
        assert answer["In-Reply-To"] and receipt["Message-ID"] in answer["References"]

        await server.append(
            client_mail(
                "Le voici, merci.\n\nLe 26 nov. 2026, Support a écrit :\n> Pouvez-vous",
                subject=f"Re: [{ticket.ref}] Relances bloquées",
                in_reply_to=answer["Message-ID"],
            )
        )

        def in_thread() -> bool:
            return any(
                "Le voici, merci." in s.body
                and (s.content.get("m.relates_to") or {}).get("event_id") == ticket.card_event_id
                for s in bot.in_room(STAFF_ROOM)
            )

        await eventually(in_thread, "the client's mail in the card's thread")
        assert await TicketNote.exists(ticket_id=ticket.id)

        await server.append(
            client_mail(
                "Je suis absent jusqu'au 3 décembre.",
                subject=f"Réponse automatique : [{ticket.ref}]",
                in_reply_to=answer["Message-ID"],
                headers={"Auto-Submitted": "auto-replied"},
            )
        )
        await eventually(
            lambda: MailMessage.exists(kind="auto", ticket_id=ticket.id), "the auto-reply seen"
        )
    assert len(mails(bot)) == 3  # nothing answered the auto-reply
    assert await TicketNote.filter(ticket_id=ticket.id).count() == 1


async def test_an_english_mail_gets_english_questions(bot: BotHarness, imap_server: Any) -> None:
    server = imap_server()
    async with reading(bot, server):
        await server.append(
            client_mail(
                "Hello, our survey theme no longer loads its custom fonts since the update.",
                subject="Theme fonts",
            )
        )
        await eventually(lambda: len(mails(bot)) == 1, "the questions by mail")
    assert "1. Which category fits your request?" in text_of(mails(bot)[0])


async def test_a_crash_between_fetch_and_commit_gives_no_duplicate(
    bot: BotHarness, imap_server: Any
) -> None:
    server = imap_server()
    channel = ChannelSink(bot.dispatcher, own_address=SUPPORT, clock=bot.clock)
    crashed: list[int] = []

    async def crash_once(mail: RawMail) -> bool:
        if not crashed:
            crashed.append(mail.uid)
            with bot.crash_at_commit(), contextlib.suppress(Crash):
                await channel(mail)
            raise RuntimeError("the process died before the commit")
        return await channel(mail)

    async with reading(bot, server, crash_once):
        await server.append(
            client_mail("Bonjour, mon questionnaire affiche une page blanche.", subject="Blanc")
        )
        await eventually(lambda: len(mails(bot)) == 1, "the questions, once")
        await server.append(client_mail("Et aussi une erreur 500 au chargement.", subject="500"))
        await eventually(
            lambda: MailMessage.filter(direction="in").count(), "the second mail handled"
        )
        await eventually(
            lambda: _count(MailMessage.filter(direction="in"), 2), "both mails handled"
        )
    assert crashed
    assert await MailMessage.filter(direction="in").count() == 2
    assert await MailMessage.filter(direction="out", kind="questions").count() == 2
    assert len({m["Message-ID"] for m in mails(bot)}) == len(mails(bot)) == 2


async def _count(query: Any, expected: int) -> bool:
    return await query.count() == expected
