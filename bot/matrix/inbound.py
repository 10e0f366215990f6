"""nio events → small frozen values the rest of the bot reads (pure: no I/O, no client).

Only this package imports nio; handlers see `IncomingText`, `IncomingReaction`,
`IncomingRedaction` and `IncomingMember`. `to_incoming` returns None for anything else
(state changes, calls, undecrypted events, malformed events), so callers never have to know
nio's class hierarchy. For the undecryptable ones (`bot.matrix.pending`): `to_unreadable`,
`to_withheld` (an `m.room_key.withheld` to-device message) and `to_withheld_notice`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nio import (
    BadEvent,
    Event,
    MegolmEvent,
    ReactionEvent,
    RedactedEvent,
    RedactionEvent,
    RoomMemberEvent,
    RoomMessage,
    StickerEvent,
    UnknownBadEvent,
    UnknownToDeviceEvent,
)

from bot.events import (
    Incoming,
    IncomingMember,
    IncomingReaction,
    IncomingRedaction,
    IncomingText,
    IncomingUnreadable,
    IncomingWithheld,
)

MEGOLM = "m.megolm.v1.aes-sha2"
WITHHELD_TYPE = "m.room_key.withheld"
NO_OLM = "m.no_olm"  # the one code about a device, not a session
_MAX_ID = 255  # the columns these values are stored in
_MAX_CODE = 64


def to_incoming(room_id: str, event: Any) -> Incoming | None:
    """Convert one nio event of `room_id`; None for what the bot does not read."""
    if isinstance(event, MegolmEvent | RedactedEvent | UnknownBadEvent):
        return None
    if isinstance(event, RedactionEvent):
        return IncomingRedaction(
            event.event_id, room_id, event.sender, event.redacts, _ts(event.server_timestamp)
        )
    if isinstance(event, BadEvent):
        # Room versions 11+ carry `redacts` in the content only, which nio 0.26's schema
        # refuses (it wants the top-level key): read the source ourselves.
        return _redaction_from_source(room_id, event)
    if isinstance(event, ReactionEvent):
        return IncomingReaction(
            event.event_id,
            room_id,
            event.sender,
            event.reacts_to,
            event.key,
            _ts(event.server_timestamp),
        )
    if isinstance(event, RoomMemberEvent):
        return IncomingMember(
            event.event_id,
            room_id,
            event.state_key,
            event.membership,
            event.sender,
            _ts(event.server_timestamp),
        )
    if isinstance(event, RoomMessage | StickerEvent):
        return _text(room_id, event)
    return None


def strip_reply_fallback(body: str) -> str:
    """Drop the `> <@user> quoted text` lines a client puts before the answer of a reply."""
    lines = body.split("\n")
    index = 0
    while index < len(lines) and lines[index].startswith(">"):
        index += 1
    if index == 0:
        return body
    if index < len(lines) and lines[index] == "":
        index += 1
    return "\n".join(lines[index:])


_MX_REPLY = re.compile(r"<mx-reply>.*?</mx-reply>", re.DOTALL | re.IGNORECASE)


def strip_html_reply_fallback(formatted_body: str) -> str:
    return _MX_REPLY.sub("", formatted_body, count=1)


def to_unreadable(room_id: str, event: MegolmEvent) -> IncomingUnreadable:
    """An encrypted event the bot gave up decrypting, dated when its sender sent it."""
    return IncomingUnreadable(event.event_id, room_id, event.sender, _ts(event.server_timestamp))


@dataclass(frozen=True, slots=True)
class KeyWithheld:
    """An `m.room_key.withheld` to-device message: `sender`'s app will not give the bot the
    key of the Megolm session `session_id` of `room_id` (both empty for `m.no_olm`: no
    session could be shared from the device `sender_key` at all). `sender` is the user the
    homeserver delivered it from; `sender_key` (the device's Curve25519 key) is what that
    app claims, "" when it says nothing."""

    sender: str
    sender_key: str
    room_id: str
    session_id: str
    code: str


def to_withheld(event: Any) -> KeyWithheld | None:
    """A to-device event as `KeyWithheld`; None for anything else, or one that is malformed.

    Apps send it unencrypted (nio hands it over as an `UnknownToDeviceEvent`); one wrapped in
    Olm would be dropped by nio 0.26 with a warning, out of the bot's sight."""
    if not isinstance(event, UnknownToDeviceEvent) or event.type != WITHHELD_TYPE:
        return None
    content = event.source.get("content")
    if not isinstance(content, dict) or content.get("algorithm") != MEGOLM:
        return None
    code = content.get("code")
    if not isinstance(code, str) or not 0 < len(code) <= _MAX_CODE:
        return None
    room_id, session_id, sender_key = (
        _short_text(content.get(name)) for name in ("room_id", "session_id", "sender_key")
    )
    if not (room_id and session_id):
        if code != NO_OLM:
            return None
        room_id = session_id = ""  # about the device: every session of it
    if not isinstance(event.sender, str) or not 0 < len(event.sender) <= _MAX_ID:
        return None
    return KeyWithheld(event.sender, sender_key, room_id, session_id, code)


def to_withheld_notice(room_id: str, event: MegolmEvent, code: str) -> IncomingWithheld:
    """What the sender of `event` is told when its key will not come: one per (room, sender,
    session), whatever the number of messages in that session (its id says so)."""
    key = "\n".join((room_id, event.sender, event.session_id or ""))
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return IncomingWithheld(
        event_id=f"withheld:{digest}",
        room_id=room_id,
        sender=event.sender,
        ts=_ts(event.server_timestamp),
        code=code,
        about=event.event_id,
    )


# -- helpers -------------------------------------------------------------------------------


def _short_text(value: Any) -> str:
    """A text that fits a stored identifier column; "" for anything else."""
    return value if isinstance(value, str) and len(value) <= _MAX_ID else ""


def _ts(server_timestamp: int) -> datetime:
    return datetime.fromtimestamp(server_timestamp / 1000, tz=UTC)


def _text(room_id: str, event: Event) -> IncomingText | None:
    source = event.source
    content = source.get("content")
    if not isinstance(content, dict):
        return None
    relates = content.get("m.relates_to")
    relates = relates if isinstance(relates, dict) else {}
    replaces: str | None = None
    if relates.get("rel_type") == "m.replace" and isinstance(relates.get("event_id"), str):
        new_content = content.get("m.new_content")
        if isinstance(new_content, dict):
            replaces = relates["event_id"]
            content = new_content
    msgtype = content.get("msgtype")
    if not isinstance(msgtype, str):
        msgtype = "m.sticker" if isinstance(event, StickerEvent) else None
    body = content.get("body")
    if msgtype is None or not isinstance(body, str):
        return None
    formatted = content.get("formatted_body") if content.get("format") else None
    formatted = formatted if isinstance(formatted, str) else None
    reply_to = None if replaces else _reply_target(relates)
    if reply_to is not None:
        body = strip_reply_fallback(body)
        if formatted is not None:
            formatted = strip_html_reply_fallback(formatted)
    # U+0000 means nothing to a person, and PostgreSQL refuses it in text: drop it here, at
    # the edge, before anything is stored.
    body = body.replace("\x00", "")
    if formatted is not None:
        formatted = formatted.replace("\x00", "")
    return IncomingText(
        event_id=event.event_id,
        room_id=room_id,
        sender=event.sender,
        body=body,
        ts=_ts(event.server_timestamp),
        msgtype=msgtype,
        formatted_body=formatted,
        reply_to=reply_to,
        is_edit=replaces is not None,
        encrypted=bool(event.decrypted),
        replaces=replaces,
        thread_root=_thread_root(relates) if replaces is None else None,
    )


def _thread_root(relates: dict[str, Any]) -> str | None:
    if relates.get("rel_type") != "m.thread":
        return None
    root = relates.get("event_id")
    return root if isinstance(root, str) else None


def _reply_target(relates: dict[str, Any]) -> str | None:
    in_reply_to = relates.get("m.in_reply_to")
    if not isinstance(in_reply_to, dict):
        return None
    # In a thread, `m.in_reply_to` only points at the latest thread event for old clients.
    if relates.get("rel_type") == "m.thread" and relates.get("is_falling_back"):
        return None
    target = in_reply_to.get("event_id")
    return target if isinstance(target, str) else None


def _redaction_from_source(room_id: str, event: BadEvent) -> IncomingRedaction | None:
    source = event.source
    if source.get("type") != "m.room.redaction":
        return None
    content = source.get("content")
    redacts = content.get("redacts") if isinstance(content, dict) else None
    redacts = redacts if isinstance(redacts, str) else source.get("redacts")
    if not isinstance(redacts, str):
        return None
    return IncomingRedaction(
        event.event_id, room_id, event.sender, redacts, _ts(event.server_timestamp)
    )
