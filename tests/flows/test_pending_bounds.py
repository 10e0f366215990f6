"""Undecryptable events are kept within caps (per sender, per room, in all), oldest dropped.

`PendingEvents` against the real database with a fake nio client that has no Olm machine:
nothing decrypts, so every event is kept; the caps are small so that a few events reach them.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from nio import AsyncClient, Event, MegolmEvent

from bot.events import IncomingUnreadable
from bot.matrix import pending as pending_module
from bot.matrix.pending import UNDECRYPTED_GIVE_UP, PendingEvents
from bot.matrix.runtime import ShellStats
from bot.storage.models import UndecryptedEvent
from bot.testing.harness import FakeClock

START = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
ROOM_A, ROOM_B = "!a:test", "!b:test"
MALLORY, ALICE = "@mallory:test", "@alice:test"


class NoOlm:
    """The parts of nio's client `PendingEvents` touches: without Olm nothing decrypts."""

    olm = None
    outgoing_key_requests: dict[str, Any] = {}  # read only: nothing is requested without Olm


def make(clock: FakeClock, **caps: int) -> PendingEvents:
    client = cast(AsyncClient, NoOlm())
    return PendingEvents(
        lambda: client, bot_user_id="@bot:test", clock=clock, stats=ShellStats(), **caps
    )


def megolm(event_id: str, sender: str, room_id: str) -> MegolmEvent:
    event = Event.parse_event(
        {
            "type": "m.room.encrypted",
            "event_id": event_id,
            "sender": sender,
            "origin_server_ts": 1_700_000_000_000,
            "room_id": room_id,
            "content": {
                "algorithm": "m.megolm.v1.aes-sha2",
                "ciphertext": "SECRET-CIPHERTEXT",
                "sender_key": "sender-key",
                "session_id": f"session-{sender}",
                "device_id": "DEVICE",
            },
        }
    )
    assert isinstance(event, MegolmEvent)
    return event


async def send(
    pending: PendingEvents, clock: FakeClock, sender: str, room_id: str, count: int, tag: str
) -> list[str]:
    """`count` events one second apart; their ids, oldest first."""
    ids = [f"${tag}{n}" for n in range(count)]
    for event_id in ids:
        clock.advance(timedelta(seconds=1))
        assert await pending.decrypt_or_keep(room_id, megolm(event_id, sender, room_id)) is None
    return ids


async def kept(**where: str) -> set[str]:
    return set(await UndecryptedEvent.filter(**where).values_list("event_id", flat=True))


async def test_per_sender_cap_drops_that_senders_oldest_only(db: None) -> None:
    clock = FakeClock(START)
    pending = make(clock, max_per_sender=5)
    alice = await send(pending, clock, ALICE, ROOM_A, 3, "alice")
    flood = await send(pending, clock, MALLORY, ROOM_A, 12, "m-a")
    flood += await send(pending, clock, MALLORY, ROOM_B, 3, "m-b")

    assert await kept(sender=MALLORY) == set(flood[-5:])  # across rooms: a cap per sender
    assert await kept(sender=ALICE) == set(alice)


async def test_per_room_cap_holds_against_many_senders(db: None) -> None:
    clock = FakeClock(START)
    pending = make(clock, max_per_sender=5, max_per_room=8)
    other = await send(pending, clock, ALICE, ROOM_B, 2, "b")
    ids: list[str] = []
    for n in range(4):  # four accounts, each under its own cap
        ids += await send(pending, clock, f"@sock{n}:test", ROOM_A, 4, f"s{n}-")

    assert await kept(room_id=ROOM_A) == set(ids[-8:])
    assert await kept(room_id=ROOM_B) == set(other)


async def test_total_cap_drops_the_oldest_of_all(db: None) -> None:
    clock = FakeClock(START)
    pending = make(clock, max_per_sender=5, max_per_room=5, max_total=10)
    ids: list[str] = []
    for n in range(6):  # six rooms, each under the per-room cap
        ids += await send(pending, clock, f"@sock{n}:test", f"!r{n}:test", 3, f"r{n}-")

    assert await UndecryptedEvent.all().count() == 10
    assert await kept() == set(ids[-10:])


async def test_same_event_again_is_kept_once(db: None) -> None:
    clock = FakeClock(START)
    pending = make(clock, max_per_sender=2)
    await send(pending, clock, MALLORY, ROOM_A, 2, "m")
    # The same sync read again (a failure after the rows were written): nothing moves.
    await send(pending, clock, MALLORY, ROOM_A, 2, "m")
    assert await kept() == {"$m0", "$m1"}


async def test_drops_logged_once_a_day_per_sender_with_the_room_only(
    db: None, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(START)
    pending = make(clock, max_per_sender=3)
    caplog.set_level(logging.INFO, logger="bot.matrix.pending")

    await send(pending, clock, MALLORY, ROOM_A, 10, "m")
    await send(pending, clock, ALICE, ROOM_A, 4, "a")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one per sender, not one per dropped event
    for record in warnings:
        text = record.getMessage()
        assert ROOM_A in text
        assert MALLORY not in text and ALICE not in text
        assert "$" not in text and "SECRET" not in text

    caplog.clear()
    clock.advance(timedelta(hours=25))
    await send(pending, clock, MALLORY, ROOM_A, 2, "later")
    assert [r.levelno for r in caplog.records].count(logging.WARNING) == 1


async def test_retry_reads_every_row_in_pages_and_still_gives_up_after_a_day(
    db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pending_module, "RETRY_PAGE", 3)
    clock = FakeClock(START)
    pending = make(clock, max_per_sender=4)
    old = await send(pending, clock, ALICE, ROOM_A, 4, "old")  # at +1 s … +4 s
    recent = await send(pending, clock, MALLORY, ROOM_B, 3, "new")
    clock.now = START + UNDECRYPTED_GIVE_UP + timedelta(seconds=2.5)

    # The oldest two are over a day old: given up (told, once, as unreadable), the rest tried.
    settled = await pending.retry()
    assert [event_id for event_id, _ in settled] == old[:2]
    assert all(isinstance(incoming, IncomingUnreadable) for _, incoming in settled)
    attempts = dict(await UndecryptedEvent.all().values_list("event_id", "attempts"))
    assert attempts == {**dict.fromkeys(old[:2], 0), **dict.fromkeys(old[2:] + recent, 1)}
