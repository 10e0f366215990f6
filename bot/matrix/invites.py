"""The bot's invites: accepted from staff and allowed servers, declined otherwise.

Invites are read from every sync and answered in it; one whose join or decline keeps
failing (a remote server down) is retried for `INVITE_ATTEMPTS` syncs, then dropped.

Joins on invites of users who are not staff are bounded: at most `JOINS_PER_INVITER` rooms per
inviter and `JOINS_PER_DAY` in all over the last 24 h; beyond, the invite is declined (logged
with the room and the inviter's server only). Staff invites and the staff room are never
limited. The joins counted are kept in `BotState("invite_joins")`, not only in memory: a
restart (a deploy, a crash an attacker might provoke) must not hand out a fresh allowance. The
row holds a hash of each inviter and the time, never a Matrix id, and forgets what is older
than a day. It counts joins, not rooms the bot is still in: a room left since still counted
against the day, which is the point (a join costs the bot whether or not it stays).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial

from nio import (
    AsyncClient,
    InviteMemberEvent,
    JoinResponse,
    RoomLeaveResponse,
    SyncResponse,
)

from bot.matrix.runtime import ShellStats, get_state, set_state
from bot.matrix.transport import RoomFacts, call
from bot.ports import TransportError

log = logging.getLogger(__name__)

INVITE_ATTEMPTS = 10  # syncs in a row a join/decline may fail (5xx, network) before giving up
# A client invites the bot to one direct chat, now and then a second (a new room after leaving
# one, a room with a colleague): 5 a day leaves room for that and stops one account from
# opening rooms by the hundred. In all, 50 a day: several times the new conversations a
# support desk sells in a day, and a bound on what accounts registered in numbers on an allowed
# server can make the bot join (each room weighs on every sync from then on). Reaching it is
# logged at WARNING: the operator should know clients may be refused until the day has passed.
JOINS_PER_INVITER = 5
JOINS_PER_DAY = 50
JOINS_WINDOW = timedelta(hours=24)
INVITE_JOINS = "invite_joins"  # BotState key of the joins counted


def server_name(user_id: str) -> str:
    return user_id.partition(":")[2]


@dataclass(slots=True)
class _Invite:
    inviter: str
    is_direct: bool
    attempts: int = 0


def _inviter_key(user_id: str) -> str:
    # Enough to count by inviter (64 bits: no collision among a day's few joins), no Matrix id.
    return hashlib.sha256(user_id.encode()).hexdigest()[:16]


class JoinLedger:
    """The joins on invites of non-staff users over the last `JOINS_WINDOW`, kept in BotState.

    Read once (the sync loop is its only user, one sync at a time) and written at each join.
    """

    def __init__(self, clock: Callable[[], datetime], *, per_inviter: int, per_day: int) -> None:
        self._clock = clock
        self._per_inviter = per_inviter
        self._per_day = per_day
        self._joins: list[tuple[str, float]] | None = None  # (inviter key, POSIX time)

    async def _recent(self) -> list[tuple[str, float]]:
        if self._joins is None:
            self._joins = _parse(await get_state(INVITE_JOINS))
        since = (self._clock() - JOINS_WINDOW).timestamp()
        self._joins = [(key, at) for key, at in self._joins if at > since]
        return self._joins

    async def refusal(self, inviter: str) -> tuple[str, int] | None:
        """None when one more join on `inviter`'s invite is within the caps; else which cap
        ("per_inviter" or "per_day") is reached, and its value."""
        joins = await self._recent()
        if len(joins) >= self._per_day:
            return "per_day", self._per_day
        key = _inviter_key(inviter)
        if sum(1 for k, _ in joins if k == key) >= self._per_inviter:
            return "per_inviter", self._per_inviter
        return None

    async def record(self, inviter: str) -> None:
        joins = await self._recent()
        joins.append((_inviter_key(inviter), self._clock().timestamp()))
        await set_state(INVITE_JOINS, json.dumps(joins))


def _parse(value: str | None) -> list[tuple[str, float]]:
    if value is None:
        return []
    try:
        return [(str(key), float(at)) for key, at in json.loads(value)]
    except (ValueError, TypeError):
        # Only this module writes it: a damaged row is forgotten (and rewritten at the next
        # join) rather than blocking every invite.
        log.warning("%s unreadable: the joins of the last day are not counted", INVITE_JOINS)
        return []


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
        clock: Callable[[], datetime],
        max_joins_per_inviter: int = JOINS_PER_INVITER,
        max_joins_per_day: int = JOINS_PER_DAY,
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
        self._ledger = JoinLedger(
            clock, per_inviter=max_joins_per_inviter, per_day=max_joins_per_day
        )
        self._pending: dict[str, _Invite] = {}  # accepted or declined each sync

    async def handle(self, response: SyncResponse) -> None:
        """Accept or decline the bot's invites. A join that keeps failing (a remote server down)
        never raises: it must not hold back the events of every other room. A database error
        does (counting joins): the sync is then read again after a pause, like any batch."""
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
            limited = room_id != self._staff_room_id() and not self._is_staff(invite.inviter)
            server = server_name(invite.inviter)
            refusal: tuple[str, int] | None = None
            if limited and server.lower() not in self._allowed_servers:
                refusal = ("server", 0)
            elif limited:
                refusal = await self._ledger.refusal(invite.inviter)
            accept = refusal is None
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
                if refusal is None:
                    self._stats.invites_accepted += 1
                    if invite.is_direct:
                        self._facts.direct.add(room_id)
                    log.info("joined %s (invited from %s)", room_id, server)
                    if limited:
                        await self._ledger.record(invite.inviter)
                else:
                    self._stats.invites_declined += 1
                    _log_decline(room_id, server, refusal)
            del self._pending[room_id]

    def _is_staff(self, inviter: str) -> bool:
        try:
            return bool(self._is_staff_inviter(inviter))
        except Exception:
            log.exception("is_staff_inviter failed: treating the inviter as not staff")
            return False


def _log_decline(room_id: str, server: str, refusal: tuple[str, int]) -> None:
    # The room and the inviter's server: enough to find the case, no user id, no content.
    cap, limit = refusal
    if cap == "server":
        log.info(
            "declined an invite to %s from a user of %s (not staff, server not allowed)",
            room_id,
            server,
        )
    elif cap == "per_inviter":
        log.info(
            "declined an invite to %s from a user of %s: already %d rooms joined on that "
            "user's invites in 24 h",
            room_id,
            server,
            limit,
        )
    else:
        log.warning(
            "declined an invite to %s from a user of %s: already %d rooms joined on invites "
            "of non-staff users in 24 h",
            room_id,
            server,
            limit,
        )
