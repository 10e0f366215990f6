"""What a handler sees and how it is chosen: the `Router` each handler module fills (commands
with their help, reactions, redactions, members, text by the sender's `Situation`, effects),
and the `Context` of one event (who wrote, their language, and how to answer: always through
the outbox, so that nothing leaves before the event's transaction commits).

**Plain text is routed by state, not by module order.** Once the (room, sender) lock is held,
the router's state loader says once what the sender is in the middle of (`Situation`: an
intake, a slot choice, nothing…), and the one text handler declared for that situation runs.
Handler modules never call each other: one that needs another's work done *emits* an effect
value (`ctx.emit(...)`), and the module owning that work registers for its type.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from tortoise.transactions import in_transaction

from bot.domain.bridge import bridged_nick
from bot.events import (
    Incoming,
)
from bot.i18n import Msg, Translator
from bot.identity import Sender
from bot.mail import Mail

if TYPE_CHECKING:
    from bot.services import Services

__all__ = ["Sender"]  # re-exported: handlers name the sender from here

log = logging.getLogger(__name__)

Handler = Callable[["Context"], Awaitable[None]]


class DomainError(Exception):
    """A user-facing refusal: rolled back, then answered with `msg` in the user's language."""

    def __init__(self, msg: Msg):
        super().__init__(msg.text)
        self.msg = msg


class Situation(StrEnum):
    """What the author of a plain-text message is in the middle of, loaded once per message
    after the lock is taken; each text handler declares the situations it serves."""

    STAFF_ROOM = "staff_room"  # anything typed in the staff room
    STAFF_THREAD = "staff_thread"  # staff writing in the thread of a request's card
    STAFF_IN_CLIENT_ROOM = "staff_in_client_room"  # staff answering in a client's room
    NOT_A_CLIENT = "not_a_client"  # a bridge account speaking in its own name
    INTAKE = "intake"  # answering the questions of a running intake
    SLOT_CHOICE = "slot_choice"  # a slot number while an offer waits for one
    RATING = "rating"  # a rating (or its comment) while the client's rating question waits
    IDLE = "idle"  # nothing running: a new request


@dataclass(frozen=True, slots=True)
class SenderState:
    """The situation, with what the loader found to decide it (a conversation row…), so the
    handler does not read it again."""

    situation: Situation
    found: Any = None


StateLoader = Callable[["Context"], Awaitable[SenderState]]
EffectHandler = Callable[["Context", Any], Awaitable[None]]


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
        self.texts: dict[Situation, Handler] = {}
        self.members: list[Handler] = []
        self.mails: list[Handler] = []
        self.effects: dict[type, list[EffectHandler]] = defaultdict(list)
        self.state_loader: StateLoader | None = None

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

    def text(self, *situations: Situation) -> Callable[[Handler], Handler]:
        """Plain text (not a command) from a sender in one of `situations`: exactly one
        handler serves a situation, whatever the order the routers are included in."""
        if not situations:
            raise ValueError(f"router {self.name}: a text handler needs its situations")

        def register(fn: Handler) -> Handler:
            for situation in situations:
                _claim(self.texts, situation, fn, self.name)
            return fn

        return register

    def effect(self, kind: type) -> Callable[[EffectHandler], EffectHandler]:
        """Do the work another module asks for by emitting a `kind` value."""

        def register(fn: EffectHandler) -> EffectHandler:
            self.effects[kind].append(fn)
            return fn

        return register

    def states(self, loader: StateLoader) -> StateLoader:
        """The one function that says what a text's sender is in the middle of."""
        if self.state_loader is not None:
            raise ValueError(f"router {self.name}: a state loader is already set")
        self.state_loader = loader
        return loader

    def member(self) -> Callable[[Handler], Handler]:
        def register(fn: Handler) -> Handler:
            self.members.append(fn)
            return fn

        return register

    def mail(self) -> Callable[[Handler], Handler]:
        """A mail read from the support mailbox (`bot.events.IncomingMail`)."""

        def register(fn: Handler) -> Handler:
            self.mails.append(fn)
            return fn

        return register

    def include(self, other: Router) -> None:
        self.commands.extend(other.commands)
        self.reactions.extend(other.reactions)
        self.redactions.extend(other.redactions)
        for situation, fn in other.texts.items():
            _claim(self.texts, situation, fn, self.name)
        self.members.extend(other.members)
        self.mails.extend(other.mails)
        for kind, handlers in other.effects.items():
            self.effects[kind].extend(handlers)
        if other.state_loader is not None:
            self.states(other.state_loader)

    def find_command(self, name: str) -> CommandSpec | None:
        for spec in self.commands:
            if name in spec.names:
                return spec
        return None


def _claim(table: dict[Situation, Handler], situation: Situation, fn: Handler, name: str) -> None:
    if situation in table and table[situation] is not fn:
        raise ValueError(f"router {name}: two text handlers for the situation {situation}")
    table[situation] = fn


@dataclass(slots=True)
class Outgoing:
    """An outbox row to write with the handler's transaction."""

    room_id: str
    kind: str
    content: dict[str, Any]
    target: str | None = None
    on_sent: str | None = None


#: The outbox "room" of e-mails: one worker sends them in order, apart from the chat rooms.
MAIL_QUEUE = "mail:"
#: The outbox kind of a message sent unencrypted even in an encrypted room (`bot.unreadable`
#: says which, and why).
MESSAGE_IN_CLEAR = "message_in_clear"


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
    # What the sender is in the middle of (plain text only; loaded once by the dispatcher).
    state: SenderState | None = None
    # The whole registry: effects to run, commands to list in !help.
    router: Router | None = None
    # The function name of the handler running (an effect's while it runs): what an error
    # is counted under (`support_bot_handler_errors_total{handler=…}`).
    handler: str = ""
    # How `reply` answers when the event came from elsewhere than a room (a mail: its
    # handler sets this once it knows the mail may be answered, and refusals and the
    # apology then go back by mail). None: in the event's room.
    answer: Callable[[Msg | str], None] | None = None

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

    def reply(
        self, msg: Msg | str, *, html_body: str | None = None, in_clear: bool = False
    ) -> None:
        """Answer in the room of the event (addressing the nickname behind a bridge), or as
        `answer` says (a mail); `in_clear`: unencrypted even in an encrypted room, as plain
        text (only for what a client whose app refuses the bot's keys must still read:
        `bot.unreadable`)."""
        if self.answer is not None:
            self.answer(msg)
            return
        plain = self.render(msg)
        if in_clear:
            self.outgoing.append(
                Outgoing(self.room_id, MESSAGE_IN_CLEAR, notice_content(plain, None))
            )
            return
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
        thread: str | None = None,
    ) -> None:
        """A notice in `room_id`; with `thread` (a tag such as "card:12", resolved when it is
        sent), in the thread of that event."""
        plain = self.render(msg, tr)
        formatted = None if plain_only else html_body
        self.outgoing.append(
            Outgoing(
                room_id,
                "message",
                notice_content(plain, formatted),
                target=thread,
                on_sent=on_sent,
            )
        )

    def send_staff(
        self,
        msg: Msg | str,
        *,
        html_body: str | None = None,
        on_sent: str | None = None,
        thread: str | None = None,
    ) -> None:
        room = self.services.staff_room_id()
        if room is None:
            log.warning("no staff room: staff notice dropped")
            return
        self.send(
            room,
            msg,
            tr=self.services.staff_tr(),
            html_body=html_body,
            on_sent=on_sent,
            thread=thread,
        )

    def edit(self, room_id: str, target: str, plain: str, html_body: str | None) -> None:
        new = notice_content(plain, html_body)
        content = dict(new)
        content["body"] = "* " + plain
        if html_body is not None:
            content["formatted_body"] = "* " + html_body
        content["m.new_content"] = new
        self.outgoing.append(Outgoing(room_id, "edit", content, target=target))

    @contextmanager
    def collect(self) -> Iterator[list[Outgoing]]:
        """Hold back the messages written inside the block: they are handed to `send_mail`
        and go out only once the outcome of the e-mail is known."""
        start = len(self.outgoing)
        held: list[Outgoing] = []
        try:
            yield held
        finally:
            held.extend(self.outgoing[start:])
            del self.outgoing[start:]

    def send_mail(
        self,
        mail: Mail,
        *,
        if_sent: Sequence[Outgoing] = (),
        if_failed: Sequence[Outgoing] = (),
        with_reason: bool = False,
    ) -> None:
        """E-mail through the outbox: sent after this event's commit (so a rolled-back change
        never mails anything), retried with backoff, then exactly one of the two groups of
        messages follows: `if_sent` once the mail is out, `if_failed` when it finally fails
        (with `with_reason`, their text ends with the error, for staff)."""
        content: dict[str, Any] = {
            "mail": mail.to_content(),
            "if_sent": [_stored(out) for out in if_sent],
            "if_failed": [_stored(out) for out in if_failed],
        }
        if with_reason:
            content["with_reason"] = True
        self.outgoing.append(Outgoing(MAIL_QUEUE, "mail", content))

    def to_client(
        self,
        room_id: str,
        client_key: str,
        msg: Msg | str,
        *,
        tr: Translator | None = None,
        on_sent: str | None = None,
    ) -> None:
        """Write to a client in `room_id`, in `tr`'s language: the one way every module
        writes to a client outside the room of the event it answers. Behind a bridge the
        text is plain and addressed to their nickname."""
        text = self.render(msg, tr)
        nick = bridged_nick(client_key, room_id)
        if nick is not None:
            self.send(room_id, addressed(nick, text), plain_only=True, on_sent=on_sent)
        else:
            self.send(room_id, text, on_sent=on_sent)

    def handles(self, kind: type) -> bool:
        """Whether some module does the work of an emitted `kind` effect."""
        return self.router is not None and bool(self.router.effects.get(kind))

    async def emit(self, effect: Any) -> None:
        """Have the module that owns it do `effect`'s work now, in this event's transaction;
        its refusals and failures are this event's."""
        outer = self.handler
        for handler in self.router.effects.get(type(effect), []) if self.router else []:
            self.handler = handler_name(handler)
            await handler(self, effect)  # a failure is counted under the effect's handler
        self.handler = outer

    async def try_emit(self, effect: Any) -> bool:
        """`emit` in a savepoint: when the work fails, its rows and messages are dropped and
        the caller goes on. False when nobody does that work or it failed."""
        if not self.handles(type(effect)):
            return False
        sent, outer = len(self.outgoing), self.handler
        try:
            async with in_transaction():
                await self.emit(effect)
        except Exception:
            log.exception("effect %s failed", type(effect).__name__)
            del self.outgoing[sent:]
            self.handler = outer
            return False
        return True

    def react(self, room_id: str, target: str, key: str) -> None:
        self.outgoing.append(Outgoing(room_id, "reaction", {"key": key}, target=target))

    def send_file(
        self,
        room_id: str,
        data: bytes,
        filename: str,
        mimetype: str,
        body: str,
        *,
        thread: str | None = None,
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
                target=thread,
            )
        )

    def fail(self, msg: Msg) -> DomainError:
        return DomainError(msg)


def all_handlers(router: Router) -> Iterator[Callable[..., Any]]:
    for spec in router.commands:
        if spec.handler is not None:
            yield spec.handler
    yield from (spec.handler for spec in router.reactions)
    yield from router.redactions
    yield from router.texts.values()
    yield from router.members
    yield from router.mails
    for handlers in router.effects.values():
        yield from handlers
    if router.state_loader is not None:
        yield router.state_loader


def handler_name(fn: Callable[..., Any]) -> str:
    """The label a handler's errors are counted under: its function name."""
    return getattr(fn, "__name__", type(fn).__name__)


def _stored(out: Outgoing) -> dict[str, Any]:
    return {
        "room_id": out.room_id,
        "kind": out.kind,
        "content": out.content,
        "target": out.target,
        "on_sent": out.on_sent,
    }
