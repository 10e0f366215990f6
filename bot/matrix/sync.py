"""The sync loop: one sync becomes one batch for `on_batch`, then the position moves on.

How a sync becomes a batch, and why:

- The sync token is ours, stored in `BotState("sync_token")` **after** `on_batch` returned for
  the events of that sync (nio's own token storage is off). A crash or an exception in
  `on_batch` means the same events come again; the dispatcher de-duplicates by event id.
  While messages keep coming, the position is written at most once a second (and at stop):
  a crash replays at most that second of handled events, which the dispatcher skips, and
  the write stays off the path of each answer.
- First start (no stored token): one sync, its token stored, nothing handled: the bot does not
  answer history. Invites found in that sync are still accepted or declined (`Invites`).
- Every sync asks for `sync_timeline_limit` events per room with lazy-loaded members; a room
  whose timeline is `limited` is completed with `/messages` back to the previous token, so a
  burst is delivered whole and in order.
- A room the bot has just entered: only events after the bot's invite (or after its join when
  it joined without one) are delivered, so the message a client sent right after inviting the
  bot is answered and the room's older history is not.
- Encrypted events go through `PendingEvents`: those it cannot decrypt yet are kept and come
  back in a later batch. The to-device events of each sync go there first: a withheld key
  makes the batch carry a notice for the sender (`IncomingWithheld`).
- Around each sync, the E2EE housekeeping nio's `sync_forever` would do (keys, to-device).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from nio import (
    KeysClaimResponse,
    LocalProtocolError,
    MegolmEvent,
    MessageDirection,
    RoomMemberEvent,
    RoomMessagesResponse,
    SyncResponse,
    UnknownAccountDataEvent,
)
from tortoise.transactions import in_transaction

from bot.config import MatrixConfig
from bot.events import Incoming, IncomingWithheld
from bot.matrix.inbound import to_incoming
from bot.matrix.invites import Invites
from bot.matrix.pending import PendingEvents
from bot.matrix.runtime import (
    SYNC_TOKEN,
    MatrixStartError,
    ShellStats,
    Stopped,
    Waiter,
    get_state,
    set_state,
)
from bot.matrix.session import Session
from bot.matrix.transport import (
    NETWORK_ERRORS,
    NioTransport,
    RoomFacts,
    call,
    error_from_exception,
    error_from_response,
)
from bot.ports import TransportError
from bot.storage.models import UndecryptedEvent

log = logging.getLogger(__name__)

POSITION_EVERY = 1.0  # seconds between two writes of the sync position while busy
SYNC_TIMEOUT_MS = 30_000
# Longest wait for a sync answer beyond its long-poll time (an initial sync can be slow).
FULL_SYNC_TIMEOUT = 120.0
GAP_PAGE = 100
# A room whose gap is larger than this (the bot was away for long in a busy room) is only
# partly replayed: the newest events, never an unbounded walk back.
GAP_MAX_EVENTS = 2_000
GAP_ATTEMPTS = 5  # syncs in a row a room's gap may fail before its events are skipped

OnBatch = Callable[[list[Incoming]], Awaitable[None]]


@dataclass(slots=True)
class Batch:
    token: str
    events: list[Incoming] = field(default_factory=list)
    # UndecryptedEvent rows decrypted for this batch: deleted when it is committed.
    decrypted: list[str] = field(default_factory=list)


class SyncLoop:
    """Syncs, turns each sync into a `Batch`, hands it to `on_batch` and stores the position."""

    def __init__(
        self,
        matrix: MatrixConfig,
        *,
        session: Session,
        transport: NioTransport,
        facts: RoomFacts,
        pending: PendingEvents,
        invites: Invites,
        waiter: Waiter,
        stats: ShellStats,
        on_batch: OnBatch,
        sync_timeout_ms: int,
    ) -> None:
        self._matrix = matrix
        self._session = session
        self._transport = transport
        self._facts = facts
        self._pending = pending
        self._invites = invites
        self._waiter = waiter
        self._backoff = waiter.backoff
        self._stats = stats
        self._on_batch = on_batch
        self._sync_timeout_ms = sync_timeout_ms
        self._token: str | None = None
        self._stored_token: str | None = None
        self._stored_at = float("-inf")  # time.monotonic() of the last position write
        self._position_task: asyncio.Task[None] | None = None
        self._first_sync = True  # answered at once (no long poll), to be ready quickly
        self._ready: Batch | None = None  # read at start, handled first by `run()`
        self._gap_failures: dict[str, int] = {}
        self._sync_filter = {
            "room": {
                "state": {"lazy_load_members": True},
                "timeline": {
                    "limit": matrix.sync_timeline_limit,
                    "lazy_load_members": True,
                },
            },
            "presence": {"not_types": ["*"]},
        }

    # -- lifecycle -------------------------------------------------------------------------

    async def load_position(self) -> None:
        self._token = self._stored_token = await get_state(SYNC_TOKEN)

    async def first_batch(self) -> None:
        """Do the first sync: kept for `run()`, or only stored at the very first start."""
        batch = await self._next_batch()
        if self._token is None:
            # First start: remember where "now" is; history is not answered.
            await self._commit(Batch(batch.token))
            log.info("first start: sync position stored, earlier messages are ignored")
        else:
            self._ready = batch

    async def run(self) -> None:
        """Deliver batches until `stop()` (then `Stopped` is raised or the loop ends)."""
        while not self._waiter.stopping:
            batch, self._ready = self._ready, None
            if batch is None:
                batch = await self._next_batch()
            await self._deliver(batch)

    # -- one sync → one batch --------------------------------------------------------------

    async def _next_batch(self) -> Batch:
        since = self._token
        failures = 0
        while True:
            response = await self._sync(since)
            try:
                await self._housekeeping()
                self._note_facts(response)
                await self._invites.handle(response)
                if since is None:  # first start: nothing is handled
                    return Batch(response.next_batch)
                return await self._collect(response, since)
            except Exception as error:
                # The token has not moved: the same sync is fetched again after the pause.
                failures += 1
                delay = self._backoff.delay(failures)
                expected = isinstance(error, (TransportError, *NETWORK_ERRORS))
                log.warning(
                    "reading a sync failed (%s); retrying in %.1f s",
                    error_from_exception(error, "sync"),
                    delay,
                    exc_info=not expected,
                )
                await self._waiter.sleep(delay)

    async def _sync(self, since: str | None) -> SyncResponse:
        client = self._session.nio()
        failures = 0
        while True:
            if self._waiter.stopping:
                raise Stopped
            try:
                # No full-state sync, even at start: with hundreds of rooms it takes seconds
                # and the bot needs the state of the rooms it acts in only, which it reads
                # then (`_complete_rooms`, `NioTransport.ensure_room`). nio puts no client-side
                # timeout on a first sync: bound it here.
                response = await self._waiter.unless_stopped(
                    asyncio.wait_for(
                        client.sync(
                            timeout=0 if self._first_sync else self._sync_timeout_ms,
                            sync_filter=self._sync_filter,
                            since=since,
                        ),
                        timeout=self._sync_timeout_ms / 1000 + FULL_SYNC_TIMEOUT,
                    )
                )
            except NETWORK_ERRORS as exc:
                error = error_from_exception(exc, "sync")
            except Exception as exc:  # a nio bug or an odd answer: still never a hot loop
                log.warning("sync raised %s", type(exc).__name__, exc_info=True)
                error = TransportError(f"sync: {type(exc).__name__}", retryable=True)
            else:
                if isinstance(response, SyncResponse):
                    self._stats.syncs += 1
                    self._stats.last_progress = time.monotonic()
                    self._first_sync = False
                    return response
                error = error_from_response(response, "sync")
            failures += 1
            self._stats.sync_failures += 1
            if error.errcode == "M_UNKNOWN_TOKEN" and not self._matrix.access_token:
                with contextlib.suppress(TransportError, MatrixStartError):
                    await self._session.password_login(client.device_id)
            delay = max(error.retry_after or 0.0, self._backoff.delay(failures))
            level = logging.WARNING if failures <= 3 or failures % 10 == 0 else logging.DEBUG
            log.log(level, "sync failed %d time(s) (%s); retry in %.1f s", failures, error, delay)
            await self._waiter.sleep(delay)

    async def _housekeeping(self) -> None:
        """What `sync_forever` does around each sync: key upload/query/claim, to-device."""
        client = self._session.nio()
        if client.olm is None:
            return

        async def claim_keys() -> None:
            if client.should_claim_keys:
                claim = partial(client.keys_claim, client.get_users_for_key_claiming())
                await call("keys claim", claim, expect=KeysClaimResponse)

        steps: list[tuple[str, Callable[[], Coroutine[Any, Any, Any]]]] = [
            ("keys upload", self._session.upload_keys),
            ("keys query", self._transport.query_keys_if_needed),
            ("keys claim", claim_keys),
            # Last: claiming may queue messages (e.g. to unwedge an Olm session).
            ("to-device", client.send_to_device_messages),
        ]
        for name, step in steps:
            try:
                await step()
            except Exception as error:  # never holds back the batch: retried next sync
                expected = isinstance(error, (TransportError, LocalProtocolError, *NETWORK_ERRORS))
                log.warning(
                    "E2EE %s failed: %s",
                    name,
                    error_from_exception(error, name),
                    exc_info=not expected,
                )

    def _note_facts(self, response: SyncResponse) -> None:
        for room_id, info in response.rooms.join.items():
            for event in (*info.state, *info.timeline.events):
                source = getattr(event, "source", None)
                if isinstance(source, dict) and source.get("type") == "m.room.create":
                    self._facts.note_state(room_id, source)
        for event in response.account_data_events:
            if isinstance(event, UnknownAccountDataEvent) and event.type == "m.direct":
                self._facts.note_direct(event.content)

    # -- events ----------------------------------------------------------------------------

    async def _collect(self, response: SyncResponse, since: str) -> Batch:
        batch = Batch(response.next_batch)
        seen: set[str] = set()
        # Notices about kept events, and events whose keys came late, are older than this
        # sync's: they go first.
        for notice in await self._pending.note_to_device(response.to_device_events):
            _add_notice(batch, seen, notice)
        if self._pending.due(bool(response.to_device_events)):
            retried = await self._pending.retry()
            for event_id, incoming in retried.settled:
                seen.add(event_id)
                batch.decrypted.append(event_id)
                if incoming is not None:
                    batch.events.append(incoming)
            for notice in retried.notices:
                _add_notice(batch, seen, notice)
        bot = self._matrix.user_id
        for room_id, info in response.rooms.join.items():
            events = list(info.timeline.events)
            if info.timeline.limited and info.timeline.prev_batch and _entry(events, bot) is None:
                events = await self._with_gap(room_id, info.timeline.prev_batch, since) + events
            entry = _entry(events, bot)
            if entry is not None:
                events = events[entry + 1 :]
            for event in events:
                await self._add(batch, seen, room_id, event)
        for room_id, info in response.rooms.leave.items():
            # Only the membership changes (a kick, a ban): the bot can no longer answer there.
            for event in info.timeline.events:
                if isinstance(event, RoomMemberEvent):
                    await self._add(batch, seen, room_id, event)
        return batch

    async def _add(self, batch: Batch, seen: set[str], room_id: str, event: Any) -> None:
        event_id = getattr(event, "event_id", None)
        if not isinstance(event_id, str) or event_id in seen:
            return
        seen.add(event_id)
        if getattr(event, "sender", None) == self._matrix.user_id:
            return
        if isinstance(event, MegolmEvent):
            event = await self._pending.decrypt_or_keep(room_id, event)
            if event is None:
                return
            if isinstance(event, IncomingWithheld):
                _add_notice(batch, seen, event)
                return
        incoming = to_incoming(room_id, event)
        if incoming is not None:
            batch.events.append(incoming)

    async def _with_gap(self, room_id: str, start: str, since: str) -> list[Any]:
        """The gap, or nothing once it failed `GAP_ATTEMPTS` syncs in a row (logged): one
        broken room must not hold back every other room forever."""
        try:
            gap = await self._fetch_gap(room_id, start, since)
        except TransportError as error:
            failures = self._gap_failures.get(room_id, 0) + 1
            if error.retryable and failures < GAP_ATTEMPTS:
                self._gap_failures[room_id] = failures
                raise
            self._gap_failures.pop(room_id, None)
            log.warning("gap in %s not fetched (%s): its older events are skipped", room_id, error)
            return []
        self._gap_failures.pop(room_id, None)
        return gap

    async def _fetch_gap(self, room_id: str, start: str, since: str) -> list[Any]:
        """Events between `since` and a limited timeline's `prev_batch`, oldest first.

        Stops early at the bot's own invite or join (what precedes it is not for the bot).
        """
        client = self._session.nio()
        bot = self._matrix.user_id
        events: list[Any] = []
        token = start
        while len(events) < GAP_MAX_EVENTS:
            page = await call(
                f"messages of {room_id}",
                lambda token=token: client.room_messages(
                    room_id,
                    start=token,
                    end=since,
                    direction=MessageDirection.back,
                    limit=GAP_PAGE,
                ),
                expect=RoomMessagesResponse,
            )
            events.extend(page.chunk)
            if any(_is_entry(event, bot) for event in page.chunk):
                break
            if not page.chunk or not page.end or page.end == token:
                break
            token = page.end
        else:
            log.warning("gap in %s over %d events: older ones skipped", room_id, len(events))
        events.reverse()
        return events

    # -- delivery --------------------------------------------------------------------------

    async def _deliver(self, batch: Batch) -> None:
        failures = 0
        while True:
            try:
                if batch.events:
                    await self._complete_rooms({event.room_id for event in batch.events})
                    await self._on_batch(list(batch.events))
                await self._commit(batch)
                return
            except Exception:
                failures += 1
                self._stats.batch_failures += 1
                reference = secrets.token_hex(4)
                delay = self._backoff.delay(failures)
                log.exception(
                    "handling a batch of %d event(s) failed [ref %s]; retrying in %.1f s",
                    len(batch.events),
                    reference,
                    delay,
                )
                await self._waiter.sleep(delay)

    async def _complete_rooms(self, room_ids: Iterable[str]) -> None:
        """Complete what nio knows of the rooms of a batch, once per room and process.

        Syncs are lazy (members) and incremental (no full state at start): a room's member
        list is read once (`/joined_members`). Its encryption is known from nio's store, and
        the staff room, whose power levels matter, is read whole at start."""
        for room_id in room_ids:
            try:
                await self._transport.ensure_room(room_id)
            except TransportError as error:
                log.debug("state of %s not loaded: %s", room_id, error)

    # -- sync position ---------------------------------------------------------------------

    async def _commit(self, batch: Batch) -> None:
        """The batch is handled: sync on from its token, and store it (now, or within
        POSITION_EVERY seconds when the last write is more recent than that)."""
        if batch.decrypted or time.monotonic() - self._stored_at >= POSITION_EVERY:
            await self._store_now(batch.token, batch.decrypted)
        elif self._position_task is None:
            self._position_task = asyncio.create_task(self._store_later())
        self._token = batch.token
        self._stats.last_progress = time.monotonic()
        if batch.events:
            self._stats.batches += 1
            self._stats.events += len(batch.events)

    async def _store_now(self, token: str, decrypted: Sequence[str] = ()) -> None:
        # In a task of its own: if the database drops the connection mid-transaction, Tortoise
        # can leave its "current transaction" marker set in the task that opened it, and the
        # sync task would then carry a dead connection into every later batch.
        await asyncio.create_task(self._store_position(token, decrypted))

    async def _store_later(self) -> None:
        try:
            await asyncio.sleep(max(0.0, self._stored_at + POSITION_EVERY - time.monotonic()))
            if self._token is not None:
                await self._store_position(self._token, ())
        except Exception as error:  # the next batch stores it
            log.warning("storing the sync position failed: %s", type(error).__name__)
        finally:
            self._position_task = None

    async def flush_position(self) -> None:
        """Store the position of the last handled batch now (at stop)."""
        task, self._position_task = self._position_task, None
        if task is not None:
            task.cancel()
        if self._token is not None and self._token != self._stored_token:
            try:
                await self._store_position(self._token, ())
            except Exception as error:  # replayed (and skipped) at the next start
                log.warning("storing the sync position failed: %s", type(error).__name__)

    async def _store_position(self, token: str, decrypted: Sequence[str]) -> None:
        async with in_transaction():
            if decrypted:
                await UndecryptedEvent.filter(event_id__in=list(decrypted)).delete()
            if token != self._stored_token:
                await set_state(SYNC_TOKEN, token)
        self._stored_token = token
        self._stored_at = time.monotonic()


# -- pure helpers --------------------------------------------------------------------------


def _add_notice(batch: Batch, seen: set[str], notice: IncomingWithheld) -> None:
    """Once per batch, whatever found it (the withheld message, a retry, the event)."""
    if notice.event_id not in seen:
        seen.add(notice.event_id)
        batch.events.append(notice)


def _is_entry(event: Any, bot: str) -> bool:
    return (
        isinstance(event, RoomMemberEvent)
        and event.state_key == bot
        and event.membership in ("invite", "join")
    )


def _entry(events: Sequence[Any], bot: str) -> int | None:
    """Index of the event after which a room's events concern the bot, if it entered here.

    The bot's last invite; failing that, its join when it joined without an invite (a room it
    created, a public room). A join that follows an invite seen in an earlier sync is not a
    cut: what came between the invite and the join is for the bot.
    """
    last_join: int | None = None
    for index in range(len(events) - 1, -1, -1):
        event = events[index]
        if not _is_entry(event, bot):
            continue
        if event.membership == "invite":
            return index
        if last_join is None and event.prev_membership not in ("invite", "join"):
            last_join = index
    return last_join
