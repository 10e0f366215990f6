"""The staff dashboard's reads (SPEC §10) and its logins (`DashboardToken`).

Reads fetch only the columns the figures need, over a time range; the figures themselves are
computed by `bot.domain.dashboard` (local months, shares, averages), the same on SQLite and
PostgreSQL. Logins: a one-time link row (`kind` "link") is exchanged once for a session row
(`kind` "session"); both hold only `bot.tokens.token_hash` of their token.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tortoise.expressions import Q
from tortoise.transactions import in_transaction

from bot.domain.tickets import Status
from bot.storage.models import Booking, DashboardToken, Ticket

__all__ = [
    "LINK",
    "SESSION",
    "CallRow",
    "deadline_rows",
    "end_session",
    "issue_login",
    "link_of",
    "open_session",
    "rating_rows",
    "session_of",
    "week_calls",
]

LINK = "link"
SESSION = "session"
_ACTIVE_BOOKING = "active"


# -- figures ----------------------------------------------------------------------------------


async def deadline_rows(start: datetime, end: datetime) -> list[tuple[datetime, datetime | None]]:
    """`(sla_due, first_response_at)` of the requests whose deadline falls in [start, end),
    but those the client cancelled before anyone answered."""
    return list(
        await Ticket.filter(sla_due__gte=start, sla_due__lt=end)
        .exclude(Q(status=str(Status.CANCELLED)) & Q(first_response_at__isnull=True))
        .values_list("sla_due", "first_response_at")
    )


async def rating_rows(start: datetime, end: datetime) -> list[tuple[datetime, int]]:
    """`(rated_at, rating)` of the ratings given in [start, end)."""
    return list(
        await Ticket.filter(rated_at__gte=start, rated_at__lt=end, rating__isnull=False)
        .order_by("rated_at", "id")
        .values_list("rated_at", "rating")
    )


@dataclass(frozen=True, slots=True)
class CallRow:
    staff: str
    start: datetime
    end: datetime
    ref: str
    channel: str
    no_show: bool


async def week_calls(start: datetime, end: datetime) -> list[CallRow]:
    """The calls booked (not cancelled) that start in [start, end), in time order."""
    rows = (
        await Booking.filter(status=_ACTIVE_BOOKING, start__gte=start, start__lt=end)
        .order_by("start", "staff", "id")
        .values_list("staff", "start", "end", "ticket__ref", "ticket__channel", "no_show_at")
    )
    return [
        CallRow(staff, begin, finish, ref, channel, no_show is not None)
        for staff, begin, finish, ref, channel, no_show in rows
    ]


# -- logins -----------------------------------------------------------------------------------


async def issue_login(staff: str, digest: str, now: datetime, expires_at: datetime) -> None:
    """Store a one-time link for `staff`. Their earlier unused links stop working, and rows
    of everyone that have expired are deleted (they would only ever answer 403)."""
    async with in_transaction() as conn:
        await DashboardToken.filter(expires_at__lt=now).using_db(conn).delete()
        await (
            DashboardToken.filter(staff=staff, kind=LINK, used_at__isnull=True)
            .using_db(conn)
            .delete()
        )
        await DashboardToken.create(
            token_hash=digest,
            kind=LINK,
            staff=staff,
            created_at=now,
            expires_at=expires_at,
            using_db=conn,
        )


async def link_of(digest: str) -> DashboardToken | None:
    return await DashboardToken.get_or_none(token_hash=digest, kind=LINK)


async def open_session(
    link_digest: str, session_digest: str, now: datetime, expires_at: datetime
) -> DashboardToken | None:
    """Use the link once: mark it used and create the session, in one transaction. None when
    the link is unknown, expired or already used (a second tab, a replay)."""
    async with in_transaction() as conn:
        # The conditional update is what makes the link single-use under concurrency.
        used = (
            await DashboardToken.filter(
                token_hash=link_digest, kind=LINK, used_at__isnull=True, expires_at__gt=now
            )
            .using_db(conn)
            .update(used_at=now)
        )
        if used != 1:
            return None
        link = await DashboardToken.get(token_hash=link_digest).using_db(conn)
        return await DashboardToken.create(
            token_hash=session_digest,
            kind=SESSION,
            staff=link.staff,
            created_at=now,
            expires_at=expires_at,
            using_db=conn,
        )


async def session_of(digest: str, now: datetime) -> DashboardToken | None:
    """The session of a cookie, while it lasts."""
    return await DashboardToken.get_or_none(token_hash=digest, kind=SESSION, expires_at__gt=now)


async def end_session(digest: str) -> None:
    await DashboardToken.filter(token_hash=digest, kind=SESSION).delete()
