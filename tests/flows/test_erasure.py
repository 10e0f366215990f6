"""Erasure keeps every promise: after `!forget-me confirm` (or `support-bot client erase`) no
table holds the client's text, e-mail or Matrix id, the staff cards show a placeholder and the
bot's messages about them are redacted; dropped intakes keep nothing; the outbox forgets what
was sent after its retention.

Every text and JSON column of every model is searched (`Tortoise.apps`), so a table or column
added later is searched too.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from tortoise import Tortoise
from tortoise import fields as tortoise_fields

from bot.config import MailConfig
from bot.i18n import Msg
from bot.mail import Mailer
from bot.ports import TransportError
from bot.storage import personal_data, repo
from bot.storage.models import (
    Client,
    Conversation,
    OutboxItem,
    Reaction,
    Ticket,
    UndecryptedEvent,
    UserPref,
    WithheldKey,
)
from bot.testing.harness import STAFF, STAFF_ROOM, BotHarness, Sent
from bot.testing.harness import test_config as base_config
from bot.testing.net import free_port
from handlers import privacy

pytestmark = pytest.mark.postgres

DM = "!dm-alice:test"
ALICE = "@alice:test"
ALICE_MAIL = "alice.martin@example.com"
DESCRIPTION = "Our survey theme hides the submit button of Martin Consulting on phones."
NOTE = "Also the logo of Martin Consulting is blurred since yesterday."
INSTANCE_URL = "https://surveys.martin-consulting.example"
REASON = "Needs a custom plugin written for Martin Consulting's theme."
BOB_DM = "!dm-bob:test"
BOB = "@bob:test"
BOB_MAIL = "bob@example.net"
BOB_DESCRIPTION = "Bob's survey export to SPSS fails with an encoding error."
BOB_INSTANCE_URL = "https://limesurvey.bob.example"
SECRETS = (DESCRIPTION, NOTE, ALICE_MAIL, ALICE, INSTANCE_URL, REASON, "Martin Consulting")
_INVISIBLE = re.compile("[\u2060\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


@pytest.fixture
async def bot(db_url: str) -> AsyncIterator[BotHarness]:
    config = base_config(mail={"host": "127.0.0.1", "port": 1, "from": "support@test.example"})
    async with BotHarness.open(db_url, config) as harness:
        yield harness


# -- helpers ------------------------------------------------------------------------------------


def _fold(text: str) -> str:
    # As a reader sees it: the bot defuses echoed ids with invisible joiners, escapes HTML.
    return " ".join(_INVISIBLE.sub("", html.unescape(text)).split()).casefold()


async def stored(*needles: str) -> list[tuple[str, str, str]]:
    """(table, column, needle) wherever a needle is found in a text or JSON column."""
    found = []
    for model in Tortoise.apps["models"].values():
        columns = [
            name
            for name, field in model._meta.fields_map.items()
            if isinstance(
                field,
                tortoise_fields.CharField | tortoise_fields.TextField | tortoise_fields.JSONField,
            )
        ]
        for row in await model.all().values(*columns):
            for column, value in row.items():
                if value is None:
                    continue
                text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                for needle in needles:
                    if _fold(needle) in _fold(text):
                        found.append((model._meta.db_table, column, needle))
    return found


async def intake(
    bot: BotHarness, room: str, sender: str, description: str, mail: str, instance: str
) -> Ticket:
    """A whole intake: an intervention ticket (so that an estimate may need a consent mail)."""
    for answer in (description, "5", f"{instance} 6.4.2 123456", "4", mail, "yes"):
        await bot.say(room, sender, answer)
    ticket = await Ticket.filter(client__key=sender).order_by("-id").first()
    assert ticket is not None
    return ticket


async def reproduce(bot: BotHarness) -> dict[str, Any]:
    """The confidentiality issue's reproduction, with Bob as the client who must keep
    everything. Returns what the checks need."""
    bot.services.mailer = Mailer(MailConfig(host="127.0.0.1", port=free_port()), timeout=2)
    await bot.say(DM, ALICE, "!langue fr")  # a preference row naming her
    ticket = await intake(bot, DM, ALICE, DESCRIPTION, ALICE_MAIL, INSTANCE_URL)
    bob_ticket = await intake(bot, BOB_DM, BOB, BOB_DESCRIPTION, BOB_MAIL, BOB_INSTANCE_URL)
    await bot.say(DM, ALICE, NOTE)  # R1: about the open ticket?
    await bot.say(DM, ALICE, "1")  # yes: a note on it
    await bot.say(STAFF_ROOM, STAFF, f"!ticket {ticket.ref}")
    await bot.say(STAFF_ROOM, STAFF, f"!ticket {bob_ticket.ref}")
    await bot.say(STAFF_ROOM, STAFF, f"!estimate {ticket.ref} 3h")  # the mail fails: dead port
    await bot.say(STAFF_ROOM, STAFF, f"!unsolvable {ticket.ref} {REASON}")
    now = bot.clock()
    await UndecryptedEvent.create(
        event_id="$late-alice",
        room_id=DM,
        sender=ALICE,
        session_id="s1",
        source={"sender": ALICE, "content": {"ciphertext": "…"}},
        received_at=now,
    )
    await WithheldKey.create(
        sender=ALICE,
        sender_key="alice-device",
        room_id=DM,
        session_id="s1",
        code="m.unverified",
        received_at=now,
    )
    await Reaction.create(
        event_id="$r-alice", room_id=DM, target_event_id="$x", sender=ALICE, key="👍", at=now
    )

    mails = await OutboxItem.filter(kind="mail")
    # The receipts of the two tickets opened in chat (Alice's, Bob's) and the consent mail,
    # all given up (the mail server's port is dead).
    assert [m.failed for m in mails] == [True, True, True]
    assert len(await stored(*SECRETS)) > 10  # the issue as reproduced
    alice_tickets = await Ticket.filter(client__key=ALICE).order_by("id")
    assert [t.kind for t in alice_tickets] == ["ticket", "quote"]  # R11 opened a quote
    assert all(t.card_event_id for t in alice_tickets)
    return {
        "tickets": alice_tickets,
        "bob": bob_ticket,
        "dm_events": {s.event_id for s in bot.in_room(DM)},
        "bob_events": {s.event_id for s in bot.in_room(BOB_DM)},
        "staff_sent": len(bot.in_room(STAFF_ROOM)),
    }


def placeholder(bot: BotHarness, ref: str) -> str:
    return bot.catalogs.get("fr").render(Msg(privacy.ERASED_CARD, {"ref": ref}), bot.services.tz)


def card_edits(sent: list[Sent], event_id: str | None) -> list[str]:
    return [
        s.content["m.new_content"]["body"]
        for s in sent
        if s.content.get("m.relates_to", {}).get("event_id") == event_id
    ]


async def check_erased(bot: BotHarness, seen: dict[str, Any], erase_sent: list[Sent]) -> None:
    # 1. Nothing anywhere names or describes her.
    assert await stored(*SECRETS) == []
    # Bob keeps everything.
    assert {"ticket", "outbox_item"} <= {t for t, _, _ in await stored(BOB_DESCRIPTION)}
    assert await stored(BOB_MAIL)
    # The billing figures stay, anonymously.
    for before in seen["tickets"]:
        after = await Ticket.get(id=before.id)
        assert (after.status, after.minutes_logged, after.ref) == (
            before.status,
            before.minutes_logged,
            before.ref,
        )
        assert after.description == repo.ERASED_TEXT
    assert (await Client.get(id=seen["tickets"][0].client_id)).key.startswith("anon:")  # type: ignore[attr-defined]
    assert not await UserPref.exists(user_key=ALICE)
    assert not await Conversation.exists(client_key=ALICE)
    assert not await personal_data.holds_data(ALICE)

    # 2. Her cards show the placeholder (and were not redacted); Bob's card is untouched.
    staff = [s for s in erase_sent if s.room_id == STAFF_ROOM]
    for ticket in seen["tickets"]:
        assert card_edits(staff, ticket.card_event_id) == [placeholder(bot, ticket.ref)]
    assert card_edits(staff, seen["bob"].card_event_id) == []
    redacted = {event_id for _, event_id, _ in bot.transport.redactions}
    assert not redacted & {t.card_event_id for t in seen["tickets"]}

    # 3. Every message the bot sent her is redacted, and the staff-room ones that quoted her;
    # nothing of Bob's.
    assert seen["dm_events"] <= redacted
    assert not redacted & seen["bob_events"]
    assert not redacted & {s.event_id for s in erase_sent}
    quoted = [
        s.event_id
        for s in bot.in_room(STAFF_ROOM)[: seen["staff_sent"]]
        if DESCRIPTION in s.body or NOTE in s.body
    ]
    assert quoted and set(quoted) - {t.card_event_id for t in seen["tickets"]} <= redacted
    bob_quoted = {s.event_id for s in bot.in_room(STAFF_ROOM) if BOB_DESCRIPTION in s.body}
    assert bob_quoted and not redacted & bob_quoted
    assert all(room in (DM, STAFF_ROOM) for room, _, _ in bot.transport.redactions)
    # Sent from the outbox, after the commit: nothing left to send.
    assert not await OutboxItem.filter(sent_at=None, failed=False).exists()


# -- the reproduction ---------------------------------------------------------------------------


async def test_forget_me_leaves_nothing_of_the_client(bot):
    seen = await reproduce(bot)
    sent = await bot.say(DM, ALICE, "!oubliez-moi")
    assert "!oubliez-moi confirmer" in sent[0].body
    seen["dm_events"] |= {s.event_id for s in sent}

    sent = await bot.say(DM, ALICE, "!oubliez-moi confirmer")
    [done] = [s for s in sent if s.room_id == DM]
    assert "supprimées" in done.body
    await check_erased(bot, seen, sent)
    assert any(
        s.room_id == STAFF_ROOM and "droit à l’oubli" in s.body for s in sent
    )  # staff are told


async def test_client_erase_command_leaves_nothing_of_the_client(bot):
    seen = await reproduce(bot)
    before = len(bot.transport.sent)
    # As `support-bot client erase` does, without knowing the staff room (an alias in its
    # configuration): the cards are where the bot recorded sending them.
    assert await personal_data.erase_client(
        ALICE,
        now=bot.clock(),
        actor="cli",
        card_text=lambda ref: placeholder(bot, ref),
    )
    await bot.deliverer.deliver_pending()  # the running bot sends the queued rows
    await check_erased(bot, seen, bot.transport.sent[before:])


async def test_staff_cannot_erase_themselves_from_the_history(bot):
    await bot.say(STAFF_ROOM, STAFF, "!lang en")
    sent = await bot.say(STAFF_ROOM, STAFF, "!forget-me confirm")
    assert "support-bot client erase" in sent[0].body
    assert await UserPref.exists(user_key=STAFF)


async def test_a_refused_redaction_is_given_up_and_a_failed_one_retried(bot):
    await bot.say(DM, ALICE, DESCRIPTION)
    transport = bot.transport
    original = transport.redact
    calls: list[str] = []

    async def flaky(room_id: str, event_id: str, reason: str | None = None) -> None:
        calls.append(event_id)
        if len(calls) == 1:
            raise TransportError("homeserver away", retryable=True)
        if len(calls) == 2:
            raise TransportError("M_FORBIDDEN", retryable=False, status=403)
        await original(room_id, event_id, reason)

    transport.redact = flaky  # type: ignore[method-assign]
    await bot.say(DM, ALICE, "!forget-me confirm")
    rows = await OutboxItem.filter(kind="redaction")
    assert rows and all(r.sent_at is not None and not r.failed for r in rows)
    assert calls[0] == calls[1]  # the same redaction, tried again
    assert len(transport.redactions) == len(rows) - 1  # the refused one is not retried


# -- dropped intakes ----------------------------------------------------------------------------


async def test_a_cancelled_intake_keeps_no_text_but_is_still_known_until_erased(bot):
    for answer in (DESCRIPTION, "5", INSTANCE_URL, "1", ALICE_MAIL):
        await bot.say(DM, ALICE, answer)
    await bot.say(DM, ALICE, "!annuler")
    conv = await Conversation.get(client_key=ALICE)
    assert conv.step == "cancelled"
    assert not any(needle in json.dumps(conv.data) for needle in (DESCRIPTION, ALICE_MAIL))

    sent = await bot.say(DM, ALICE, "!oubliez-moi")
    assert "!oubliez-moi confirmer" in sent[0].body  # no longer "I keep nothing"
    exported = await personal_data.export_client(ALICE)
    assert exported is not None and exported["client"] is None
    assert [c["step"] for c in exported["conversations"]] == ["cancelled"]

    await bot.say(DM, ALICE, "!oubliez-moi confirmer")
    assert await personal_data.export_client(ALICE) is None
    assert await stored(DESCRIPTION, ALICE_MAIL, ALICE) == []
    sent = await bot.say(DM, ALICE, "!oubliez-moi")
    assert "rien à supprimer" in sent[0].body


async def test_an_expired_intake_keeps_nothing_after_the_expiry_sweep(bot):
    for answer in (DESCRIPTION, "5", INSTANCE_URL, "1", ALICE_MAIL):
        await bot.say(DM, ALICE, answer)
    bot.clock.advance(timedelta(hours=25))
    await bot.sweep()  # the reminder, which restates the summary
    bot.clock.advance(timedelta(days=7))
    await bot.sweep()  # expired; the messages older than the retention are forgotten too
    conv = await Conversation.get(client_key=ALICE)
    assert conv.step == "expired"
    assert await stored(DESCRIPTION, ALICE_MAIL, INSTANCE_URL) == []


async def test_preferences_alone_are_data_exported_and_erased(bot):
    await bot.say(DM, ALICE, "!lang en")
    exported = await personal_data.export_client(ALICE)
    assert exported is not None and exported["preferences"] == {"locale": "en"}
    sent = await bot.say(DM, ALICE, "!forget-me")
    assert "!forget-me confirm" in sent[0].body
    await bot.say(DM, ALICE, "!forget-me confirm")
    assert not await UserPref.exists(user_key=ALICE)


async def test_a_withheld_key_alone_is_data_exported_and_erased(bot):
    """What her app said it would not share with the bot names her: it is hers to see and
    to have erased, like the undecryptable message it was about."""
    at = bot.clock()
    await WithheldKey.create(
        sender=ALICE,
        sender_key="",
        room_id=DM,
        session_id="s1",
        code="m.unverified",
        received_at=at,
    )
    exported = await personal_data.export_client(ALICE)
    assert exported is not None
    assert exported["withheld_keys"] == [
        {"room_id": DM, "session_id": "s1", "code": "m.unverified", "received_at": at.isoformat()}
    ]
    await bot.say(DM, ALICE, "!forget-me")
    await bot.say(DM, ALICE, "!forget-me confirm")
    assert not await WithheldKey.exists(sender=ALICE)
    assert await personal_data.export_client(ALICE) is None


# -- retention ----------------------------------------------------------------------------------


async def test_sent_rows_are_forgotten_after_the_retention(bot):
    now = bot.clock()
    old, recent = now - timedelta(days=3, minutes=1), now - timedelta(days=2)

    async def row(txn: str, **values: Any) -> None:
        values.setdefault("created_at", values.get("sent_at") or old)
        await OutboxItem.create(
            txn_id=txn, room_id=DM, kind="message", content={"body": DESCRIPTION}, **values
        )

    await row("sent-old", sent_at=old, event_id="$1")
    await row("sent-recent", sent_at=recent, event_id="$2")
    await row("failed-old", failed=True, created_at=old)
    await row("failed-recent", failed=True, created_at=recent)
    await row("pending-old", created_at=now - timedelta(days=30))
    # A ✅ on a "resolved" message is looked up by its tag: the row stays, without its text.
    await row("tagged-old", sent_at=old, event_id="$3", on_sent="resolved:7")

    await privacy.prune_outbox(bot.services, now)
    left = {r.txn_id: r for r in await OutboxItem.all()}
    assert set(left) == {"sent-recent", "failed-recent", "pending-old", "tagged-old"}
    tagged = left["tagged-old"]
    assert (tagged.content, tagged.event_id, tagged.on_sent) == ({}, "$3", "resolved:7")
    assert tagged.kind == "pruned"

    await privacy.prune_outbox(bot.services, now)  # nothing more to do
    assert await OutboxItem.all().count() == 4


@pytest.mark.parametrize(
    "zone",
    [UTC, ZoneInfo("Europe/Paris"), timezone(timedelta(hours=-7))],
    ids=["utc", "paris", "utc-7"],
)
async def test_the_retention_ends_at_the_same_instant_in_any_zone(bot, zone: tzinfo):
    """The limit is an instant: the same rows go whatever the zone `now` is written in (the
    service's clock is UTC; a caller in local time must not shift the limit by its offset)."""
    limit = bot.clock() - timedelta(days=3)
    for txn, sent in (
        ("just-before", limit - timedelta(minutes=1)),
        ("just-after", limit + timedelta(minutes=1)),
        ("hours-before", limit - timedelta(hours=5)),
        ("hours-after", limit + timedelta(hours=1, minutes=30)),
    ):
        await OutboxItem.create(
            txn_id=txn, room_id=DM, kind="message", content={}, created_at=sent, sent_at=sent
        )
    await privacy.prune_outbox(bot.services, bot.clock().astimezone(zone))
    assert set(await OutboxItem.all().values_list("txn_id", flat=True)) == {
        "just-after",
        "hours-after",
    }


async def test_the_retention_is_configured(db_url):
    config = base_config(service={"outbox_retention_days": 10})
    assert config.service.outbox_retention_days == 10
    assert base_config().service.outbox_retention_days == 3
    async with BotHarness.open(db_url, config) as bot:
        now = bot.clock()
        await OutboxItem.create(
            txn_id="a",
            room_id=DM,
            kind="message",
            content={},
            created_at=now - timedelta(days=5),
            sent_at=now - timedelta(days=5),
        )
        await bot.sweep()
        assert await OutboxItem.exists(txn_id="a")


# -- behind a bridge ----------------------------------------------------------------------------


async def test_behind_a_bridge_only_that_nickname_is_erased(db_url):
    bridge, talk = "@nctalk:test", "!talk:test"
    alice_key = f"bridge:{talk}:Alice"
    config = base_config(bridges=[{"user_id": bridge}])
    async with BotHarness.open(db_url, config) as bot:
        bot.transport.members[talk] = {bot.config.matrix.user_id, bridge}
        for nick, text, mail in (
            ("Alice", DESCRIPTION, ALICE_MAIL),
            ("Bob", BOB_DESCRIPTION, BOB_MAIL),
        ):
            for answer in (text, "5", "!skip", "1", mail, "yes"):
                await bot.say(talk, bridge, f"[nctalk] <{nick}> {answer}")
        assert await Ticket.filter(client__key=alice_key).exists()
        before = {s.event_id: s.body for s in bot.in_room(talk)}

        assert await personal_data.erase_client(alice_key, now=bot.clock(), actor="cli")
        await bot.deliverer.deliver_pending()

        assert await stored(DESCRIPTION, ALICE_MAIL, alice_key) == []
        assert await stored(BOB_DESCRIPTION) and await stored(BOB_MAIL)
        redacted = {event_id for room, event_id, _ in bot.transport.redactions if room == talk}
        # The room is the whole Talk conversation's: only what was addressed to her goes.
        assert redacted == {e for e, body in before.items() if body.startswith("Alice:")}
        assert redacted and all(not before[e].startswith("Bob:") for e in redacted)
