"""The bot's invites: accepted from staff and allowed servers, declined otherwise.

Invites are read from every sync and answered in it; one whose join or decline keeps
failing (a remote server down) is retried for `INVITE_ATTEMPTS` syncs, then dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from nio import (
    AsyncClient,
    InviteMemberEvent,
    JoinResponse,
    RoomLeaveResponse,
    SyncResponse,
)

from bot.matrix.runtime import ShellStats
from bot.matrix.transport import RoomFacts, call
from bot.ports import TransportError

log = logging.getLogger(__name__)

INVITE_ATTEMPTS = 10  # syncs in a row a join/decline may fail (5xx, network) before giving up


def server_name(user_id: str) -> str:
    return user_id.partition(":")[2]


@dataclass(slots=True)
class _Invite:
    inviter: str
    is_direct: bool
    attempts: int = 0


class Invites:
    """The invites not answered yet, and who may invite the bot."""

    def __init__(
        self,
        nio: Callable[[], AsyncClient],
        *,
        bot_user_id: str,
        allowed_servers: Sequence[str],
        is_staff_inviter: Callable[[str], bool],
        staff_room_id: Callable[[], str | None],
        facts: RoomFacts,
        stats: ShellStats,
    ) -> None:
        self._nio = nio
        self._bot_user_id = bot_user_id
        # None configured: the bot's own server only.
        allowed = allowed_servers or (server_name(bot_user_id),)
        self._allowed_servers = frozenset(s.lower() for s in allowed)
        self._is_staff_inviter = is_staff_inviter
        self._staff_room_id = staff_room_id
        self._facts = facts
        self._stats = stats
        self._pending: dict[str, _Invite] = {}  # accepted or declined each sync

    async def handle(self, response: SyncResponse) -> None:
        """Accept or decline the bot's invites. Never raises: a join that keeps failing (a
        remote server down) must not hold back the events of every other room."""
        bot = self._bot_user_id
        for room_id, info in response.rooms.invite.items():
            for event in info.invite_state:
                if (
                    isinstance(event, InviteMemberEvent)
                    and event.state_key == bot
                    and event.membership == "invite"
                ):
                    is_direct = bool(event.content.get("is_direct"))
                    self._pending.setdefault(room_id, _Invite(event.sender, is_direct))
        client = self._nio()
        for room_id, invite in list(self._pending.items()):
            if room_id in client.rooms and room_id not in client.invited_rooms:
                del self._pending[room_id]  # joined meanwhile
                continue
            accept = room_id == self._staff_room_id() or self._may_invite(invite.inviter)
            what = "join" if accept else "decline"
            try:
                if accept:
                    await call(what, partial(client.join, room_id), expect=JoinResponse)
                else:
                    await call(what, partial(client.room_leave, room_id), expect=RoomLeaveResponse)
            except TransportError as error:
                invite.attempts += 1
                if error.retryable and invite.attempts < INVITE_ATTEMPTS:
                    log.info("%s of %s failed (%s): retried next sync", what, room_id, error)
                    continue
                log.warning("%s of %s failed (%s): invite dropped", what, room_id, error)
            else:
                server = server_name(invite.inviter)
                if accept:
                    self._stats.invites_accepted += 1
                    if invite.is_direct:
                        self._facts.direct.add(room_id)
                    log.info("joined %s (invited from %s)", room_id, server)
                else:
                    self._stats.invites_declined += 1
                    log.info(
                        "declined an invite to %s from a user of %s (not staff, "
                        "server not allowed)",
                        room_id,
                        server,
                    )
            del self._pending[room_id]

    def _may_invite(self, inviter: str) -> bool:
        if server_name(inviter).lower() in self._allowed_servers:
            return True
        try:
            return bool(self._is_staff_inviter(inviter))
        except Exception:
            log.exception("is_staff_inviter failed: treating the inviter as not staff")
            return False
