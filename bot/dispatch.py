"""Routing Matrix events to handlers, with one error boundary and exactly-once effects.

Each handled event runs in one database transaction that also records the event id
(`HandledEvent`) and the replies it causes (`OutboxItem`). Either all of it is stored or none
of it: a crash before the commit replays the event, a crash after it finds the event handled
and the replies waiting in the outbox, which the `Deliverer` sends with stable transaction ids.

Routers only record handlers (decorators have no side effect beyond that); `handlers/__init__`
includes every module's router explicitly.

What a handler sees (`Context`) and how handlers are registered (`Router`) are in
`bot.routing`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from bot.events import (
    TEXT_MSGTYPES,
    Incoming,
    IncomingMember,
    IncomingReaction,
    IncomingRedaction,
    IncomingText,
    IncomingUnreadable,
)
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
from bot.storage import repo
from bot.storage.models import HandledEvent, Notice, OutboxItem

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
UNREADABLE = N_(
    "I could not read the encrypted message you sent on {sent}: its keys never reached me. "
    "Please send it again."
)
FLOODING = N_(
    "You are sending many messages very quickly. I read them all, in order, but I will answer "
    "more slowly for a moment."
)

# A flooding client's messages are all handled (nothing is lost), each one over the limit
# after this pause, taken outside any transaction and per sender (others are not slowed).
FLOOD_PAUSE_SECONDS = 1.0
FLOOD_PAUSE_CAP_SECONDS = 5.0


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
        self._locks: dict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._recent: dict[str, deque[datetime]] = defaultdict(deque)
        self._flood_told: dict[str, datetime] = {}
        self._paused: dict[str, float] = defaultdict(float)
        self._reaction_keys: dict[str, list[Handler]] = defaultdict(list)
        for spec in router.reactions:
            for key in spec.keys:
                self._reaction_keys[_norm_reaction(key)].append(spec.handler)
        # Every handler's error series exists from the start, at 0: rates and alerts need it.
        services.metrics.expect_handlers([NO_HANDLER, *map(handler_name, all_handlers(router))])

    async def on_batch(self, events: Sequence[Incoming]) -> None:
        """Handle one sync batch: senders in parallel, each sender's events in order."""
        self._paused.clear()
        groups: dict[tuple[str, str], list[Incoming]] = defaultdict(list)
        for event in events:
            groups[(event.room_id, event.sender)].append(event)
        # Each group in a task of its own (even a single one): a transaction that the database
        # broke mid-way can leave Tortoise's "current transaction" marker in the task that
        # opened it; it must die with that task, never stay in the sync loop's.
        await asyncio.gather(*(self._handle_in_order(evs) for evs in groups.values()))

    async def _handle_in_order(self, events: Iterable[Incoming]) -> None:
        for event in events:
            await self.handle(event)

    async def handle(self, event: Incoming) -> None:
        if event.sender == self.services.bot_user_id():
            return
        author = self.services.identity.author(event)  # once: who, staff or not, the text
        sender = author.sender
        lock = self._locks[(event.room_id, sender.key)]
        async with lock:
            if await HandledEvent.exists(event_id=event.event_id):
                return
            now = self.services.clock()
            try:
                flooding = await self._flood_check(event, author, now)
                ctx = await self._context(event, author, now)
            except Exception:
                # Even the preparation may fail (e.g. a database refusing the client key):
                # it must end in the apology, never escape and stall the sync loop.
                ctx = Context(
                    event=event,
                    room_id=event.room_id,
                    sender=sender,
                    services=self.services,
                    now=now,
                    tr=self.services.catalogs.get(None),
                    is_staff=False,
                    router=self.router,
                )
                await self._fail(ctx, now)
                self.wake_delivery()
                return
            rows: list[OutboxItem] | None = None  # once committed: handed to the deliverer
            try:
                async with in_transaction():
                    await self._route(ctx, author)
                    if flooding:
                        ctx.reply(Msg(FLOODING))
                    written = await self._commit(ctx, now)
                rows = written
            except IntegrityError:
                # Another delivery of the same event won the race: nothing more to do.
                if await HandledEvent.exists(event_id=event.event_id):
                    return
                rows = await self._fail(ctx, now)
            except DomainError as refusal:
                ctx.outgoing.clear()
                ctx.reply(refusal.msg)
                async with in_transaction():
                    written = await self._commit(ctx, now)
                rows = written
            except Exception as error:
                if is_database_outage(error):
                    # Not the handler's fault and not to be apologised for: the event stays
                    # unhandled, the batch fails, and the shell retries it (token not stored).
                    raise
                rows = await self._fail(ctx, now)
        self.services.count_event(type(event).__name__)
        if rows is not None and self.deliver is not None:
            # The answer latency is a person's wait: only messages count (not reactions nor
            # memberships), and not the day-old ones the bot could never decrypt.
            since = event.ts if isinstance(event, IncomingText) else None
            self.deliver(rows, event.room_id, since)
        else:
            self.wake_delivery()

    async def _flood_check(self, event: Incoming, author: Author, now: datetime) -> bool:
        """Count a client's recent messages; pause over the limit. True = tell them now."""
        limit = self.services.config.service.flood_messages_per_minute
        if limit <= 0 or not isinstance(event, IncomingText) or author.is_staff:
            return False
        sender = author.sender
        recent = self._recent[sender.key]
        recent.append(now)
        while recent and now - recent[0] > timedelta(minutes=1):
            recent.popleft()
        if len(recent) <= limit:
            return False
        if self._paused[sender.key] < FLOOD_PAUSE_CAP_SECONDS:
            self._paused[sender.key] += FLOOD_PAUSE_SECONDS
            await asyncio.sleep(FLOOD_PAUSE_SECONDS)
        told = self._flood_told.get(sender.key)
        if told is not None and now - told < timedelta(minutes=10):
            return False
        self._flood_told[sender.key] = now
        return True

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

    async def _fail(self, ctx: Context, now: datetime) -> list[OutboxItem]:
        """Count the error, record the event as handled, apologise; the rows written."""
        ref = secrets.token_hex(4)
        event_id = ctx.event.event_id if ctx.event else "-"
        log.exception("handler failed (ref %s, event %s in %s)", ref, event_id, ctx.room_id)
        self.services.count_error(ctx.handler or NO_HANDLER)
        ctx.outgoing.clear()
        if isinstance(ctx.event, IncomingText):
            ctx.reply(Msg(APOLOGY, {"ref": ref}))
        async with in_transaction():
            return await self._commit(ctx, now)

    async def _commit(
        self, ctx: Context, now: datetime, *, job_key: str | None = None
    ) -> list[OutboxItem]:
        if job_key is None:
            assert ctx.event is not None
            await HandledEvent.create(
                event_id=ctx.event.event_id, room_id=ctx.room_id, handled_at=now
            )
            base = txn_base(ctx.event.event_id)
        else:
            await Notice.create(key=job_key, at=now)
            base = txn_base("job:" + job_key)
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

    async def _route(self, ctx: Context, author: Author) -> None:
        event = ctx.event
        if isinstance(event, IncomingText):
            await self._route_text(ctx, event, author.text or "")
        elif isinstance(event, IncomingReaction):
            for handler in self._reaction_keys.get(_norm_reaction(event.key), ()):
                await _run(ctx, handler)
        elif isinstance(event, IncomingRedaction):
            for handler in self.router.redactions:
                await _run(ctx, handler)
        elif isinstance(event, IncomingMember):
            for handler in self.router.members:
                await _run(ctx, handler)
        elif isinstance(event, IncomingUnreadable):
            # Given up after a day: the sender knows, instead of waiting for an answer. Not
            # for a bridge account's message: there is nobody in particular to tell.
            if not self.services.identity.is_bridge(event.sender):
                ctx.reply(Msg(UNREADABLE, {"sent": event.ts}))

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
