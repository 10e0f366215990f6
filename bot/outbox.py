"""Delivering the outbox: pending rows are sent in order, per room, with their stable
transaction ids, then marked sent. Rows survive a crash; a resend after a crash reuses the
same transaction id on the same device, which the homeserver deduplicates."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from typing import Any

from bot.matrix.transport import Transport, TransportError
from bot.storage.models import OutboxItem, SlotOffer, Ticket

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 6


class Deliverer:
    def __init__(self, transport: Transport, clock: Callable[[], datetime]):
        self.transport = transport
        self.clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.sent = 0

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-deliverer")
        self.wake()

    async def stop(self) -> None:
        self._stopping = True
        self.wake()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=10)
            except TimeoutError:
                self._task.cancel()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=30)
            except TimeoutError:
                pass  # periodic sweep: rows left by a crash or a failed attempt
            self._wake.clear()
            try:
                await self.deliver_pending()
            except Exception:
                log.exception("outbox delivery pass failed")
                await asyncio.sleep(1 + random.random())

    async def deliver_pending(self) -> int:
        """One pass over every pending row; returns how many were sent."""
        rows = await OutboxItem.filter(sent_at=None, failed=False).order_by("id").limit(500)
        if not rows:
            return 0
        by_room: dict[str, list[OutboxItem]] = defaultdict(list)
        for row in rows:
            by_room[row.room_id].append(row)
        counts = await asyncio.gather(*(self._deliver_room(items) for items in by_room.values()))
        if len(rows) == 500:
            self.wake()
        return sum(counts)

    async def _deliver_room(self, items: list[OutboxItem]) -> int:
        sent = 0
        for item in items:
            if not await self._deliver(item):
                break  # keep the room's order: later rows wait for this one
            sent += 1
        return sent

    async def _deliver(self, item: OutboxItem) -> bool:
        delay = 0.5
        while True:
            try:
                event_id = await self._send(item)
            except TransportError as error:
                item.attempts += 1
                # A refused message (4xx) is given up after a few tries; an unreachable
                # homeserver never makes a reply fail: it waits, with capped backoff, for the
                # server to come back (replies pending during an outage are sent after it).
                if not error.retryable and item.attempts >= MAX_ATTEMPTS:
                    item.failed = True
                    await item.save(update_fields=["attempts", "failed"])
                    log.warning(
                        "outbox item %s to %s failed after %d attempt(s): %s",
                        item.id,
                        item.room_id,
                        item.attempts,
                        type(error).__name__,
                    )
                    return item.failed
                await item.save(update_fields=["attempts"])
                # A rate limit says how long to wait; otherwise back off with jitter.
                wait = getattr(error, "retry_after", None) or (delay + random.random() * delay)
                await asyncio.sleep(min(wait, 60))
                delay = min(delay * 2, 30)
                continue
            item.sent_at = self.clock()
            item.event_id = event_id
            await item.save(update_fields=["sent_at", "event_id"])
            await self._after_sent(item, event_id)
            self.sent += 1
            return True

    async def _resolve(self, target: str | None) -> str | None:
        if target is None:
            return None
        kind, _, value = target.partition(":")
        if kind == "event":
            return value
        if kind == "card":
            ticket = await Ticket.get_or_none(id=int(value))
            return ticket.card_event_id if ticket else None
        if kind == "slot_offer":
            offer = await SlotOffer.get_or_none(id=int(value))
            return offer.event_id if offer else None
        return None

    async def _send(self, item: OutboxItem) -> str:
        content: dict[str, Any] = dict(item.content)
        if item.kind == "message":
            return await self.transport.send_event(
                item.room_id, "m.room.message", content, item.txn_id
            )
        if item.kind == "edit":
            target = await self._resolve(item.target)
            if target is None:
                # The original never went out (or is unknown): send the new version as is.
                new = content["m.new_content"]
                event_id = await self.transport.send_event(
                    item.room_id, "m.room.message", new, item.txn_id
                )
                if item.target and item.target.startswith("card:"):
                    await Ticket.filter(id=int(item.target[5:])).update(card_event_id=event_id)
                return event_id
            content["m.relates_to"] = {"rel_type": "m.replace", "event_id": target}
            return await self.transport.send_event(
                item.room_id, "m.room.message", content, item.txn_id
            )
        if item.kind == "reaction":
            target = await self._resolve(item.target)
            if target is None:
                return ""
            relates = {"rel_type": "m.annotation", "event_id": target, "key": content["key"]}
            return await self.transport.send_event(
                item.room_id, "m.reaction", {"m.relates_to": relates}, item.txn_id
            )
        if item.kind == "file":
            data = bytes.fromhex(content["data"])
            uri = await self.transport.upload(data, content["mimetype"], content["filename"])
            return await self.transport.send_event(
                item.room_id,
                "m.room.message",
                {
                    "msgtype": "m.file",
                    "body": content["body"],
                    "filename": content["filename"],
                    "url": uri,
                    "info": {"mimetype": content["mimetype"], "size": len(data)},
                },
                item.txn_id,
            )
        raise ValueError(f"unknown outbox kind {item.kind!r}")

    async def _after_sent(self, item: OutboxItem, event_id: str) -> None:
        if not item.on_sent or not event_id:
            return
        kind, _, value = item.on_sent.partition(":")
        if kind == "card":
            await Ticket.filter(id=int(value)).update(card_event_id=event_id)
        elif kind == "slot_offer":
            await SlotOffer.filter(id=int(value)).update(event_id=event_id)
