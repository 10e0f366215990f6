"""Flood control's bookkeeping: which events keep one order and one pace (lanes), the
windows of recent arrivals that say when a lane is over its limit, when a flooder was last
told, and a table of locks that holds only the keys in use. Memory only, pruned as senders go
quiet; what is deferred is stored by the dispatcher (`DeferredEvent`), never slept on."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from bot.events import Incoming, IncomingText
from bot.identity import Author

#: The flood limit counts the messages of the last minute.
FLOOD_WINDOW = timedelta(minutes=1)
#: All the nicknames a bridge account relays in one room may together send this many times a
#: client's limit: a Talk conversation may hold several people, but a nickname costs nothing,
#: so one person cycling through nicknames gets at most this much more than anyone.
BRIDGED_ROOM_FLOOD_FACTOR = 2
#: The flooding notice is given once in this long per lane.
FLOOD_TOLD_EVERY = timedelta(minutes=10)
#: How often the flood windows and notices of senders gone quiet are forgotten.
PRUNE_EVERY = timedelta(minutes=1)


@dataclass(slots=True)
class _LockEntry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0  # holding or waiting


class KeyedLocks:
    """One lock per key, kept only while someone holds it or waits for it: the table holds
    the keys busy now, not every nickname ever seen."""

    def __init__(self) -> None:
        self._entries: dict[Hashable, _LockEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _LockEntry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            # Also when cancelled while waiting: nobody else can be counted on to remove it.
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]


class FloodGate:
    """Arrival windows and notices given, by lane or sender key."""

    def __init__(self) -> None:
        self._recent: dict[str, deque[datetime]] = {}
        self._told: dict[str, datetime] = {}
        self._pruned_at: datetime | None = None

    def count(self, event: Incoming, author: Author, now: datetime, limit: int) -> bool:
        """Count a client's message in its windows; True when one is over its limit."""
        if limit <= 0 or not isinstance(event, IncomingText) or author.is_staff:
            return False
        over = self._tick(author.sender.key, now, limit)
        if author.sender.bridged:
            # Both windows count this message, whatever the first said.
            room_over = self._tick(lane_of(event, author), now, limit * BRIDGED_ROOM_FLOOD_FACTOR)
            over = over or room_over
        return over

    def _tick(self, key: str, now: datetime, limit: int) -> bool:
        recent = self._recent.get(key)
        if recent is None:
            recent = self._recent[key] = deque()
        recent.append(now)
        _trim(recent, now)
        return len(recent) > limit

    def may_tell(self, lane: str, now: datetime) -> bool:
        told = self._told.get(lane)
        return told is None or now - told >= FLOOD_TOLD_EVERY

    def told(self, lane: str, now: datetime) -> None:
        self._told[lane] = now

    def prune_if_due(self, now: datetime) -> None:
        if self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY:
            self.prune(now)

    def prune(self, now: datetime) -> None:
        """Forget the windows with nothing in the last minute and the notices older than
        their period: one-off senders (every Talk nickname is one) leave nothing."""
        for key in [k for k, times in self._recent.items() if not _trim(times, now)]:
            del self._recent[key]
        for key in [k for k, at in self._told.items() if now - at >= FLOOD_TOLD_EVERY]:
            del self._told[key]
        self._pruned_at = now

    def sizes(self) -> dict[str, int]:
        return {"flood_windows": len(self._recent), "flood_told": len(self._told)}


def lane_of(event: Incoming, author: Author) -> str:
    """The events that keep one order and one flood pace: a sender's, or all the nicknames a
    bridge account relays in one room (a nickname is free: counting them one by one would
    let one person multiply their share)."""
    if author.sender.bridged:
        return f"bridge-room:{event.room_id}:{event.sender}"
    return author.sender.key


def _trim(times: deque[datetime], now: datetime) -> int:
    """Drop the arrivals older than the flood window; how many are left."""
    while times and now - times[0] > FLOOD_WINDOW:
        times.popleft()
    return len(times)
