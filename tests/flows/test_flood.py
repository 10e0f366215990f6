"""Flood control: a client over the limit has the excess deferred (stored, then handled in
order at the allowed pace), nobody waits on the sync path, and the dispatcher's in-memory
tables do not grow with every sender ever seen.

The limit is the default, 20 messages a minute (one every 3 s once over it); for a bridge
account, all its nicknames in one room together may send twice that.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from bot import dispatch
from bot.events import (
    IncomingMember,
    IncomingReaction,
    IncomingRedaction,
    IncomingText,
    IncomingUnreadable,
    event_from_json,
    event_to_json,
)
from bot.flood import KeyedLocks
from bot.routing import txn_base
from bot.storage.models import DeferredEvent, HandledEvent
from bot.testing.harness import STAFF, STAFF_ROOM, BotHarness, Sent
from bot.testing.harness import test_config as make_config

pytestmark = pytest.mark.postgres

DM = "!dm-alice:test"
ALICE = "@alice:test"
BOB_DM = "!dm-bob:test"
BOB = "@bob:test"
BRIDGE = "@talkbridge:test"
TALK = "!talk:test"
HELP_FR = "Voici ce que je comprends"
HELP_EN = "Here is what I understand"
TOLD = "très rapidement"
PACE = timedelta(seconds=3)  # 60 s / 20 messages


@pytest.fixture
async def bot(db_url):
    config = make_config(bridges=[{"user_id": BRIDGE}])
    async with BotHarness.open(db_url, config=config) as harness:
        yield harness


def text(bot: BotHarness, room: str, sender: str, body: str) -> IncomingText:
    return bot.text_event(room, sender, body)


def talk(bot: BotHarness, nick: str, body: str) -> IncomingText:
    return bot.text_event(TALK, BRIDGE, f"[nctalk] <{nick}> {body}")


async def batch(bot: BotHarness, events: list) -> list[Sent]:
    """One sync batch, and what the bot sent for it."""
    before = len(bot.transport.sent)
    await bot.dispatcher.on_batch(events)
    await bot.deliverer.deliver_pending()
    return bot.transport.sent[before:]


def answers_to(sent: list[Sent], event: IncomingText) -> list[Sent]:
    """The messages answering `event`, at once or once replayed (their transaction ids)."""
    prefixes = (txn_base(event.event_id), txn_base("deferred:" + event.event_id))
    return [s for s in sent if s.txn_id.startswith(prefixes)]


async def replay(bot: BotHarness, after: timedelta) -> list[Sent]:
    bot.clock.advance(after)
    return await bot.sweep()


async def test_a_flooder_s_excess_waits_while_everyone_else_is_served(bot):
    flood = [text(bot, DM, ALICE, f"!aide {n}") for n in range(26)]
    bob = text(bot, BOB_DM, BOB, "!aide")
    sent = await batch(bot, [*flood, bob])
    # Bob is answered in the batch; so are the flooder's first 20, and the 21st is told once.
    assert answers_to(sent, bob)[0].body.startswith(HELP_FR)
    assert all(HELP_FR in answers_to(sent, e)[0].body for e in flood[:20])
    assert [s.body for s in answers_to(sent, flood[20])] == [
        bot.catalogs.get("fr").render(dispatch.Msg(dispatch.FLOODING), bot.services.tz)
    ]
    assert all(answers_to(sent, e) == [] for e in flood[21:])
    assert sum(TOLD in s.body for s in sent) == 1
    # The excess is stored, in order, one every 3 s, and already recorded as handled.
    rows = await DeferredEvent.all().order_by("id")
    assert [row.event["event_id"] for row in rows] == [e.event_id for e in flood[20:]]
    assert [row.due_at for row in rows] == [bot.clock() + PACE * n for n in range(1, 7)]
    assert await HandledEvent.filter(room_id=DM).count() == 26

    # Nothing is due yet; then one every 3 s, in order.
    assert await bot.dispatcher.run_deferred(bot.clock()) == 0
    late = await replay(bot, PACE)
    assert [s.txn_id for s in late] == [s.txn_id for s in answers_to(late, flood[20])]
    assert HELP_FR in late[0].body
    late = await replay(bot, PACE * 5)
    for event in flood[21:]:
        [answer] = answers_to(late, event)
        assert HELP_FR in answer.body
    assert [answers_to(late, e)[0] for e in flood[21:]] == late  # in the order sent
    assert await DeferredEvent.all().count() == 0
    assert await bot.sweep() == []


async def test_order_is_kept_behind_deferred_messages_and_a_redelivery_does_nothing(bot):
    flood = [text(bot, DM, ALICE, "!aide") for _ in range(21)]
    flood.append(text(bot, DM, ALICE, "!lang en"))
    await batch(bot, flood)
    assert await DeferredEvent.all().count() == 2
    # The deferred ones are not due yet: the next message queues behind them (answered now,
    # it would still be in French).
    bot.clock.advance(timedelta(seconds=2))
    later = bot.text_event(DM, ALICE, "!help")
    assert await bot.deliver(later) == []
    assert await bot.deliver(later) == []  # delivered again: nothing, nothing stored twice
    assert await bot.deliver(flood[-1]) == []
    assert await DeferredEvent.all().count() == 3
    late = await replay(bot, timedelta(minutes=1))
    assert HELP_FR in answers_to(late, flood[20])[0].body
    assert answers_to(late, flood[21])[0].body.startswith("Understood")
    assert HELP_EN in answers_to(late, later)[0].body
    # A reaction of the same sender waits its turn too (it is not answered, but handled).
    await batch(bot, [text(bot, DM, ALICE, "!aide") for _ in range(21)])
    assert await DeferredEvent.all().count() >= 1
    reaction = IncomingReaction(bot.next_event_id(), DM, ALICE, "$x", "👍", bot.clock())
    await bot.deliver(reaction)
    last = await DeferredEvent.all().order_by("-id").first()
    assert last is not None and last.event["event_id"] == reaction.event_id
    await replay(bot, timedelta(minutes=1))
    assert await DeferredEvent.all().count() == 0


async def test_one_talk_user_cycling_nicknames_is_limited_for_the_room(bot):
    nicks = ["Ann", "Ben", "Cy", "Dee"]
    flood = [talk(bot, nicks[n % 4], "!aide") for n in range(60)]  # 15 each: under 20
    bob = text(bot, BOB_DM, BOB, "!aide")
    sent = await batch(bot, [*flood, bob])
    assert HELP_FR in answers_to(sent, bob)[0].body
    # The room's share is 40 a minute: the rest waits, whichever nickname wrote it.
    answered = [e for e in flood if any(HELP_FR in s.body for s in answers_to(sent, e))]
    assert answered == flood[:40]
    assert sum(TOLD in s.body for s in sent) == 1
    rows = await DeferredEvent.all().order_by("id")
    assert [r.event["event_id"] for r in rows] == [e.event_id for e in flood[40:]]
    assert {r.lane for r in rows} == {f"bridge-room:{TALK}:{BRIDGE}"}
    late = await replay(bot, timedelta(minutes=2))
    for event in flood[40:]:
        nick = event.body.split("<")[1].split(">")[0]
        [answer] = answers_to(late, event)
        assert answer.body.startswith(f"{nick}: ") and HELP_FR in answer.body


async def test_one_nickname_alone_has_a_client_s_limit(bot):
    flood = [talk(bot, "Ann", f"!aide {n}") for n in range(22)]
    others = [talk(bot, "Ben", "!aide")]
    sent = await batch(bot, flood)
    assert await DeferredEvent.all().count() == 2
    assert all(HELP_FR in answers_to(sent, e)[0].body for e in flood[:20])
    # Another nickname of that room queues behind, in the room's order.
    sent = await batch(bot, others)
    assert answers_to(sent, others[0]) == []
    late = await replay(bot, timedelta(minutes=1))
    assert late[-1].body.startswith("Ben: ")


async def test_staff_are_never_deferred(bot):
    sent = await batch(bot, [text(bot, STAFF_ROOM, STAFF, "!aide") for _ in range(30)])
    assert sum(HELP_FR in s.body for s in sent) == 30
    assert await DeferredEvent.all().count() == 0


async def test_deferred_messages_survive_a_restart(bot):
    flood = [text(bot, DM, ALICE, "!aide") for _ in range(23)]
    await batch(bot, flood)
    await bot.restart()
    # The new process knows the lane waits: a new message still queues behind.
    later = bot.text_event(DM, ALICE, "!aide")
    assert await bot.deliver(later) == []
    late = await replay(bot, timedelta(minutes=1))
    assert [answers_to(late, e)[0] for e in [*flood[20:], later]] == late
    assert await bot.dispatcher.run_deferred(bot.clock()) == 0


async def test_a_failing_replay_apologises_once_and_the_queue_goes_on(bot):
    from bot.routing import CommandSpec, Context

    async def boom(ctx: Context) -> None:
        raise RuntimeError("handler bug")

    bot.dispatcher.router.commands.insert(0, CommandSpec(("boom",), "x", handler=boom))
    flood = [text(bot, DM, ALICE, "!aide") for _ in range(20)]
    flood += [text(bot, DM, ALICE, "!boom"), text(bot, DM, ALICE, "!aide")]
    await batch(bot, flood)
    late = await replay(bot, timedelta(minutes=1))
    assert "référence" in answers_to(late, flood[20])[0].body
    assert HELP_FR in answers_to(late, flood[21])[0].body
    assert await DeferredEvent.all().count() == 0


async def test_the_replay_task_handles_them_without_being_asked(bot, monkeypatch):
    monkeypatch.setattr(dispatch, "DEFERRED_IDLE_SECONDS", 0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(bot.dispatcher.run_deferred_forever(stop))
    try:
        await batch(bot, [text(bot, DM, ALICE, "!aide") for _ in range(22)])
        bot.clock.advance(timedelta(minutes=1))
        for _ in range(200):
            if not await DeferredEvent.exists():
                break
            await asyncio.sleep(0.05)
        assert not await DeferredEvent.exists()
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    await bot.deliverer.deliver_pending()
    assert sum(HELP_FR in s.body for s in bot.in_room(DM)) == 22


# -- memory -------------------------------------------------------------------------------------


async def test_one_off_senders_leave_nothing_behind(bot):
    # 300 nicknames (a bridge relays anything) in 100 Talk rooms and 50 Matrix accounts, one
    # message each.
    await batch(
        bot,
        [
            bot.text_event(f"!talk{n % 100}:test", BRIDGE, f"[nctalk] <nick{n}> !aide")
            for n in range(300)
        ],
    )
    await batch(bot, [text(bot, f"!dm{n}:test", f"@u{n}:test", "!aide") for n in range(50)])
    sizes = bot.dispatcher.memory()
    assert sizes["locks"] == 0 and sizes["lane_locks"] == 0  # none held, none waited for
    assert sizes["flood_windows"] == 300 + 100 + 50  # nicknames, bridged rooms, accounts
    # A minute and more later, the next batch forgets them.
    bot.clock.advance(timedelta(seconds=61))
    await batch(bot, [text(bot, DM, ALICE, "!aide")])
    sizes = bot.dispatcher.memory()
    assert sizes["flood_windows"] == 1  # Alice's, just now
    assert sizes["flood_told"] == 0 and sizes["locks"] == 0


async def test_flood_notices_are_forgotten_after_their_period(bot):
    await batch(bot, [text(bot, DM, ALICE, "!aide") for _ in range(21)])
    assert bot.dispatcher.memory()["flood_told"] == 1
    bot.clock.advance(timedelta(minutes=10))
    await batch(bot, [text(bot, BOB_DM, BOB, "!aide")])
    assert bot.dispatcher.memory()["flood_told"] == 0


async def test_keyed_locks_are_kept_while_held_or_waited_for():
    locks = KeyedLocks()
    inside = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with locks.hold("k"):
            inside.set()
            await release.wait()

    async def waiter() -> None:
        async with locks.hold("k"):
            pass

    first = asyncio.create_task(holder())
    await inside.wait()
    second = asyncio.create_task(waiter())
    cancelled = asyncio.create_task(waiter())
    await asyncio.sleep(0)
    assert len(locks) == 1
    cancelled.cancel()  # a waiter given up on does not keep the entry either
    await asyncio.gather(cancelled, return_exceptions=True)
    release.set()
    await asyncio.gather(first, second)
    assert len(locks) == 0


# -- the stored form ----------------------------------------------------------------------------


def test_every_kind_of_event_is_stored_and_read_back_unchanged():
    ts = datetime(2026, 11, 26, 9, 0, 1, 250000, tzinfo=UTC)
    events = [
        IncomingText("$t", "!r:test", ALICE, "hello", ts, "m.text", "<b>hi</b>", "$q", True),
        IncomingReaction("$r", "!r:test", ALICE, "$t", "✅", ts),
        IncomingRedaction("$d", "!r:test", ALICE, "$r", ts),
        IncomingMember("$m", "!r:test", BOB, "leave", ALICE, ts),
        IncomingUnreadable("$u", "!r:test", ALICE, ts),
    ]
    for event in events:
        assert event_from_json(event_to_json(event)) == event
    # U+0000 is dropped (PostgreSQL's JSON cannot hold it; nobody types it).
    nul = IncomingText("$n", "!r:test", ALICE, "a\x00b", ts, "m.text")
    assert event_from_json(event_to_json(nul)).body == "ab"
