"""What happened in a room, as small frozen values: the events the rest of the bot reads.

Pure: no nio, no I/O. `bot.matrix.inbound` builds them from nio's events; the dispatcher and
the handlers read only these.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

TEXT_MSGTYPES = frozenset({"m.text", "m.notice", "m.emote"})


@dataclass(frozen=True, slots=True)
class IncomingText:
    """An `m.room.message` (text, notice, emote; files and images with their file name).

    `is_edit`: an `m.replace` edit; `body` is then the new text and `replaces` the event
    edited. `reply_to`: the event replied to (the quoted fallback is stripped from `body`).
    `encrypted`: the event arrived encrypted and was decrypted by the bot.
    """

    event_id: str
    room_id: str
    sender: str
    body: str
    ts: datetime
    msgtype: str
    formatted_body: str | None = None
    reply_to: str | None = None
    is_edit: bool = False
    encrypted: bool = False
    replaces: str | None = None
    # The root of the thread the message was written in (`m.thread`): a staff card, when staff
    # answer a request by e-mail from its card's thread.
    thread_root: str | None = None


@dataclass(frozen=True, slots=True)
class IncomingReaction:
    event_id: str
    room_id: str
    sender: str
    target_event_id: str
    key: str
    ts: datetime


@dataclass(frozen=True, slots=True)
class IncomingRedaction:
    event_id: str
    room_id: str
    sender: str
    redacts: str
    ts: datetime


@dataclass(frozen=True, slots=True)
class IncomingMember:
    event_id: str
    room_id: str
    user_id: str  # the state key: whose membership changed
    membership: str  # join | leave | invite | ban | knock
    sender: str  # who changed it (differs from user_id for invites, kicks, bans)
    ts: datetime


@dataclass(frozen=True, slots=True)
class IncomingUnreadable:
    """An encrypted message whose room key never reached the bot (given up after a day of
    waiting and asking): the sender is told to send it again, once."""

    event_id: str
    room_id: str
    sender: str
    ts: datetime  # when it was sent


@dataclass(frozen=True, slots=True)
class IncomingWithheld:
    """The sender's app will not give the bot the key of an encrypted message (it sent
    `m.room_key.withheld` instead, or only gave the keys of later messages): the sender is
    told at once, once per (room, sender, session). The message itself stays kept: should its
    key come after all, it is handled as usual.

    `event_id` is not a Matrix event id: it is derived from the room, the sender and the
    Megolm session, so that the dispatcher's record of handled events makes it said once.
    `about` is the message's event id; `code` the reason (`m.unverified`, `m.blacklisted`,
    `m.unauthorised`, `m.unavailable`, `m.no_olm`, `SESSION_STARTS_LATER`, or another)."""

    event_id: str
    room_id: str
    sender: str
    ts: datetime  # when the message was sent
    code: str
    about: str


#: The code of an `IncomingWithheld` when the bot holds the message's Megolm session, but
#: only from a later message on: its sender's app shared it late, and will not share the
#: earlier part.
SESSION_STARTS_LATER = "support-bot.session_starts_later"


#: The room id of everything that comes or goes by e-mail: the incoming mails, and the requests
#: made by e-mail (`Ticket.room_id`). No Matrix room id looks like it (they start with "!").
EMAIL_ROOM = "email"
#: The sender key of a mail: this prefix and the address (lower case). A mail's sender is a
#: client of its own, apart from any Matrix account that gave the same address: a From header
#: proves nothing, so an address never speaks for a Matrix account.
MAILTO = "mailto:"


@dataclass(frozen=True, slots=True)
class MailAttachment:
    """A file attached to a mail (its bytes are kept only when small enough to store)."""

    filename: str
    content_type: str
    size: int
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class MailBounce:
    """A delivery status notification (RFC 3464): one of the bot's mails did not arrive."""

    original_message_id: str | None
    action: str  # failed | delayed | …
    status: str  # e.g. "5.1.1"
    diagnostic: str = field(repr=False)  # the remote server's words, may quote the address
    recipients: tuple[str, ...] = field(default=(), repr=False)


@dataclass(frozen=True, slots=True)
class IncomingMail:
    """A mail read from the support mailbox, parsed (`bot.domain.mail_in`).

    `event_id` is `mail:<folder>:<uidvalidity>:<uid>`, `room_id` is `EMAIL_ROOM` and `sender`
    `mailto:<address>`, so the dispatcher handles it like any event: one transaction, the
    handled-event row, the error boundary, a lock per sender. `text` is what the sender
    wrote in this mail: quoted history and signature removed, HTML turned into text. Nothing
    personal shows in its `repr`.
    """

    event_id: str
    room_id: str
    sender: str
    ts: datetime  # when it arrived (INTERNALDATE, else its Date; never in the future)
    folder: str
    uidvalidity: int
    uid: int
    address: str | None = field(default=None, repr=False)
    display_name: str = field(default="", repr=False)
    subject: str = field(default="", repr=False)
    text: str = field(default="", repr=False)
    # Message-IDs name the sender's domain: kept out of the `repr` too.
    message_id: str | None = field(default=None, repr=False)
    in_reply_to: tuple[str, ...] = field(default=(), repr=False)
    references: tuple[str, ...] = field(default=(), repr=False)
    refs: tuple[str, ...] = ()  # request references ("SP-2026-0042") named in the subject
    language: str | None = None  # "fr" or "en" when the text says so clearly
    auto: str | None = None  # why it is automatic (RFC 3834), or None for a person's mail
    bounce: MailBounce | None = None
    attachments: tuple[MailAttachment, ...] = ()
    size: int = 0
    too_big: bool = False
    html_only: bool = False

    @property
    def thread_ids(self) -> tuple[str, ...]:
        """The Message-IDs this mail answers, nearest first."""
        seen = dict.fromkeys((*self.in_reply_to, *reversed(self.references)))
        return tuple(seen)


Incoming = (
    IncomingText
    | IncomingReaction
    | IncomingRedaction
    | IncomingMember
    | IncomingUnreadable
    | IncomingWithheld
    | IncomingMail
)


_EVENT_KINDS: dict[str, type[Any]] = {
    kind.__name__: kind
    for kind in (
        IncomingText,
        IncomingReaction,
        IncomingRedaction,
        IncomingMember,
        IncomingUnreadable,
        IncomingWithheld,
    )
}


def event_to_json(event: Incoming) -> dict[str, Any]:
    """A `bot.events` value as JSON: its class under "kind", its fields, `ts` in ISO 8601.
    U+0000 is left out of texts (PostgreSQL's JSON refuses it; nobody types it, and the
    identity drops it from what handlers read anyway)."""
    data: dict[str, Any] = {"kind": type(event).__name__}
    for item in dataclasses.fields(event):
        value = getattr(event, item.name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, str):
            value = value.replace("\x00", "")
        data[item.name] = value
    return data


def event_from_json(data: dict[str, Any]) -> Incoming:
    values = dict(data)
    kind = _EVENT_KINDS[values.pop("kind")]
    values["ts"] = datetime.fromisoformat(values["ts"])
    event: Incoming = kind(**values)
    return event
