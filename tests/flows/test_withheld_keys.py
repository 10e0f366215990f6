"""Keys that will not come: `m.room_key.withheld`, or a Megolm session shared late.

Two halves, through the real database:

- the bookkeeping of `PendingEvents` (which kept events a withheld message is about, what is
  remembered for events still to come, once per session, the logs), with a fake nio client
  whose Olm machine decrypts nothing and may or may not hold a session;
- what the sender reads (`IncomingWithheld` through the real dispatcher and outbox): the
  reason and what to do, in their language, in clear, once.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from nio import AsyncClient, Event, MegolmEvent, RoomKeyEvent, ToDeviceEvent

from bot.events import (
    SESSION_STARTS_LATER,
    IncomingUnreadable,
    IncomingWithheld,
    event_from_json,
    event_to_json,
)
from bot.matrix.inbound import to_withheld
from bot.matrix.pending import UNDECRYPTED_GIVE_UP, WITHHELD_PER_SENDER, PendingEvents
from bot.matrix.runtime import ShellStats
from bot.routing import MESSAGE_IN_CLEAR
from bot.storage.models import HandledEvent, OutboxItem, UndecryptedEvent, WithheldKey
from bot.testing.harness import BotHarness, FakeClock
from bot.testing.harness import test_config as make_config

START = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
SENT_AT = datetime(2026, 11, 25, 8, 30, tzinfo=UTC)  # 09:30 in Paris
ROOM, OTHER_ROOM = "!dm:test", "!other:test"
ALICE, MALLORY, BOT = "@alice:test", "@mallory:test", "@bot:test"
ALICE_KEY = "alice-curve25519"
MEGOLM = "m.megolm.v1.aes-sha2"


class FakeOlm:
    """nio's Olm machine as `PendingEvents` reads it: the inbound sessions it holds."""

    def __init__(self) -> None:
        self.sessions: set[tuple[str, str, str]] = set()
        self.inbound_group_store = self

    def get(self, room_id: str, sender_key: str, session_id: str) -> object | None:
        return object() if (room_id, sender_key, session_id) in self.sessions else None


class FakeClient:
    """Nothing decrypts (its keys never came, or only for later messages)."""

    def __init__(self) -> None:
        self.olm = FakeOlm()
        self.outgoing_key_requests: dict[str, Any] = {}
        self.requested: list[str] = []

    def decrypt_event(self, event: MegolmEvent) -> Event:
        raise RuntimeError("no key")  # nio raises EncryptionError; anything is caught

    async def request_room_key(self, event: MegolmEvent) -> None:
        self.requested.append(event.session_id)
        self.outgoing_key_requests[event.session_id] = True


def make(clock: FakeClock) -> tuple[PendingEvents, FakeClient]:
    client = FakeClient()
    nio = cast(AsyncClient, client)
    pending = PendingEvents(lambda: nio, bot_user_id=BOT, clock=clock, stats=ShellStats())
    return pending, client


def megolm(
    event_id: str,
    *,
    sender: str = ALICE,
    room_id: str = ROOM,
    session: str = "s1",
    sender_key: str | None = ALICE_KEY,
) -> MegolmEvent:
    content = {
        "algorithm": MEGOLM,
        "ciphertext": "SECRET-CIPHERTEXT",
        "session_id": session,
        "device_id": "ALICEPHONE",
    }
    if sender_key is not None:
        content["sender_key"] = sender_key
    event = Event.parse_event(
        {
            "type": "m.room.encrypted",
            "event_id": event_id,
            "sender": sender,
            "origin_server_ts": int(SENT_AT.timestamp() * 1000),
            "room_id": room_id,
            "content": content,
        }
    )
    assert isinstance(event, MegolmEvent)
    return event


def withheld(
    code: str = "m.unverified",
    *,
    sender: str = ALICE,
    room_id: str | None = ROOM,
    session: str | None = "s1",
    sender_key: str | None = ALICE_KEY,
    **extra: Any,
) -> ToDeviceEvent:
    """An `m.room_key.withheld` as nio hands it over from a sync."""
    content: dict[str, Any] = {"algorithm": MEGOLM, "code": code, "reason": "not verified"}
    for name, value in (("room_id", room_id), ("session_id", session), ("sender_key", sender_key)):
        if value is not None:
            content[name] = value
    content.update(extra)
    event = ToDeviceEvent.parse_event(
        {"type": "m.room_key.withheld", "sender": sender, "content": content}
    )
    assert event is not None
    return cast(ToDeviceEvent, event)


def room_key(session: str = "s1", *, room_id: str = ROOM) -> RoomKeyEvent:
    """A room key the bot's device received (nio has decrypted the Olm message)."""
    return RoomKeyEvent({}, ALICE, ALICE_KEY, room_id, session, MEGOLM)


async def told(*notices: IncomingWithheld) -> None:
    """What the dispatcher does once a notice is handled: record its id."""
    for notice in notices:
        await HandledEvent.create(
            event_id=notice.event_id, room_id=notice.room_id, handled_at=START
        )


async def codes() -> dict[str, str | None]:
    return dict(await UndecryptedEvent.all().values_list("event_id", "withheld"))


# -- what a withheld message is ------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"code": ""}, "no code"),
        ({"code": "m." + "x" * 70}, "a code longer than its column"),
        ({"algorithm": "m.olm.v1.curve25519-aes-sha2"}, "not about a Megolm key"),
        ({"session_id": None}, "a session's code without its session"),
        ({"room_id": 42}, "a room id that is not a text"),
    ],
)
def test_malformed_withheld_messages_are_ignored(change: dict[str, Any], why: str) -> None:
    content: dict[str, Any] = {
        "algorithm": MEGOLM,
        "code": "m.unverified",
        "room_id": ROOM,
        "session_id": "s1",
        "sender_key": ALICE_KEY,
    }
    for name, value in change.items():
        if value is None:
            del content[name]
        else:
            content[name] = value
    event = ToDeviceEvent.parse_event(
        {"type": "m.room_key.withheld", "sender": ALICE, "content": content}
    )
    assert to_withheld(event) is None, why


def test_no_olm_is_about_the_device_not_a_session() -> None:
    parsed = to_withheld(withheld("m.no_olm", room_id=None, session=None))
    assert parsed is not None
    assert (parsed.code, parsed.room_id, parsed.session_id, parsed.sender_key) == (
        "m.no_olm",
        "",
        "",
        ALICE_KEY,
    )


# -- bookkeeping ---------------------------------------------------------------------------


async def test_withheld_before_its_event_answers_the_event_at_once(db: None) -> None:
    pending, _ = make(FakeClock(START))
    assert await pending.note_to_device([withheld("m.blacklisted")]) == []  # nothing kept yet
    notice = await pending.decrypt_or_keep(ROOM, megolm("$m1"))

    assert isinstance(notice, IncomingWithheld)
    assert (notice.room_id, notice.sender, notice.code, notice.about) == (
        ROOM,
        ALICE,
        "m.blacklisted",
        "$m1",
    )
    assert notice.ts == SENT_AT
    assert await codes() == {"$m1": "m.blacklisted"}  # kept all the same

    # A second message of the same session: the same notice (said once by the dispatcher);
    # once it is handled, nothing more.
    again = await pending.decrypt_or_keep(ROOM, megolm("$m2"))
    assert isinstance(again, IncomingWithheld) and again.event_id == notice.event_id
    await told(notice)
    assert await pending.decrypt_or_keep(ROOM, megolm("$m3")) is None
    assert set(await codes()) == {"$m1", "$m2", "$m3"}


async def test_withheld_after_the_event_was_kept_marks_it_and_tells_once(
    db: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="bot.matrix.pending")
    pending, _ = make(FakeClock(START))
    assert await pending.decrypt_or_keep(ROOM, megolm("$m1")) is None
    assert await codes() == {"$m1": None}

    (notice,) = await pending.note_to_device([withheld()])
    assert (notice.code, notice.about) == ("m.unverified", "$m1")
    assert await codes() == {"$m1": "m.unverified"}
    # The same message again (a replayed sync): nothing changes, the notice is the same.
    assert [n.event_id for n in await pending.note_to_device([withheld()])] == [notice.event_id]
    await told(notice)
    assert await pending.note_to_device([withheld()]) == []
    assert (await pending.retry()).notices == []

    # One INFO line per change of state of the event, none for the repeats.
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert lines == [
        "event $m1 in !dm:test cannot be decrypted yet: keeping it",
        "event $m1 in !dm:test: its key is withheld (m.unverified)",
    ]
    assert all("SECRET" not in r.getMessage() for r in caplog.records)


async def test_a_withheld_message_applies_only_to_its_senders_sessions(db: None) -> None:
    pending, _ = make(FakeClock(START))
    await pending.decrypt_or_keep(ROOM, megolm("$m1"))
    await pending.decrypt_or_keep(OTHER_ROOM, megolm("$m2", room_id=OTHER_ROOM))

    # Someone else cannot withhold Alice's session; another device key is not hers; her
    # own withheld message is about one session of one room; the bot's own are ignored.
    assert await pending.note_to_device([withheld(sender=MALLORY)]) == []
    assert await pending.note_to_device([withheld(sender_key="another-device")]) == []
    assert await pending.note_to_device([withheld(session="s2")]) == []
    assert await pending.note_to_device([withheld(sender=BOT)]) == []
    assert await codes() == {"$m1": None, "$m2": None}

    (notice,) = await pending.note_to_device([withheld(room_id=OTHER_ROOM)])
    assert notice.about == "$m2"
    # An app that leaves its device key out of the withheld message still matches.
    (notice,) = await pending.note_to_device([withheld(sender_key=None)])
    assert notice.about == "$m1"


async def test_no_olm_answers_the_devices_kept_and_coming_events(db: None) -> None:
    pending, _ = make(FakeClock(START))
    await pending.decrypt_or_keep(ROOM, megolm("$m1", session="s1"))
    await pending.decrypt_or_keep(ROOM, megolm("$other", sender_key="another-device"))

    notices = await pending.note_to_device([withheld("m.no_olm", room_id=None, session=None)])
    assert [n.about for n in notices] == ["$m1"]
    later = await pending.decrypt_or_keep(OTHER_ROOM, megolm("$m2", room_id=OTHER_ROOM))
    assert isinstance(later, IncomingWithheld) and later.code == "m.no_olm"

    # Once a key of that device arrives, an Olm session works: a new event is merely late.
    await pending.note_to_device([room_key("s9")])
    assert await pending.decrypt_or_keep(ROOM, megolm("$m3", session="s3")) is None


async def test_a_key_that_arrives_makes_its_withheld_message_stale(db: None) -> None:
    pending, _ = make(FakeClock(START))
    await pending.note_to_device([withheld(session="s1"), withheld(session="s2")])
    await pending.note_to_device([room_key("s1")])
    assert sorted(await WithheldKey.all().values_list("session_id", flat=True)) == ["s2"]
    assert await pending.decrypt_or_keep(ROOM, megolm("$m1", session="s1")) is None


async def test_a_session_held_from_a_later_message_on_is_known_at_once(db: None) -> None:
    pending, client = make(FakeClock(START))
    assert await pending.decrypt_or_keep(ROOM, megolm("$early")) is None
    # The app shares the session late (from its current message on): the kept message will
    # never be readable, and the bot knows it at the next retry.
    client.olm.sessions.add((ROOM, ALICE_KEY, "s1"))
    retried = await pending.retry()
    assert retried.settled == []
    (notice,) = retried.notices
    assert (notice.code, notice.about) == (SESSION_STARTS_LATER, "$early")
    # An earlier message of that session arriving now is known at once too.
    now = await pending.decrypt_or_keep(ROOM, megolm("$earlier"))
    assert isinstance(now, IncomingWithheld) and now.event_id == notice.event_id
    # A withheld code says more: it replaces "later"; "later" never replaces it.
    await pending.note_to_device([withheld("m.unverified")])
    assert set((await codes()).values()) == {"m.unverified"}
    await pending.retry()
    assert set((await codes()).values()) == {"m.unverified"}


async def test_given_up_after_a_day_without_a_second_notice(db: None) -> None:
    clock = FakeClock(START)
    pending, _ = make(clock)
    await pending.decrypt_or_keep(ROOM, megolm("$told", session="s1"))
    await pending.decrypt_or_keep(ROOM, megolm("$late", session="s2"))
    (notice,) = await pending.note_to_device([withheld(session="s1")])
    await told(notice)

    clock.advance(UNDECRYPTED_GIVE_UP + timedelta(minutes=1))
    settled = dict((await pending.retry()).settled)
    assert settled["$told"] is None  # already told at once: nothing more
    assert isinstance(settled["$late"], IncomingUnreadable)  # merely late: asked again


async def test_withheld_messages_are_remembered_a_day_and_within_a_cap(db: None) -> None:
    clock = FakeClock(START)
    pending, _ = make(clock)
    flood = [withheld(session=f"s{n}", sender=MALLORY) for n in range(WITHHELD_PER_SENDER + 5)]
    for event in flood:
        clock.advance(timedelta(seconds=1))
        await pending.note_to_device([event])
    await pending.note_to_device([withheld()])
    assert await WithheldKey.filter(sender=MALLORY).count() == WITHHELD_PER_SENDER
    kept = set(await WithheldKey.filter(sender=MALLORY).values_list("session_id", flat=True))
    assert "s0" not in kept and f"s{WITHHELD_PER_SENDER + 4}" in kept  # the oldest went

    clock.advance(UNDECRYPTED_GIVE_UP + timedelta(minutes=1))
    await pending.retry()
    assert await WithheldKey.all().count() == 0
    assert await pending.decrypt_or_keep(ROOM, megolm("$m1")) is None  # merely late now


# -- what the sender reads -----------------------------------------------------------------


def notice(code: str, session: str = "s1", about: str = "$sealed") -> IncomingWithheld:
    return IncomingWithheld(
        event_id=f"withheld:{code}:{session}",
        room_id=ROOM,
        sender=ALICE,
        ts=SENT_AT,
        code=code,
        about=about,
    )


async def test_the_sender_is_told_why_and_what_to_do_in_clear_once(db_url: str) -> None:
    config = make_config(bridges=[{"user_id": "@talk-bridge:test"}])
    async with BotHarness.open(db_url, config=config) as bot:
        (sent,) = await bot.deliver(notice("m.unverified"))
        assert sent.body == (
            "Je ne peux pas lire le message chiffré que vous avez envoyé le mercredi 25 novembre "
            "2026 à 09:30 : votre application ne m’en a pas donné la clé, car ma session n’est "
            "pas vérifiée. Dans Element : Paramètres › Sécurité et vie privée, désactivez « Ne "
            "jamais envoyer de messages chiffrés aux sessions non vérifiées », puis envoyez à "
            "nouveau votre message."
        )
        # In clear, so that an app refusing the bot's keys can still read it; plain text.
        assert sent.in_clear and sent.content["msgtype"] == "m.notice"
        assert "formatted_body" not in sent.content
        assert await OutboxItem.filter(kind=MESSAGE_IN_CLEAR).count() == 1
        assert await bot.deliver(notice("m.unverified")) == []  # the same session: once

        await bot.say(ROOM, ALICE, "!lang en")
        (sent,) = await bot.deliver(notice("m.blacklisted", session="s2"))
        assert sent.in_clear
        assert sent.body.startswith(
            "I cannot read the encrypted message you sent on Wednesday, November 25, 2026"
        )
        assert "turn off “Never send encrypted messages to unverified sessions”" in sent.body

        wordings = {
            "m.no_olm": "could not open a secure channel",
            "m.unauthorised": "decided that my session may not read it",
            "m.unavailable": "no longer has its key",
            SESSION_STARTS_LATER: "the keys of your later messages only",
            "org.example.unheard_of": "did not give me its key. Please send it again.",
        }
        for n, (code, wording) in enumerate(wordings.items()):
            (sent,) = await bot.deliver(notice(code, session=f"w{n}"))
            assert wording in sent.body, code
            assert "not verified" not in sent.body

        # A bridge account: nobody in particular to tell.
        bridged = IncomingWithheld(
            "withheld:bridge", "!talk:test", "@talk-bridge:test", SENT_AT, "m.unverified", "$b"
        )
        assert await bot.deliver(bridged) == []


def test_a_deferred_notice_is_stored_and_read_back_whole() -> None:
    """Deferred notices (a client over the flood limit) are stored as JSON and read back."""
    value = notice("m.unverified")
    assert event_from_json(event_to_json(value)) == value


async def test_the_day_old_unreadable_notice_goes_in_clear_too(db_url: str) -> None:
    async with BotHarness.open(db_url) as bot:
        (sent,) = await bot.deliver(IncomingUnreadable("$lost", ROOM, ALICE, SENT_AT))
        assert sent.in_clear
        assert "ses clés ne me sont jamais parvenues" in sent.body
