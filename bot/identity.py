"""Who wrote, and what they said: resolved once per event, before routing.

A Matrix account writes in its own name; a bridge account (Nextcloud Talk) relays a person's
message as "[nctalk] <nick> text": that person is the sender, a client identified by
"bridge:<room id>:<nickname>", and the text is what follows the prefix. Staff are the
configured `staff` list plus staff-room members with power level ≥ 50; a bridge, and anyone
speaking through it, never is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bot.config import Config
from bot.domain.bridge import bridge_client_key, parse_bridged
from bot.events import Incoming, IncomingText
from bot.ports import Transport

STAFF_POWER = 50


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
class Author:
    """One event's author, resolved: who, whether staff, and the text without its prefix
    (None for events that are not text)."""

    sender: Sender
    is_staff: bool
    text: str | None = None


class Identity:
    """Answers "who is this" from the configuration and the staff room's members."""

    def __init__(
        self,
        config: Config,
        transport: Transport,
        staff_room_id: Callable[[], str | None] | None = None,
    ):
        self._bot = config.matrix.user_id
        self._bridges = {bridge.user_id: bridge for bridge in config.bridges}
        self._staff = frozenset(config.matrix.staff)
        self._transport = transport
        self._staff_room_id = staff_room_id or (lambda: None)

    def bot_user_id(self) -> str:
        return self._bot

    def staff_room_id(self) -> str | None:
        return self._staff_room_id()

    def is_bridge(self, user_id: str) -> bool:
        return user_id in self._bridges

    def author(self, event: Incoming) -> Author:
        """The sender of `event`, parsing a bridge's nickname prefix once; the text has no
        U+0000 (PostgreSQL refuses it and nobody types it)."""
        if not isinstance(event, IncomingText):
            sender = Sender(event.sender, event.sender)
            return Author(sender, self.is_staff(sender))
        body = event.body.replace("\x00", "")
        bridge = self._bridges.get(event.sender)
        if bridge is not None:
            parsed = parse_bridged(body, bridge.nick_format)
            if parsed is not None:
                sender = Sender(
                    event.sender, bridge_client_key(event.room_id, parsed.nick), parsed.nick
                )
                return Author(sender, False, parsed.text)
        sender = Sender(event.sender, event.sender)
        return Author(sender, self.is_staff(sender), body)

    def is_staff(self, sender: Sender) -> bool:
        """Configured staff, or staff-room members with power level ≥ 50. Never a bridge."""
        if sender.bridged or sender.user_id in self._bridges:
            return False
        return self.is_staff_user(sender.user_id)

    def is_staff_user(self, user_id: str) -> bool:
        if user_id in self._bridges:
            return False
        if user_id in self._staff:
            return True
        room = self.staff_room_id()
        if room is None:
            return False
        try:
            return (
                user_id in self._transport.joined_members(room)
                and self._transport.power_level(room, user_id) >= STAFF_POWER
            )
        except Exception:  # the room may not be synced yet
            return False
