"""Free call slots (SPEC R4, R5, §5): weekly availability minus holidays, blocks and bookings.

Everything here is pure: the caller passes `now`, the business-day predicate and the busy
periods it loaded; nothing reads a clock, a database or the `holidays` package.

Time handling
-------------
* Availability (`[[availability]]`) is wall-clock time in the service time zone. Each day's grid
  starts at the availability start and advances by `slot_minutes + buffer_minutes` of *wall*
  time, so a client sees the same 09:00, 10:00, … on every day, DST or not.
* A grid time that does not exist locally (the spring-forward gap, e.g. 02:30 on 2027-03-28 in
  Europe/Paris) is skipped. An ambiguous one (the autumn fall-back hour) means its first
  occurrence (``fold=0``, the summer-time instant), as RFC 5545 also reads local times.
* A slot lasts `slot_minutes` of real time and must end by the availability end (for an
  ambiguous or nonexistent end, the earlier candidate instant: a slot is never longer than
  the staff member's real day).
* Results are aware datetimes in **UTC**. Aware datetimes sharing one zoneinfo compare by wall
  time and ignore `fold`, so two instants of the ambiguous hour would compare equal; UTC has no
  such trap. Render them in the reader's time zone at the edge.

Busy periods
------------
`Busy(kind="booking")` is a call: no other call may start or end within `buffer_minutes` of
it. `Busy(kind="block")` is time the staff member is away (`!block`): slots may touch it but
not overlap it. A `Busy` with ``staff=None`` applies to everyone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from bot.config import Availability
from bot.i18n import N_, Msg

BusyKind = Literal["booking", "block"]


@dataclass(frozen=True, slots=True)
class Slot:
    """A bookable call: one staff member, a half-open interval [start, end) in UTC."""

    staff: str
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class Busy:
    """A period a staff member (``None``: everyone) cannot take a call."""

    staff: str | None
    start: datetime
    end: datetime
    kind: BusyKind = "booking"

    def __post_init__(self) -> None:
        _require_aware(self.start, "Busy.start")
        _require_aware(self.end, "Busy.end")


@dataclass(frozen=True, slots=True)
class SlotOffer:
    """What to propose to a client.

    `within_window` is False when no slot was free before `window_end` (the R4 deadline) and
    the slots are the first ones after it: the staff card must flag the SLA risk. An empty
    `slots` means nothing is free in the whole search horizon.
    """

    slots: tuple[Slot, ...]
    within_window: bool
    window_end: datetime


class SlotInputError(ValueError):
    """A staff member typed a period the bot cannot read; `msg` is the localisable reply.

    `reason` is an English msgid marked with `N_` and `params` its placeholders. The exception
    text is the bare msgid, never the user's input, so logging it leaks nothing.
    """

    def __init__(self, reason: str, **params: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.params: dict[str, Any] = params

    @property
    def msg(self) -> Msg:
        return Msg(self.reason, self.params)


def free_slots(
    *,
    now: datetime,
    availability: Sequence[Availability],
    busy: Sequence[Busy],
    is_business_day: Callable[[date], bool],
    tz: ZoneInfo,
    window_end: datetime,
    slot_minutes: int = 45,
    buffer_minutes: int = 15,
    min_notice: timedelta = timedelta(hours=4),
    count: int = 5,
    search_days_after: int = 10,
) -> SlotOffer:
    """Up to `count` free slots, spread over the window that ends at `window_end`.

    A slot qualifies when its local day is a business day and one of the staff member's
    availability days, it starts no earlier than ``now + min_notice``, and it keeps clear of
    every busy period (bookings by `buffer_minutes`). Inside the window the offer is spread
    over days and times of day (see `_spread`); when nothing is free inside it, the offer is
    the earliest slots of the `search_days_after` calendar days that follow, with
    ``within_window=False``. Fewer than `count` free slots in the window are offered as they
    are: later slots are only for when none is free (R4).

    When several staff members are free at the same instant, one slot is kept: the staff
    member with the fewest booked minutes in the search horizon (ties: the order of
    `availability`), so calls are shared out.
    """
    _require_aware(now, "now")
    _require_aware(window_end, "window_end")
    if slot_minutes <= 0:
        raise ValueError("slot_minutes must be positive")
    if buffer_minutes < 0:
        raise ValueError("buffer_minutes must not be negative")
    if count <= 0:
        raise ValueError("count must be positive")

    length = timedelta(minutes=slot_minutes)
    buffer = timedelta(minutes=buffer_minutes)
    earliest = now + min_notice
    first_day = now.astimezone(tz).date()
    last_day = window_end.astimezone(tz).date() + timedelta(days=search_days_after)
    horizon_end = datetime.combine(last_day + timedelta(days=1), time(0), tz)

    candidates = [
        slot
        for slot in _grid(availability, first_day, last_day, tz, length, buffer, is_business_day)
        if slot.start >= earliest and slot.start > now and not _conflicts(slot, busy, buffer)
    ]
    candidates = _one_per_instant(
        _thin_per_staff(candidates, buffer),
        staff_rank=_staff_rank(availability, busy, now, horizon_end),
    )

    inside = [s for s in candidates if s.end <= window_end]
    if inside:
        return SlotOffer(_spread(inside, count, tz), True, window_end)
    after = [s for s in candidates if s.end > window_end][:count]
    return SlotOffer(tuple(after), False, window_end)


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime")


def _local_instant(naive: datetime, tz: ZoneInfo) -> datetime | None:
    """The UTC instant of a local wall time; None in a spring-forward gap.

    Ambiguous wall times resolve to their first occurrence (``fold=0``).
    """
    instant = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    # A wall time in the gap does not survive the round trip (02:30 comes back as 03:30).
    if instant.astimezone(tz).replace(tzinfo=None) != naive.replace(fold=0):
        return None
    return instant


def _earliest_instant(naive: datetime, tz: ZoneInfo) -> datetime:
    """The earlier of the two readings of a wall time (they differ only around DST changes)."""
    return min(naive.replace(tzinfo=tz, fold=f).astimezone(UTC) for f in (0, 1))


def _latest_instant(naive: datetime, tz: ZoneInfo) -> datetime:
    return max(naive.replace(tzinfo=tz, fold=f).astimezone(UTC) for f in (0, 1))


def _grid(
    availability: Sequence[Availability],
    first_day: date,
    last_day: date,
    tz: ZoneInfo,
    length: timedelta,
    buffer: timedelta,
    is_business_day: Callable[[date], bool],
) -> Iterable[Slot]:
    step = length + buffer
    day = first_day
    while day <= last_day:
        if is_business_day(day):
            for window in availability:
                if day.weekday() not in window.days or window.end <= window.start:
                    continue
                wall = datetime.combine(day, window.start)
                wall_end = datetime.combine(day, window.end)
                end = _earliest_instant(wall_end, tz)
                while wall < wall_end:
                    start = _local_instant(wall, tz)
                    if start is not None and start + length <= end:
                        yield Slot(window.staff, start, start + length)
                    wall += step
        day += timedelta(days=1)


def _conflicts(slot: Slot, busy: Sequence[Busy], buffer: timedelta) -> bool:
    for period in busy:
        if period.staff is not None and period.staff != slot.staff:
            continue
        pad = buffer if period.kind == "booking" else timedelta(0)
        if slot.start < period.end + pad and period.start - pad < slot.end:
            return True
    return False


def _thin_per_staff(slots: list[Slot], buffer: timedelta) -> list[Slot]:
    """Drop a staff member's slots that would be too close to an earlier one of theirs.

    Needed when two availability rows of one person overlap, and on the spring-forward day,
    when the wall-clock grid loses an hour of real time.
    """
    kept: list[Slot] = []
    last_end: dict[str, datetime] = {}
    for slot in sorted(slots, key=lambda s: (s.start, s.staff)):
        previous = last_end.get(slot.staff)
        if previous is not None and slot.start < previous + buffer:
            continue
        kept.append(slot)
        last_end[slot.staff] = slot.end
    return kept


def _staff_rank(
    availability: Sequence[Availability],
    busy: Sequence[Busy],
    now: datetime,
    horizon_end: datetime,
) -> dict[str, tuple[float, int]]:
    order: dict[str, int] = {}
    for window in availability:
        order.setdefault(window.staff, len(order))
    booked = dict.fromkeys(order, 0.0)
    for period in busy:
        if period.kind == "booking" and period.staff in booked:
            overlap = min(period.end, horizon_end) - max(period.start, now)
            booked[period.staff] += max(overlap.total_seconds(), 0.0)
    return {staff: (booked[staff], index) for staff, index in order.items()}


def _one_per_instant(slots: list[Slot], staff_rank: dict[str, tuple[float, int]]) -> list[Slot]:
    best: dict[datetime, Slot] = {}
    for slot in slots:
        current = best.get(slot.start)
        if current is None or staff_rank[slot.staff] < staff_rank[current.staff]:
            best[slot.start] = slot
    return sorted(best.values(), key=lambda s: s.start)


def _spread(slots: list[Slot], count: int, tz: ZoneInfo) -> tuple[Slot, ...]:
    """Pick `count` slots spread over days and over times of day, deterministically.

    Days take turns (round-robin, earliest day first). On its turn a day gives the slot whose
    local time of day is farthest from every time already picked (ties: the earliest), so the
    very first pick is the soonest slot and the following ones alternate mornings and
    afternoons across the days. The result is in chronological order.
    """
    by_day: dict[date, list[Slot]] = {}
    for slot in slots:
        by_day.setdefault(slot.start.astimezone(tz).date(), []).append(slot)

    def minute_of_day(slot: Slot) -> int:
        local = slot.start.astimezone(tz)
        return local.hour * 60 + local.minute

    picked: list[Slot] = []
    picked_minutes: list[int] = []
    while len(picked) < count and any(by_day.values()):
        for remaining in by_day.values():
            if len(picked) >= count:
                break
            if not remaining:
                continue
            choice = max(
                remaining,
                key=lambda s: (
                    min((abs(minute_of_day(s) - m) for m in picked_minutes), default=0),
                    -s.start.timestamp(),
                ),
            )
            remaining.remove(choice)
            picked.append(choice)
            picked_minutes.append(minute_of_day(choice))
    return tuple(sorted(picked, key=lambda s: (s.start, s.staff)))


# --- staff input: `!block` / `!unblock` periods ---------------------------------------------

_DATE = r"(\d{4}-\d{2}-\d{2})"
_TIME = r"(\d{1,2}[:h]\d{2})"
_DASH = r"\s*[-–—]\s*"
_WHOLE_DAY = re.compile(rf"{_DATE}", re.ASCII)
_DAY_RANGE = re.compile(rf"{_DATE}(?:{_DASH}|\s+){_DATE}", re.ASCII)
_SAME_DAY = re.compile(rf"{_DATE}\s+{_TIME}{_DASH}{_TIME}", re.ASCII | re.IGNORECASE)
_TWO_POINTS = re.compile(
    rf"{_DATE}\s+{_TIME}(?:{_DASH}|\s+){_DATE}\s+{_TIME}", re.ASCII | re.IGNORECASE
)
_MAX_INPUT_LENGTH = 60

BLOCK_FORMAT_HELP = N_(
    "Write a period as 2026-12-03 14:00-16:00, a whole day as 2026-12-03, several whole days "
    "as 2026-12-21 2026-12-31, or 2026-12-03 14:00 2026-12-04 12:00."
)


def parse_block(text: str, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """See `_parse_block`; dates at the very ends of the calendar are refused, not crashed on."""
    try:
        return _parse_block(text, tz)
    except OverflowError:
        raise SlotInputError(BLOCK_FORMAT_HELP) from None


def _parse_block(text: str, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """Read a staff period in the service time zone; returns (start, end) in UTC, end excluded.

    Accepted forms (``14h00`` works like ``14:00``):

    * ``2026-12-03 14:00-16:00`` — one day, from a time to a time;
    * ``2026-12-03`` — the whole day (local midnight to midnight);
    * ``2026-12-21 2026-12-31`` — whole days, both included;
    * ``2026-12-03 14:00 2026-12-04 12:00`` — from a date and time to another.

    Around DST changes a block is widened, never narrowed: an ambiguous or nonexistent start
    takes its earlier reading, an end its later one.
    Anything else raises `SlotInputError`.
    """
    value = " ".join(text.split())
    if len(value) > _MAX_INPUT_LENGTH:
        raise SlotInputError(BLOCK_FORMAT_HELP)
    if m := _WHOLE_DAY.fullmatch(value):
        day = _parse_date(m[1])
        start_wall = datetime.combine(day, time(0))
        end_wall = start_wall + timedelta(days=1)
    elif m := _DAY_RANGE.fullmatch(value):
        start_wall = datetime.combine(_parse_date(m[1]), time(0))
        end_wall = datetime.combine(_parse_date(m[2]), time(0)) + timedelta(days=1)
    elif m := _SAME_DAY.fullmatch(value):
        day = _parse_date(m[1])
        start_wall = datetime.combine(day, _parse_time(m[2]))
        end_wall = datetime.combine(day, _parse_time(m[3]))
    elif m := _TWO_POINTS.fullmatch(value):
        start_wall = datetime.combine(_parse_date(m[1]), _parse_time(m[2]))
        end_wall = datetime.combine(_parse_date(m[3]), _parse_time(m[4]))
    else:
        raise SlotInputError(BLOCK_FORMAT_HELP)
    start = _earliest_instant(start_wall, tz)
    end = _latest_instant(end_wall, tz)
    if end <= start:
        raise SlotInputError(N_("The end of the period must be after its start."))
    return start, end


def _parse_date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise SlotInputError(N_("{value} is not a valid date."), value=value) from None


def _parse_time(value: str) -> time:
    hours, minutes = re.split("[:hH]", value)
    try:
        return time(int(hours), int(minutes))
    except ValueError:
        raise SlotInputError(N_("{value} is not a valid time."), value=value) from None


# A slot number as a client types it: "2", "2.", "2)", "2️⃣" (6–9 included, so that they get
# a "choose from the list" answer rather than silence).
_SLOT_CHOICE = re.compile(r"\s*(?:([1-9])[.)]?|([1-9])\ufe0f?\u20e3)\s*")


def parse_slot_choice(text: str) -> int | None:
    """The slot number in a client's answer to an offer, else None."""
    match = _SLOT_CHOICE.fullmatch(text)
    return int(match.group(1) or match.group(2)) if match else None
