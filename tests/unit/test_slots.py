"""Free call slots (SPEC R4, R5, §5) and the `!block` period parser — pure, table-driven."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import holidays
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.config import Availability
from bot.domain.slots import Busy, Slot, SlotInputError, SlotOffer, free_slots, parse_block
from bot.i18n import Msg

PARIS = ZoneInfo("Europe/Paris")
FR_HOLIDAYS = holidays.country_holidays("FR")
WEEKDAYS = (0, 1, 2, 3, 4)
EVERY_DAY = (0, 1, 2, 3, 4, 5, 6)


def business_day(day: date) -> bool:
    return day.weekday() < 5 and day not in FR_HOLIDAYS


def any_day(day: date) -> bool:
    return True


def paris(text: str) -> datetime:
    """'2026-12-01 09:00' in Paris (first occurrence when ambiguous)."""
    return datetime.fromisoformat(text).replace(tzinfo=PARIS)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def local(slot: Slot) -> str:
    return slot.start.astimezone(PARIS).strftime("%Y-%m-%d %H:%M")


def mornings(staff: str = "alice", days: tuple[int, ...] = WEEKDAYS) -> Availability:
    return Availability(staff, days, time(9), time(12))


# Mon 2026-11-30 07:00 Paris; with 4 h notice the first slot is 11:00.
MONDAY = paris("2026-11-30 07:00")


@dataclass(frozen=True)
class Case:
    id: str
    expected: tuple[str, ...]
    now: datetime = MONDAY
    window_end: datetime = field(default_factory=lambda: paris("2026-12-02 18:00"))
    availability: tuple[Availability, ...] = (mornings(),)
    busy: tuple[Busy, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)


def every_slot(case: Case) -> SlotOffer:
    """All free slots in the window: with a large count, spreading keeps every one."""
    return free_slots(
        now=case.now,
        availability=case.availability,
        busy=case.busy,
        is_business_day=business_day,
        tz=PARIS,
        window_end=case.window_end,
        count=1000,
        **case.options,
    )


GENERATION_CASES = [
    Case(
        "normal week: notice cuts Monday morning, Tue and Wed full",
        (
            "2026-11-30 11:00",
            "2026-12-01 09:00",
            "2026-12-01 10:00",
            "2026-12-01 11:00",
            "2026-12-02 09:00",
            "2026-12-02 10:00",
            "2026-12-02 11:00",
        ),
    ),
    Case(
        "holiday: 2026-12-25 and the weekend give nothing",
        (
            "2026-12-24 11:00",
            "2026-12-28 09:00",
            "2026-12-28 10:00",
            "2026-12-28 11:00",
            "2026-12-29 09:00",
            "2026-12-29 10:00",
            "2026-12-29 11:00",
        ),
        now=paris("2026-12-24 07:00"),
        window_end=paris("2026-12-29 18:00"),
    ),
    Case(
        "holiday: 11 November",
        ("2026-11-10 11:00", "2026-11-12 09:00", "2026-11-12 10:00", "2026-11-12 11:00"),
        now=paris("2026-11-10 07:00"),
        window_end=paris("2026-11-12 18:00"),
    ),
    Case(
        "block for everyone removes the overlapping slot only; touching is fine",
        (
            "2026-11-30 11:00",
            "2026-12-01 09:00",
            "2026-12-01 11:00",
            "2026-12-02 09:00",
            "2026-12-02 10:00",
            "2026-12-02 11:00",
        ),
        busy=(
            Busy(None, paris("2026-12-01 10:30"), paris("2026-12-01 11:00"), "block"),
            Busy(None, paris("2026-12-02 08:00"), paris("2026-12-02 09:00"), "block"),
        ),
    ),
    Case(
        "whole-day block of one staff member",
        ("2026-11-30 11:00", "2026-12-02 09:00", "2026-12-02 10:00", "2026-12-02 11:00"),
        busy=(Busy("alice", paris("2026-12-01 00:00"), paris("2026-12-02 00:00"), "block"),),
    ),
    Case(
        "booking on the grid: its slot goes, neighbours stay (buffer exactly kept)",
        (
            "2026-11-30 11:00",
            "2026-12-01 09:00",
            "2026-12-01 11:00",
            "2026-12-02 09:00",
            "2026-12-02 10:00",
            "2026-12-02 11:00",
        ),
        busy=(Busy("alice", paris("2026-12-01 10:00"), paris("2026-12-01 10:45")),),
    ),
    Case(
        "off-grid booking: the buffer also removes the slot before it",
        (
            "2026-11-30 11:00",
            "2026-12-01 11:00",
            "2026-12-02 09:00",
            "2026-12-02 10:00",
            "2026-12-02 11:00",
        ),
        busy=(Busy("alice", paris("2026-12-01 09:50"), paris("2026-12-01 10:35")),),
    ),
    Case(
        "40 min slots, 20 min buffer: the booking also removes the slot after it",
        (
            "2026-11-30 11:00",
            "2026-12-01 09:00",
            "2026-12-02 09:00",
            "2026-12-02 10:00",
            "2026-12-02 11:00",
        ),
        busy=(Busy("alice", paris("2026-12-01 10:00"), paris("2026-12-01 10:45")),),
        options={"buffer_minutes": 20, "slot_minutes": 40},
    ),
    Case(
        "another staff member's booking changes nothing",
        (
            "2026-11-30 11:00",
            "2026-12-01 09:00",
            "2026-12-01 10:00",
            "2026-12-01 11:00",
            "2026-12-02 09:00",
            "2026-12-02 10:00",
            "2026-12-02 11:00",
        ),
        busy=(Busy("bob", paris("2026-12-01 09:00"), paris("2026-12-01 12:00")),),
    ),
    Case(
        "minimum notice: 08:10 + 4 h leaves nothing on Monday",
        ("2026-12-01 09:00", "2026-12-01 10:00", "2026-12-01 11:00"),
        now=paris("2026-11-30 08:10"),
        window_end=paris("2026-12-01 18:00"),
    ),
    Case(
        "minimum notice: 08:10 + 1 h",
        ("2026-11-30 10:00", "2026-11-30 11:00"),
        now=paris("2026-11-30 08:10"),
        window_end=paris("2026-11-30 18:00"),
        options={"min_notice": timedelta(hours=1)},
    ),
    Case(
        "slot length and grid: 30 min + 10 min buffer",
        ("2026-11-30 09:00", "2026-11-30 09:40", "2026-11-30 10:20", "2026-11-30 11:00"),
        now=paris("2026-11-30 06:00"),
        window_end=paris("2026-11-30 18:00"),
        options={"slot_minutes": 30, "buffer_minutes": 10, "min_notice": timedelta(0)},
    ),
    Case(
        "a slot must end by the availability end",
        ("2026-11-30 09:00", "2026-11-30 10:00"),
        now=paris("2026-11-30 06:00"),
        window_end=paris("2026-11-30 18:00"),
        availability=(Availability("alice", WEEKDAYS, time(9), time(11, 44)),),
        options={"min_notice": timedelta(0)},
    ),
    Case(
        "two staff members: both grids, one slot per instant",
        (
            "2026-11-30 09:00 alice",
            "2026-11-30 10:00 alice",
            "2026-11-30 10:30 bob",
            "2026-11-30 11:00 alice",
            "2026-11-30 14:00 bob",
        ),
        now=paris("2026-11-30 06:00"),
        window_end=paris("2026-11-30 18:00"),
        availability=(
            mornings("alice"),
            Availability("bob", WEEKDAYS, time(10, 30), time(12)),
            Availability("bob", WEEKDAYS, time(14), time(15)),
            Availability("bob", WEEKDAYS, time(9), time(10)),
        ),
        busy=(Busy("bob", paris("2026-11-30 09:00"), paris("2026-11-30 09:45")),),
        options={"min_notice": timedelta(0)},
    ),
    Case(
        "availability days: Tuesday only",
        ("2026-12-01 09:00", "2026-12-01 10:00", "2026-12-01 11:00"),
        availability=(mornings(days=(1,)),),
    ),
    Case(
        "DST end: Friday 2026-10-23 and Monday 2026-10-26 keep the wall-clock grid",
        ("2026-10-23 11:00", "2026-10-26 09:00", "2026-10-26 10:00", "2026-10-26 11:00"),
        now=paris("2026-10-23 07:00"),
        window_end=paris("2026-10-26 18:00"),
    ),
]


@pytest.mark.parametrize("case", GENERATION_CASES, ids=lambda c: c.id)
def test_slot_generation(case: Case) -> None:
    offer = every_slot(case)
    with_staff = any(" " in e[11:] for e in case.expected)
    got = tuple(f"{local(s)} {s.staff}" if with_staff else local(s) for s in offer.slots)
    assert got == case.expected
    assert offer.within_window
    assert offer.window_end == case.window_end
    for slot in offer.slots:
        assert slot.start.tzinfo is UTC and slot.end.tzinfo is UTC


def test_dst_change_keeps_real_instants() -> None:
    offer = every_slot(
        Case("", (), now=paris("2026-10-23 07:00"), window_end=paris("2026-10-26 18:00"))
    )
    starts = [s.start for s in offer.slots]
    # 11:00 CEST (+02:00) on Friday, 09:00 CET (+01:00) on Monday.
    assert starts[0] == utc("2026-10-23 09:00")
    assert starts[1] == utc("2026-10-26 08:00")
    assert all(s.end - s.start == timedelta(minutes=45) for s in offer.slots)


# Night availability on the two DST Sundays (any day allowed) to reach the changed hour.
NIGHT = (Availability("alice", EVERY_DAY, time(0), time(5)),)


@pytest.mark.parametrize(
    ("now", "window_end", "options", "expected_utc"),
    [
        pytest.param(
            # 02:00 happens twice: its first occurrence (CEST) is used; 03:00 and 04:00 CET.
            paris("2026-10-24 12:00"),
            paris("2026-10-25 18:00"),
            {},
            [
                "2026-10-24 22:00",
                "2026-10-24 23:00",
                "2026-10-25 00:00",
                "2026-10-25 02:00",
                "2026-10-25 03:00",
            ],
            id="autumn 2026-10-25: ambiguous 02:00 means the first one",
        ),
        pytest.param(
            # 02:00 does not exist: skipped; 03:00 and 04:00 are CEST.
            paris("2027-03-27 12:00"),
            paris("2027-03-28 18:00"),
            {},
            ["2027-03-27 23:00", "2027-03-28 00:00", "2027-03-28 01:00", "2027-03-28 02:00"],
            id="spring 2027-03-28: 02:00 does not exist",
        ),
        pytest.param(
            # 50-minute grid: 01:40 CET (00:40Z), 02:30 (gap), 03:20 CEST = 01:20Z, which would
            # overlap 00:40Z + 45 min: the wall-clock grid lost an hour, so that slot is dropped.
            paris("2027-03-27 12:00"),
            paris("2027-03-28 18:00"),
            {"buffer_minutes": 5},
            ["2027-03-27 23:00", "2027-03-27 23:50", "2027-03-28 00:40", "2027-03-28 02:10"],
            id="spring 2027-03-28: no overlap after the gap",
        ),
    ],
)
def test_dst_days(
    now: datetime, window_end: datetime, options: dict[str, Any], expected_utc: list[str]
) -> None:
    offer = free_slots(
        now=now,
        availability=NIGHT,
        busy=(),
        is_business_day=any_day,
        tz=PARIS,
        window_end=window_end,
        count=100,
        **options,
    )
    assert [s.start for s in offer.slots] == [utc(t) for t in expected_utc]
    assert_no_overlap(offer.slots, timedelta(minutes=options.get("buffer_minutes", 15)))


def test_dst_autumn_availability_end_is_real_time() -> None:
    # 00:00–03:00 on the autumn Sunday is 4 real hours; wall-clock grid 00, 01, 02 (CEST).
    offer = free_slots(
        now=paris("2026-10-24 12:00"),
        availability=(Availability("alice", EVERY_DAY, time(0), time(3)),),
        busy=(),
        is_business_day=any_day,
        tz=PARIS,
        window_end=paris("2026-10-25 18:00"),
        count=100,
    )
    assert [s.start for s in offer.slots] == [
        utc("2026-10-24 22:00"),
        utc("2026-10-24 23:00"),
        utc("2026-10-25 00:00"),
    ]


def test_staff_with_fewer_bookings_gets_the_shared_instant() -> None:
    both = (mornings("alice"), mornings("bob"))
    common = dict(
        now=paris("2026-11-30 06:00"),
        availability=both,
        is_business_day=business_day,
        tz=PARIS,
        window_end=paris("2026-11-30 18:00"),
        min_notice=timedelta(0),
        count=10,
    )
    assert {s.staff for s in free_slots(busy=(), **common).slots} == {"alice"}
    alice_busy = (Busy("alice", paris("2026-12-03 09:00"), paris("2026-12-03 09:45")),)
    assert {s.staff for s in free_slots(busy=alice_busy, **common).slots} == {"bob"}


def test_nothing_free_in_window_offers_first_slots_after() -> None:
    window_end = paris("2026-12-01 18:00")
    offer = free_slots(
        now=MONDAY,
        availability=(mornings(),),
        busy=(Busy(None, paris("2026-11-30 00:00"), paris("2026-12-02 00:00"), "block"),),
        is_business_day=business_day,
        tz=PARIS,
        window_end=window_end,
    )
    assert not offer.within_window
    assert offer.window_end == window_end
    assert [local(s) for s in offer.slots] == [
        "2026-12-02 09:00",
        "2026-12-02 10:00",
        "2026-12-02 11:00",
        "2026-12-03 09:00",
        "2026-12-03 10:00",
    ]


def test_nothing_at_all_is_an_empty_flagged_offer() -> None:
    offer = free_slots(
        now=MONDAY,
        availability=(),
        busy=(),
        is_business_day=business_day,
        tz=PARIS,
        window_end=paris("2026-12-02 18:00"),
    )
    assert offer == SlotOffer((), False, paris("2026-12-02 18:00"))


def test_after_window_search_is_bounded() -> None:
    offer = free_slots(
        now=MONDAY,
        availability=(mornings(),),
        busy=(Busy(None, paris("2026-11-30 00:00"), paris("2026-12-10 00:00"), "block"),),
        is_business_day=business_day,
        tz=PARIS,
        window_end=paris("2026-12-02 18:00"),
        search_days_after=5,
    )
    assert offer.slots == () and not offer.within_window


def test_few_free_slots_in_window_are_offered_as_they_are() -> None:
    offer = free_slots(
        now=MONDAY,
        availability=(mornings(),),
        busy=(Busy(None, paris("2026-11-30 00:00"), paris("2026-12-02 10:00"), "block"),),
        is_business_day=business_day,
        tz=PARIS,
        window_end=paris("2026-12-02 18:00"),
    )
    assert offer.within_window
    assert [local(s) for s in offer.slots] == ["2026-12-02 10:00", "2026-12-02 11:00"]


FULL_DAYS = (Availability("alice", WEEKDAYS, time(9), time(18)),)


def test_spread_over_days_and_times_of_day() -> None:
    # Three free days of nine slots each (09:00 … 17:00).
    now = paris("2026-11-30 05:00")
    offer = free_slots(
        now=now,
        availability=FULL_DAYS,
        busy=(),
        is_business_day=business_day,
        tz=PARIS,
        window_end=paris("2026-12-02 18:00"),
    )
    assert offer.within_window
    assert len(offer.slots) == 5
    days = {s.start.astimezone(PARIS).date() for s in offer.slots}
    assert len(days) == 3
    hours = sorted(s.start.astimezone(PARIS).hour for s in offer.slots)
    assert hours[0] < 12 <= hours[-1]  # mornings and afternoons
    # The soonest slot is always offered; the offer is chronological and deterministic.
    assert local(offer.slots[0]) == "2026-11-30 09:00"
    assert list(offer.slots) == sorted(offer.slots, key=lambda s: s.start)
    assert offer == free_slots(
        now=now,
        availability=FULL_DAYS,
        busy=(),
        is_business_day=business_day,
        tz=PARIS,
        window_end=paris("2026-12-02 18:00"),
    )
    assert [local(s) for s in offer.slots] == [
        "2026-11-30 09:00",
        "2026-11-30 11:00",
        "2026-12-01 15:00",
        "2026-12-01 17:00",
        "2026-12-02 13:00",
    ]


def test_count_limits_the_offer() -> None:
    offer = free_slots(
        now=paris("2026-11-30 05:00"),
        availability=FULL_DAYS,
        busy=(),
        is_business_day=business_day,
        tz=PARIS,
        window_end=paris("2026-12-02 18:00"),
        count=2,
    )
    assert len(offer.slots) == 2
    assert len({s.start.date() for s in offer.slots}) == 2


def test_window_from_business_calendar() -> None:
    from bot.rules import BusinessCalendar

    calendar = BusinessCalendar()
    received = paris("2026-12-24 10:00")
    offer = free_slots(
        now=received,
        availability=FULL_DAYS,
        busy=(),
        is_business_day=calendar.is_business_day,
        tz=PARIS,
        window_end=calendar.deadline(received, 3),
    )
    assert offer.within_window
    assert offer.window_end == paris("2026-12-30 18:00")
    assert {s.start.astimezone(PARIS).date() for s in offer.slots} == {
        date(2026, 12, 24),
        date(2026, 12, 28),
        date(2026, 12, 29),
        date(2026, 12, 30),
    }


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"now": datetime(2026, 11, 30, 7)}, "now"),  # noqa: DTZ001 - the point of the test
        ({"window_end": datetime(2026, 12, 2, 18)}, "window_end"),  # noqa: DTZ001
        ({"slot_minutes": 0}, "slot_minutes"),
        ({"buffer_minutes": -1}, "buffer_minutes"),
        ({"count": 0}, "count"),
    ],
)
def test_invalid_arguments(arguments: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = dict(
        now=MONDAY,
        availability=(mornings(),),
        busy=(),
        is_business_day=business_day,
        tz=PARIS,
        window_end=paris("2026-12-02 18:00"),
    )
    with pytest.raises(ValueError, match=message):
        free_slots(**(base | arguments))


def test_busy_needs_aware_times() -> None:
    with pytest.raises(ValueError, match=r"Busy\.start"):
        Busy("alice", datetime(2026, 12, 1, 9), paris("2026-12-01 10:00"))  # noqa: DTZ001


# --- properties -----------------------------------------------------------------------------


def assert_no_overlap(slots: Sequence[Slot], buffer: timedelta) -> None:
    ordered = sorted(slots, key=lambda s: s.start)
    for staff in {s.staff for s in ordered}:
        mine = [s for s in ordered if s.staff == staff]
        for before, after in pairwise(mine):
            assert before.end + buffer <= after.start


def overlaps(slot: Slot, period: Busy, buffer: timedelta) -> bool:
    if period.staff is not None and period.staff != slot.staff:
        return False
    pad = buffer if period.kind == "booking" else timedelta(0)
    return slot.start < period.end + pad and period.start - pad < slot.end


PROPERTY_AVAILABILITY = (
    Availability("alice", EVERY_DAY, time(0, 30), time(5)),
    Availability("alice", WEEKDAYS, time(9), time(12)),
    Availability("bob", WEEKDAYS, time(10, 15), time(17)),
    Availability("bob", (1, 3), time(16), time(19, 30)),
)
# Around both DST changes and the Christmas holidays.
BASES = [utc("2026-10-21 00:00"), utc("2026-12-21 00:00"), utc("2027-03-24 00:00")]
MINUTES = 9 * 24 * 60


@st.composite
def busy_periods(draw: st.DrawFn, base: datetime) -> Busy:
    start = base + timedelta(minutes=5 * draw(st.integers(0, MINUTES // 5)))
    length = timedelta(minutes=5 * draw(st.integers(1, 80)))
    staff = draw(st.sampled_from(["alice", "bob", None]))
    kind = draw(st.sampled_from(["booking", "block"]))
    return Busy(staff, start, start + length, kind)


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    base = draw(st.sampled_from(BASES))
    now = base + timedelta(minutes=draw(st.integers(0, 3 * 24 * 60)))
    return dict(
        now=now,
        window_end=now + timedelta(hours=draw(st.integers(1, 120))),
        busy=draw(st.lists(busy_periods(base), max_size=12)),
        slot_minutes=draw(st.sampled_from([30, 45, 60])),
        buffer_minutes=draw(st.sampled_from([0, 10, 15])),
        min_notice=timedelta(minutes=draw(st.sampled_from([0, 90, 240]))),
        count=draw(st.integers(1, 6)),
    )


def not_holiday(day: date) -> bool:
    return day not in FR_HOLIDAYS


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_every_offered_slot_is_really_free(scenario: dict[str, Any]) -> None:
    offer = free_slots(
        availability=PROPERTY_AVAILABILITY,
        is_business_day=not_holiday,
        tz=PARIS,
        search_days_after=3,
        **scenario,
    )
    buffer = timedelta(minutes=scenario["buffer_minutes"])
    length = timedelta(minutes=scenario["slot_minutes"])
    assert len(offer.slots) <= scenario["count"]
    assert len({s.start for s in offer.slots}) == len(offer.slots)
    for slot in offer.slots:
        start, end = slot.start.astimezone(PARIS), slot.end.astimezone(PARIS)
        assert slot.end - slot.start == length
        assert not_holiday(start.date())
        assert slot.start >= scenario["now"] + scenario["min_notice"]
        assert any(
            a.staff == slot.staff
            and start.weekday() in a.days
            and a.start <= start.time()
            and end.date() == start.date()
            and end.time() <= a.end
            for a in PROPERTY_AVAILABILITY
        )
        assert not any(overlaps(slot, period, buffer) for period in scenario["busy"])
        if offer.within_window:
            assert slot.end <= scenario["window_end"]
        else:
            assert slot.end > scenario["window_end"]
    assert_no_overlap(offer.slots, buffer)


# --- parse_block ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("2026-12-03 14:00-16:00", "2026-12-03 13:00", "2026-12-03 15:00"),
        ("  2026-12-03   14h00 - 16h30 ", "2026-12-03 13:00", "2026-12-03 15:30"),
        ("2026-12-03 9:15–10:00", "2026-12-03 08:15", "2026-12-03 09:00"),
        ("2026-12-03", "2026-12-02 23:00", "2026-12-03 23:00"),
        ("2026-12-03 14:00 2026-12-04 12:00", "2026-12-03 13:00", "2026-12-04 11:00"),
        ("2026-12-03 14:00 - 2026-12-04 12:00", "2026-12-03 13:00", "2026-12-04 11:00"),
        ("2026-12-21 2026-12-31", "2026-12-20 23:00", "2026-12-31 23:00"),
        ("2026-07-14 14:00-16:00", "2026-07-14 12:00", "2026-07-14 14:00"),  # CEST
        # The autumn Sunday has 25 hours; the spring one 23.
        ("2026-10-25", "2026-10-24 22:00", "2026-10-25 23:00"),
        ("2027-03-28", "2027-03-27 23:00", "2027-03-28 22:00"),
        # DST edges widen the block: ambiguous start → first 02:30, end → second 02:45;
        # nonexistent 02:30 → its earlier reading (01:30 CET).
        ("2026-10-25 02:30-02:45", "2026-10-25 00:30", "2026-10-25 01:45"),
        ("2027-03-28 02:30-04:00", "2027-03-28 00:30", "2027-03-28 02:00"),
    ],
)
def test_parse_block(text: str, start: str, end: str) -> None:
    assert parse_block(text, PARIS) == (utc(start), utc(end))


@pytest.mark.parametrize(
    ("text", "reason", "params"),
    [
        ("", "Write a period", {}),
        ("tomorrow afternoon", "Write a period", {}),
        ("2026-12-03 14:00", "Write a period", {}),
        ("03/12/2026 14:00-16:00", "Write a period", {}),
        ("2026-12-03 14:00-16:00 extra", "Write a period", {}),
        ("٢٠٢٦-١٢-٠٣", "Write a period", {}),  # non-ASCII digits
        ("2026-12-03 " + "1" * 100, "Write a period", {}),
        ("2026-02-30", "{value} is not a valid date.", {"value": "2026-02-30"}),
        ("2026-13-01 10:00-11:00", "{value} is not a valid date.", {"value": "2026-13-01"}),
        ("2026-12-03 25:00-26:00", "{value} is not a valid time.", {"value": "25:00"}),
        ("2026-12-03 10:60-11:00", "{value} is not a valid time.", {"value": "10:60"}),
        ("2026-12-03 16:00-14:00", "The end of the period must be after its start.", {}),
        ("2026-12-03 14:00-14:00", "The end of the period must be after its start.", {}),
        ("2026-12-05 2026-12-03", "The end of the period must be after its start.", {}),
    ],
)
def test_parse_block_rejects(text: str, reason: str, params: dict[str, str]) -> None:
    with pytest.raises(SlotInputError) as caught:
        parse_block(text, PARIS)
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.reason.startswith(reason)
    assert error.params == params
    assert error.msg == Msg(error.reason, params)
    # The exception text is the msgid, never the user's input.
    assert str(error) == error.reason
