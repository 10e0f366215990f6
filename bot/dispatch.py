"""Routing Matrix events to handlers, with one error boundary and exactly-once effects.

Each handled event runs in one database transaction that also records the event id
(`HandledEvent`) and the replies it causes (`OutboxItem`). Either all of it is stored or none
of it: a crash before the commit replays the event, a crash after it finds the event handled
and the replies waiting in the outbox, which the `Deliverer` sends with stable transaction ids.

Routers only record handlers (decorators have no side effect beyond that); `handlers/__init__`
includes every module's router explicitly.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from bot.i18n import N_, Msg, Translator
from bot.matrix.inbound import (
    Incoming,
    IncomingMember,
    IncomingReaction,
    IncomingRedaction,
    IncomingText,
    IncomingUnreadable,
)
from bot.storage.models import HandledEvent, Notice, OutboxItem, UserPref

if TYPE_CHECKING:
    from bot.app import Services

log = logging.getLogger(__name__)

Handler = Callable[["Context"], Awaitable[None]]


class DomainError(Exception):
    """A user-facing refusal: rolled back, then answered with `msg` in the user's language."""

    def __init__(self, msg: Msg):
        super().__init__(msg.text)
        self.msg = msg


@dataclass(frozen=True, slots=True)
class Sender:
    """Who wrote: a Matrix account, or a nickname speaking through a bridge account."""

    user_id: str
    key: str  # the client identity: the Matrix id, or "bridge:<room id>:<nickname>"
    nick: str | None = None

    @property
    def bridged(self) -> bool:
        return self.nick is not None

    @property
    def display(self) -> str:
        return self.nick if self.nick is not None else self.user_id


@dataclass(frozen=True, slots=True)
class CommandSpec:
    names: tuple[str, ...]
    help: str  # English msgid
    usage: str = ""  # arguments, shown as is (e.g. "SP-…")
    staff: bool = False
    handler: Handler | None = None


@dataclass(frozen=True, slots=True)
class ReactionSpec:
    keys: frozenset[str]
    handler: Handler


class Router:
    """Records handlers; nothing runs at import time."""

    def __init__(self, name: str):
        self.name = name
        self.commands: list[CommandSpec] = []
        self.reactions: list[ReactionSpec] = []
        self.redactions: list[Handler] = []
        self.texts: list[Handler] = []
        self.staff_texts: list[Handler] = []
        self.members: list[Handler] = []

    def command(
        self, *names: str, help: str, usage: str = "", staff: bool = False
    ) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            self.commands.append(CommandSpec(tuple(names), help, usage, staff, fn))
            return fn

        return register

    def reaction(self, *keys: str) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            self.reactions.append(ReactionSpec(frozenset(keys), fn))
            return fn

        return register

    def redaction(self) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            self.redactions.append(fn)
            return fn

        return register

    def text(self, *, staff_room: bool = False) -> Callable[[Handler], Handler]:
        """Plain text (not a command): in client rooms, or in the staff room."""

        def register(fn: Handler) -> Handler:
            (self.staff_texts if staff_room else self.texts).append(fn)
            return fn

        return register

    def member(self) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            self.members.append(fn)
            return fn

        return register

    def include(self, other: Router) -> None:
        self.commands.extend(other.commands)
        self.reactions.extend(other.reactions)
        self.redactions.extend(other.redactions)
        self.texts.extend(other.texts)
        self.staff_texts.extend(other.staff_texts)
        self.members.extend(other.members)

    def find_command(self, name: str) -> CommandSpec | None:
        for spec in self.commands:
            if name in spec.names:
                return spec
        return None


@dataclass(slots=True)
class Outgoing:
    """An outbox row to write with the handler's transaction."""

    room_id: str
    kind: str
    content: dict[str, Any]
    target: str | None = None
    on_sent: str | None = None


def txn_base(event_id: str) -> str:
    # Matrix transaction ids go in a URL path: derive a safe, stable one from the event id.
    return "sb" + hashlib.sha256(event_id.encode()).hexdigest()[:24]


def notice_content(plain: str, formatted: str | None) -> dict[str, Any]:
    """An m.notice; HTML only when the message has markup of its own (cards, tables,
    lists). Plain text keeps its line breaks in every client, and an HTML copy of it would
    double the event's size for nothing."""
    # An empty m.mentions: nothing the bot relays (client text, names) may ping anyone.
    content: dict[str, Any] = {"msgtype": "m.notice", "body": plain, "m.mentions": {}}
    if formatted is not None:
        content["format"] = "org.matrix.custom.html"
        content["formatted_body"] = formatted
    return content


def addressed(nick: str, text: str) -> str:
    """A message to the person behind a bridge: their nickname first, made harmless (a
    nickname is whatever they typed in Nextcloud Talk: it must not ping or render as a pill)."""
    from bot.cards import defuse

    return f"{defuse(nick)}: {text}"


@dataclass
class Context:
    """What a handler sees of one event, and how it answers (always through the outbox)."""

    event: Incoming | None  # None for a background job (reminders, SLA warnings)
    room_id: str
    sender: Sender
    services: Services
    now: datetime
    tr: Translator
    is_staff: bool
    command: str = ""
    args: str = ""
    outgoing: list[Outgoing] = field(default_factory=list)
    # Set by a text handler that has taken the message as its own (e.g. an intake answer):
    # the handlers after it do not look at it.
    taken: bool = False

    @property
    def tz(self) -> ZoneInfo:
        return self.services.tz

    @property
    def in_staff_room(self) -> bool:
        return self.room_id == self.services.staff_room_id()

    @property
    def bridged(self) -> bool:
        return self.sender.bridged

    def render(self, msg: Msg | str, tr: Translator | None = None) -> str:
        if isinstance(msg, str):
            return msg
        return (tr or self.tr).render(msg, self.tz)

    def reply(self, msg: Msg | str, *, html_body: str | None = None) -> None:
        """Answer in the room of the event (addressing the nickname behind a bridge)."""
        plain = self.render(msg)
        if self.sender.bridged:
            # Bridged rooms: plain text only, addressed to the person behind the bridge.
            self.outgoing.append(
                Outgoing(
                    self.room_id,
                    "message",
                    notice_content(addressed(self.sender.nick, plain), None),
                )
            )
            return
        self.outgoing.append(
            Outgoing(
                self.room_id,
                "message",
                notice_content(plain, html_body),
            )
        )

    def send(
        self,
        room_id: str,
        msg: Msg | str,
        *,
        tr: Translator | None = None,
        html_body: str | None = None,
        on_sent: str | None = None,
        plain_only: bool = False,
    ) -> None:
        plain = self.render(msg, tr)
        formatted = None if plain_only else html_body
        self.outgoing.append(
            Outgoing(room_id, "message", notice_content(plain, formatted), on_sent=on_sent)
        )

    def send_staff(
        self, msg: Msg | str, *, html_body: str | None = None, on_sent: str | None = None
    ) -> None:
        room = self.services.staff_room_id()
        if room is None:
            log.warning("no staff room: staff notice dropped")
            return
        self.send(room, msg, tr=self.services.staff_tr(), html_body=html_body, on_sent=on_sent)

    def edit(self, room_id: str, target: str, plain: str, html_body: str | None) -> None:
        new = notice_content(plain, html_body)
        content = dict(new)
        content["body"] = "* " + plain
        if html_body is not None:
            content["formatted_body"] = "* " + html_body
        content["m.new_content"] = new
        self.outgoing.append(Outgoing(room_id, "edit", content, target=target))

    def react(self, room_id: str, target: str, key: str) -> None:
        self.outgoing.append(Outgoing(room_id, "reaction", {"key": key}, target=target))

    def send_file(
        self, room_id: str, data: bytes, filename: str, mimetype: str, body: str
    ) -> None:
        self.outgoing.append(
            Outgoing(
                room_id,
                "file",
                {
                    "data": data.hex(),
                    "filename": filename,
                    "mimetype": mimetype,
                    "body": body,
                },
            )
        )

    def fail(self, msg: Msg) -> DomainError:
        return DomainError(msg)


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


class Dispatcher:
    """Turns batches of incoming events into handler runs, one transaction per event."""

    def __init__(
        self,
        router: Router,
        services: Services,
        *,
        wake_delivery: Callable[[], None],
        deliver: Callable[[Sequence[OutboxItem], str | None], None] | None = None,
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
        sender = self.services.identify(event)
        lock = self._locks[(event.room_id, sender.key)]
        async with lock:
            if await HandledEvent.exists(event_id=event.event_id):
                return
            now = self.services.clock()
            try:
                flooding = await self._flood_check(event, sender, now)
                ctx = await self._context(event, sender, now)
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
                )
                await self._fail(ctx, now)
                self.wake_delivery()
                return
            rows: list[OutboxItem] | None = None  # once committed: handed to the deliverer
            try:
                async with in_transaction():
                    await self._route(ctx)
                    if flooding:
                        ctx.reply(Msg(FLOODING))
                    written = await self._commit(ctx, now)
                rows = written
            except IntegrityError:
                # Another delivery of the same event won the race: nothing more to do.
                if await HandledEvent.exists(event_id=event.event_id):
                    return
                await self._fail(ctx, now)
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
                await self._fail(ctx, now)
        self.services.count_event(type(event).__name__)
        if rows is not None and self.deliver is not None:
            self.deliver(rows, event.room_id)
        else:
            self.wake_delivery()

    async def _flood_check(self, event: Incoming, sender: Sender, now: datetime) -> bool:
        """Count a client's recent messages; pause over the limit. True = tell them now."""
        limit = self.services.config.service.flood_messages_per_minute
        if limit <= 0 or not isinstance(event, IncomingText) or self.services.is_staff(sender):
            return False
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
        )
        try:
            async with in_transaction():
                await job(ctx)
                await self._commit(ctx, now, job_key=key)
        except IntegrityError:
            return False
        except Exception:
            log.exception("background job failed (%s)", key.split(":", 1)[0])
            self.services.count_error()
            return False
        self.wake_delivery()
        return True

    async def _fail(self, ctx: Context, now: datetime) -> None:
        ref = secrets.token_hex(4)
        event_id = ctx.event.event_id if ctx.event else "-"
        log.exception("handler failed (ref %s, event %s in %s)", ref, event_id, ctx.room_id)
        self.services.count_error()
        ctx.outgoing.clear()
        if isinstance(ctx.event, IncomingText):
            ctx.reply(Msg(APOLOGY, {"ref": ref}))
        async with in_transaction():
            await self._commit(ctx, now)

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

    async def _context(self, event: Incoming, sender: Sender, now: datetime) -> Context:
        locale = await self.services.locale_for(sender.key, event.room_id)
        return Context(
            event=event,
            room_id=event.room_id,
            sender=sender,
            services=self.services,
            now=now,
            tr=self.services.catalogs.get(locale),
            is_staff=self.services.is_staff(sender),
        )

    async def _route(self, ctx: Context) -> None:
        event = ctx.event
        if isinstance(event, IncomingText):
            await self._route_text(ctx, event)
        elif isinstance(event, IncomingReaction):
            for handler in self._reaction_keys.get(_norm_reaction(event.key), ()):
                await handler(ctx)
        elif isinstance(event, IncomingRedaction):
            for handler in self.router.redactions:
                await handler(ctx)
        elif isinstance(event, IncomingMember):
            for handler in self.router.members:
                await handler(ctx)
        elif isinstance(event, IncomingUnreadable):
            # Given up after a day: the sender knows, instead of waiting for an answer. Not
            # for a bridge account's message: there is nobody in particular to tell.
            if not self.services.is_bridge(event.sender):
                ctx.reply(Msg(UNREADABLE, {"sent": event.ts}))

    async def _route_text(self, ctx: Context, event: IncomingText) -> None:
        if event.is_edit:
            return  # an edit of an earlier message is not a new answer
        if event.msgtype not in ("m.text", "m.notice", "m.emote"):
            if not ctx.in_staff_room:
                ctx.reply(Msg(ONLY_TEXT))
            return
        text = self.services.text_of(ctx.sender, event)
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
            await spec.handler(ctx)
            return
        ctx.args = text
        handlers = self.router.staff_texts if ctx.in_staff_room else self.router.texts
        for handler in handlers:
            await handler(ctx)
            if ctx.taken:
                break


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


async def set_locale(user_key: str, locale: str) -> None:
    await UserPref.update_or_create(defaults={"locale": locale}, user_key=user_key)
