"""Confidentiality (SPEC §7, R14): what a client wrote goes to that client and to staff only,
logs at INFO hold no content or secret, and every HTML the bot sends is built from escaped or
sanitised parts.

One full flow serves the three checks: two clients, each in a direct chat of their own, go
through the real intake to a ticket (Alice a video call, Bob an intervention); staff take both
with 👀, look at them (`!ticket`, `!queue`, `!slots`), Alice books a call (a Jitsi link signed
with a JWT), Bob's intervention is estimated above two tickets, confirmed through the e-mail link
(a real SMTP server) and by staff ✅, time is logged, Alice adds a message to her ticket, and the
call reminders go out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import pytest

from bot.config import MailConfig
from bot.consent import Confirmed, confirm
from bot.mail import Mailer
from bot.storage.models import Booking, Ticket
from bot.testing.harness import BOT, STAFF, STAFF_ROOM, BotHarness, FakeClock, Sent
from bot.testing.harness import test_config as make_config
from bot.testing.net import free_port
from bot.video.jitsi import JitsiProvider
from handlers import consent
from tests.smtp import Inbox

MONDAY_9H = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)  # 09:00 in Paris
ALICE, BOB = "@alice:test", "@bob:test"
DM_A, DM_B = "!dm-alice:test", "!dm-bob:test"
ALICE_MAIL, BOB_MAIL = "alice.secret@client-a.example", "bob.hidden@client-b.example"
ALICE_TEXT = "Alice-only: the quota named ZEBRA-QUOTA never triggers on survey 4242."
BOB_TEXT = "Bob-only: the theme CASSIOPEE hides the submit button on phones."
ALICE_NOTE = "Alice-only addendum: ZEBRA-QUOTA also fails on the test survey."
ALICE_INSTANCE = "https://alice-lime.client-a.example/index.php 6.4.2 123456"
BOB_INSTANCE = "https://bob-lime.client-b.example 5.x"

MATRIX_PASSWORD = "matrix-pw-Zq8vT2nLx"
ACCESS_TOKEN = "syt_c3VwcG9ydA_AccessTokenNeverLogged_1a2b3c"
MAIL_PASSWORD = "smtp-pw-Kd93jsQ"
WEB_SECRET = "web-secret-of-at-least-32-chars-XYZ!"
JITSI_SECRET = "jitsi-app-secret-Hh47sLq0"


def config(**service: Any):
    return make_config(
        matrix={"password": MATRIX_PASSWORD, "access_token": ACCESS_TOKEN},
        web={"public_url": "http://127.0.0.1:1", "secret": WEB_SECRET},
        mail={
            "host": "127.0.0.1",
            "port": 1,
            "from": "support@test.example",
            "username": "support",
            "password": MAIL_PASSWORD,
        },
        video={
            "provider": "jitsi",
            "jitsi": {
                "base_url": "https://jitsi.test",
                "app_id": "support-bot",
                "app_secret": JITSI_SECRET,
            },
        },
        service=service,
    )


# --- a real SMTP server --------------------------------------------------------------------------


@pytest.fixture
async def bot(db_url: str) -> AsyncIterator[BotHarness]:
    cfg = config()
    async with BotHarness.open(db_url, cfg, clock=FakeClock(MONDAY_9H)) as harness:
        harness.services.video = JitsiProvider(cfg.video.jitsi, now=harness.clock)
        harness.transport.members[DM_A] = {BOT, ALICE}
        harness.transport.members[DM_B] = {BOT, BOB}
        yield harness


# --- the full flow -------------------------------------------------------------------------------


@dataclass
class Flow:
    alice: Ticket
    bob: Ticket
    booking: Booking
    consent_token: str


async def intake(bot: BotHarness, room: str, user: str, answers: list[str]) -> Ticket:
    before = await Ticket.all().count()
    for text in answers:
        sent = await bot.say(room, user, text)
        assert sent, text
    assert await Ticket.all().count() == before + 1
    ticket = await Ticket.all().order_by("-id").first()
    assert ticket is not None and ticket.card_event_id is not None
    return ticket


async def full_flow(bot: BotHarness, smtp_port: int, *, alice_text: str = ALICE_TEXT) -> Flow:
    alice = await intake(
        bot, DM_A, ALICE, [alice_text, "8", ALICE_INSTANCE, "2", ALICE_MAIL, "oui"]
    )
    bob = await intake(bot, DM_B, BOB, [BOB_TEXT, "4", BOB_INSTANCE, "4", BOB_MAIL, "oui"])
    await bot.react(STAFF_ROOM, STAFF, alice.card_event_id or "", "👀")
    await bot.react(STAFF_ROOM, STAFF, bob.card_event_id or "", "👀")
    for command in (f"!ticket {alice.ref}", f"!ticket {bob.ref}", "!queue", "!slots"):
        assert await bot.say(STAFF_ROOM, STAFF, command), command

    sent = await bot.say(DM_A, ALICE, "1")  # the first offered slot
    booking = await Booking.get(ticket_id=alice.id, status="active")
    assert booking.client_url and booking.staff_url and booking.client_url != booking.staff_url
    assert any(booking.client_url in s.body for s in sent)

    # The consent e-mail: first the mail server is down (logged), then it works.
    bot.services.mailer = Mailer(MailConfig(host="127.0.0.1", port=free_port()), timeout=2)
    await bot.say(STAFF_ROOM, STAFF, f"!estimate {bob.ref} 5h")
    bot.services.mailer = Mailer(MailConfig(host="127.0.0.1", port=smtp_port), timeout=5)
    await bot.say(STAFF_ROOM, STAFF, f"!estimate {bob.ref} 5h")
    token = _last_consent_token(bot)
    result = await confirm(token, now=bot.clock(), secret=bot.config.web.secret)
    assert isinstance(result, Confirmed)
    await consent.on_client_confirmed(bot.services, bob.id)
    await bot.deliverer.deliver_pending()
    bob = await Ticket.get(id=bob.id)
    await bot.react(STAFF_ROOM, STAFF, bob.card_event_id or "", "✅")
    await bot.say(STAFF_ROOM, STAFF, f"!log {bob.ref} 1h30 theme fixed")
    await bot.say(STAFF_ROOM, STAFF, f"!log {alice.ref} 20 prepared the call")

    # Alice writes again: her message is about her open ticket (R1).
    await bot.say(DM_A, ALICE, ALICE_NOTE)
    await bot.say(DM_A, ALICE, "1")
    for user, room, ticket in ((ALICE, DM_A, alice), (BOB, DM_B, bob)):
        assert await bot.say(room, user, f"!status {ticket.ref}")
        assert await bot.say(room, user, "!tickets")

    # The call reminders (a day before, then 15 minutes before).
    bot.clock.now = booking.start - timedelta(hours=24, minutes=-1)
    await bot.sweep()
    bot.clock.now = booking.start - timedelta(minutes=14)
    await bot.sweep()
    assert await Ticket.filter(id=alice.id, status="in_progress").exists()
    return Flow(await Ticket.get(id=alice.id), bob, booking, token)


def _last_consent_token(bot: BotHarness) -> str:
    inbox: Inbox = bot.inbox  # type: ignore[attr-defined]
    assert inbox.messages, "no consent e-mail was sent"
    recipients, _ = inbox.messages[-1]
    assert recipients == [BOB_MAIL]
    text = inbox.raw[-1].decode("utf-8", "replace").replace("=\r\n", "")
    marker = "/confirm/"
    start = text.index(marker) + len(marker)
    end = start
    while end < len(text) and (text[end].isalnum() or text[end] in "-_"):
        end += 1
    return text[start:end]


@pytest.fixture
async def flow(bot: BotHarness, smtp: tuple[Inbox, int]) -> Flow:
    inbox, port = smtp
    bot.inbox = inbox  # type: ignore[attr-defined]
    return await full_flow(bot, port)


# --- what goes where -----------------------------------------------------------------------------


def everything_in(bot: BotHarness, sent: Sent) -> str:
    """All a room's members can read of one event: its content and any uploaded file."""
    text = json.dumps(sent.content, ensure_ascii=False)
    url = sent.content.get("url")
    if isinstance(url, str) and url.startswith("mxc://test/"):
        data, _, _ = bot.transport.uploads[int(url.rsplit("/", 1)[1]) - 1]
        text += data.decode("utf-8", "replace").replace("\r\n ", "")
    return text


def secrets_of(flow: Flow, client: str) -> dict[str, str]:
    if client == ALICE:
        return {
            "description": "ZEBRA-QUOTA",
            "e-mail": ALICE_MAIL,
            "instance": "alice-lime.client-a.example",
            "meeting link": flow.booking.client_url or "?",
        }
    return {
        "description": "CASSIOPEE",
        "e-mail": BOB_MAIL,
        "instance": "bob-lime.client-b.example",
    }


async def test_a_clients_content_reaches_only_their_room_and_the_staff_room(bot, flow):
    rooms = {s.room_id for s in bot.transport.sent}
    assert {DM_A, DM_B, STAFF_ROOM} <= rooms
    leaks = []
    for client, own_room in ((ALICE, DM_A), (BOB, DM_B)):
        for what, secret in secrets_of(flow, client).items():
            seen = {s.room_id for s in bot.transport.sent if secret in everything_in(bot, s)}
            assert own_room in seen or what == "instance", (client, what)  # the client sees it
            if seen - {own_room, STAFF_ROOM}:
                leaks.append(f"{client}'s {what} in {sorted(seen - {own_room, STAFF_ROOM})}")
    assert not leaks, leaks

    # The moderator link goes to staff only; the consent link by e-mail only.
    staff_url = flow.booking.staff_url or "?"
    assert {s.room_id for s in bot.transport.sent if staff_url in everything_in(bot, s)} == {
        STAFF_ROOM
    }
    assert not [s for s in bot.transport.sent if flow.consent_token in everything_in(bot, s)]


async def test_a_request_started_in_a_shared_room_leaves_nothing_there(bot):
    shared = "!shared:test"
    bot.transport.members[shared] = {BOT, ALICE, BOB}
    for text in (ALICE_TEXT, "8", "!skip", "1", ALICE_MAIL, "oui"):
        await bot.say(shared, ALICE, text)
    ticket = await Ticket.get(client__key=ALICE)
    assert ticket.room_id != shared
    in_shared = [everything_in(bot, s) for s in bot.in_room(shared)]
    assert in_shared  # told where the conversation went
    assert not [t for t in in_shared if "ZEBRA-QUOTA" in t or ALICE_MAIL in t or ticket.ref in t]


# --- logs ----------------------------------------------------------------------------------------


async def test_no_content_token_password_or_address_in_logs_at_info(bot, smtp, caplog):
    caplog.set_level(logging.INFO)
    inbox, port = smtp
    bot.inbox = inbox  # type: ignore[attr-defined]
    flow = await full_flow(bot, port)
    secret_values = {
        "Alice's description": "ZEBRA-QUOTA",
        "Alice's note": "addendum",
        "Bob's description": "CASSIOPEE",
        "Alice's e-mail": ALICE_MAIL,
        "Bob's e-mail": BOB_MAIL,
        "Alice's e-mail (local part)": ALICE_MAIL.split("@")[0],
        "Bob's e-mail (local part)": BOB_MAIL.split("@")[0],
        "matrix password": MATRIX_PASSWORD,
        "access token": ACCESS_TOKEN,
        "mail password": MAIL_PASSWORD,
        "web secret": WEB_SECRET,
        "jitsi secret": JITSI_SECRET,
        "client meeting link": flow.booking.client_url or "?",
        "moderator meeting link": flow.booking.staff_url or "?",
        "meeting token": (flow.booking.client_url or "?").rsplit("jwt=", 1)[-1],
        "consent token": flow.consent_token,
    }
    formatter = logging.Formatter()
    records = [
        r
        for r in caplog.records
        if r.levelno >= logging.INFO and not r.name.startswith("mail.log")  # the test's server
    ]
    assert records, "the flow logged nothing at INFO?"
    leaks = []
    for record in records:
        text = formatter.format(record)
        for what, value in secret_values.items():
            if value in text:
                leaks.append(f"{what} in {record.name}: {text[:300]!r}")
    assert not leaks, "\n".join(leaks)


# --- HTML built from escaped parts ---------------------------------------------------------------

HOSTILE = (
    "Mon thème casse tout <script>alert(1)</script> et ce lien "
    '<a href="javascript:alert(1)">x</a> @room, voir '
    '<a href="https://matrix.to/#/@staff:test">staff</a> merci'
)


class _Html(HTMLParser):
    """Collects what could run, load or ping in a formatted body, and its text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "iframe", "object", "embed", "img", "style", "form"):
            self.problems.append(f"<{tag}>")
        for name, value in attrs:
            value = (value or "").strip().lower()
            if name.startswith("on"):
                self.problems.append(f"{tag} {name}=")
            if value.startswith(("javascript:", "data:", "vbscript:")):
                self.problems.append(f"{tag} {name}={value[:30]}")
            if "matrix.to" in value or value.startswith("matrix:"):
                self.problems.append(f"{tag} {name}={value[:40]}")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def html_problems(formatted: str) -> list[str]:
    """Markup that would act. (Client text shown escaped, e.g. `&lt;a href="javascript:…`,
    is text: it cannot run, and no client turns a javascript: URL in text into a link.)"""
    parser = _Html()
    parser.feed(formatted)
    parser.close()
    if "<script" in formatted.lower():
        parser.problems.append("raw <script")
    return parser.problems


def html_text(formatted: str) -> str:
    parser = _Html()
    parser.feed(formatted)
    parser.close()
    return "".join(parser.text)


def undefused(text: str) -> list[str]:
    """What would notify or become a pill: a bare @room, a matrix.to permalink."""
    return [needle for needle in ("@room", "matrix.to") if needle in text]


def bodies(content: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(plain, formatted) of a message and of the new content of an edit."""
    found = [(str(content.get("body", "")), content.get("formatted_body"))]
    new = content.get("m.new_content")
    if isinstance(new, dict):
        found.append((str(new.get("body", "")), new.get("formatted_body")))
    return found


@pytest.fixture
async def hostile_bot(db_url: str) -> AsyncIterator[BotHarness]:
    cfg = make_config(bridges=[{"user_id": "@nctalk:test"}])
    async with BotHarness.open(db_url, cfg, clock=FakeClock(MONDAY_9H)) as harness:
        harness.transport.members[DM_A] = {BOT, ALICE}
        harness.transport.members["!talk:test"] = {BOT, "@nctalk:test"}
        yield harness


async def hostile_flow(bot: BotHarness) -> None:
    """Hostile text everywhere a client can type: description, instance, note, nickname."""
    alice = await intake(
        bot,
        DM_A,
        ALICE,
        [HOSTILE, "4", "https://matrix.to/#/@staff:test", "1", ALICE_MAIL, "oui"],
    )
    talk = "!talk:test"
    nick = "@room<script"
    bridged = await intake(
        bot,
        talk,
        "@nctalk:test",
        [f"[nctalk] <{nick}> {text}" for text in (HOSTILE, "4", "!skip", "1", BOB_MAIL, "oui")],
    )
    await bot.react(STAFF_ROOM, STAFF, alice.card_event_id or "", "👀")
    for ticket in (alice, bridged):
        await bot.say(STAFF_ROOM, STAFF, f"!ticket {ticket.ref}")
        await bot.say(STAFF_ROOM, STAFF, f"!log {ticket.ref} 30")
    await bot.say(STAFF_ROOM, STAFF, "!queue")
    await bot.say(STAFF_ROOM, STAFF, "!report 2026-11")
    await bot.say(DM_A, ALICE, "Encore : " + HOSTILE)  # R1: about the open ticket?
    await bot.say(DM_A, ALICE, "1")
    await bot.say(DM_A, ALICE, f"!status {alice.ref}")
    await bot.say(DM_A, ALICE, "!tickets")
    await bot.say(STAFF_ROOM, STAFF, f"!ticket {alice.ref}")


async def test_every_html_the_bot_sends_is_escaped_or_sanitised(hostile_bot):
    bot = hostile_bot
    await hostile_flow(bot)
    formatted_seen = 0
    problems = []
    for sent in bot.transport.sent:
        for _, formatted in bodies(sent.content):
            if formatted is None:
                continue
            formatted_seen += 1
            problems += [f"{sent.room_id}: {p}" for p in html_problems(formatted)]
    assert formatted_seen >= 10
    assert not problems, problems

    # What staff read is defused too (the cards, !ticket, !queue, notes).
    problems = defuse_problems(bot.in_room(STAFF_ROOM))
    assert not problems, "\n".join(problems)

    # Intentional mentions: an empty m.mentions means no push for @room or a pill.
    for sent in bot.transport.sent:
        if sent.type == "m.room.message" and sent.content.get("msgtype") == "m.notice":
            assert sent.content.get("m.mentions") == {}, sent.body[:80]


def defuse_problems(sent: list[Sent]) -> list[str]:
    problems = []
    for message in sent:
        for plain, formatted in bodies(message.content):
            for needle in undefused(plain):
                problems.append(f"{message.room_id}: {needle} in plain {plain[:100]!r}")
            if formatted is not None:
                for needle in undefused(html_text(formatted)):
                    problems.append(f"{message.room_id}: {needle} in HTML text")
    return problems


async def test_a_bridged_nickname_is_defused_when_the_bot_addresses_it(hostile_bot):
    bot = hostile_bot
    await hostile_flow(bot)
    talk = bot.in_room("!talk:test")
    assert talk
    problems = [f"{s.body[:60]!r}" for s in talk if s.body.split(": ", 1)[0] == "@room<script"]
    assert not problems, "\n".join(problems)


async def test_the_intake_summary_echoes_client_text_defused(hostile_bot):
    bot = hostile_bot
    await hostile_flow(bot)
    problems = defuse_problems(bot.in_room(DM_A))
    assert not problems, "\n".join(problems)
