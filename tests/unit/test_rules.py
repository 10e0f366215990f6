"""Service rules of SPEC §2: ticket counts, confirmation threshold, business days and hours."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import holidays
import pytest

from bot.rules import BusinessCalendar, needs_confirmation, tickets_for

PARIS = ZoneInfo("Europe/Paris")
BERLIN = ZoneInfo("Europe/Berlin")


def paris(*args: int) -> datetime:
    return datetime(*args, tzinfo=PARIS)  # type: ignore[misc]


@pytest.fixture(scope="module")
def france() -> BusinessCalendar:
    return BusinessCalendar()


# --- tickets_for / needs_confirmation ------------------------------------------------------


@pytest.mark.parametrize(
    ("minutes", "unit", "tickets"),
    [
        (0, 60, 1),
        (1, 60, 1),
        (60, 60, 1),
        (61, 60, 2),
        (120, 60, 2),
        (121, 60, 3),
        (45, 45, 1),
        (46, 45, 2),
        (90, 45, 2),
        (91, 45, 3),
        (0, 45, 1),
        (6000, 60, 100),
        (10**18 + 1, 60, 10**18 // 60 + 1),  # no float rounding on big numbers
    ],
)
def test_tickets_for(minutes: int, unit: int, tickets: int) -> None:
    assert tickets_for(minutes, unit_minutes=unit) == tickets


def test_tickets_for_defaults_to_one_hour() -> None:
    assert (tickets_for(60), tickets_for(61)) == (1, 2)


@pytest.mark.parametrize(("minutes", "unit"), [(-1, 60), (10, 0), (10, -45)])
def test_tickets_for_refuses_nonsense(minutes: int, unit: int) -> None:
    with pytest.raises(ValueError):
        tickets_for(minutes, unit_minutes=unit)


@pytest.mark.parametrize(
    ("estimate", "kwargs", "needed"),
    [
        (0, {}, False),
        (60, {}, False),
        (120, {}, False),
        (121, {}, True),
        (600, {}, True),
        (90, {"unit_minutes": 45}, False),
        (91, {"unit_minutes": 45}, True),
        (121, {"threshold": 3}, False),
        (181, {"threshold": 3}, True),
    ],
)
def test_needs_confirmation(estimate: int, kwargs: dict[str, int], needed: bool) -> None:
    assert needs_confirmation(estimate, **kwargs) is needed


# --- deadlines -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("received", "days", "due"),
    [
        # SPEC public vectors.
        (paris(2026, 12, 24, 10), 2, paris(2026, 12, 29, 18)),
        (paris(2026, 12, 24, 10), 3, paris(2026, 12, 30, 18)),
        (paris(2026, 11, 28, 10), 2, paris(2026, 12, 1, 18)),
        # Sunday counts like Saturday: nothing before Monday.
        (paris(2026, 11, 29, 15), 2, paris(2026, 12, 1, 18)),
        # Plain week: Monday → Wednesday.
        (paris(2026, 11, 30, 9), 2, paris(2026, 12, 2, 18)),
        # Friday → the next Tuesday / Wednesday.
        (paris(2026, 12, 4, 12), 2, paris(2026, 12, 8, 18)),
        (paris(2026, 12, 4, 12), 3, paris(2026, 12, 9, 18)),
        # Received after day_end: the day of receipt never counts anyway.
        (paris(2026, 12, 3, 19, 30), 2, paris(2026, 12, 7, 18)),
        (paris(2026, 12, 3, 23, 59), 2, paris(2026, 12, 7, 18)),
        # Before day_start, same rule.
        (paris(2026, 12, 3, 6, 0), 2, paris(2026, 12, 7, 18)),
        # Received on a holiday (1 May 2026 is a Friday).
        (paris(2026, 5, 1, 10), 2, paris(2026, 5, 5, 18)),
        # Ascension Thursday 14 May 2026 and the Wednesday before.
        (paris(2026, 5, 13, 10), 2, paris(2026, 5, 18, 18)),
        # Easter Monday 2027 (29 March) right after a week-end.
        (paris(2027, 3, 26, 10), 2, paris(2027, 3, 31, 18)),
        # Across the year end: 1 January 2027 is a Friday holiday.
        (paris(2026, 12, 31, 10), 1, paris(2027, 1, 4, 18)),
        (paris(2026, 12, 31, 10), 2, paris(2027, 1, 5, 18)),
    ],
)
def test_deadline(france: BusinessCalendar, received: datetime, days: int, due: datetime) -> None:
    got = france.deadline(received, days)
    assert got == due
    # Same wall-clock time and zone, not only the same instant.
    assert got.tzinfo == PARIS
    assert (got.date(), got.time()) == (due.date(), due.time())


@pytest.mark.parametrize(
    ("received_utc", "due"),
    [
        # Thursday 23:30 in Paris: counting starts on Friday.
        (datetime(2026, 12, 3, 22, 30, tzinfo=UTC), paris(2026, 12, 7, 18)),
        # Already Friday 00:30 in Paris although still Thursday in UTC.
        (datetime(2026, 12, 3, 23, 30, tzinfo=UTC), paris(2026, 12, 8, 18)),
    ],
)
def test_deadline_uses_the_local_day_of_receipt(
    france: BusinessCalendar, received_utc: datetime, due: datetime
) -> None:
    assert france.deadline(received_utc, 2) == due


@pytest.mark.parametrize(
    ("received", "due", "offset_hours", "due_utc"),
    [
        # Summer time starts Sunday 29 March 2026: the offset moves from +1 to +2.
        (
            paris(2026, 3, 26, 10),
            paris(2026, 3, 30, 18),
            2,
            datetime(2026, 3, 30, 16, tzinfo=UTC),
        ),
        # Summer time ends Sunday 25 October 2026: the offset moves from +2 to +1.
        (
            paris(2026, 10, 22, 10),
            paris(2026, 10, 26, 18),
            1,
            datetime(2026, 10, 26, 17, tzinfo=UTC),
        ),
        # Received on the night of the October change (Sunday 02:30 summer time).
        (
            datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
            paris(2026, 10, 27, 18),
            1,
            datetime(2026, 10, 27, 17, tzinfo=UTC),
        ),
    ],
)
def test_deadline_across_dst_stays_at_day_end_local(
    france: BusinessCalendar,
    received: datetime,
    due: datetime,
    offset_hours: int,
    due_utc: datetime,
) -> None:
    got = france.deadline(received, 2)
    assert got.time() == time(18, 0)
    assert got.utcoffset() == timedelta(hours=offset_hours)
    assert got == due == due_utc


def test_deadline_with_a_configured_day_end() -> None:
    calendar = BusinessCalendar(day_end=time(17, 30))
    assert calendar.deadline(paris(2026, 12, 24, 10), 2) == paris(2026, 12, 29, 17, 30)


@pytest.mark.parametrize("days", [0, -1])
def test_deadline_needs_at_least_one_business_day(france: BusinessCalendar, days: int) -> None:
    with pytest.raises(ValueError):
        france.deadline(paris(2026, 12, 24, 10), days)


# --- business days and holidays ------------------------------------------------------------


@pytest.mark.parametrize("year", [2026, 2027])
def test_every_french_public_holiday_is_not_a_business_day(
    france: BusinessCalendar, year: int
) -> None:
    listed = holidays.country_holidays("FR", years=year)
    assert len(listed) >= 11
    for day in listed:
        assert not france.is_business_day(day), day
    assert france.holidays_in(year) == frozenset(listed)


@pytest.mark.parametrize(
    "day",
    [
        date(2026, 1, 1),
        date(2026, 4, 6),  # Easter Monday
        date(2026, 5, 1),
        date(2026, 5, 8),
        date(2026, 5, 14),  # Ascension
        date(2026, 7, 14),
        date(2026, 11, 11),
        date(2026, 12, 25),
        date(2027, 3, 29),  # Easter Monday
        date(2027, 5, 6),  # Ascension
        date(2027, 11, 1),
    ],
)
def test_known_french_holidays(france: BusinessCalendar, day: date) -> None:
    assert day.weekday() < 5  # a weekday, so only the holiday rule can exclude it
    assert not france.is_business_day(day)


@pytest.mark.parametrize(
    ("day", "expected"),
    [
        (date(2026, 11, 28), False),  # Saturday
        (date(2026, 11, 29), False),  # Sunday
        (date(2026, 11, 30), True),  # Monday
        (date(2026, 12, 24), True),  # Christmas Eve is worked
        (date(2026, 12, 31), True),
        (date(2026, 4, 3), True),  # Good Friday is not a holiday in France (outside Alsace)
    ],
)
def test_is_business_day(france: BusinessCalendar, day: date, expected: bool) -> None:
    assert france.is_business_day(day) is expected


def test_is_business_day_takes_the_local_day_of_an_aware_datetime(
    france: BusinessCalendar,
) -> None:
    # Sunday 23:30 UTC is already Monday in Paris.
    assert france.is_business_day(datetime(2026, 11, 29, 23, 30, tzinfo=UTC))
    assert not france.is_business_day(datetime(2026, 11, 29, 22, 30, tzinfo=UTC))


def test_another_country_uses_its_own_holidays(france: BusinessCalendar) -> None:
    germany = BusinessCalendar(country="DE", timezone="Europe/Berlin")
    good_friday = date(2026, 4, 3)
    assert france.is_business_day(good_friday)
    assert not germany.is_business_day(good_friday)
    assert france.is_business_day(date(2026, 7, 14)) is False
    assert germany.is_business_day(date(2026, 7, 14)) is True
    received = datetime(2026, 4, 1, 10, tzinfo=BERLIN)
    # Thursday 2 April, then Good Friday and Easter Monday off, then Tuesday 7 April.
    assert germany.deadline(received, 2) == datetime(2026, 4, 7, 18, tzinfo=BERLIN)
    assert france.deadline(received, 2) == paris(2026, 4, 3, 18)


def test_belgian_national_day() -> None:
    belgium = BusinessCalendar(country="BE", timezone="Europe/Brussels")
    assert not belgium.is_business_day(date(2026, 7, 21))
    assert belgium.is_business_day(date(2026, 7, 14))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"country": "XX"},
        {"timezone": "Mars/Olympus_Mons"},
        {"day_start": time(18, 0), "day_end": time(9, 0)},
        {"day_start": time(9, 0), "day_end": time(9, 0)},
        {"day_end": time(18, 0, tzinfo=UTC)},
    ],
)
def test_bad_calendar_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        BusinessCalendar(**kwargs)  # type: ignore[arg-type]


# --- business hours ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "hours"),
    [
        (paris(2026, 12, 1, 9), paris(2026, 12, 1, 18), 9.0),
        (paris(2026, 12, 1, 7), paris(2026, 12, 1, 20), 9.0),
        (paris(2026, 12, 1, 10, 30), paris(2026, 12, 1, 12), 1.5),
        (paris(2026, 12, 1, 19), paris(2026, 12, 2, 8), 0.0),
        # Friday 16:00 → Monday 10:00: 2 h + 1 h, the week-end is free.
        (paris(2026, 12, 4, 16), paris(2026, 12, 7, 10), 3.0),
        # Thursday 24 → Tuesday 29 December: 25 December is a holiday.
        (paris(2026, 12, 24, 10), paris(2026, 12, 29, 18), 8.0 + 9.0 + 9.0),
        # Across the spring DST change: still 1 h + 1 h.
        (paris(2026, 3, 27, 17), paris(2026, 3, 30, 10), 2.0),
        # End before start, or equal: nothing left.
        (paris(2026, 12, 2, 10), paris(2026, 12, 1, 10), 0.0),
        (paris(2026, 12, 2, 10), paris(2026, 12, 2, 10), 0.0),
        # Instants given in UTC are read in the calendar's zone (09:00 UTC = 10:00 Paris).
        (datetime(2026, 12, 1, 9, tzinfo=UTC), paris(2026, 12, 1, 12), 2.0),
    ],
)
def test_business_hours_between(
    france: BusinessCalendar, start: datetime, end: datetime, hours: float
) -> None:
    assert france.business_hours_between(start, end) == pytest.approx(hours)


@pytest.mark.parametrize(
    ("deadline", "hours", "warn_at"),
    [
        (paris(2026, 12, 29, 18), 4, paris(2026, 12, 29, 14)),
        (paris(2026, 12, 29, 18), 0, paris(2026, 12, 29, 18)),
        (paris(2026, 12, 29, 18), 9, paris(2026, 12, 29, 9)),
        (paris(2026, 12, 29, 18), 10, paris(2026, 12, 28, 17)),
        # Tuesday 11:00 minus 4 h: 2 h on Tuesday morning, 2 h on Monday afternoon.
        (paris(2026, 12, 29, 11), 4, paris(2026, 12, 28, 16)),
        # Monday 28 minus 4 h from 10:00 skips the week-end and Christmas (Friday).
        (paris(2026, 12, 28, 10), 4, paris(2026, 12, 24, 15)),
        # A deadline at night counts from the end of that day's working hours.
        (paris(2026, 12, 29, 23), 1.5, paris(2026, 12, 29, 16, 30)),
        # Across the spring DST change.
        (paris(2026, 3, 30, 10), 2, paris(2026, 3, 27, 17)),
    ],
)
def test_subtract_business_hours(
    france: BusinessCalendar, deadline: datetime, hours: float, warn_at: datetime
) -> None:
    got = france.subtract_business_hours(deadline, hours)
    assert got == warn_at
    assert got.tzinfo == PARIS


@pytest.mark.parametrize("hours", [0.5, 4, 9, 13.25, 40])
def test_subtract_then_measure_gives_the_hours_back(
    france: BusinessCalendar, hours: float
) -> None:
    deadline = france.deadline(paris(2026, 12, 24, 10), 2)
    warn_at = france.subtract_business_hours(deadline, hours)
    assert france.business_hours_between(warn_at, deadline) == pytest.approx(hours)


@pytest.mark.parametrize("hours", [-1, float("nan"), float("inf")])
def test_subtract_business_hours_refuses_nonsense(france: BusinessCalendar, hours: float) -> None:
    with pytest.raises(ValueError):
        france.subtract_business_hours(paris(2026, 12, 29, 18), hours)


# --- naive datetimes -----------------------------------------------------------------------

NAIVE = datetime(2026, 12, 24, 10)  # noqa: DTZ001 - the value under test


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.deadline(NAIVE, 2),
        lambda c: c.business_hours_between(NAIVE, paris(2026, 12, 29, 18)),
        lambda c: c.business_hours_between(paris(2026, 12, 22, 18), NAIVE),
        lambda c: c.subtract_business_hours(NAIVE, 4),
        lambda c: c.is_business_day(NAIVE),
    ],
    ids=["deadline", "hours-start", "hours-end", "subtract", "is_business_day"],
)
def test_naive_datetimes_are_refused(
    france: BusinessCalendar, call: Callable[[BusinessCalendar], object]
) -> None:
    with pytest.raises(ValueError, match="naive"):
        call(france)
