"""The figures of the staff dashboard (SPEC §10), as pure functions over rows already read.

Months and weeks are the service's local ones (`tz`): a ticket rated at 23:30 UTC on 30
November is a December rating in Paris. Nothing here reads the clock or the database.

Decisions worth knowing (the issue leaves them open):

* **Deadline state** of a request in the queue: `overdue` when its first-answer deadline has
  passed with no answer, `due_soon` when it falls within `warn_hours` working hours (the
  `service.sla_warning_hours` of the staff-room warnings and of the metrics), `later` when
  further away, `answered` once someone answered, `none` when it has no deadline.
* **Deadlines kept** are counted in the month the deadline fell due: met when the first answer
  came at or before it, missed when it came later or has not come and the deadline is past,
  pending (not in the share) while it may still be met. A request the client cancelled before
  anyone answered is left out by the query (R12: nobody owed it an answer any more).
* **Satisfaction** counts the ratings given in a month (1 to 5), whatever month the ticket was
  opened in; the average is over that month's ratings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from bot.rules import BusinessCalendar

__all__ = [
    "RATINGS",
    "DeadlineState",
    "KeptMonth",
    "RatingMonth",
    "deadline_state",
    "deadlines_kept",
    "local_midnight",
    "month_of",
    "months_ending",
    "next_month",
    "parse_week",
    "ratings_by_month",
    "week_days",
    "week_label",
    "week_of",
]

#: The ratings a client can give.
RATINGS = (1, 2, 3, 4, 5)
_WEEK = re.compile(r"(\d{4})-W(\d{1,2})")


class DeadlineState(StrEnum):
    OVERDUE = "overdue"
    DUE_SOON = "due_soon"
    LATER = "later"
    ANSWERED = "answered"
    NONE = "none"


def deadline_state(
    due: datetime | None,
    answered_at: datetime | None,
    now: datetime,
    calendar: BusinessCalendar,
    warn_hours: float,
) -> DeadlineState:
    """Where a request stands against its first-answer deadline (R3, R4)."""
    if due is None:
        return DeadlineState.NONE
    if answered_at is not None:
        return DeadlineState.ANSWERED
    if due < now:
        return DeadlineState.OVERDUE
    if warn_hours > 0 and now >= calendar.subtract_business_hours(due, warn_hours):
        return DeadlineState.DUE_SOON
    return DeadlineState.LATER


# -- months and weeks -------------------------------------------------------------------------


def month_of(moment: datetime, tz: ZoneInfo) -> date:
    """The first day of the local month of an aware `moment`."""
    return moment.astimezone(tz).date().replace(day=1)


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def months_ending(last: date, count: int = 12) -> list[date]:
    """The first days of the `count` months ending with `last`'s month, oldest first."""
    months = [last.replace(day=1)]
    while len(months) < count:
        first = months[0]
        months.insert(0, date(first.year - (first.month == 1), (first.month - 2) % 12 + 1, 1))
    return months


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The start of `day` in `tz`, aware (what a month's or a week's bounds are made of)."""
    return datetime(day.year, day.month, day.day, tzinfo=tz)


def week_of(day: date) -> date:
    """The Monday of `day`'s week (ISO weeks)."""
    return day - timedelta(days=day.weekday())


def week_days(monday: date) -> list[date]:
    return [monday + timedelta(days=offset) for offset in range(7)]


def week_label(monday: date) -> str:
    """`2026-W49`: the value of the calendar page's `week` parameter."""
    year, week, _ = monday.isocalendar()
    return f"{year}-W{week:02d}"


def parse_week(text: str | None) -> date | None:
    """The Monday of an ISO week written `2026-W49`, or None when it is not one."""
    match = _WEEK.fullmatch((text or "").strip())
    if match is None:
        return None
    try:
        return date.fromisocalendar(int(match[1]), int(match[2]), 1)
    except ValueError:
        return None


# -- deadlines kept ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeptMonth:
    month: date
    met: int = 0
    missed: int = 0
    pending: int = 0

    @property
    def decided(self) -> int:
        return self.met + self.missed

    @property
    def share(self) -> float | None:
        """Met over met + missed, None when no deadline of the month is decided yet."""
        return self.met / self.decided if self.decided else None


def deadlines_kept(
    rows: Iterable[tuple[datetime, datetime | None]],
    months: list[date],
    now: datetime,
    tz: ZoneInfo,
) -> list[KeptMonth]:
    """Per month of `months`: the deadlines `(sla_due, first_response_at)` met, missed and
    still pending. Rows outside those months are ignored."""
    counts = {month: [0, 0, 0] for month in months}
    for due, answered in rows:
        bucket = counts.get(month_of(due, tz))
        if bucket is None:
            continue
        if answered is not None:
            bucket[0 if answered <= due else 1] += 1
        elif due < now:
            bucket[1] += 1
        else:
            bucket[2] += 1
    return [KeptMonth(month, *counts[month]) for month in months]


# -- satisfaction -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RatingMonth:
    month: date
    counts: tuple[int, ...] = (0, 0, 0, 0, 0)  # how many 1s, 2s, … 5s

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def average(self) -> float | None:
        if not self.total:
            return None
        return sum(r * n for r, n in zip(RATINGS, self.counts, strict=True)) / self.total


def ratings_by_month(
    rows: Iterable[tuple[datetime, int]], months: list[date], tz: ZoneInfo
) -> list[RatingMonth]:
    """Per month of `months`: how many of each rating `(rated_at, rating)` were given."""
    counts = {month: [0] * len(RATINGS) for month in months}
    for rated_at, rating in rows:
        bucket = counts.get(month_of(rated_at, tz))
        if bucket is not None and rating in RATINGS:
            bucket[rating - 1] += 1
    return [RatingMonth(month, tuple(counts[month])) for month in months]
