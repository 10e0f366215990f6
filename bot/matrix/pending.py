"""Encrypted events the bot cannot decrypt yet, kept until their room key comes.

Undecryptable events are kept in `UndecryptedEvent`, their room key is requested (nio asks
the bot's own other devices only: in practice the key comes when the sender's client shares
it), and they are retried when to-device messages (keys) arrive, and every 10 minutes; a
decrypted one is delivered in the next batch; after 24 h the bot gives up and hands an
`IncomingUnreadable` to the handlers, which ask the sender to send it again.

**Keys that will not come.** The sender's app may say so (`m.room_key.withheld`, e.g. an
Element that shares keys with verified sessions only), before the event or after it was
kept; the bot may also hold the event's Megolm session from a later message on only (the
app shared it late, and never shares the earlier part). Either way the kept row gets a
`withheld` code and the batch carries an `IncomingWithheld`, so the sender is told at once
what to do, once per (room, sender, session): the notice's id is derived from those three and
the dispatcher records it as handled, so a replayed sync, a retry pass or more messages of
the same session say nothing more. The row stays: should the key come after all, the event is
handled as usual, and a row given up after a day is then dropped without a second notice.
Withheld messages that no kept event matches yet are remembered in `WithheldKey` for a day
(bounded like the rows: `WITHHELD_PER_SENDER`, `WITHHELD_TOTAL`), and forgotten when the key
of that session arrives. Only the user the homeserver delivered the withheld message from can
withhold their own sessions, and a Curve25519 key, when both sides give one, must match.

**Logs.** One INFO line per kept event and change of its state (kept, withheld, decrypted)
and a WARNING when it is given up; nio's own warnings at every attempt are dropped
(`bot.process.NIO_DECRYPTION_NOISE`).

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
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from nio import (
    AsyncClient,
    Event,
    ForwardedRoomKeyEvent,
    LocalProtocolError,
    MegolmEvent,
    RoomKeyEvent,
)
from tortoise.expressions import F, Q
from tortoise.models import Model

from bot.events import SESSION_STARTS_LATER, Incoming, IncomingWithheld
from bot.matrix.inbound import (
    KeyWithheld,
    to_incoming,
    to_unreadable,
    to_withheld,
    to_withheld_notice,
)
from bot.matrix.runtime import ShellStats
from bot.matrix.transport import NETWORK_ERRORS
from bot.storage.models import HandledEvent, UndecryptedEvent, WithheldKey

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
# Withheld messages remembered before their event (anyone can send the bot to-device
# messages): an app withholds one per session and device, a handful per conversation.
WITHHELD_PER_SENDER = 50
WITHHELD_TOTAL = 2_000

# An event id whose row goes when its batch is committed, with what to deliver for it.
Settled = tuple[str, Incoming | None]


@dataclass(slots=True)
class Retried:
    """A retry pass: the rows settled (decrypted or given up), and the notices of rows whose
    key will not come that their senders have not been given yet."""

    settled: list[Settled] = field(default_factory=list)
    notices: list[IncomingWithheld] = field(default_factory=list)


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

    async def decrypt_or_keep(
        self, room_id: str, event: MegolmEvent
    ) -> Event | IncomingWithheld | None:
        """The decrypted event; else, once it is kept for later: the notice for its sender
        when its key is known not to come (and they were not told yet), or None."""
        decrypted = self._decrypt(room_id, event)
        if decrypted is not None:
            return decrypted
        row = await self._keep(room_id, event)
        notices = await self._unhandled([(row, event)])
        return notices[0] if notices else None

    async def note_to_device(self, events: Iterable[Any]) -> list[IncomingWithheld]:
        """Read a sync's to-device events: withheld keys are remembered and mark the kept
        events they are about (whose notices are returned); a room key that arrives makes a
        withheld message about its session stale."""
        touched: list[tuple[UndecryptedEvent, MegolmEvent]] = []
        for event in events:
            if isinstance(event, RoomKeyEvent) and not isinstance(event, ForwardedRoomKeyEvent):
                await self._forget_withheld(event)
                continue
            withheld = to_withheld(event)
            if withheld is None or withheld.sender == self._bot_user_id:
                continue
            await self._remember(withheld)
            matched = await self._kept_for(withheld)
            if not matched:
                log.debug("a key was withheld (%s) before its event arrived", withheld.code)
            for row, megolm in matched:
                await self._mark(row, withheld.code)
                touched.append((row, megolm))
        return await self._unhandled(touched)

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

    async def _keep(self, room_id: str, event: MegolmEvent) -> UndecryptedEvent:
        code = await self._withheld_code(room_id, event)
        row, created = await UndecryptedEvent.get_or_create(
            event_id=event.event_id,
            defaults={
                "room_id": room_id,
                "sender": event.sender,
                "session_id": event.session_id or "",
                "source": event.source,
                "received_at": self._clock(),
                "withheld": code,
            },
        )
        if created:
            self._stats.undecryptable += 1
            if code is None:
                log.info(
                    "event %s in %s cannot be decrypted yet: keeping it", event.event_id, room_id
                )
            else:
                self._stats.withheld += 1
                log.info(
                    "event %s in %s cannot be decrypted, its key is withheld (%s): keeping it",
                    event.event_id,
                    room_id,
                    code,
                )
        elif code is not None:
            await self._mark(row, code)
        # Also when the row was there already: a failure between its insert and the trim
        # (the sync is then read again) must not leave a cap exceeded.
        await self._bound(room_id, event.sender)
        await self._request_key(event)
        return row

    # -- keys that will not come -----------------------------------------------------------

    async def _withheld_code(self, room_id: str, event: MegolmEvent) -> str | None:
        """Why the key of `event` will not come, if that is known already: a withheld message
        about its session (or its device, `m.no_olm`), or a session held from later on."""
        remembered = await WithheldKey.filter(
            Q(room_id=room_id, session_id=event.session_id or "") | Q(room_id="", session_id=""),
            sender=event.sender,
        ).order_by("-session_id", "-received_at")  # the session's own first, the newest
        for withheld in remembered:
            if _same_device(withheld.sender_key, event.sender_key):
                return withheld.code
        return SESSION_STARTS_LATER if self._holds_later_part(room_id, event) else None

    def _holds_later_part(self, room_id: str, event: MegolmEvent) -> bool:
        """Whether the bot holds the event's Megolm session yet cannot decrypt it: the
        session was shared with the bot from a later message on."""
        client = self._nio()
        if client.olm is None or not event.sender_key or not event.session_id:
            return False
        store = client.olm.inbound_group_store
        return store.get(room_id, event.sender_key, event.session_id) is not None

    async def _mark(self, row: UndecryptedEvent, code: str) -> None:
        """A kept event's key will not come: one log line when that is news."""
        if row.withheld == code or (row.withheld and code == SESSION_STARTS_LATER):
            return  # a withheld code says more than "the session starts later"
        if row.withheld is None:
            self._stats.withheld += 1
        row.withheld = code
        await row.save(update_fields=["withheld"])
        log.info("event %s in %s: its key is withheld (%s)", row.event_id, row.room_id, code)

    async def _remember(self, withheld: KeyWithheld) -> None:
        await WithheldKey.update_or_create(
            sender=withheld.sender,
            sender_key=withheld.sender_key,
            room_id=withheld.room_id,
            session_id=withheld.session_id,
            defaults={"code": withheld.code, "received_at": self._clock()},
        )
        for where, limit in (
            ({"sender": withheld.sender}, WITHHELD_PER_SENDER),
            ({}, WITHHELD_TOTAL),
        ):
            await _keep_newest(WithheldKey, where, limit, ("-received_at", "-id"))

    async def _kept_for(self, withheld: KeyWithheld) -> list[tuple[UndecryptedEvent, MegolmEvent]]:
        """The kept events (with their parsed source) a withheld message is about."""
        rows = UndecryptedEvent.filter(sender=withheld.sender)
        if withheld.session_id:
            rows = rows.filter(room_id=withheld.room_id, session_id=withheld.session_id)
        matched = []
        for row in await rows:
            event = Event.parse_event(row.source)
            if isinstance(event, MegolmEvent) and _same_device(
                withheld.sender_key, event.sender_key
            ):
                matched.append((row, event))
        return matched

    async def _forget_withheld(self, key: RoomKeyEvent) -> None:
        """The key of a session came after all: what was withheld about it (or about its
        device, `m.no_olm`: an Olm session now works) no longer applies."""
        await WithheldKey.filter(
            Q(room_id=key.room_id, session_id=key.session_id)
            | Q(room_id="", session_id="", sender_key__in=[key.sender_key, ""]),
            sender=key.sender,
        ).delete()

    async def _unhandled(
        self, rows: Sequence[tuple[UndecryptedEvent, MegolmEvent]]
    ) -> list[IncomingWithheld]:
        """The notices of these rows whose key will not come, once each, less those already
        handled (told before, or deferred): a retry pass meets them again and again."""
        notices: dict[str, IncomingWithheld] = {}
        for row, event in rows:
            if row.withheld is not None and row.sender != self._bot_user_id:
                notice = to_withheld_notice(row.room_id, event, row.withheld)
                notices.setdefault(notice.event_id, notice)
        if not notices:
            return []
        told = set(
            await HandledEvent.filter(event_id__in=list(notices)).values_list(
                "event_id", flat=True
            )
        )
        return [notice for event_id, notice in notices.items() if event_id not in told]

    async def _bound(self, room_id: str, sender: str) -> None:
        """Drop the oldest kept events beyond each cap (the newest, just kept, stays)."""
        caps: tuple[tuple[str, dict[str, str], str, int], ...] = (
            # (what is capped, its rows, the key its warning is given once a day for, the cap)
            ("one sender", {"sender": sender}, sender, self._max_per_sender),
            ("this room", {"room_id": room_id}, room_id, self._max_per_room),
            ("all rooms", {}, room_id, self._max_total),
        )
        for scope, where, key, limit in caps:
            order = ("-received_at", "-event_id")
            if await _keep_newest(UndecryptedEvent, where, limit, order):
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

    async def retry(self) -> Retried:
        """Try the kept events again, oldest first: those decrypted now, those given up, and
        the notices not given yet of those whose key will not come."""
        self._due = False
        self._checked = time.monotonic()
        now = self._clock()
        await WithheldKey.filter(received_at__lt=now - UNDECRYPTED_GIVE_UP).delete()
        retried = Retried()
        settled = retried.settled
        failed: list[str] = []
        withheld: list[tuple[UndecryptedEvent, MegolmEvent]] = []
        async for row in self._rows():
            event = Event.parse_event(row.source)
            if not isinstance(event, MegolmEvent):
                await row.delete()
                log.warning(
                    "dropped undecryptable event %s in %s: not Megolm", row.event_id, row.room_id
                )
                continue
            if now - row.received_at > UNDECRYPTED_GIVE_UP:
                # Given up: the sender is told (once: the row goes when the batch is handled),
                # unless they were told at once that its key would not come.
                log.warning(
                    "gave up decrypting event %s in %s after %d attempt(s)",
                    row.event_id,
                    row.room_id,
                    row.attempts,
                )
                silent = event.sender == self._bot_user_id or row.withheld is not None
                unreadable = None if silent else to_unreadable(row.room_id, event)
                settled.append((row.event_id, unreadable))
                continue
            decrypted = self._decrypt(row.room_id, event)
            if decrypted is None:
                failed.append(row.event_id)
                if self._holds_later_part(row.room_id, event):
                    await self._mark(row, SESSION_STARTS_LATER)
                if row.withheld is not None:
                    withheld.append((row, event))
                await self._request_key(event)
                continue
            self._stats.late_decrypted += 1
            mine = decrypted.sender == self._bot_user_id
            settled.append((row.event_id, None if mine else to_incoming(row.room_id, decrypted)))
            log.info("event %s in %s decrypted after its keys arrived", row.event_id, row.room_id)
        if failed:  # one statement, not a write per row: a pass may meet every kept row
            await UndecryptedEvent.filter(event_id__in=failed).update(attempts=F("attempts") + 1)
        retried.notices = await self._unhandled(withheld)
        return retried

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


# -- helpers -------------------------------------------------------------------------------


def _same_device(withheld_key: str, event_key: str | None) -> bool:
    """Whether a withheld message may be about an event's device: their Curve25519 keys
    agree, or one side does not say (recent apps leave it out of Megolm events)."""
    return not withheld_key or not event_key or withheld_key == event_key


async def _keep_newest(
    model: type[Model], where: dict[str, str], limit: int, order: tuple[str, ...]
) -> bool:
    """Delete the rows of `model` matching `where` beyond the `limit` first in `order`;
    whether any went."""
    if await model.filter(**where).count() <= limit:
        return False
    pk = model._meta.pk_attr
    keys = await model.filter(**where).order_by(*order).values_list(pk, flat=True)
    await model.filter(**{f"{pk}__in": list(keys[limit:])}).delete()
    return True
