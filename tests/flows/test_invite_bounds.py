"""Joins on invites of non-staff users are bounded per inviter and per day, across restarts.

`Invites` against the real database with a fake nio client that records joins and declines;
the sync answers carry only what `Invites.handle` reads (the invites' member events).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import pytest
from nio import AsyncClient, InviteMemberEvent, JoinResponse, RoomLeaveResponse, SyncResponse

from bot.matrix.invites import INVITE_JOINS, Invites
from bot.matrix.runtime import ShellStats
from bot.matrix.transport import RoomFacts
from bot.storage.models import BotState
from bot.testing.harness import FakeClock

pytestmark = pytest.mark.usefixtures("db")

START = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
BOT, STAFF = "@bot:allowed.test", "@staff:allowed.test"
STAFF_ROOM = "!staff:allowed.test"


@dataclass
class FakeNio:
    """Joins and declines (leaves) succeed at once and are recorded."""

    rooms: dict[str, Any] = field(default_factory=dict)
    invited_rooms: dict[str, Any] = field(default_factory=dict)
    joined: list[str] = field(default_factory=list)
    declined: list[str] = field(default_factory=list)

    async def join(self, room_id: str) -> JoinResponse:
        self.joined.append(room_id)
        self.rooms[room_id] = object()
        return JoinResponse(room_id)

    async def room_leave(self, room_id: str) -> RoomLeaveResponse:
        self.declined.append(room_id)
        return RoomLeaveResponse()


def make(nio: FakeNio, clock: FakeClock, **caps: int) -> Invites:
    client = cast(AsyncClient, nio)
    return Invites(
        lambda: client,
        bot_user_id=BOT,
        allowed_servers=("allowed.test",),
        is_staff_inviter=lambda user_id: user_id == STAFF,
        staff_room_id=lambda: STAFF_ROOM,
        facts=RoomFacts(),
        stats=ShellStats(),
        clock=clock,
        **caps,
    )


def invites(*pairs: tuple[str, str]) -> SyncResponse:
    """A sync answer with an invite of the bot to each (room, inviter)."""
    rooms: dict[str, Any] = {}
    for room_id, inviter in pairs:
        event = InviteMemberEvent.from_dict(
            {
                "type": "m.room.member",
                "sender": inviter,
                "state_key": BOT,
                "content": {"membership": "invite", "is_direct": True},
            }
        )
        assert isinstance(event, InviteMemberEvent)
        rooms[room_id] = SimpleNamespace(invite_state=[event])
    return cast(SyncResponse, SimpleNamespace(rooms=SimpleNamespace(invite=rooms)))


_ROOMS = itertools.count(1)


def rooms_of(inviter: str, count: int) -> list[tuple[str, str]]:
    """`count` new rooms `inviter` invites the bot to (their ids do not name the inviter)."""
    return [(f"!room{next(_ROOMS)}:allowed.test", inviter) for _ in range(count)]


async def test_per_inviter_cap_declines_beyond_it_others_unaffected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bot.matrix.invites")
    nio, clock = FakeNio(), FakeClock(START)
    shell = make(nio, clock, max_joins_per_inviter=2, max_joins_per_day=10)
    mallory = rooms_of("@mallory:allowed.test", 4)
    alice = rooms_of("@alice:allowed.test", 1)

    await shell.handle(invites(*mallory, *alice))

    assert nio.joined == [mallory[0][0], mallory[1][0], alice[0][0]]
    assert nio.declined == [mallory[2][0], mallory[3][0]]
    declines = [r.getMessage() for r in caplog.records if "declined" in r.getMessage()]
    assert len(declines) == 2
    assert all("allowed.test" in line and "mallory" not in line for line in declines)


async def test_daily_cap_across_inviters_is_logged_at_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nio, clock = FakeNio(), FakeClock(START)
    shell = make(nio, clock, max_joins_per_inviter=2, max_joins_per_day=3)
    socks = [rooms_of(f"@sock{n}:allowed.test", 1) for n in range(5)]

    await shell.handle(invites(*[pair for rooms in socks for pair in rooms]))

    assert len(nio.joined) == 3
    assert len(nio.declined) == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all("sock" not in r.getMessage() for r in warnings)


async def test_staff_and_the_staff_room_are_never_limited() -> None:
    nio, clock = FakeNio(), FakeClock(START)
    shell = make(nio, clock, max_joins_per_inviter=1, max_joins_per_day=1)
    await shell.handle(invites(*rooms_of("@alice:allowed.test", 1)))  # the day's one join

    await shell.handle(invites(*rooms_of(STAFF, 4), (STAFF_ROOM, "@someone:allowed.test")))

    assert len(nio.joined) == 6
    assert nio.declined == []


async def test_foreign_servers_still_declined_and_not_counted() -> None:
    nio, clock = FakeNio(), FakeClock(START)
    shell = make(nio, clock, max_joins_per_inviter=1, max_joins_per_day=1)
    foreign = rooms_of("@eve:elsewhere.test", 3)

    alice = rooms_of("@alice:allowed.test", 1)
    await shell.handle(invites(*foreign))
    await shell.handle(invites(*alice))

    assert nio.declined == [room for room, _ in foreign]
    assert nio.joined == [alice[0][0]]


async def test_counts_survive_a_restart_and_expire_after_a_day() -> None:
    clock = FakeClock(START)
    mallory = "@mallory:allowed.test"
    first = FakeNio()
    await make(first, clock, max_joins_per_inviter=2).handle(invites(*rooms_of(mallory, 2)))
    assert len(first.joined) == 2
    stored = (await BotState.get(key=INVITE_JOINS)).value
    assert "mallory" not in stored  # counted by a hash: no Matrix id in the row

    # A new process (restart): the joins of the last day still count.
    clock.advance(timedelta(hours=23))
    second = FakeNio()
    restarted = make(second, clock, max_joins_per_inviter=2)
    refused = rooms_of(mallory, 1)
    await restarted.handle(invites(*refused))
    assert second.declined == [refused[0][0]]

    # A day after those joins, the allowance is back.
    clock.advance(timedelta(hours=1, seconds=1))
    welcome = rooms_of(mallory, 1)
    await restarted.handle(invites(*welcome))
    assert second.joined == [welcome[0][0]]
