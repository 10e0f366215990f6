"""Routing Matrix events to handlers, with one error boundary and exactly-once effects.

Each handled event runs in one database transaction that also records the event id
(`HandledEvent`) and the replies it causes (`OutboxItem`). Either all of it is stored or none
of it: a crash before the commit replays the event, a crash after it finds the event handled
and the replies waiting in the outbox, which the `Deliverer` sends with stable transaction ids.

**Flood control never waits on the sync path.** A client over the limit (per sender; for a
bridge account, also per room for all the nicknames it relays there) has the excess deferred:
the event is stored as a `DeferredEvent` row in the transaction that records it as handled,
and a later event of the same lane queues behind it. `run_deferred` (a task of `bot.app`, the
harness's `sweep()` in tests) handles them in order at the allowed pace; everyone else is
served meanwhile.

Routers only record handlers (decorators have no side effect beyond that); `handlers/__init__`
includes every module's router explicitly.

What a handler sees (`Context`) and how handlers are registered (`Router`) are in
`bot.routing`; flood bookkeeping in `bot.flood`. What stays here (about 640 lines) is one
concern: getting each event, or each deferred one, exactly once through its transaction.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from bot import logcontext
from bot.events import (
    TEXT_MSGTYPES,
    Incoming,
    IncomingMail,
    IncomingMember,
    IncomingReaction,
    IncomingRedaction,
    IncomingText,
    IncomingUnreadable,
    IncomingWithheld,
    event_from_json,
    event_to_json,
)
from bot.flood import FloodGate, KeyedLocks, lane_of
from bot.i18n import N_, Msg
from bot.identity import Author, Sender
from bot.routing import (
    Context,
    DomainError,
    Handler,
    Router,
    all_handlers,
    handler_name,
    txn_base,
)
from bot.storage import mailbox, repo
from bot.storage.models import DeferredEvent, HandledEvent, Notice, OutboxItem
from bot.unreadable import unreadable_notice

if TYPE_CHECKING:
    from bot.services import Services


log = logging.getLogger(__name__)

COMMAND_RE = re.compile(r"^\s*[!！]([\w-]+)(?:\s+(.*))?$", re.S)

APOLOGY = N_(
    "Sorry, something went wrong on my side (reference {ref}). Your message is kept; "
    "please try again in a moment, and quote this reference if it happens again."
)
UNKNOWN_COMMAND = N_("Unknown command “!{name}”. Type !help to see what I can do.")
STAFF_ONLY = N_("“!{name}” is a staff command: it is only available to the support team.")
ONLY_TEXT = N_("I can only read text messages: please describe your request in words.")
FLOODING = N_(
    "You are sending many messages very quickly. I read them all, in order, but I will answer "
    "more slowly for a moment."
)

#: Deferred events handled per `run_deferred` call at most (the next call takes the rest).
DEFERRED_BATCH = 200
#: The replay task's longest sleep with nothing due, and its pause after a failure (a
#: database outage: the rows stay and are tried again).
DEFERRED_IDLE_SECONDS = 60.0
DEFERRED_RETRY_SECONDS = 5.0


#: What handler errors are counted under when no handler was running yet (the dispatcher's
#: own preparation of the event failed).
NO_HANDLER = "dispatch"


class Deliver(Protocol):
    """Hands a handler's committed rows to the deliverer (`Deliverer.offer`): those of
    `first_room` go first; `since` is when the message answered was sent (its
    origin_server_ts), for the answer-latency histogram."""

    def __call__(
        self, rows: Sequence[OutboxItem], first_room: str | None, since: datetime | None, /
    ) -> None: ...


class _Replayed(Exception):
    """The deferred row was handled by someone else meanwhile: this transaction rolls back."""


class Dispatcher:
    """Turns batches of incoming events into handler runs, one transaction per event."""

    def __init__(
        self,
        router: Router,
        services: Services,
        *,
        wake_delivery: Callable[[], None],
        deliver: Deliver | None = None,
    ):
        self.router = router
        self.services = services
        self.wake_delivery = wake_delivery
        # Hands a handler's committed rows straight to the deliverer (no reading them back);
        # without it, the deliverer is only woken to read the table.
        self.deliver = deliver
        self._locks = KeyedLocks()  # (room, sender key): each sender's events in order
        # Lane (see `_lane`): its flood decision, deferral and replay one at a time, so that
        # a deferred event is never overtaken by a later one of the same lane.
        self._lane_locks = KeyedLocks()
        # Flood windows and notices given, by lane or sender key; forgotten once quiet.
        self._flood = FloodGate()
        # Lanes that may have deferred rows: loaded once, then kept by this dispatcher (a
        # lane is added before its row commits, so this is never missing one; a lane found
        # empty is dropped). Saves a query per event while nobody floods.
        self._deferred_lanes: set[str] | None = None
        self._replay_wake = asyncio.Event()
        self._reaction_keys: dict[str, list[Handler]] = defaultdict(list)
        for spec in router.reactions:
            for key in spec.keys:
                self._reaction_keys[_norm_reaction(key)].append(spec.handler)
        # Every handler's error series exists from the start, at 0: rates and alerts need it.
        services.metrics.expect_handlers([NO_HANDLER, *map(handler_name, all_handlers(router))])

    async def on_batch(self, events: Sequence[Incoming]) -> None:
        """Handle one sync batch: senders in parallel, each sender's events in order."""
        self._flood.prune_if_due(self.services.clock())
        groups: dict[tuple[str, str], list[Incoming]] = defaultdict(list)
        for event in events:
            groups[(event.room_id, event.sender)].append(event)
        # Each group in a task of its own (even a single one): a transaction that the database
        # broke mid-way can leave Tortoise's "current transaction" marker in the task that
        # opened it; it must die with that task, never stay in the sync loop's.
        await asyncio.gather(*(self._handle_in_order(evs) for evs in groups.values()))

    async def _handle_in_order(self, events: Sequence[Incoming]) -> None:
        for event in events:
            await self.handle(event)

    def prune(self, now: datetime) -> None:
        """Forget what one-off senders left in the flood tables (done once a minute)."""
        self._flood.prune(now)

    def memory(self) -> dict[str, int]:
        """Entries per in-memory table (for the tests and a look in a debugger)."""
        return {
            "locks": len(self._locks),
            "lane_locks": len(self._lane_locks),
            **self._flood.sizes(),
            "deferred_lanes": len(self._deferred_lanes or ()),
        }

    async def handle(self, event: Incoming) -> None:
        if event.sender == self.services.bot_user_id():
            return
        # Every log line written while it is handled names the event and its room.
        with logcontext.bound(event_id=event.event_id, room_id=event.room_id):
            await self._handle(event)

    async def _handle(self, event: Incoming) -> None:
        author = self.services.identity.author(event)  # once: who, staff or not, the text
        lane = lane_of(event, author)
        async with (
            self._locks.hold((event.room_id, author.sender.key)),
            self._lane_locks.hold(lane),
        ):
            if await HandledEvent.exists(event_id=event.event_id):
                return
            now = self.services.clock()
            try:
                waits = await self._lane_waits(lane)  # first: the lanes known before a deferral
                over = self._flood.count(
                    event, author, now, self.services.config.service.flood_messages_per_minute
                )
                deferring = over or waits
                ctx = await self._context(event, author, now)
            except Exception:
                # Even the preparation may fail (e.g. a database refusing the client key):
                # it must end in the apology, never escape and stall the sync loop.
                await self._fail(self._bare_context(event, author.sender, now), now)
                self.wake_delivery()
                return
            if deferring:
                try:
                    rows = await self._defer(ctx, lane, now, over=over)
                except Exception as error:
                    if is_database_outage(error):
                        raise  # not deferred, not handled: the shell retries the batch
                    rows = await self._fail(ctx, now)
            else:
                rows = await self._process(ctx, author, now)
        if rows is not None and not deferring:
            self.services.count_event(type(event).__name__)
        self._hand_over(event, rows, timed=not deferring)

    def _hand_over(self, event: Incoming, rows: list[OutboxItem] | None, *, timed: bool) -> None:
        if rows is not None and self.deliver is not None:
            # The answer latency is a person's wait: only messages count (not reactions nor
            # memberships), and not the day-old ones the bot could never decrypt.
            since = event.ts if timed and isinstance(event, IncomingText) else None
            self.deliver(rows, event.room_id, since)
        else:
            self.wake_delivery()

    async def _process(
        self, ctx: Context, author: Author, now: datetime, *, replay: int | None = None
    ) -> list[OutboxItem] | None:
        """Route and commit one event (a deferred one: `replay` is its row); the rows
        written, None when another delivery did it first."""
        try:
            async with in_transaction():
                await self._route(ctx, author)
                return await self._commit(ctx, now, replay=replay)
        except _Replayed:
            return None
        except IntegrityError:
            # Another delivery of the same event won the race: nothing more to do.
            if await self._done_elsewhere(ctx, replay):
                return None
            return await self._fail(ctx, now, replay=replay)
        except DomainError as refusal:
            ctx.outgoing.clear()
            ctx.reply(refusal.msg)
            try:
                async with in_transaction():
                    return await self._commit(ctx, now, replay=replay)
            except _Replayed:
                return None
        except Exception as error:
            if is_database_outage(error):
                # Not the handler's fault and not to be apologised for: the event stays
                # unhandled (or deferred), the batch fails, and the shell retries it.
                raise
            return await self._fail(ctx, now, replay=replay)

    async def _done_elsewhere(self, ctx: Context, replay: int | None) -> bool:
        assert ctx.event is not None
        if replay is not None:
            return not await DeferredEvent.exists(id=replay)
        return await HandledEvent.exists(event_id=ctx.event.event_id)

    # -- flood control ----------------------------------------------------------------------

    async def _lane_waits(self, lane: str) -> bool:
        """Whether earlier events of `lane` are still deferred (this one must queue)."""
        if self._deferred_lanes is None:
            lanes = await DeferredEvent.all().distinct().values_list("lane", flat=True)
            loaded = {str(name) for name in lanes}
            # Merged, not replaced: another lane may have been loaded and deferred meanwhile.
            self._deferred_lanes = loaded | (self._deferred_lanes or set())
        if lane not in self._deferred_lanes:
            return False
        if await DeferredEvent.exists(lane=lane):
            return True
        self._deferred_lanes.discard(lane)  # replayed since: the lane flows again
        return False

    async def _defer(
        self, ctx: Context, lane: str, now: datetime, *, over: bool
    ) -> list[OutboxItem] | None:
        """Store the event for later and record it as handled; a client over the limit
        (`over`, not merely queued behind earlier ones) is told, once in a while. The rows
        written (the notice), None when another delivery did it first."""
        event = ctx.event
        assert event is not None
        limit = max(1, self.services.config.service.flood_messages_per_minute)
        tell = over and self._flood.may_tell(lane, now)
        if self._deferred_lanes is not None:
            self._deferred_lanes.add(lane)  # before the commit: never missing a lane
        try:
            async with in_transaction():
                last = await DeferredEvent.filter(lane=lane).order_by("-id").first()
                start = now if last is None else max(now, last.due_at)
                await DeferredEvent.create(
                    lane=lane,
                    room_id=event.room_id,
                    event=event_to_json(event),
                    due_at=start + timedelta(seconds=60 / limit),
                    deferred_at=now,
                )
                if tell:
                    ctx.reply(Msg(FLOODING))
                rows = await self._commit(ctx, now)
        except IntegrityError:
            if await HandledEvent.exists(event_id=event.event_id):
                return None
            raise
        if tell:
            self._flood.told(lane, now)
        self._replay_wake.set()
        return rows

    async def run_deferred(self, now: datetime | None = None) -> int:
        """Handle the deferred events due by `now`, each lane in order (lanes side by side);
        returns how many were handled. A database outage is raised once every lane has
        stopped (the rows stay, to be tried again)."""
        now = self.services.clock() if now is None else now
        due = (
            await DeferredEvent.filter(due_at__lte=now)
            .order_by("id")
            .limit(DEFERRED_BATCH)
            .values_list("id", "lane")
        )
        lanes: dict[str, list[int]] = defaultdict(list)
        for row_id, lane in due:
            lanes[str(lane)].append(int(row_id))
        # A task per lane, as per batch group: a broken transaction's marker dies with it.
        results = await asyncio.gather(
            *(self._replay_lane(ids) for ids in lanes.values()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return sum(int(result) for result in results)  # type: ignore[arg-type]

    async def _replay_lane(self, ids: list[int]) -> int:
        handled = 0
        for row_id in ids:
            handled += await self._replay(row_id)
        return handled

    async def _replay(self, row_id: int) -> bool:
        row = await DeferredEvent.get_or_none(id=row_id)
        if row is None:
            return False  # handled meanwhile
        event = event_from_json(row.event)
        with logcontext.bound(event_id=event.event_id, room_id=event.room_id):
            return await self._replay_event(row, event)

    async def _replay_event(self, row: DeferredEvent, event: Incoming) -> bool:
        row_id = row.id
        author = self.services.identity.author(event)  # staff or not: now, not then
        async with (
            self._locks.hold((event.room_id, author.sender.key)),
            self._lane_locks.hold(row.lane),
        ):
            now = self.services.clock()
            try:
                ctx = await self._context(event, author, now)
            except Exception:
                bare = self._bare_context(event, author.sender, now)
                rows = await self._fail(bare, now, replay=row_id)
            else:
                rows = await self._process(ctx, author, now, replay=row_id)
        if rows is None:
            return False
        self.services.count_event(type(event).__name__)
        # Timed from when it was sent: a deferred answer is a longer wait, and it shows.
        self._hand_over(event, rows, timed=True)
        return True

    async def run_deferred_forever(self, stop: asyncio.Event) -> None:
        """Replay deferred events as they fall due until `stop` is set (started by the
        composition root; a deferral wakes it)."""
        while not stop.is_set():
            self._replay_wake.clear()  # before the run: a deferral meanwhile wakes the next
            try:
                await self.run_deferred()
                pause = await self._until_next_due()
            except Exception:
                log.exception("deferred events: replay failed; trying again")
                pause = DEFERRED_RETRY_SECONDS
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake())]
            try:
                await asyncio.wait(waits, timeout=pause, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()

    async def _wake(self) -> None:
        await self._replay_wake.wait()

    async def _until_next_due(self) -> float:
        if self._deferred_lanes is not None and not self._deferred_lanes:
            return DEFERRED_IDLE_SECONDS  # nothing deferred: a deferral wakes the task
        first = await DeferredEvent.all().order_by("due_at").first()
        if first is None:
            return DEFERRED_IDLE_SECONDS
        seconds = (first.due_at - self.services.clock()).total_seconds()
        return min(max(seconds, 0.0), DEFERRED_IDLE_SECONDS)

    # -- jobs, failures, commits ------------------------------------------------------------

    async def run_job(
        self, key: str, job: Handler, *, room_id: str = "", locale: str | None = None
    ) -> bool:
        """Run a background job once for `key` (a unique, stable name such as
        "remind:conversation:12:2026-11-27T10:00"); its messages go through the outbox like
        a handler's, with transaction ids derived from the key. Returns False when done before."""
        if await Notice.exists(key=key):
            return False
        now = self.services.clock()
        ctx = Context(
            event=None,
            room_id=room_id,
            sender=Sender(self.services.bot_user_id(), self.services.bot_user_id()),
            services=self.services,
            now=now,
            tr=self.services.catalogs.get(locale),
            is_staff=True,
            router=self.router,
        )
        try:
            with logcontext.bound(room_id=room_id or None):
                async with in_transaction():
                    await job(ctx)
                    await self._commit(ctx, now, job_key=key)
        except IntegrityError:
            return False
        except Exception:
            log.exception("background job failed (%s)", key.split(":", 1)[0])
            # Jobs are closures (all named "job"): their key's prefix says which one failed.
            self.services.count_error("job:" + key.split(":", 1)[0])
            return False
        self.wake_delivery()
        return True

    def _bare_context(self, event: Incoming, sender: Sender, now: datetime) -> Context:
        """A context for the apology when even preparing the event's failed."""
        return Context(
            event=event,
            room_id=event.room_id,
            sender=sender,
            services=self.services,
            now=now,
            tr=self.services.catalogs.get(None),
            is_staff=False,
            router=self.router,
        )

    async def _fail(
        self, ctx: Context, now: datetime, *, replay: int | None = None
    ) -> list[OutboxItem] | None:
        """Count the error, record the event as handled, apologise; the rows written."""
        ref = secrets.token_hex(4)
        event_id = ctx.event.event_id if ctx.event else "-"
        log.exception("handler failed (ref %s, event %s in %s)", ref, event_id, ctx.room_id)
        self.services.count_error(ctx.handler or NO_HANDLER)
        ctx.outgoing.clear()
        if isinstance(ctx.event, IncomingText) or ctx.answer is not None:
            ctx.reply(Msg(APOLOGY, {"ref": ref}))
        try:
            async with in_transaction():
                return await self._commit(ctx, now, replay=replay)
        except _Replayed:
            return None

    async def _commit(
        self,
        ctx: Context,
        now: datetime,
        *,
        job_key: str | None = None,
        replay: int | None = None,
    ) -> list[OutboxItem]:
        if job_key is not None:
            await Notice.create(key=job_key, at=now)
            base = txn_base("job:" + job_key)
        elif replay is not None:
            # Recorded as handled when deferred; the row's deletion is what makes the replay
            # happen once. Its own transaction ids: the deferral may have sent a notice.
            assert ctx.event is not None
            if not await DeferredEvent.filter(id=replay).delete():
                raise _Replayed
            base = txn_base("deferred:" + ctx.event.event_id)
        else:
            assert ctx.event is not None
            event = ctx.event
            if isinstance(event, IncomingMail) and not await mailbox.advance(
                event.folder, event.uidvalidity, event.uid, now=now
            ):
                # The mailbox position says this mail was handled (its event row may have
                # been pruned): this transaction does nothing.
                raise _Replayed
            await HandledEvent.create(event_id=event.event_id, room_id=ctx.room_id, handled_at=now)
            base = txn_base(event.event_id)
        rows = [
            OutboxItem(
                txn_id=f"{base}-{n}",
                room_id=out.room_id,
                kind=out.kind,
                content=out.content,
                target=out.target,
                on_sent=out.on_sent,
                created_at=now,
            )
            for n, out in enumerate(ctx.outgoing)
        ]
        if rows:
            await OutboxItem.bulk_create(rows)
        return rows

    async def _context(self, event: Incoming, author: Author, now: datetime) -> Context:
        locale = await repo.locale_for(
            author.sender.key, self.services.config.service.default_locale
        )
        return Context(
            event=event,
            room_id=event.room_id,
            sender=author.sender,
            services=self.services,
            now=now,
            tr=self.services.catalogs.get(locale),
            is_staff=author.is_staff,
            router=self.router,
        )

    # -- routing ----------------------------------------------------------------------------

    async def _route(self, ctx: Context, author: Author) -> None:
        event = ctx.event
        if isinstance(event, IncomingText):
            await self._route_text(ctx, event, author.text or "")
        elif isinstance(event, IncomingReaction):
            if not await _reaches(event, ctx.room_id):
                return
            for handler in self._reaction_keys.get(_norm_reaction(event.key), ()):
                await _run(ctx, handler)
        elif isinstance(event, IncomingRedaction):
            if not await _reaches(event, ctx.room_id):
                return
            for handler in self.router.redactions:
                await _run(ctx, handler)
        elif isinstance(event, IncomingMember):
            for handler in self.router.members:
                await _run(ctx, handler)
        elif isinstance(event, IncomingMail):
            for handler in self.router.mails:
                await _run(ctx, handler)
        elif isinstance(event, IncomingUnreadable | IncomingWithheld):
            # Its key withheld, or given up after a day: the sender knows, instead of waiting
            # for an answer; in clear, since their app may refuse what the bot encrypts. Not
            # for a bridge account's message: there is nobody in particular to tell.
            if not self.services.identity.is_bridge(event.sender):
                ctx.reply(unreadable_notice(event), in_clear=True)

    async def _route_text(self, ctx: Context, event: IncomingText, text: str) -> None:
        if event.is_edit:
            return  # an edit of an earlier message is not a new answer
        if event.msgtype not in TEXT_MSGTYPES:
            if not ctx.in_staff_room:
                ctx.reply(Msg(ONLY_TEXT))
            return
        limit = self.services.config.service.max_message_chars
        if len(text) > limit:
            raise DomainError(
                Msg(
                    N_(
                        "Your message is too long ({length} characters; the limit is {limit}). "
                        "Please shorten it or split it into several messages."
                    ),
                    {"length": len(text), "limit": limit},
                )
            )
        match = COMMAND_RE.match(text)
        if match:
            name = match.group(1).lower()
            ctx.command, ctx.args = name, (match.group(2) or "").strip()
            spec = self.router.find_command(name)
            if spec is None or spec.handler is None:
                ctx.reply(Msg(UNKNOWN_COMMAND, {"name": name}))
                return
            if spec.staff and not ctx.is_staff:
                ctx.reply(Msg(STAFF_ONLY, {"name": name}))
                return
            await _run(ctx, spec.handler)
            return
        ctx.args = text
        loader = self.router.state_loader
        if loader is None:
            return
        ctx.handler = handler_name(loader)
        ctx.state = await loader(ctx)
        handler = self.router.texts.get(ctx.state.situation)
        if handler is not None:
            await _run(ctx, handler)


async def _run(ctx: Context, handler: Handler) -> None:
    ctx.handler = handler_name(handler)
    await handler(ctx)


async def _reaches(event: Incoming | None, room_id: str) -> bool:
    """Whether a reaction or redaction may act: not when the event it points at is known to
    be in another room (a card, an offer, a ✅ cannot be reached from elsewhere). An event the
    bot never saw nor sent is left to the handlers, which act only on events they know."""
    if isinstance(event, IncomingReaction):
        target = event.target_event_id
    elif isinstance(event, IncomingRedaction):
        target = event.redacts
    else:
        return True
    handled = await HandledEvent.get_or_none(event_id=target)
    if handled is not None:
        return handled.room_id == room_id
    sent = await OutboxItem.filter(event_id=target).first()
    return sent is None or sent.room_id == room_id


def is_database_outage(error: BaseException) -> bool:
    """True when the database connection itself failed (lost, refused, closed), as opposed to
    a query the database refused: the first is retried later, the second is a handler bug."""
    import asyncpg
    from tortoise.exceptions import DBConnectionError

    # Database errors only: a network error of a mail or video server must stay a handler
    # failure (apologised for), or a dead SMTP server would stall every batch.
    transient = (
        DBConnectionError,
        asyncpg.exceptions.ConnectionDoesNotExistError,
        asyncpg.exceptions.InterfaceError,
        asyncpg.exceptions.CannotConnectNowError,
        asyncpg.exceptions.AdminShutdownError,
        asyncpg.exceptions.InternalClientError,
    )
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, transient):
            return True
        current = current.__cause__ or current.__context__
    return False


def _norm_reaction(key: str) -> str:
    # Clients send ✅ with or without the emoji variation selector.
    return key.replace("\ufe0f", "")
