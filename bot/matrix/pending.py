"""Encrypted events the bot cannot decrypt yet, kept until their room key comes.

Undecryptable events are kept in `UndecryptedEvent`, their room key is requested (nio asks
the bot's own other devices only: in practice the key comes when the sender's client shares
it), and they are retried when to-device messages (keys) arrive, and every 10 minutes; a
decrypted one is delivered in the next batch; after 24 h the bot gives up and hands an
`IncomingUnreadable` to the handlers, which ask the sender to send it again.

Anyone who can write in a room of the bot can send events it cannot decrypt, so what is kept is
bounded: at most `UNDECRYPTED_PER_SENDER` per sender, `UNDECRYPTED_PER_ROOM` per room and
`UNDECRYPTED_TOTAL` in all. Beyond a cap the oldest of that sender (room, or all) are dropped
without a word to anyone: they are the likeliest to be given up anyway, and telling the sender
would turn a flood into as many replies. A drop is logged at WARNING once a day per sender
(per room, for the total) with nothing but the room id.

A row settled here (decrypted or given up) is deleted by the sync loop together with the
sync position of the batch that delivered it, so a crash in between retries it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta

from nio import AsyncClient, Event, LocalProtocolError, MegolmEvent
from tortoise.expressions import F

from bot.events import Incoming
from bot.matrix.inbound import to_incoming, to_unreadable
from bot.matrix.runtime import ShellStats
from bot.matrix.transport import NETWORK_ERRORS
from bot.storage.models import UndecryptedEvent

log = logging.getLogger(__name__)

UNDECRYPTED_GIVE_UP = timedelta(hours=24)
UNDECRYPTED_RETRY_EVERY = 600.0  # seconds, besides every sync that brings to-device events
# Caps on what is kept. A client whose keys are late has a few messages waiting, rarely more
# than ten; 50 leaves a long unreadable conversation whole. A room holds its client, staff and
# now and then a colleague: 200 is four senders at their cap. In all, 2,000: a row is 1-2 KiB
# for a usual message and at most 64 KiB (the largest event a homeserver accepts), so the table
# stays under 128 MiB even when every row is as large as possible, and a retry pass (which
# tries every row) stays short.
UNDECRYPTED_PER_SENDER = 50
UNDECRYPTED_PER_ROOM = 200
UNDECRYPTED_TOTAL = 2_000
RETRY_PAGE = 100  # rows read at once by a retry pass: its memory, whatever the rows weigh
# Drops are logged once per sender (or room) and day; the keys remembered for that are
# forgotten past this many, so a flood from many senders cannot grow them without end.
WARNED_MAX = 1_000

# An event id whose row goes when its batch is committed, with what to deliver for it.
Settled = tuple[str, Incoming | None]


class PendingEvents:
    """Decrypts Megolm events, keeping those it cannot (and asking for their keys)."""

    def __init__(
        self,
        nio: Callable[[], AsyncClient],
        *,
        bot_user_id: str,
        clock: Callable[[], datetime],
        stats: ShellStats,
        max_per_sender: int = UNDECRYPTED_PER_SENDER,
        max_per_room: int = UNDECRYPTED_PER_ROOM,
        max_total: int = UNDECRYPTED_TOTAL,
    ) -> None:
        self._nio = nio
        self._bot_user_id = bot_user_id
        self._clock = clock
        self._stats = stats
        self._max_per_sender = max_per_sender
        self._max_per_room = max_per_room
        self._max_total = max_total
        self._warned: dict[tuple[str, str], datetime] = {}  # (cap, key) → when logged
        self._due = True
        self._checked = 0.0

    def mark_due(self) -> None:
        """Retry the kept events at the next sync (new keys were imported)."""
        self._due = True

    def due(self, to_device: bool) -> bool:
        """Whether the kept events are worth a retry in a sync (`to_device`: it brought
        to-device messages, which may carry keys)."""
        return self._due or to_device or self._stale()

    async def decrypt_or_keep(self, room_id: str, event: MegolmEvent) -> Event | None:
        """The decrypted event, or None once it is kept for later."""
        decrypted = self._decrypt(room_id, event)
        if decrypted is None:
            await self._keep(room_id, event)
        return decrypted

    def _decrypt(self, room_id: str, event: MegolmEvent) -> Event | None:
        client = self._nio()
        if client.olm is None:
            return None
        event.room_id = room_id
        try:
            decrypted = client.decrypt_event(event)
        except Exception as error:  # EncryptionError, or anything vodozemac raises
            log.debug("cannot decrypt %s yet: %s", event.event_id, type(error).__name__)
            return None
        return decrypted if isinstance(decrypted, Event) else None

    async def _keep(self, room_id: str, event: MegolmEvent) -> None:
        _row, created = await UndecryptedEvent.get_or_create(
            event_id=event.event_id,
            defaults={
                "room_id": room_id,
                "sender": event.sender,
                "session_id": event.session_id or "",
                "source": event.source,
                "received_at": self._clock(),
            },
        )
        if created:
            self._stats.undecryptable += 1
            log.info("event %s in %s cannot be decrypted yet: keeping it", event.event_id, room_id)
        # Also when the row was there already: a failure between its insert and the trim
        # (the sync is then read again) must not leave a cap exceeded.
        await self._bound(room_id, event.sender)
        await self._request_key(event)

    async def _bound(self, room_id: str, sender: str) -> None:
        """Drop the oldest kept events beyond each cap (the newest, just kept, stays)."""
        caps: tuple[tuple[str, dict[str, str], str, int], ...] = (
            # (what is capped, its rows, the key its warning is given once a day for, the cap)
            ("one sender", {"sender": sender}, sender, self._max_per_sender),
            ("this room", {"room_id": room_id}, room_id, self._max_per_room),
            ("all rooms", {}, room_id, self._max_total),
        )
        for scope, where, key, limit in caps:
            if await UndecryptedEvent.filter(**where).count() <= limit:
                continue
            kept = await (
                UndecryptedEvent.filter(**where)
                .order_by("-received_at", "-event_id")
                .values_list("event_id", flat=True)
            )
            await UndecryptedEvent.filter(event_id__in=list(kept[limit:])).delete()
            self._warn_once(scope, key, room_id, limit)

    def _warn_once(self, scope: str, key: str, room_id: str, limit: int) -> None:
        now = self._clock()
        last = self._warned.get((scope, key))
        if last is not None and now - last < UNDECRYPTED_GIVE_UP:
            return
        if len(self._warned) >= WARNED_MAX:
            self._warned.clear()
        self._warned[(scope, key)] = now
        # No sender, no event id: the room says where to look, and that is enough to act.
        log.warning(
            "more than %d undecryptable events kept for %s (latest in %s): the oldest "
            "dropped; the next drops for the same are not logged for a day",
            limit,
            scope,
            room_id,
        )

    async def _request_key(self, event: MegolmEvent) -> None:
        client = self._nio()
        if client.olm is None or event.session_id in client.outgoing_key_requests:
            return
        try:
            await client.request_room_key(event)
        except (LocalProtocolError, *NETWORK_ERRORS) as error:
            log.debug("room key request not sent: %s", type(error).__name__)

    def _stale(self) -> bool:
        return time.monotonic() - self._checked > UNDECRYPTED_RETRY_EVERY

    async def retry(self) -> list[Settled]:
        """Try the kept events again, oldest first: those decrypted now, and those given up."""
        self._due = False
        self._checked = time.monotonic()
        now = self._clock()
        settled: list[Settled] = []
        failed: list[str] = []
        async for row in self._rows():
            event = Event.parse_event(row.source)
            if not isinstance(event, MegolmEvent):
                await row.delete()
                log.warning(
                    "dropped undecryptable event %s in %s: not Megolm", row.event_id, row.room_id
                )
                continue
            if now - row.received_at > UNDECRYPTED_GIVE_UP:
                # Given up: the sender is told (once: the row goes when the batch is handled).
                log.warning(
                    "gave up decrypting event %s in %s after %d attempt(s)",
                    row.event_id,
                    row.room_id,
                    row.attempts,
                )
                mine = event.sender == self._bot_user_id
                settled.append((row.event_id, None if mine else to_unreadable(row.room_id, event)))
                continue
            decrypted = self._decrypt(row.room_id, event)
            if decrypted is None:
                failed.append(row.event_id)
                await self._request_key(event)
                continue
            self._stats.late_decrypted += 1
            mine = decrypted.sender == self._bot_user_id
            settled.append((row.event_id, None if mine else to_incoming(row.room_id, decrypted)))
            log.info("event %s in %s decrypted after its keys arrived", row.event_id, row.room_id)
        if failed:  # one statement, not a write per row: a pass may meet every kept row
            await UndecryptedEvent.filter(event_id__in=failed).update(attempts=F("attempts") + 1)
        return settled

    async def _rows(self) -> AsyncIterator[UndecryptedEvent]:
        """The kept rows, oldest first, read `RETRY_PAGE` at a time."""
        order = (
            await UndecryptedEvent.all()
            .order_by("received_at", "event_id")
            .values_list("event_id", flat=True)
        )
        for start in range(0, len(order), RETRY_PAGE):
            page = list(order[start : start + RETRY_PAGE])
            rows = {row.event_id: row for row in await UndecryptedEvent.filter(event_id__in=page)}
            for event_id in page:
                if event_id in rows:  # gone meanwhile: nothing to retry
                    yield rows[event_id]
