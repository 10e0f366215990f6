"""`BusinessCalendar(subdivision=...)`: a region's own public holidays (Alsace-Moselle)."""

from __future__ import annotations

from datetime import date, datetime, time
from zoneinfo import ZoneInfo

import pytest

from bot.rules import BusinessCalendar

PARIS_TZ = ZoneInfo("Europe/Paris")


@pytest.fixture(scope="module")
def paris() -> BusinessCalendar:
    return BusinessCalendar(country="FR", timezone="Europe/Paris")


@pytest.fixture(scope="module")
def moselle() -> BusinessCalendar:
    return BusinessCalendar(country="FR", timezone="Europe/Paris", subdivision="57")


@pytest.mark.parametrize(
    ("day", "in_moselle", "in_paris"),
    [
        (date(2025, 4, 18), True, False),  # Good Friday
        (date(2025, 12, 26), True, False),  # Saint Stephen's Day
        (date(2024, 12, 26), True, False),
        (date(2025, 12, 25), True, True),  # Christmas, everywhere
        (date(2025, 4, 21), True, True),  # Easter Monday, everywhere
        (date(2025, 4, 17), False, False),  # the Thursday before Good Friday
    ],
)
def test_alsace_moselle_holidays(
    paris: BusinessCalendar, moselle: BusinessCalendar, day: date, in_moselle: bool, in_paris: bool
) -> None:
    assert (day in moselle.holidays_in(day.year)) is in_moselle
    assert (day in paris.holidays_in(day.year)) is in_paris
    assert moselle.is_business_day(day) is not in_moselle
    assert paris.is_business_day(day) is not in_paris


@pytest.mark.parametrize(
    ("received", "days", "due_in_paris", "due_in_moselle"),
    [
        # Thursday before Good Friday: Friday in Paris; in Moselle Friday and Easter Monday are
        # holidays, so Tuesday.
        (datetime(2025, 4, 17, 10, tzinfo=PARIS_TZ), 1, date(2025, 4, 18), date(2025, 4, 22)),
        # Christmas Eve 2024 (Tuesday): Thursday 26 in Paris, Friday 27 in Moselle.
        (datetime(2024, 12, 24, 10, tzinfo=PARIS_TZ), 1, date(2024, 12, 26), date(2024, 12, 27)),
        # Christmas Eve 2025 (Wednesday): Friday 26 in Paris, Monday 29 in Moselle.
        (datetime(2025, 12, 24, 10, tzinfo=PARIS_TZ), 1, date(2025, 12, 26), date(2025, 12, 29)),
        # Two business days from Tuesday 23 December 2025.
        (datetime(2025, 12, 23, 10, tzinfo=PARIS_TZ), 2, date(2025, 12, 26), date(2025, 12, 29)),
        # Nothing special: the same everywhere.
        (datetime(2025, 3, 3, 10, tzinfo=PARIS_TZ), 2, date(2025, 3, 5), date(2025, 3, 5)),
    ],
)
def test_deadlines_over_local_holidays_are_a_business_day_later(
    paris: BusinessCalendar,
    moselle: BusinessCalendar,
    received: datetime,
    days: int,
    due_in_paris: date,
    due_in_moselle: date,
) -> None:
    assert paris.deadline(received, days) == datetime.combine(due_in_paris, time(18), PARIS_TZ)
    assert moselle.deadline(received, days) == datetime.combine(due_in_moselle, time(18), PARIS_TZ)
    if due_in_paris != due_in_moselle:
        # The local holiday counts no more: one business day of Moselle's later.
        assert moselle.add_business_days(due_in_paris, 1) == due_in_moselle


def test_default_is_the_whole_country(paris: BusinessCalendar) -> None:
    assert paris.subdivision is None
    assert "subdivision=None" in repr(paris)


def test_unknown_subdivision_is_refused() -> None:
    with pytest.raises(ValueError, match="subdivision '99'"):
        BusinessCalendar(country="FR", subdivision="99")
