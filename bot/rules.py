"""Pure service rules from the terms (SPEC §2): ticket counts, confirmation, business days.

Nothing here does I/O or reads the clock: callers pass aware datetimes in and get aware
datetimes out, so the same rules serve the bot, the CLI reports and the tests.

Durations typed by staff (`!log SP-… 1h20`) are parsed by `parse_duration`, which accepts:

* plain minutes: ``90``, ``90m``, ``90 min``, ``90mn``, ``90 minutes``;
* hours with optional minutes: ``2h``, ``2 h``, ``1h30``, ``1h30m``, ``1 h 30 min``;
* decimal hours with ``.`` or ``,`` and at most two decimals: ``1.5h``, ``1,5h``, ``0.25h``
  (rounded to the nearest minute);
* clock form: ``1:30``.

Units are case-insensitive and may be English or French (``hour``, ``heure``). Zero is refused
(logging nothing is a typing mistake, not a record), as is anything above
`MAX_DURATION_MINUTES` (100 hours: no single log or estimate of one ticket's work is that long,
so a larger number is a typo such as a missing ``h``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from fractions import Fraction
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays

from bot.i18n import N_, Msg

if TYPE_CHECKING:
    from bot.config import ServiceConfig

__all__ = [
    "CALL_UNIT_MINUTES",
    "CONFIRMATION_THRESHOLD_TICKETS",
    "MAX_DURATION_MINUTES",
    "TICKET_UNIT_MINUTES",
    "BusinessCalendar",
    "DurationError",
    "format_duration",
    "needs_confirmation",
    "parse_duration",
    "tickets_for",
]

#: One ticket covers at most one started hour of work (R2).
TICKET_UNIT_MINUTES = 60
#: Phone and video calls are billed per 45 minutes (R5).
CALL_UNIT_MINUTES = 45
#: Above this many tickets an intervention needs the client's confirmation (R7).
CONFIRMATION_THRESHOLD_TICKETS = 2
#: Largest duration `parse_duration` accepts (100 hours).
MAX_DURATION_MINUTES = 100 * 60


# --- Tickets -------------------------------------------------------------------------------


def tickets_for(minutes: int, *, unit_minutes: int = TICKET_UNIT_MINUTES) -> int:
    """Tickets billed for `minutes` of work: every started unit counts, and at least one (R2).

    >>> [tickets_for(m) for m in (0, 60, 61, 120, 121)]
    [1, 1, 2, 2, 3]
    >>> [tickets_for(m, unit_minutes=45) for m in (45, 46, 90)]
    [1, 2, 2]
    """
    if minutes < 0:
        raise ValueError(f"minutes must not be negative, got {minutes}")
    if unit_minutes <= 0:
        raise ValueError(f"unit_minutes must be positive, got {unit_minutes}")
    # Integer ceiling: float division would misround very large minute counts.
    return max(1, int(-(-minutes // unit_minutes)))


def needs_confirmation(
    estimate_minutes: int,
    *,
    unit_minutes: int = TICKET_UNIT_MINUTES,
    threshold: int = CONFIRMATION_THRESHOLD_TICKETS,
) -> bool:
    """Whether an intervention estimated at `estimate_minutes` needs the client's consent (R7).

    >>> needs_confirmation(120), needs_confirmation(121)
    (False, True)
    """
    return tickets_for(estimate_minutes, unit_minutes=unit_minutes) > threshold


# --- Business days -------------------------------------------------------------------------


class BusinessCalendar:
    """Working days and hours of the service: Monday–Friday minus the country's public holidays.

    Public holidays come from the `holidays` package only, so they stay right as countries
    change them. `subdivision` adds a region's own holidays, as the package names the region
    ("57": Moselle, where Good Friday and 26 December are holidays). All arguments are
    validated at construction so a bad config fails at start-up rather than at the first
    deadline.
    """

    __slots__ = (
        "_by_year",
        "_holidays",
        "country",
        "day_end",
        "day_start",
        "subdivision",
        "timezone",
        "tz",
    )

    @classmethod
    def for_service(cls, service: ServiceConfig) -> BusinessCalendar:
        """The calendar of the `[service]` settings (country, time zone, working hours)."""
        return cls(
            country=service.country,
            timezone=service.timezone,
            day_end=service.day_end,
            day_start=service.day_start,
            subdivision=service.subdivision,
        )

    def __init__(
        self,
        country: str = "FR",
        timezone: str = "Europe/Paris",
        day_end: time = time(18, 0),
        day_start: time = time(9, 0),
        subdivision: str | None = None,
    ) -> None:
        try:
            self.tz = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {timezone!r}") from exc
        try:
            # Built once: the object computes a year's holidays lazily when first asked.
            self._holidays = holidays.country_holidays(country, subdiv=subdivision)
        except NotImplementedError as exc:
            where = f"country {country!r}" + (
                f" and subdivision {subdivision!r}" if subdivision else ""
            )
            raise ValueError(f"no public holidays known for {where}") from exc
        if day_start.tzinfo is not None or day_end.tzinfo is not None:
            raise ValueError("day_start and day_end are local wall-clock times, without tzinfo")
        if day_start >= day_end:
            raise ValueError(f"day_start {day_start} must be before day_end {day_end}")
        self.country = country
        self.subdivision = subdivision
        self.timezone = timezone
        self.day_start = day_start
        self.day_end = day_end
        self._by_year: dict[int, frozenset[date]] = {}

    def __repr__(self) -> str:
        return (
            f"BusinessCalendar(country={self.country!r}, timezone={self.timezone!r}, "
            f"day_end={self.day_end!r}, day_start={self.day_start!r}, "
            f"subdivision={self.subdivision!r})"
        )

    def holidays_in(self, year: int) -> frozenset[date]:
        """The public holidays of `year` (cached per year)."""
        cached = self._by_year.get(year)
        if cached is None:
            # Asking for one date makes the package compute the whole year (expand=True).
            _ = date(year, 1, 1) in self._holidays
            cached = frozenset(d for d in self._holidays if d.year == year)
            self._by_year[year] = cached
        return cached

    def is_business_day(self, day: date) -> bool:
        """Monday–Friday and not a public holiday. An aware datetime is taken on its local day."""
        if isinstance(day, datetime):
            day = self.local(day).date()
        return day.weekday() < 5 and day not in self.holidays_in(day.year)

    def add_business_days(self, day: date, business_days: int) -> date:
        """The `business_days`-th business day strictly after `day` (`day` itself for 0)."""
        if business_days < 0:
            raise ValueError(f"business_days must not be negative, got {business_days}")
        remaining = business_days
        while remaining:
            day += timedelta(days=1)
            if self.is_business_day(day):
                remaining -= 1
        return day

    def deadline(self, received_at: datetime, business_days: int) -> datetime:
        """End of the working day of the n-th business day after the local day of receipt.

        The day of receipt never counts, whatever the hour (a request at 08:00 or at 23:00 on a
        Thursday both start counting on Friday), as the terms promise "within n business days".
        """
        if business_days < 1:
            raise ValueError(f"business_days must be at least 1, got {business_days}")
        day = self.add_business_days(self.local(received_at).date(), business_days)
        return self.at(day, self.day_end)

    def business_hours_between(self, start: datetime, end: datetime) -> float:
        """Working hours (day_start..day_end on business days) from `start` to `end`.

        0.0 when `end` is not after `start`: callers ask "how much working time is left before
        this deadline", and a passed deadline has none left.
        """
        start_utc = self.local(start).astimezone(UTC)
        end_utc = self.local(end).astimezone(UTC)
        if end_utc <= start_utc:
            return 0.0
        total = timedelta()
        day = self.local(start).date()
        last = self.local(end).date()
        while day <= last:
            if self.is_business_day(day):
                lo = max(start_utc, self.at(day, self.day_start).astimezone(UTC))
                hi = min(end_utc, self.at(day, self.day_end).astimezone(UTC))
                if hi > lo:
                    total += hi - lo
            day += timedelta(days=1)
        return total.total_seconds() / 3600

    def subtract_business_hours(self, deadline: datetime, hours: float) -> datetime:
        """The instant `hours` working hours before `deadline` (e.g. when to warn about an SLA).

        When the count ends exactly on a day boundary the earliest equivalent instant is not
        sought: 9 hours before 18:00 on a 09:00–18:00 day is 09:00 that day, not 18:00 the day
        before; both are the same amount of working time away.
        """
        if not math.isfinite(hours) or hours < 0:
            raise ValueError(f"hours must be a finite, non-negative number, got {hours}")
        local_deadline = self.local(deadline)
        remaining = timedelta(hours=hours)
        if not remaining:
            return local_deadline
        day = local_deadline.date()
        upper = local_deadline.astimezone(UTC)
        while True:
            if self.is_business_day(day):
                lo = self.at(day, self.day_start).astimezone(UTC)
                hi = min(upper, self.at(day, self.day_end).astimezone(UTC))
                if hi > lo:
                    if remaining <= hi - lo:
                        return (hi - remaining).astimezone(self.tz)
                    remaining -= hi - lo
            day -= timedelta(days=1)
            # Earlier days are used up to their full day_end.
            upper = self.at(day, self.day_end).astimezone(UTC)

    def local(self, moment: datetime) -> datetime:
        """`moment` in the calendar's time zone; naive datetimes are refused."""
        if moment.tzinfo is None or moment.utcoffset() is None:
            raise ValueError("naive datetime refused: pass an aware datetime")
        return moment.astimezone(self.tz)

    def at(self, day: date, wall_time: time) -> datetime:
        """The aware instant of local `wall_time` on `day`.

        A wall time that does not exist (inside a spring-forward gap) is moved forward by the
        gap, which is what a clock on the wall would show.
        """
        moment = datetime.combine(day, wall_time, tzinfo=self.tz)
        return moment.astimezone(UTC).astimezone(self.tz)


# --- Durations -----------------------------------------------------------------------------


class DurationError(ValueError):
    """A duration the bot cannot accept; `msg` is the localisable explanation for the user.

    The exception text never contains the user's input, so logging it leaks nothing.
    """

    def __init__(self, reason: str, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.params: Mapping[str, Any] = dict(params or {})

    @property
    def msg(self) -> Msg:
        return Msg(self.reason, self.params)


_NOT_A_DURATION = N_("That is not a duration I understand. Write it like 90, 90m, 1h30 or 1.5h.")
_ZERO_DURATION = N_("A duration must be longer than zero.")
_TOO_LONG = N_("A duration cannot be longer than {max_hours} hours.")
_MINUTES_OVERFLOW = N_("Minutes after the hours must be below 60, as in 1h30.")

_HOURS = r"(?:h|hr|hrs|hour|hours|heure|heures)"
_MINUTES = r"(?:m|mn|min|mins|minute|minutes)"
# Digit counts are bounded so that no input can make int() work on a huge number.
_DURATION = re.compile(
    rf"""
      (?P<hours>[0-9]{{1,3}}) (?:[.,](?P<fraction>[0-9]{{1,2}}))? \s* {_HOURS}
          (?: \s* (?P<rest>[0-9]{{1,2}}) (?:\s* {_MINUTES})? )?
    | (?P<clock_hours>[0-9]{{1,3}}) : (?P<clock_minutes>[0-9]{{2}})
    | (?P<minutes>[0-9]{{1,4}}) (?:\s* {_MINUTES})?
    """,
    re.VERBOSE | re.IGNORECASE | re.ASCII,
)
_MAX_INPUT_LENGTH = 40


def parse_duration(text: str) -> int:
    """Minutes in a duration typed by a person; raises `DurationError` for anything else.

    >>> [parse_duration(t) for t in ("90", "90 min", "1h30", "1,5h", "2 H")]
    [90, 90, 90, 90, 120]
    """
    # Any run of Unicode whitespace (a non-breaking space from a French keyboard) is one space.
    normalised = " ".join(text.split())
    if len(normalised) > _MAX_INPUT_LENGTH:
        raise DurationError(_NOT_A_DURATION)
    match = _DURATION.fullmatch(normalised)
    if match is None:
        raise DurationError(_NOT_A_DURATION)
    parts = match.groupdict()
    if parts["minutes"] is not None:
        total = int(parts["minutes"])
    elif parts["clock_hours"] is not None:
        rest = int(parts["clock_minutes"])
        if rest >= 60:
            raise DurationError(_MINUTES_OVERFLOW)
        total = int(parts["clock_hours"]) * 60 + rest
    else:
        total = int(parts["hours"]) * 60
        fraction, rest = parts["fraction"], parts["rest"]
        if fraction is not None and rest is not None:
            # "1.5h30" has no sensible reading.
            raise DurationError(_NOT_A_DURATION)
        if fraction is not None:
            total += round(Fraction(int(fraction), 10 ** len(fraction)) * 60)
        if rest is not None:
            if int(rest) >= 60:
                raise DurationError(_MINUTES_OVERFLOW)
            total += int(rest)
    if total <= 0:
        raise DurationError(_ZERO_DURATION)
    if total > MAX_DURATION_MINUTES:
        raise DurationError(_TOO_LONG, {"max_hours": MAX_DURATION_MINUTES // 60})
    return total


def format_duration(minutes: int) -> str:
    """A compact duration as staff write it: ``45 min``, ``3h``, ``1h05``.

    The output is accepted back by `parse_duration` (for 1..MAX_DURATION_MINUTES).
    """
    if minutes < 0:
        raise ValueError(f"minutes must not be negative, got {minutes}")
    if minutes < 60:
        return f"{minutes} min"
    hours, rest = divmod(minutes, 60)
    return f"{hours}h" if rest == 0 else f"{hours}h{rest:02d}"
