"""Delivering the outbox: pending rows are sent in order, per room, with their stable
transaction ids, then marked sent. Rows survive a crash; a resend after a crash reuses the
same transaction id on the same device, which the homeserver deduplicates."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from tortoise.transactions import in_transaction

from bot.mail import Mail, Mailer, MailError
from bot.metrics import Metrics
from bot.ports import Transport, TransportError
from bot.routing import MESSAGE_IN_CLEAR
from bot.storage.models import OutboxItem

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
# An e-mail is tried this many times (a dead SMTP server is no reason to wait for ever: the
# client and staff are told, and staff can ask again), with the same backoff as messages.
MAIL_ATTEMPTS = 4
# An event's answers in other rooms than its own (the staff room's card after a client's
# answer) wait for its own room's answer to be sent, at most this long.
HEAD_START_SECONDS = 2.0
# Answers waiting to be sent whose latency is still to be observed, at most (oldest dropped).
_LATENCY_MEMORY = 5000


class TagBook(Protocol):
    """What tags stand for (`bot.storage.tags.SentTags`): the outbox only passes them on."""

    async def resolve(self, tag: str) -> str | None: ...

    async def record(self, tag: str, event_id: str) -> None: ...


class Deliverer:
    """Sends the outbox, one worker task per room.

    Rooms never wait for each other: a slow send in one room (a busy homeserver, an upload)
    does not hold back the answer in another. Inside a room, one worker sends the rows in
    their order; rows written while it works are picked up by the same worker, so a room
    never has two senders and its order is kept.

    Rows a handler has just committed are handed over with `offer()` and sent without
    being read back; `wake()` makes a pass over the table (rows of background jobs, of an
    earlier crash, of a failed attempt; and every 30 s).

    With `metrics`, it counts mails sent and failed, and observes the answer latency: the
    first row `offer()` gets for the room of a message carries, in memory and by transaction
    id, when that message was sent, until the homeserver accepts the row. Rows read back
    after a restart are not observed (their message's time is not stored)."""

    def __init__(
        self,
        transport: Transport,
        clock: Callable[[], datetime],
        *,
        tags: TagBook | None = None,
        mailer: Callable[[], Mailer | None] = lambda: None,
        backoff: float = 0.5,
        metrics: Metrics | None = None,
    ):
        self.transport = transport
        self.clock = clock
        self.tags = tags
        self.mailer = mailer  # read at each send: the configured mailer may change
        self.backoff = backoff
        self.metrics = metrics
        # txn_id of an answer → when the message it answers was sent (origin_server_ts).
        self._answering: dict[str, datetime] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._workers: dict[str, asyncio.Task[int]] = {}
        self._more: set[str] = set()  # rooms with rows written while their worker ran
        # Rows this process has sent recently: a pass that read the table just before a
        # worker marked a row sent must not send it again.
        self._recent: dict[str, None] = {}
        self.sent = 0

    def wake(self) -> None:
        self._wake.set()

    def offer(
        self,
        rows: Sequence[OutboxItem],
        first_room: str | None = None,
        since: datetime | None = None,
    ) -> None:
        """Send rows just committed. Those of `first_room` (where the event came from: the
        client is waiting there) go first; the others start once these are sent. `since`:
        when the message they answer was sent; its first row in `first_room` is the answer
        whose latency is observed."""
        by_room: dict[str, list[OutboxItem]] = {}
        for row in rows:
            by_room.setdefault(row.room_id, []).append(row)
        lead: asyncio.Task[int] | None = None
        if first_room in by_room:
            if since is not None and self.metrics is not None:
                # By transaction id: a busy room's worker reads the row back from the table.
                self._answering[by_room[first_room][0].txn_id] = since
                if len(self._answering) > _LATENCY_MEMORY:
                    del self._answering[next(iter(self._answering))]
            lead = self._give(first_room, by_room.pop(first_room), after=None)
        for room_id, items in by_room.items():
            self._give(room_id, items, after=lead)

    def _give(
        self, room_id: str, items: list[OutboxItem], *, after: asyncio.Task[int] | None
    ) -> asyncio.Task[int]:
        """The room's worker: a new one for `items`, or the running one, told to look again."""
        running = self._workers.get(room_id)
        if running is not None:
            self._more.add(room_id)
            return running
        task = asyncio.create_task(self._room_worker(room_id, items, after), name="outbox-room")
        self._workers[room_id] = task
        return task

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
        workers = list(self._workers.values())
        if workers:
            _, late = await asyncio.wait(workers, timeout=10)
            for task in late:
                task.cancel()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=30)
            except TimeoutError:
                pass  # periodic sweep: rows left by a crash or a failed attempt
            self._wake.clear()
            try:
                await self._start_workers()
            except Exception:
                log.exception("outbox delivery pass failed")
                await asyncio.sleep(1 + random.random())

    async def deliver_pending(self) -> int:
        """Send every pending row and wait until they are all out; returns how many were
        sent (used by tests and one-shot tools; the running bot only starts workers)."""
        before = self.sent
        while True:
            more = await self._start_workers()
            workers = list(self._workers.values())
            if workers:
                await asyncio.gather(*workers, return_exceptions=True)
            if not more and not workers:
                return self.sent - before

    async def _start_workers(self) -> bool:
        """Read the pending rows and give each room without a worker one; True when more
        rows than one read were pending."""
        rows = await OutboxItem.filter(sent_at=None, failed=False).order_by("id").limit(500)
        by_room: dict[str, list[OutboxItem]] = defaultdict(list)
        for row in rows:
            if row.txn_id not in self._recent:
                by_room[row.room_id].append(row)
        for room_id, items in by_room.items():
            self._give(room_id, items, after=None)
        if len(rows) == 500:
            self.wake()
            return True
        return False

    async def _room_worker(
        self, room_id: str, items: list[OutboxItem], after: asyncio.Task[int] | None
    ) -> int:
        sent = 0
        try:
            if after is not None:
                await asyncio.wait({after}, timeout=HEAD_START_SECONDS)
            while True:
                for item in items:
                    if item.txn_id in self._recent:
                        continue
                    if not await self._deliver(item):
                        return sent  # keep the room's order: later rows wait for this one
                    sent += 1
                if room_id not in self._more or self._stopping:
                    return sent
                self._more.discard(room_id)
                items = await OutboxItem.filter(
                    room_id=room_id, sent_at=None, failed=False
                ).order_by("id")
        except Exception:
            log.exception("outbox delivery to %s failed", room_id)
            self.wake()  # the rows stay pending: the next pass retries them
            return sent
        finally:
            self._workers.pop(room_id, None)
            self._more.discard(room_id)

    def _remember(self, txn_id: str) -> None:
        self._recent[txn_id] = None
        if len(self._recent) > 5000:
            del self._recent[next(iter(self._recent))]

    async def _deliver(self, item: OutboxItem) -> bool:
        if item.kind == "mail":
            return await self._deliver_mail(item)
        delay = self.backoff
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
                    self._answering.pop(item.txn_id, None)
                    await _store(item, "attempts", "failed")
                    log.warning(
                        "outbox item %s to %s failed after %d attempt(s): %s",
                        item.txn_id,
                        item.room_id,
                        item.attempts,
                        type(error).__name__,
                    )
                    return item.failed
                await _store(item, "attempts")
                # A rate limit says how long to wait; otherwise back off with jitter.
                wait = getattr(error, "retry_after", None) or (delay + random.random() * delay)
                await asyncio.sleep(min(wait, 60))
                delay = min(delay * 2, 30)
                continue
            self._remember(item.txn_id)
            item.sent_at = self.clock()
            item.event_id = event_id
            try:
                await _store(item, "sent_at", "event_id")
            except BaseException:
                # Not marked: the row stays pending and is sent again (same transaction id,
                # deduplicated by the homeserver) so that its after-send hook runs.
                self._recent.pop(item.txn_id, None)
                raise
            self._observe_answer(item)
            await self._after_sent(item, event_id)
            self.sent += 1
            return True

    async def _deliver_mail(self, item: OutboxItem) -> bool:
        """Send an e-mail row, then queue the messages its outcome calls for (in the same
        transaction as marking the row, so a crash in between sends neither twice)."""
        mail = Mail.from_content(item.content["mail"])
        mailer = self.mailer()
        delay = self.backoff
        sent = False
        reason = "no mail server configured"
        while mailer is not None:
            try:
                # Its Message-ID comes from the row: a resend after a crash is the same mail.
                await mailer.send_mail(mail, message_key=item.txn_id)
            except MailError as error:
                reason = str(error)  # never an address (`MailError`'s promise)
                item.attempts += 1
                await _store(item, "attempts")
                log.warning(
                    "outbox mail %s: attempt %d failed (%s)", item.txn_id, item.attempts, error
                )
                if item.attempts >= MAIL_ATTEMPTS:
                    break
                await asyncio.sleep(delay + random.random() * delay)
                delay = min(delay * 2, 30)
                continue
            sent = True
            break
        follow = item.content.get("if_sent" if sent else "if_failed") or []
        if not sent and item.content.get("with_reason"):
            follow = [_with_reason(out, reason) for out in follow]
        now = self.clock()
        rows = [
            OutboxItem(
                txn_id=f"{item.txn_id}-{'ok' if sent else 'ko'}{n}",
                room_id=out["room_id"],
                kind=out["kind"],
                content=out["content"],
                target=out.get("target"),
                on_sent=out.get("on_sent"),
                created_at=now,
            )
            for n, out in enumerate(follow)
        ]
        item.sent_at, item.failed = (now, False) if sent else (None, True)
        async with in_transaction():
            await _store(item, "sent_at", "failed")
            if rows:
                await OutboxItem.bulk_create(rows, ignore_conflicts=True)
        self._remember(item.txn_id)
        if rows:
            self.offer(rows)
        if self.metrics is not None:
            self.metrics.count_mail(sent)
        if sent:
            self.sent += 1
        return True  # either way the queue goes on: a failed mail is reported, not retried

    def _observe_answer(self, item: OutboxItem) -> None:
        since = self._answering.pop(item.txn_id, None)
        if since is not None and self.metrics is not None and item.sent_at is not None:
            self.metrics.observe_answer((item.sent_at - since).total_seconds())

    async def _resolve(self, target: str | None) -> str | None:
        if target is None:
            return None
        if target.startswith("event:"):
            return target[len("event:") :]
        return await self.tags.resolve(target) if self.tags is not None else None

    async def _send(self, item: OutboxItem) -> str:
        content: dict[str, Any] = dict(item.content)
        if item.kind in ("message", "file") and item.target is not None:
            # In the thread of the target (a staff card); sent unthreaded if it is unknown.
            root = await self._resolve(item.target)
            relation = _thread_relation(root) if root else None
        else:
            relation = None
        if item.kind == "message":
            if relation is not None:
                content["m.relates_to"] = relation
            return await self.transport.send_event(
                item.room_id, "m.room.message", content, item.txn_id
            )
        if item.kind == MESSAGE_IN_CLEAR:
            return await self.transport.send_event(
                item.room_id, "m.room.message", content, item.txn_id, encrypt=False
            )
        if item.kind == "edit":
            target = await self._resolve(item.target)
            if target is None:
                # The original never went out (or is unknown): send the new version as is.
                new = content["m.new_content"]
                event_id = await self.transport.send_event(
                    item.room_id, "m.room.message", new, item.txn_id
                )
                # It stands in for the original from now on: later edits replace it.
                if item.target and self.tags is not None:
                    await self.tags.record(item.target, event_id)
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
        if item.kind == "redaction":
            return await self._redact(item)
        if item.kind == "file":
            data = bytes.fromhex(content["data"])
            uri = await self.transport.upload(data, content["mimetype"], content["filename"])
            event: dict[str, Any] = {
                "msgtype": "m.file",
                "body": content["body"],
                "filename": content["filename"],
                "url": uri,
                "info": {"mimetype": content["mimetype"], "size": len(data)},
            }
            if relation is not None:
                event["m.relates_to"] = relation
            return await self.transport.send_event(
                item.room_id, "m.room.message", event, item.txn_id
            )
        raise ValueError(f"unknown outbox kind {item.kind!r}")

    async def _redact(self, item: OutboxItem) -> str:
        """Redact the bot's own event `target` (an erasure). A redaction the homeserver
        refuses for good (the event is gone, the bot left the room or lacks the power) is done
        with: the bot redacts what it can, and there is nothing to retry or to alert about."""
        target = await self._resolve(item.target)
        if target:
            try:
                await self.transport.redact(item.room_id, target, item.content.get("reason"))
            except TransportError as error:
                if error.retryable:
                    raise
                log.info("redaction in %s refused: %s", item.room_id, error)
        return ""

    async def _after_sent(self, item: OutboxItem, event_id: str) -> None:
        """The row's tag (`on_sent`) now stands for the event sent."""
        if item.on_sent and event_id and self.tags is not None:
            await self.tags.record(item.on_sent, event_id)


def _thread_relation(root: str) -> dict[str, Any]:
    """In the thread of `root`, falling back to a reply to it for clients without threads."""
    return {
        "rel_type": "m.thread",
        "event_id": root,
        "is_falling_back": True,
        "m.in_reply_to": {"event_id": root},
    }


def _with_reason(out: dict[str, Any], reason: str) -> dict[str, Any]:
    """A message of a failed mail's outcome, its text ending with why it failed."""
    content = dict(out.get("content") or {})
    if isinstance(content.get("body"), str):
        content["body"] = f"{content['body']} ({reason})"
    return {**out, "content": content}


async def _store(item: OutboxItem, *names: str) -> None:
    """Write fields of a row, found by its transaction id (rows handed over by `offer()`
    come from a bulk insert and may not know their primary key)."""
    await OutboxItem.filter(txn_id=item.txn_id).update(
        **{name: getattr(item, name) for name in names}
    )
