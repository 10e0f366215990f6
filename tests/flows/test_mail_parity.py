"""An e-mail ticket shows up, is answered and is billed exactly like a chat ticket (issue #17,
"Done when"): one request opened by mail and one in chat, same category, instance and channel,
at the same moment; staff take both, log 1h30 on both and resolve them. Their rows, cards,
bills, `!report` lines, CLI report lines and prepaid balances must then agree, the channel of
origin (and who the client is) aside. Real router, database and outbox; a real SMTP server
(aiosmtpd) receives what the bot mails."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest

from bot import cli_tickets
from bot.cards import defuse
from bot.domain.tickets import billed_tickets
from bot.events import EMAIL_ROOM
from bot.mail import Mailer
from bot.storage import balances, repo
from bot.storage.db import close_db, open_db
from bot.storage.models import AuditEntry, Ticket, TimeLog
from bot.testing.harness import BOT, STAFF, STAFF_ROOM, BotHarness, FakeClock, Sent
from bot.testing.harness import test_config as base_config
from handlers import billing, closing, common, satisfaction
from handlers import mail as mail_handler
from tests.flows.test_mail_flow import (
    ALICE,
    DM,
    JEAN,
    SUPPORT,
    mail,
    mails_to,
    staff_thread,
    text_of,
)
from tests.flows.test_orgs_flow import fr

# Thursday 26 November 2026, 10:00 in Paris.
NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
PROBLEM = "Les relances d'invitations ne partent plus depuis la mise à jour de lundi."
SUBJECT = "Relances"
INSTANCE = "https://sondage.example.org 6.4.2 123456"
PACE = timedelta(seconds=4)  # under the flood limit between two messages of one sender


@pytest.fixture
async def bot(db_url: str, smtp: Any) -> AsyncIterator[BotHarness]:
    inbox, port = smtp
    config = base_config(
        mail={"host": "127.0.0.1", "port": port, "tls": "none", "from": f"Support <{SUPPORT}>"},
        database={"url": db_url},
    )
    async with BotHarness.open(db_url, config, clock=FakeClock(NOW)) as harness:
        harness.services.mailer = Mailer(config.mail, timeout=10)
        harness.inbox = inbox  # type: ignore[attr-defined]
        harness.transport.members[DM] = {BOT, ALICE}
        yield harness


def client_mail(body: str, *, subject: str, in_reply_to: str | None = None) -> bytes:
    raw, _ = mail(body, subject=subject, in_reply_to=in_reply_to)
    return raw


def mails_to_jean(bot: BotHarness) -> list[EmailMessage]:
    return mails_to(bot, JEAN)


def new_messages(sent: list[Sent], room: str, *, threads: bool = True) -> list[str]:
    """What was said in a room (not card edits; not in threads unless `threads`)."""
    left_out = {"m.replace"} if threads else {"m.replace", "m.thread"}
    return [
        s.body
        for s in sent
        if s.room_id == room and s.content.get("m.relates_to", {}).get("rel_type") not in left_out
    ]


async def staff(bot: BotHarness, text: str) -> list[Sent]:
    bot.clock.advance(PACE)
    return await bot.say(STAFF_ROOM, STAFF, text)


async def open_in_chat(bot: BotHarness) -> Ticket:
    # What a mail's subject and body make (its description), typed in one message.
    for text in (f"{SUBJECT}\n\n{PROBLEM}", "5", INSTANCE, "1", "alice@example.org", "oui"):
        await bot.say(DM, ALICE, text)
    return await Ticket.get(room_id=DM)


async def open_by_mail(bot: BotHarness) -> Ticket:
    assert await bot.receive_mail(client_mail(PROBLEM, subject=SUBJECT))
    (questions,) = mails_to_jean(bot)
    answers = client_mail(
        f"1. 5\n2. {INSTANCE}\n3. 1",
        subject="Re: " + questions["Subject"],
        in_reply_to=questions["Message-ID"],
    )
    assert await bot.receive_mail(answers)
    return await Ticket.get(room_id=EMAIL_ROOM)


def card_of(bot: BotHarness, ticket: Ticket) -> str:
    """The card as staff see it now: its last edit, or the card itself."""
    card = next(s for s in bot.in_room(STAFF_ROOM) if s.event_id == ticket.card_event_id)
    edits = [
        s.content["m.new_content"]["body"]
        for s in bot.in_room(STAFF_ROOM)
        if s.content.get("m.relates_to")
        == {"rel_type": "m.replace", "event_id": ticket.card_event_id}
    ]
    return edits[-1] if edits else card.body


def anonymous(text: str, ticket: Ticket, client_name: str) -> str:
    return text.replace(ticket.ref, "REF").replace(defuse(client_name), "CLIENT")


ROW_FIELDS = (
    "kind",
    "status",
    "category",
    "channel",
    "locale",
    "description",
    "instance_url",
    "instance_version",
    "survey_id",
    "created_at",
    "sla_due",
    "assigned_to",
    "first_response_at",
    "minutes_logged",
    "estimate_minutes",
    "warranty_until",
    "accepted_at",
    "resolved_at",
    "sla_missed_at",
)


async def test_a_ticket_by_mail_is_taken_logged_resolved_and_billed_like_one_in_chat(
    bot: BotHarness, capsys: pytest.CaptureFixture[str]
) -> None:
    chat = await open_in_chat(bot)
    by_mail = await open_by_mail(bot)
    assert chat.ref != by_mail.ref
    assert chat.card_event_id and by_mail.card_event_id
    # Both clients have bought 3 tickets: each ticket then bills 2, leaving 1 (low: warned).
    await staff(bot, f"!credit {ALICE} 3")
    await staff(bot, f"!credit {by_mail.ref} 3")

    said: dict[str, list[Sent]] = {chat.ref: [], by_mail.ref: []}
    mails_before = len(mails_to_jean(bot))
    # Each step at the same moment for both; then each client accepts the resolution, the
    # chat client with the command, the one by mail with the reply its mail asks for.
    for step in ("take", "!log {ref} 1h30", "!resolve {ref}", "accept"):
        bot.clock.advance(PACE)
        for ticket in (chat, by_mail):
            if step == "take":
                said[ticket.ref] += await bot.react(STAFF_ROOM, STAFF, ticket.card_event_id, "👀")
            elif step != "accept":
                said[ticket.ref] += await bot.say(STAFF_ROOM, STAFF, step.format(ref=ticket.ref))
            elif ticket is chat:
                said[ticket.ref] += await bot.say(DM, ALICE, f"!accepter {chat.ref}")
            else:
                resolved = mails_to_jean(bot)[-1]
                before = len(bot.transport.sent)
                reply = client_mail(
                    "1\n\nMerci !",
                    subject="Re: " + resolved["Subject"],
                    in_reply_to=resolved["Message-ID"],
                )
                assert await bot.receive_mail(reply)
                said[ticket.ref] += bot.transport.sent[before:]
    chat, by_mail = await Ticket.get(id=chat.id), await Ticket.get(id=by_mail.id)

    # -- the rows: the same request, only the channel of origin differs
    assert (chat.room_id, by_mail.room_id) == (DM, EMAIL_ROOM)
    assert by_mail.email == JEAN
    assert chat.created_at == by_mail.created_at == NOW
    assert chat.status == "closed" and chat.assigned_to == STAFF
    assert chat.category == "data" and chat.survey_id == "123456"
    assert chat.warranty_until is not None
    for name in ROW_FIELDS:
        assert getattr(chat, name) == getattr(by_mail, name), name
    chat_minutes = await TimeLog.filter(ticket_id=chat.id).values_list("minutes", flat=True)
    mail_minutes = await TimeLog.filter(ticket_id=by_mail.id).values_list("minutes", flat=True)
    assert chat_minutes == mail_minutes == [90]

    async def history(ticket: Ticket) -> list[tuple[str, str | None, str | None]]:
        rows = await AuditEntry.filter(ticket_id=ticket.id).order_by("id")
        return [
            (row.action, row.from_status, row.to_status)
            for row in rows
            if not row.action.startswith("mail_")  # the mails themselves
        ]

    # The one difference: a request made by e-mail is not asked for a rating (a digit replied
    # to a mail answers its resolution question; handlers/satisfaction.py).
    assert await history(chat) == [*await history(by_mail), ("rating_asked", "closed", "closed")]

    # -- the cards: the same lines, but for the reference and who the client is
    chat_card = anonymous(card_of(bot, chat), chat, ALICE)
    mail_card = anonymous(card_of(bot, by_mail), by_mail, "Jean Dupont")
    assert "REF" in chat_card and "CLIENT" in chat_card and "CLIENT" in mail_card
    assert chat_card == mail_card

    # -- what each client was told, in their own channel: the same news, and by mail never a
    # command to type (commands are not read from mails)
    to_alice = new_messages(said[chat.ref], DM)
    to_jean = [text_of(m) for m in mails_to_jean(bot)[mails_before:]]
    # taken, low balance, a second ticket started, resolved, closed under warranty; and in chat
    # only, the rating question (not asked by mail: handlers/satisfaction.py)
    assert len(to_alice) == 6 and len(to_jean) == 5, (to_alice, to_jean)
    assert fr(bot, satisfaction._QUESTION, ref=chat.ref) == to_alice[5]
    for in_chat, by_mail_text in zip(to_alice[:3], to_jean[:3], strict=True):
        assert in_chat.replace(chat.ref, "REF") in by_mail_text.replace(by_mail.ref, "REF")
    for text in to_jean:
        assert not re.search(r"![a-z]", text) and "✅" not in text, text
    assert fr(bot, closing._RESOLVED_CLIENT_MAIL, ref=by_mail.ref) in to_jean[3]
    assert (
        fr(
            bot,
            closing._ACCEPTED_CLIENT_MAIL,
            ref=by_mail.ref,
            warranty_until=by_mail.warranty_until,
        )
        in to_jean[4]
    )

    # -- what staff were told: the same (the client's mail is posted in the card's thread too)
    told_staff = {
        ticket.ref: [
            anonymous(text, ticket, name)
            for text in new_messages(said[ticket.ref], STAFF_ROOM, threads=False)
        ]
        for ticket, name in ((chat, ALICE), (by_mail, "Jean Dupont"))
    }
    assert told_staff[chat.ref] == told_staff[by_mail.ref]
    low = fr(
        bot,
        "⚠️ The prepaid balance of {account} is down to {remaining} ({ref}).",
        account="CLIENT",
        remaining=common.balance_tickets(1),
        ref="REF",
    )
    assert low in told_staff[chat.ref]
    accepted = fr(bot, closing._ACCEPTED_STAFF, ref="REF", when=chat.warranty_until)
    assert accepted in told_staff[chat.ref]
    assert any("Merci" in s.body for s in staff_thread(bot, by_mail))

    # -- billed the same
    assert billed_tickets(repo.ticket_state(chat)) == billed_tickets(repo.ticket_state(by_mail))
    assert billed_tickets(repo.ticket_state(chat)) == 2
    alice_account = await balances.account_of(chat.client_id)  # type: ignore[attr-defined]
    jean_account = await balances.account_of(by_mail.client_id)  # type: ignore[attr-defined]
    alice_balance = await balances.balance_of(alice_account)
    jean_balance = await balances.balance_of(jean_account)
    assert alice_balance == jean_balance
    assert (jean_balance.purchased, jean_balance.billed, jean_balance.remaining) == (3, 2, 1)
    shown = [
        anonymous(new_messages(await staff(bot, f"!solde {who}"), STAFF_ROOM)[0], ticket, name)
        for who, ticket, name in ((ALICE, chat, ALICE), (by_mail.ref, by_mail, "Jean Dupont"))
    ]
    assert shown[0] == shown[1]

    # -- !report: one line per client, the same figures; the same per account
    [report] = new_messages(await staff(bot, "!report 2026-11"), STAFF_ROOM)
    clients_part, accounts_part = report.split("\n\n")

    def cells(part: str) -> dict[str, list[str]]:
        rows = [line.split("|") for line in part.splitlines()[1:]]
        return {row[0].strip(): [cell.strip() for cell in row[1:]] for row in rows}

    for part in (clients_part, accounts_part):
        figures = cells(part)
        assert figures[defuse(ALICE)] == figures["Jean Dupont"], part
    assert cells(clients_part)[defuse(ALICE)][:3] == ["1", "2", "1h30"]
    assert cells(accounts_part)[defuse(ALICE)] == ["3", "2", "1"]
    assert fr(bot, billing._COL_BILLED) in report

    # -- the CLI report: the same, in CSV
    capsys.readouterr()
    await close_db()
    try:
        assert await cli_tickets.report(bot.config, "2026-11", "csv") == 0
    finally:
        await open_db(bot.db_url)
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    by_client = {(row["row"], row["client"]): row for row in rows}
    assert len(rows) == 4, rows
    ignored = {"client", "client_name", "organisation"}
    for kind in ("client", "organisation"):
        alice, jean = by_client[(kind, ALICE)], by_client[(kind, f"mailto:{JEAN}")]
        assert {k: v for k, v in alice.items() if k not in ignored} == {
            k: v for k, v in jean.items() if k not in ignored
        }, kind
    alice = by_client[("organisation", ALICE)]
    assert (alice["tickets"], alice["billed_tickets"], alice["purchased"], alice["balance"]) == (
        "1",
        "2",
        "3",
        "1",
    )
    assert by_client[("client", ALICE)]["minutes_messaging"] == "90"


async def reply_to_last(bot: BotHarness, body: str) -> list[Sent]:
    """Jean's reply to the bot's last mail."""
    last = mails_to_jean(bot)[-1]
    before = len(bot.transport.sent)
    raw = client_mail(body, subject="Re: " + last["Subject"], in_reply_to=last["Message-ID"])
    assert await bot.receive_mail(raw)
    return bot.transport.sent[before:]


async def test_by_mail_2_is_not_solved_and_reopens_under_the_warranty_as_in_chat(bot):
    ticket = await open_by_mail(bot)
    await staff(bot, f"!take {ticket.ref}")
    await staff(bot, f"!resolve {ticket.ref}")

    # A reply that answers nothing changes nothing: a note, as any mail about the request.
    sent = await reply_to_last(bot, "Merci, je regarde demain.")
    assert (await Ticket.get(id=ticket.id)).status == "resolved"
    assert not new_messages(sent, STAFF_ROOM, threads=False)

    # 2: not solved, back with the team, as !notsolved in chat.
    sent = await reply_to_last(bot, "2. L'export est toujours vide.")
    assert (await Ticket.get(id=ticket.id)).status == "in_progress"
    assert new_messages(sent, STAFF_ROOM, threads=False) == [
        fr(bot, closing._NOT_SOLVED_STAFF, ref=ticket.ref)
    ]
    assert fr(bot, closing._NOT_SOLVED_CLIENT, ref=ticket.ref) in text_of(mails_to_jean(bot)[-1])
    assert any("toujours vide" in s.body for s in staff_thread(bot, ticket))

    # Solved at last: 1 closes it, with the warranty; 2 within it reopens it at no extra ticket.
    await staff(bot, f"!resolve {ticket.ref}")
    await reply_to_last(bot, "1")
    closed = await Ticket.get(id=ticket.id)
    assert closed.status == "closed" and closed.warranty_until == bot.clock() + timedelta(days=7)
    bot.clock.advance(timedelta(days=2))
    sent = await reply_to_last(bot, "2 Le problème est revenu ce matin.")
    assert (await Ticket.get(id=ticket.id)).status == "in_progress"
    assert new_messages(sent, STAFF_ROOM, threads=False) == [
        fr(bot, closing._REOPENED_STAFF, ref=ticket.ref)
    ]
    assert fr(bot, closing._REOPENED_CLIENT, ref=ticket.ref) in text_of(mails_to_jean(bot)[-1])

    # After the warranty, 2 reopens nothing: the client is told to write anew.
    await staff(bot, f"!resolve {ticket.ref}")
    await reply_to_last(bot, "1")
    bot.clock.advance(timedelta(days=8))
    await reply_to_last(bot, "2")
    assert (await Ticket.get(id=ticket.id)).status == "closed"
    assert fr(bot, mail_handler.REPLY_CLOSED, ref=ticket.ref) in text_of(mails_to_jean(bot)[-1])
