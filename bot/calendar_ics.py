"""iCalendar files: the client's call invitation and each staff member's bookings feed.

Pure functions over values: the caller passes `now` (it becomes DTSTAMP) and gets bytes.

Time zones (the classic `.ics` bug, see FIELD-NOTES): times are written as local times with
``TZID=<service zone>`` and the calendar carries a matching VTIMEZONE built here from zoneinfo.
The VTIMEZONE is built by this module rather than by `icalendar.Timezone.from_tzid`, because
RFC 5545 §3.6.5 wants each observance onset as the local time *before* the change (in
TZOFFSETFROM: 02:00 for the March change in Europe/Paris) and icalendar 7 writes the local
time after it (03:00), an hour late for clients that trust the embedded definition. Regular
yearly changes become one RRULE per observance, which every client understands; irregular
ones are listed with RDATE.

A time in the repeated hour of an autumn change that means its *second* occurrence cannot be
told apart in ``TZID`` form (RFC 5545 reads it as the first), so it is written in UTC.

The staff feed omits cancelled bookings: a subscribed feed is a snapshot replaced on every
refresh, so a dropped VEVENT disappears from every client, whereas STATUS:CANCELLED inside a
subscription is shown as an ordinary busy event by some clients.
"""

from __future__ import annotations

import calendar as _calendar
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from icalendar import (
    Alarm,
    Calendar,
    Event,
    Timezone,
    TimezoneDaylight,
    TimezoneStandard,
    vCalAddress,
)

PRODID = "-//support-bot//support-bot//EN"
_UTC_NAMES = frozenset({"UTC", "ETC/UTC", "ETC/UNIVERSAL", "UNIVERSAL", "ETC/ZULU", "ZULU"})
_WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
# Values written as URI / CAL-ADDRESS are not escaped by icalendar: refuse line breaks etc.
_UNSAFE = re.compile(r"[\s\x00-\x1f\x7f\"<>]")


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """One booking in a staff member's feed."""

    uid: str
    start: datetime
    end: datetime
    summary: str
    description: str = ""
    location_url: str | None = None
    cancelled: bool = False
    sequence: int = 0


def invitation_ics(
    *,
    uid: str,
    start: datetime,
    end: datetime,
    tz_name: str,
    summary: str,
    description: str,
    location_url: str,
    organizer_email: str,
    organizer_name: str,
    attendee_email: str | None,
    alarm_minutes: int | None = 15,
    now: datetime,
    sequence: int = 0,
    cancelled: bool = False,
) -> bytes:
    """The `.ics` a client gets for a booked call.

    With an attendee it is an iTIP REQUEST (a cancellation: CANCEL); without one, PUBLISH.
    Keep `uid` stable per booking and raise `sequence` when rescheduling, so calendars update
    the event instead of adding a second one. `alarm_minutes=None` leaves the alarm out.
    """
    tz = _zone(tz_name)
    _check_interval(start, end)
    _require_aware(now, "now")
    cal = _calendar_root()
    if attendee_email is None:
        method = "PUBLISH"
    else:
        method = "CANCEL" if cancelled else "REQUEST"
    cal.add("method", method)
    _add_timezone(cal, tz, [start, end])

    event = _event(
        uid=uid,
        start=start,
        end=end,
        tz=tz,
        summary=summary,
        description=description,
        location_url=location_url,
        now=now,
        sequence=sequence,
        cancelled=cancelled,
    )
    organizer = vCalAddress(_mailto(organizer_email))
    organizer.params["CN"] = _param_text(organizer_name)
    event.add("organizer", organizer)
    if attendee_email is not None:
        attendee = vCalAddress(_mailto(attendee_email))
        attendee.params["ROLE"] = "REQ-PARTICIPANT"
        attendee.params["PARTSTAT"] = "NEEDS-ACTION"
        attendee.params["RSVP"] = "FALSE"
        event.add("attendee", attendee)
    if alarm_minutes is not None and not cancelled:
        alarm = Alarm()
        alarm.add("action", "DISPLAY")
        alarm.add("description", summary)
        alarm.add("trigger", timedelta(minutes=-alarm_minutes))
        event.add_component(alarm)
    cal.add_component(event)
    return cal.to_ical()


def staff_feed_ics(
    events: Sequence[FeedEvent],
    tz_name: str,
    now: datetime,
    *,
    calendar_name: str = "Support calls",
    refresh: timedelta = timedelta(minutes=30),
) -> bytes:
    """One VCALENDAR with every non-cancelled booking, sorted by start, for a subscription."""
    tz = _zone(tz_name)
    _require_aware(now, "now")
    live = sorted((e for e in events if not e.cancelled), key=lambda e: (e.start, e.uid))
    for item in live:
        _check_interval(item.start, item.end)
    cal = _calendar_root()
    cal.add("method", "PUBLISH")
    cal.add("name", calendar_name)
    cal.add("x-wr-calname", calendar_name)
    cal.add("x-wr-timezone", tz_name)
    cal.add("refresh-interval", refresh, parameters={"VALUE": "DURATION"})
    cal.add("x-published-ttl", refresh)
    moments = [m for e in live for m in (e.start, e.end)] or [now]
    _add_timezone(cal, tz, moments)
    for item in live:
        cal.add_component(
            _event(
                uid=item.uid,
                start=item.start,
                end=item.end,
                tz=tz,
                summary=item.summary,
                description=item.description,
                location_url=item.location_url,
                now=now,
                sequence=item.sequence,
                cancelled=False,
            )
        )
    return cal.to_ical()


# --- building blocks -------------------------------------------------------------------------


def _zone(tz_name: str) -> tzinfo:
    if tz_name.upper() in _UTC_NAMES:
        return UTC
    try:
        return ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {tz_name!r}") from exc


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime")


def _check_interval(start: datetime, end: datetime) -> None:
    _require_aware(start, "start")
    _require_aware(end, "end")
    if end <= start:
        raise ValueError("end must be after start")


def _mailto(email: str) -> str:
    if not email or _UNSAFE.search(email) or "@" not in email:
        raise ValueError("invalid e-mail address for a calendar")
    return f"mailto:{email}"


def _safe_uri(url: str) -> str:
    if _UNSAFE.search(url) or not url.startswith(("https://", "http://")):
        raise ValueError("invalid meeting link for a calendar")
    return url


def _param_text(text: str) -> str:
    # Parameter values cannot hold double quotes or control characters (RFC 5545 §3.1).
    return " ".join(re.sub(r"[\x00-\x1f\x7f\"]", " ", text).split())


def _calendar_root() -> Calendar:
    cal = Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    return cal


def _event(
    *,
    uid: str,
    start: datetime,
    end: datetime,
    tz: tzinfo,
    summary: str,
    description: str,
    location_url: str | None,
    now: datetime,
    sequence: int,
    cancelled: bool,
) -> Event:
    event = Event()
    event.add("uid", uid)
    event.add("dtstamp", now.astimezone(UTC))
    event.add("sequence", sequence)
    event.add("dtstart", _ical_time(start, tz))
    event.add("dtend", _ical_time(end, tz))
    event.add("summary", summary)
    if description:
        event.add("description", description)
    if location_url:
        event.add("location", _safe_uri(location_url))
        event.add("url", location_url)
    event.add("status", "CANCELLED" if cancelled else "CONFIRMED")
    event.add("transp", "OPAQUE")
    return event


def _ical_time(value: datetime, tz: tzinfo) -> datetime:
    """`value` as written in the file: local with TZID, or UTC when TZID would be ambiguous."""
    if tz is UTC:
        return value.astimezone(UTC)
    local = value.astimezone(tz)
    if local.fold and local.replace(fold=0).utcoffset() != local.utcoffset():
        return value.astimezone(UTC)
    return local


# --- VTIMEZONE --------------------------------------------------------------------------------

# (utc offset, dst offset, abbreviation) of a zone at one instant.
_State = tuple[timedelta, timedelta, str]


def _add_timezone(cal: Calendar, tz: tzinfo, moments: Sequence[datetime]) -> None:
    """Add the VTIMEZONE of `tz`, exact over the years around `moments` (none for UTC)."""
    if not isinstance(tz, ZoneInfo):
        return
    years = [m.astimezone(tz).year for m in moments]
    # A year before: the observances in force at the first event start inside the range.
    first = datetime(min(years) - 1, 1, 1, tzinfo=UTC)
    last = datetime(max(years) + 2, 1, 1, tzinfo=UTC)
    cal.add_component(vtimezone(tz, first, last))


def vtimezone(tz: ZoneInfo, first: datetime, last: datetime) -> Timezone:
    """A VTIMEZONE for `tz` that matches zoneinfo for every instant in [first, last)."""
    component = Timezone()
    component.add("tzid", tz.key)
    changes = _transitions(tz, first, last)
    if not changes:
        offset, dst, name = _state(tz, first)
        observance = TimezoneDaylight() if dst else TimezoneStandard()
        observance.add("dtstart", datetime(1970, 1, 1))  # noqa: DTZ001 - local time by design
        observance.add("tzoffsetfrom", offset)
        observance.add("tzoffsetto", offset)
        observance.add("tzname", name)
        component.add_component(observance)
        return component

    groups: dict[tuple[bool, timedelta, timedelta, str], list[datetime]] = {}
    for instant, before, after in changes:
        key = (bool(after[1]), before[0], after[0], after[2])
        # The onset is the local time just before the change, i.e. in TZOFFSETFROM.
        groups.setdefault(key, []).append((instant + before[0]).replace(tzinfo=None))
    for (is_dst, offset_from, offset_to, name), onsets in groups.items():
        observance = TimezoneDaylight() if is_dst else TimezoneStandard()
        observance.add("dtstart", onsets[0])
        observance.add("tzoffsetfrom", offset_from)
        observance.add("tzoffsetto", offset_to)
        observance.add("tzname", name)
        rule = _yearly_rule(onsets)
        if rule is not None:
            observance.add("rrule", rule)
        elif len(onsets) > 1:
            observance.add("rdate", onsets[1:])
        component.add_component(observance)
    return component


def _state(tz: ZoneInfo, instant: datetime) -> _State:
    local = instant.astimezone(tz)
    return (
        local.utcoffset() or timedelta(0),
        local.dst() or timedelta(0),
        local.tzname() or "",
    )


def _transitions(
    tz: ZoneInfo, first: datetime, last: datetime
) -> list[tuple[datetime, _State, _State]]:
    """Every change of offset or abbreviation in [first, last), to the second."""
    found: list[tuple[datetime, _State, _State]] = []
    step = timedelta(hours=6)
    cursor, current = first, _state(tz, first)
    while cursor < last:
        probe = min(cursor + step, last)
        state = _state(tz, probe)
        if state != current:
            low, high = cursor, probe  # state(low) == current != state(high)
            while high - low > timedelta(seconds=1):
                middle = low + (high - low) / 2
                middle = middle.replace(microsecond=0)
                if _state(tz, middle) == current:
                    low = middle
                else:
                    high = middle
            found.append((high, current, _state(tz, high)))
            current = _state(tz, high)
            cursor = high
        else:
            cursor = probe
    return found


def _yearly_rule(onsets: list[datetime]) -> dict[str, object] | None:
    """An RRULE reproducing `onsets` (one per consecutive year), or None if they are irregular.

    Handles "the n-th weekday of a month" and "the last weekday of a month", the forms of
    every regular DST rule in tzdata.
    """
    if len(onsets) < 2:
        return None
    years = [o.year for o in onsets]
    if years != list(range(years[0], years[0] + len(years))):
        return None
    first = onsets[0]
    if any(
        (o.month, o.weekday(), o.time()) != (first.month, first.weekday(), first.time())
        for o in onsets
    ):
        return None
    weekday = _WEEKDAYS[first.weekday()]

    def is_last(o: datetime) -> bool:
        return o.day + 7 > _calendar.monthrange(o.year, o.month)[1]

    if all(is_last(o) for o in onsets):
        return {"freq": "yearly", "bymonth": first.month, "byday": f"-1{weekday}"}
    nth = {(o.day - 1) // 7 + 1 for o in onsets}
    if len(nth) == 1:
        return {"freq": "yearly", "bymonth": first.month, "byday": f"{nth.pop()}{weekday}"}
    return None
