"""Encrypted events the bot cannot decrypt yet, kept until their room key comes.

Undecryptable events are kept in `UndecryptedEvent`, their room key is requested (nio asks
the bot's own other devices only: in practice the key comes when the sender's client shares
it), and they are retried when to-device messages (keys) arrive, and every 10 minutes; a
decrypted one is delivered in the next batch; after 24 h the bot gives up and hands an
`IncomingUnreadable` to the handlers, which ask the sender to send it again.

A row settled here (decrypted or given up) is deleted by the sync loop together with the
sync position of the batch that delivered it, so a crash in between retries it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from nio import AsyncClient, Event, LocalProtocolError, MegolmEvent

from bot.events import Incoming
from bot.matrix.inbound import to_incoming, to_unreadable
from bot.matrix.runtime import ShellStats
from bot.matrix.transport import NETWORK_ERRORS
from bot.storage.models import UndecryptedEvent

log = logging.getLogger(__name__)

UNDECRYPTED_GIVE_UP = timedelta(hours=24)
UNDECRYPTED_RETRY_EVERY = 600.0  # seconds, besides every sync that brings to-device events

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
    ) -> None:
        self._nio = nio
        self._bot_user_id = bot_user_id
        self._clock = clock
        self._stats = stats
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
        await self._request_key(event)

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
        for row in await UndecryptedEvent.all().order_by("received_at"):
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
                row.attempts += 1
                await row.save(update_fields=["attempts"])
                await self._request_key(event)
                continue
            self._stats.late_decrypted += 1
            mine = decrypted.sender == self._bot_user_id
            settled.append((row.event_id, None if mine else to_incoming(row.room_id, decrypted)))
            log.info("event %s in %s decrypted after its keys arrived", row.event_id, row.room_id)
        return settled
