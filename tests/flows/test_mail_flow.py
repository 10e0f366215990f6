"""The e-mail channel through the real sink, router, database and outbox, with a real SMTP
server (aiosmtpd) receiving what the bot mails. Mails come in as raw RFC 822 bytes, as the
IMAP reader hands them to the sink (`BotHarness.receive_mail`)."""

from __future__ import annotations

import email.policy
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, timedelta, timezone, tzinfo
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bot.events import EMAIL_ROOM
from bot.mail import Mailer
from bot.storage import personal_data
from bot.storage.models import (
    AuditEntry,
    Client,
    HandledEvent,
    MailAttachmentRow,
    MailMessage,
    Ticket,
    TicketNote,
)
from bot.testing.harness import STAFF, STAFF_ROOM, BotHarness, Crash, Sent
from bot.testing.harness import test_config as base_config
from handlers.mail import THREAD_SENT

SUPPORT = "support@test.example"
JEAN = "jean.dupont@example.org"
ALICE = "@alice:test"
DM = "!dm-alice:test"


@pytest.fixture
async def bot(db_url: str, smtp: Any) -> AsyncIterator[BotHarness]:
    inbox, port = smtp
    config = base_config(
        mail={
            "host": "127.0.0.1",
            "port": port,
            "tls": "none",
            "from": f"Support LimeSurvey <{SUPPORT}>",
            "attachment_max_kib": 1,
            "sender_mails_per_hour": 5,
        }
    )
    async with BotHarness.open(db_url, config) as harness:
        harness.services.mailer = Mailer(config.mail, timeout=10)
        harness.inbox = inbox  # type: ignore[attr-defined]
        yield harness


def mail(
    body: str,
    *,
    subject: str = "Problème de quota",
    sender: str = f"Jean Dupont <{JEAN}>",
    in_reply_to: str | None = None,
    headers: dict[str, str] | None = None,
    html: str | None = None,
    files: list[tuple[str, bytes]] = (),  # type: ignore[assignment]
) -> tuple[bytes, str]:
    """A client's mail as raw bytes, and its Message-ID."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = f"Support LimeSurvey <{SUPPORT}>"
    message["Subject"] = subject
    message["Date"] = format_datetime(__import__("datetime").datetime.now().astimezone())
    message_id = make_msgid(domain="example.org")
    message["Message-ID"] = message_id
    if in_reply_to is not None:
        message["In-Reply-To"] = in_reply_to
        message["References"] = in_reply_to
    for name, value in (headers or {}).items():
        message[name] = value
    if html is not None and not body:
        message.set_content(html, subtype="html")
    else:
        message.set_content(body)
    for name, data in files:
        message.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return message.as_bytes(policy=email.policy.SMTP), message_id


async def restart(bot: BotHarness) -> None:
    """A new process over the same database, with its mail server."""
    await bot.restart()
    bot.services.mailer = Mailer(bot.config.mail, timeout=10)


def staff(bot: BotHarness, msgid: str) -> str:
    """A staff-room message as staff read it (the service's language, French here)."""
    return bot.catalogs.get("fr").gettext(msgid)


def mails_to(bot: BotHarness, address: str) -> list[EmailMessage]:
    return [m for to, m in bot.inbox.messages if address in to]  # type: ignore[attr-defined]


def text_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return part.get_content().replace("\r\n", "\n")


def staff_thread(bot: BotHarness, ticket: Ticket) -> list[Sent]:
    return [
        s
        for s in bot.in_room(STAFF_ROOM)
        if (s.content.get("m.relates_to") or {}).get("rel_type") == "m.thread"
        and s.content["m.relates_to"]["event_id"] == ticket.card_event_id
    ]


async def open_by_mail(bot: BotHarness) -> tuple[Ticket, EmailMessage]:
    """A French mail, its questions, the answers: a ticket and its receipt."""
    raw, _ = mail("Bonjour,\n\nMon quota ne ferme pas le questionnaire quand il est plein.")
    assert await bot.receive_mail(raw)
    (questions,) = mails_to(bot, JEAN)
    reply, _ = mail(
        "1. 2\n2. https://sondage.example.org 6.4.2\n3. 1\n\nCordialement,\nJean\n\n"
        f"Le jeu. 26 nov. 2026 à 10:00, Support <{SUPPORT}> a écrit :\n> 1. Quelle catégorie",
        subject="Re: " + questions["Subject"],
        in_reply_to=questions["Message-ID"],
    )
    assert await bot.receive_mail(reply)
    ticket = await Ticket.get(room_id=EMAIL_ROOM)
    receipt = mails_to(bot, JEAN)[-1]
    return ticket, receipt


async def test_a_mail_becomes_a_request_after_numbered_questions_by_mail(bot):
    raw, first_id = mail("Bonjour,\n\nMon quota ne ferme pas le questionnaire quand il est plein.")
    arrival = bot.clock()
    assert await bot.receive_mail(raw)
    (questions,) = mails_to(bot, JEAN)
    assert questions["In-Reply-To"] == first_id
    assert questions["Auto-Submitted"] == "auto-replied"
    assert questions["Subject"] == "Re: Problème de quota"
    assert questions["Message-ID"].endswith("@test.example>")
    body = text_of(questions)
    assert "1. Quelle catégorie" in body and "3. Quel mode d’assistance" in body
    assert "Mon quota ne ferme pas" in body  # what was understood
    assert not await Ticket.exists()
    assert not bot.in_room(STAFF_ROOM)

    bot.clock.advance(__import__("datetime").timedelta(hours=3))
    answered_at = bot.clock()
    reply, reply_id = mail(
        "1. 2\n2. https://sondage.example.org 6.4.2\n3. 1\n\nCordialement,\nJean\n\n"
        f"Le jeu. 26 nov. 2026 à 10:00, Support <{SUPPORT}> a écrit :\n> 1. Quelle catégorie",
        subject="Re: Problème de quota",
        in_reply_to=questions["Message-ID"],
    )
    assert await bot.receive_mail(reply)
    ticket = await Ticket.get(room_id=EMAIL_ROOM).prefetch_related("client")
    assert (ticket.kind, ticket.category, ticket.channel) == ("ticket", "expressions", "messaging")
    assert ticket.instance_url == "https://sondage.example.org"
    assert ticket.email == JEAN and ticket.client.key == f"mailto:{JEAN}"
    assert ticket.locale == "fr"
    # The deadline counts from the arrival of the mail that completed the request.
    assert ticket.created_at == answered_at != arrival
    assert ticket.sla_due == bot.services.calendar.deadline(answered_at, 2)
    assert (
        "Cordialement" not in ticket.description and "Quelle catégorie" not in ticket.description
    )
    receipt = mails_to(bot, JEAN)[-1]
    assert receipt["Subject"] == f"[{ticket.ref}] Problème de quota"
    assert receipt["In-Reply-To"] == reply_id
    assert questions["Message-ID"] in receipt["References"]
    receipt_text = text_of(receipt)
    assert ticket.ref in receipt_text and "par e-mail" in receipt_text
    cards = [s for s in bot.in_room(STAFF_ROOM) if ticket.ref in s.body]
    assert cards and ticket.card_event_id == cards[0].event_id


async def test_an_english_mail_is_answered_in_english_and_wrong_answers_explained(bot):
    raw, _ = mail(
        "Hello, my survey stops saving answers after the last update of our server.",
        subject="Survey broken",
    )
    await bot.receive_mail(raw)
    (questions,) = mails_to(bot, JEAN)
    assert "1. Which category fits your request?" in text_of(questions)
    reply, _ = mail("1. 42\n2. survey.example.org\n3. video", in_reply_to=questions["Message-ID"])
    await bot.receive_mail(reply)
    again = text_of(mails_to(bot, JEAN)[-1])
    assert "That is not one of the categories." in again
    assert "https://survey.example.org" in again  # the hint with the full address
    assert "How would you like" not in again  # the channel was understood
    assert not await Ticket.exists()


async def test_staff_reply_is_mailed_threaded_and_is_the_first_response(bot):
    ticket, receipt = await open_by_mail(bot)
    sent = await bot.say(STAFF_ROOM, STAFF, f"!reply {ticket.ref} Bonjour, voici la solution.")
    answer = mails_to(bot, JEAN)[-1]
    assert answer["Subject"] == f"[{ticket.ref}] Problème de quota"
    assert answer["From"] == f"Support LimeSurvey <{SUPPORT}>"
    assert answer["Auto-Submitted"] is None  # a person wrote it
    assert answer["In-Reply-To"] and receipt["Message-ID"] in answer["References"]
    assert text_of(answer).startswith("Bonjour, voici la solution.")
    ticket = await Ticket.get(id=ticket.id)
    assert ticket.first_response_at == bot.clock()
    assert any(staff(bot, THREAD_SENT) in s.body for s in staff_thread(bot, ticket))
    assert any(ticket.ref in s.body for s in sent if s.room_id == STAFF_ROOM)


async def test_client_reply_goes_to_the_card_thread_with_its_files(bot):
    ticket, receipt = await open_by_mail(bot)
    reply, _ = mail(
        "Voici une capture.\n\nLe 26 nov. 2026, Support a écrit :\n> ancien texte",
        subject=f"Re: [{ticket.ref}] Problème de quota",
        in_reply_to=receipt["Message-ID"],
        files=[("capture.png", b"x" * 100), ("export.lss", b"y" * 5000)],
    )
    assert await bot.receive_mail(reply)
    (note,) = await TicketNote.filter(ticket_id=ticket.id)
    assert note.text == "Voici une capture."
    thread = staff_thread(bot, ticket)
    assert any("Voici une capture." in s.body and "ancien texte" not in s.body for s in thread)
    assert any(s.content.get("msgtype") == "m.file" and "capture.png" in s.body for s in thread)
    assert any("export.lss" in s.body and "non conservé" in s.body for s in thread)
    files = await MailAttachmentRow.all().order_by("id")
    assert [(f.filename, f.data is not None) for f in files] == [
        ("capture.png", True),
        ("export.lss", False),
    ]
    refusal = text_of(mails_to(bot, JEAN)[-1])
    assert "export.lss" in refusal and "lien" in refusal


async def test_reference_in_subject_counts_only_from_the_request_address(bot):
    ticket, _ = await open_by_mail(bot)
    same, _ = mail("Encore une précision sur mon problème.", subject=f"Précision {ticket.ref}")
    await bot.receive_mail(same)
    assert await TicketNote.filter(ticket_id=ticket.id).count() == 1
    other, _ = mail(
        "Je voudrais ajouter quelque chose à ce ticket.",
        subject=f"Précision {ticket.ref}",
        sender="Mallory <mallory@example.net>",
    )
    await bot.receive_mail(other)
    assert await TicketNote.filter(ticket_id=ticket.id).count() == 1
    assert mails_to(bot, "mallory@example.net")  # a new intake for that sender instead


async def test_auto_replies_are_never_answered_but_shown_on_the_request(bot):
    raw, _ = mail("Je suis absent.", headers={"Auto-Submitted": "auto-replied"})
    await bot.receive_mail(raw)
    assert not bot.inbox.messages  # type: ignore[attr-defined]
    ticket, receipt = await open_by_mail(bot)
    count = len(bot.inbox.messages)  # type: ignore[attr-defined]
    away, _ = mail(
        "I am out of the office.",
        subject="Automatic reply: " + receipt["Subject"],
        in_reply_to=receipt["Message-ID"],
        headers={"X-Autoreply": "yes"},
    )
    await bot.receive_mail(away)
    assert len(bot.inbox.messages) == count  # type: ignore[attr-defined]
    assert any("réponse automatique" in s.body for s in staff_thread(bot, ticket))
    assert not await TicketNote.filter(ticket_id=ticket.id).exists()


async def test_a_bounce_is_shown_to_staff_on_the_request(bot):
    ticket, receipt = await open_by_mail(bot)
    report = EmailMessage()
    report["From"] = "Mail Delivery System <MAILER-DAEMON@mx.example.org>"
    report["To"] = SUPPORT
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Message-ID"] = make_msgid(domain="mx.example.org")
    report.set_content("This is the mail system. Your message could not be delivered.")
    dsn = _dsn(report, receipt["Message-ID"])
    count = len(bot.inbox.messages)  # type: ignore[attr-defined]
    assert await bot.receive_mail(dsn)
    assert len(bot.inbox.messages) == count  # type: ignore[attr-defined]
    assert any(
        "n'a pas pu être remis" in s.body and "5.1.1" in s.body for s in staff_thread(bot, ticket)
    )
    assert await AuditEntry.filter(ticket_id=ticket.id, action="mail_bounced").exists()


def _dsn(report: EmailMessage, original_id: str) -> bytes:
    boundary = "dsn-boundary"
    head = (
        f"From: {report['From']}\r\nTo: {SUPPORT}\r\nSubject: {report['Subject']}\r\n"
        f"Message-ID: {report['Message-ID']}\r\nReturn-Path: <>\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        "\r\n"
    )
    parts = (
        f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered."
        f"\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.org\r\n\r\n"
        f"Final-Recipient: rfc822; {JEAN}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n"
        f"\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: {original_id}\r\nSubject: whatever\r\n"
        f"\r\n--{boundary}--\r\n"
    )
    return (head + parts).encode()


async def test_the_same_mail_again_is_handled_once(bot):
    raw, _ = mail("Bonjour, mon questionnaire ne s'affiche plus du tout.")
    first = bot.raw_mail(raw, uid=7)
    assert await bot.receive_mail(first)
    assert await bot.receive_mail(first)
    assert len(mails_to(bot, JEAN)) == 1
    await restart(bot)
    assert await bot.receive_mail(first)
    assert len(mails_to(bot, JEAN)) == 1
    assert await HandledEvent.filter(event_id="mail:INBOX:1:7").count() == 1


async def test_a_crash_before_the_commit_replays_the_mail_once(bot):
    raw, _ = mail("Bonjour, mon questionnaire ne s'affiche plus du tout.")
    first = bot.raw_mail(raw, uid=3)
    with bot.crash_at_commit(), pytest.raises(Crash):
        await bot.receive_mail(first)
    assert not bot.inbox.messages  # type: ignore[attr-defined]
    await restart(bot)
    assert await bot.receive_mail(first)
    assert len(mails_to(bot, JEAN)) == 1
    assert await MailMessage.filter(direction="in").count() == 1


async def test_staff_in_the_thread_of_a_mail_request_mails_the_client(bot):
    ticket, _ = await open_by_mail(bot)
    count = len(mails_to(bot, JEAN))
    await bot.say(
        STAFF_ROOM, STAFF, "Pouvez-vous préciser la version ?", thread_root=ticket.card_event_id
    )
    assert len(mails_to(bot, JEAN)) == count + 1
    assert text_of(mails_to(bot, JEAN)[-1]).startswith("Pouvez-vous préciser la version ?")
    await bot.say(STAFF_ROOM, STAFF, "Une remarque hors fil.")
    assert len(mails_to(bot, JEAN)) == count + 1


async def test_a_chat_request_gets_its_receipt_by_mail_and_may_be_followed(bot):
    steps = [
        "Bonjour, le thème de mon questionnaire ne s'applique plus depuis hier.",
        "4",
        "!skip",
        "1",
        "alice@example.org",
        "oui",
    ]
    for text in steps:
        await bot.say(DM, ALICE, text)
    ticket = await Ticket.get(room_id=DM)
    (receipt,) = mails_to(bot, "alice@example.org")
    assert receipt["Subject"].startswith(f"[{ticket.ref}]")
    assert "!suivi mail oui" in text_of(receipt)
    sent = await bot.say(DM, ALICE, "!suivi mail oui")
    assert "alice@example.org" in sent[0].body
    assert (await Client.get(key=ALICE)).follow_by_email
    await bot.say(STAFF_ROOM, STAFF, f"!take {ticket.ref}")
    taken = mails_to(bot, "alice@example.org")[-1]
    assert "a pris en charge" in text_of(taken) and taken["In-Reply-To"]


async def test_erase_and_export_cover_mail_data(bot):
    ticket, _ = await open_by_mail(bot)
    reply, _ = mail("Une pièce jointe.", subject=f"Re: [{ticket.ref}]", files=[("a.txt", b"hi")])
    await bot.receive_mail(reply)
    exported = await personal_data.export_client(f"mailto:{JEAN}")
    assert exported is not None
    mails = exported["mails"]
    assert {m["direction"] for m in mails} == {"in", "out"}
    assert any(f["filename"] == "a.txt" for m in mails for f in m["attachments"])
    await personal_data.erase_data(f"mailto:{JEAN}", now=bot.clock())
    assert not await MailMessage.exists()
    assert not await MailAttachmentRow.exists()
    assert await Ticket.exists(id=ticket.id)


async def test_a_flood_from_one_address_is_left_unanswered_and_staff_told_once(bot):
    for n in range(8):
        raw, _ = mail(f"Message numéro {n} pour vous embêter un peu.", subject=f"Spam {n}")
        await bot.receive_mail(raw)
    answered = len(mails_to(bot, JEAN))
    assert answered <= 5
    told = [s for s in bot.in_room(STAFF_ROOM) if JEAN.split("@")[0] in s.body]
    assert len(told) == 1


# -- mail servers in other time zones ------------------------------------------------------------

# An IMAP server dates each mail (INTERNALDATE) in its own zone, offset included: a French
# server writes +0100. The bot compares those times with stored ones, in UTC.
ZONES = [UTC, ZoneInfo("Europe/Paris"), timezone(timedelta(hours=-7))]
ZONE_IDS = ["utc", "paris", "utc-7"]


async def arrive(bot: BotHarness, raw: bytes, zone: tzinfo) -> bool:
    """`raw` as an IMAP server in `zone` hands it over (its arrival in that zone's offset)."""
    dated = replace(bot.raw_mail(raw), internal_date=bot.clock().astimezone(zone))
    return await bot.receive_mail(dated)


def flood_told(bot: BotHarness) -> list[Sent]:
    return [s for s in bot.in_room(STAFF_ROOM) if JEAN.split("@")[0] in s.body]


@pytest.mark.parametrize("zone", ZONES, ids=ZONE_IDS)
async def test_the_flood_limit_counts_the_last_hour_in_the_servers_zone(bot, zone):
    # Six mails over six hours: never more than one in an hour, no flood.
    for n in range(6):
        bot.clock.advance(timedelta(minutes=61))
        raw, _ = mail(f"Message numéro {n}, une heure après le précédent.", subject=f"Q {n}")
        await arrive(bot, raw, zone)
    assert not flood_told(bot)
    assert not await MailMessage.exists(kind="limited")
    # Then eight in a minute: the sixth one of the hour on are left unanswered.
    answered = len(mails_to(bot, JEAN))
    for n in range(8):
        bot.clock.advance(timedelta(seconds=5))
        raw, _ = mail(f"Message numéro {n} pour vous embêter un peu.", subject=f"Spam {n}")
        await arrive(bot, raw, zone)
    assert len(mails_to(bot, JEAN)) - answered <= 5
    assert len(flood_told(bot)) == 1


@pytest.mark.parametrize("zone", ZONES, ids=ZONE_IDS)
async def test_an_unfinished_mail_intake_is_reminded_on_time_in_the_servers_zone(bot, zone):
    raw, _ = mail("Bonjour,\n\nMon quota ne ferme pas le questionnaire quand il est plein.")
    await arrive(bot, raw, zone)
    (questions,) = mails_to(bot, JEAN)
    bot.clock.advance(timedelta(minutes=10))
    reply, _ = mail(
        "1. 2", subject="Re: " + questions["Subject"], in_reply_to=questions["Message-ID"]
    )
    await arrive(bot, reply, zone)  # a partial answer: the other questions again
    asked = len(mails_to(bot, JEAN))
    reminder_after = timedelta(hours=bot.config.service.intake_reminder_hours)
    bot.clock.advance(reminder_after - timedelta(minutes=1))
    await bot.sweep()
    assert len(mails_to(bot, JEAN)) == asked  # not yet
    bot.clock.advance(timedelta(minutes=2))
    await bot.sweep()
    assert len(mails_to(bot, JEAN)) == asked + 1  # the reminder, on time
