"""Flow-test harness: the real router, dispatcher, outbox and database, with a recording
transport instead of a homeserver and a clock the test moves.

    async with BotHarness.open(db_url) as bot:
        sent = await bot.say("!dm:test", "@alice:test", "!aide")
        assert "!aide" in sent[0].body
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.config import Config, parse_config
from bot.dispatch import Dispatcher
from bot.events import (
    Incoming,
    IncomingMember,
    IncomingReaction,
    IncomingRedaction,
    IncomingText,
)
from bot.i18n import Catalogs
from bot.mailbox.raw import RawMail
from bot.outbox import Deliverer
from bot.services import Metrics, Services
from bot.storage.db import close_db, open_db
from bot.storage.tags import SentTags

STAFF_ROOM = "!staff:test"
BOT = "@bot:test"
STAFF = "@staff:test"


def test_config(**sections: Mapping[str, Any]) -> Config:
    """A valid config for tests; sections given replace or extend the defaults."""
    raw: dict[str, Any] = {
        "matrix": {
            "homeserver": "http://127.0.0.1:1",
            "user_id": BOT,
            "password": "test-password-not-used",
            "staff_room": STAFF_ROOM,
            "staff": [STAFF],
        },
        "web": {"public_url": "http://127.0.0.1:1", "secret": "a-test-secret-of-32-characters!!"},
        "video": {"provider": "jitsi", "jitsi": {"base_url": "https://jitsi.test"}},
        "availability": [
            {
                "staff": STAFF,
                "days": ["mon", "tue", "wed", "thu", "fri"],
                "start": "09:00",
                "end": "12:00",
            },
            {
                "staff": STAFF,
                "days": ["mon", "tue", "wed", "thu", "fri"],
                "start": "14:00",
                "end": "17:00",
            },
        ],
    }
    for name, values in sections.items():
        if isinstance(values, Mapping) and isinstance(raw.get(name), dict):
            raw[name] = {**raw[name], **values}
        else:
            raw[name] = values
    return parse_config(raw, {})


test_config.__test__ = False  # a helper, not a test, wherever it is imported


@dataclass
class FakeClock:
    now: datetime = field(default_factory=lambda: datetime(2026, 11, 26, 9, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass(frozen=True, slots=True)
class Sent:
    room_id: str
    type: str
    content: dict[str, Any]
    txn_id: str
    event_id: str
    in_clear: bool = False  # sent unencrypted even if the room is encrypted

    @property
    def body(self) -> str:
        return str(self.content.get("body", ""))

    @property
    def html(self) -> str | None:
        return self.content.get("formatted_body")


class RecordingTransport:
    """Records what the bot sends; same transaction id → same event, as a homeserver does."""

    def __init__(self, bot_user_id: str = BOT):
        self._bot = bot_user_id
        self.sent: list[Sent] = []
        self.by_txn: dict[str, Sent] = {}
        self.uploads: list[tuple[bytes, str, str]] = []
        self.created_rooms: list[dict[str, Any]] = []
        self.room_keys: dict[str, str] = {}
        self.invites: list[tuple[str, str]] = []
        self.redactions: list[tuple[str, str, str | None]] = []  # room, event, reason
        self.members: dict[str, set[str]] = {STAFF_ROOM: {BOT, STAFF}}
        self.powers: dict[str, dict[str, int]] = {STAFF_ROOM: {STAFF: 50}}
        self.encrypted: set[str] = set()
        self.fail_next = 0
        self._ids = itertools.count(1)

    @property
    def bot_user_id(self) -> str:
        return self._bot

    async def send_event(
        self,
        room_id: str,
        event_type: str,
        content: dict[str, Any],
        txn_id: str,
        *,
        encrypt: bool = True,
    ) -> str:
        from bot.ports import TransportError

        if self.fail_next:
            self.fail_next -= 1
            raise TransportError("simulated outage", retryable=True)
        if txn_id in self.by_txn:
            return self.by_txn[txn_id].event_id
        sent = Sent(
            room_id, event_type, content, txn_id, f"$out{next(self._ids)}", in_clear=not encrypt
        )
        self.sent.append(sent)
        self.by_txn[txn_id] = sent
        return sent.event_id

    async def upload(self, data: bytes, content_type: str, filename: str) -> str:
        self.uploads.append((data, content_type, filename))
        return f"mxc://test/{len(self.uploads)}"

    async def redact(self, room_id: str, event_id: str, reason: str | None = None) -> None:
        from bot.ports import TransportError

        if self.fail_next:
            self.fail_next -= 1
            raise TransportError("simulated outage", retryable=True)
        self.redactions.append((room_id, event_id, reason))

    async def create_room(
        self,
        *,
        name: str,
        invite: list[str],
        is_direct: bool,
        encrypted: bool,
        key: str | None = None,
    ) -> str:
        if key is not None and key in self.room_keys:  # as the alias does on a homeserver
            return self.room_keys[key]
        room_id = f"!room{next(self._ids)}:test"
        if key is not None:
            self.room_keys[key] = room_id
        self.created_rooms.append(
            {"room_id": room_id, "name": name, "invite": list(invite), "is_direct": is_direct}
        )
        self.members[room_id] = {self._bot, *invite}
        return room_id

    async def invite(self, room_id: str, user_id: str) -> None:
        self.invites.append((room_id, user_id))
        self.members.setdefault(room_id, {self._bot}).add(user_id)

    async def ensure_room(self, room_id: str) -> None:
        return None  # everything is known here

    def joined_members(self, room_id: str) -> set[str]:
        return set(self.members.get(room_id, {self._bot}))

    def power_level(self, room_id: str, user_id: str) -> int:
        return self.powers.get(room_id, {}).get(user_id, 0)

    def is_encrypted(self, room_id: str) -> bool:
        return room_id in self.encrypted

    def is_direct(self, room_id: str) -> bool:
        return len(self.joined_members(room_id)) <= 2


class Crash(BaseException):
    """The process dies at this point: nothing after it runs and nothing is committed (a
    BaseException, so no error boundary apologises for it)."""


class BotHarness:
    def __init__(self, config: Config, db_url: str, clock: FakeClock | None = None):
        self.config = config
        self.db_url = db_url
        self.clock = clock or FakeClock()
        self.transport = RecordingTransport(config.matrix.user_id)
        self._ids = itertools.count(1)
        self._uids = itertools.count(1)
        self.catalogs = Catalogs.load(default=config.service.default_locale)
        self._build()

    def _build(self) -> None:
        from handlers import build_router, sweepers

        self.services = Services(
            self.config,
            catalogs=self.catalogs,
            transport=self.transport,  # type: ignore[arg-type]
            clock=self.clock,
            metrics=Metrics(),
            staff_room_id=lambda: self.config.matrix.staff_room,
        )
        self.deliverer = Deliverer(
            self.transport,  # type: ignore[arg-type]
            self.clock,
            tags=SentTags(),
            mailer=lambda: self.services.mailer,
            metrics=self.services.metrics,
            backoff=0.01,  # a dead test SMTP server is given up in a moment
        )
        self.dispatcher = Dispatcher(
            build_router(), self.services, wake_delivery=lambda: None, deliver=self.deliverer.offer
        )
        self.services.jobs = self.dispatcher
        self.sweepers = sweepers()

    @classmethod
    @asynccontextmanager
    async def open(
        cls, db_url: str, config: Config | None = None, clock: FakeClock | None = None
    ) -> AsyncIterator[BotHarness]:
        await open_db(db_url)
        harness = cls(config or test_config(), db_url, clock)
        try:
            yield harness
        finally:
            await close_db()

    async def restart(self) -> None:
        """A new process over the same database: nothing survives but what was stored."""
        await close_db()
        await open_db(self.db_url)
        self._build()

    @contextmanager
    def crash_at_commit(self) -> Iterator[None]:
        """The next event's handler runs to its end, with every outside effect it makes
        (rooms, invites, meetings), then the process dies before its transaction commits.
        Follow with `restart()` and the same event: a replay must not repeat the effects."""
        dispatcher = self.dispatcher

        async def crash(*args: Any, **kwargs: Any) -> Any:
            raise Crash

        dispatcher._commit = crash  # type: ignore[method-assign]
        try:
            yield
        finally:
            del dispatcher._commit  # back to the class's own

    def text_event(self, room_id: str, sender: str, body: str) -> IncomingText:
        return IncomingText(
            event_id=self.next_event_id(),
            room_id=room_id,
            sender=sender,
            body=body,
            ts=self.clock(),
            msgtype="m.text",
        )

    def next_event_id(self) -> str:
        return f"$in{next(self._ids)}"

    async def deliver(self, event: Incoming) -> list[Sent]:
        before = len(self.transport.sent)
        await self.dispatcher.on_batch([event])
        await self.deliverer.deliver_pending()
        return self.transport.sent[before:]

    async def say(self, room_id: str, sender: str, body: str, **extra: Any) -> list[Sent]:
        event = IncomingText(
            event_id=extra.pop("event_id", None) or self.next_event_id(),
            room_id=room_id,
            sender=sender,
            body=body,
            ts=self.clock(),
            msgtype=extra.pop("msgtype", "m.text"),
            **extra,
        )
        return await self.deliver(event)

    async def react(self, room_id: str, sender: str, target: str, key: str) -> list[Sent]:
        event = IncomingReaction(
            event_id=self.next_event_id(),
            room_id=room_id,
            sender=sender,
            target_event_id=target,
            key=key,
            ts=self.clock(),
        )
        self.last_reaction_id = event.event_id
        return await self.deliver(event)

    async def redact(self, room_id: str, sender: str, redacts: str) -> list[Sent]:
        event = IncomingRedaction(
            event_id=self.next_event_id(),
            room_id=room_id,
            sender=sender,
            redacts=redacts,
            ts=self.clock(),
        )
        return await self.deliver(event)

    async def member(self, room_id: str, user_id: str, membership: str) -> list[Sent]:
        event = IncomingMember(
            event_id=self.next_event_id(),
            room_id=room_id,
            user_id=user_id,
            membership=membership,
            sender=user_id,
            ts=self.clock(),
        )
        return await self.deliver(event)

    def raw_mail(self, raw: bytes, *, uid: int | None = None, too_big: bool = False) -> RawMail:
        """`raw` as the IMAP reader reads it: folder INBOX, UIDVALIDITY 1, the next UID."""
        return RawMail("INBOX", 1, uid or next(self._uids), raw, len(raw), self.clock(), too_big)

    async def receive_mail(self, mail: RawMail | bytes) -> bool:
        """A mail of the support mailbox through the e-mail channel's sink, as the IMAP
        reader hands it over; the outbox is then delivered (mails and messages)."""
        from bot.mailin import ChannelSink

        if isinstance(mail, bytes):
            mail = self.raw_mail(mail)
        sink = ChannelSink(self.dispatcher, own_address=self.config.mail.from_, clock=self.clock)
        handled = await sink(mail)
        await self.deliverer.deliver_pending()
        return handled

    async def sweep(self) -> list[Sent]:
        before = len(self.transport.sent)
        # What the bot's replay task would have done by now: a flooder's deferred messages.
        await self.dispatcher.run_deferred(self.clock())
        for sweeper in self.sweepers:
            await sweeper(self.services, self.clock())
        await self.deliverer.deliver_pending()
        return self.transport.sent[before:]

    def in_room(self, room_id: str) -> list[Sent]:
        return [s for s in self.transport.sent if s.room_id == room_id]
