"""What happened in a room, as small frozen values: the events the rest of the bot reads.

Pure: no nio, no I/O. `bot.matrix.inbound` builds them from nio's events; the dispatcher and
the handlers read only these.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

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


Incoming = (
    IncomingText | IncomingReaction | IncomingRedaction | IncomingMember | IncomingUnreadable
)
