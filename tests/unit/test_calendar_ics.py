"""`.ics` invitation and staff feed, parsed back with icalendar and checked."""

from __future__ import annotations

import bisect
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from dateutil.rrule import rrulestr
from icalendar import Calendar, Event, Timezone

from bot.calendar_ics import FeedEvent, invitation_ics, staff_feed_ics, vtimezone

PARIS = ZoneInfo("Europe/Paris")
NOW = datetime(2026, 10, 20, 8, 0, tzinfo=UTC)
LINK = "https://meet.example.org/sp-2026-0042-4f9c2d7e1b8a4c3d9e0f"


def invitation(**overrides: Any) -> bytes:
    arguments: dict[str, Any] = dict(
        uid="booking-17@support.example.org",
        start=datetime(2026, 10, 26, 10, 0, tzinfo=PARIS),
        end=datetime(2026, 10, 26, 10, 45, tzinfo=PARIS),
        tz_name="Europe/Paris",
        summary="Support call SP-2026-0042",
        description="Ticket SP-2026-0042\nJoin: " + LINK,
        location_url=LINK,
        organizer_email="support@example.org",
        organizer_name="LimeSurvey support",
        attendee_email="client@example.com",
        now=NOW,
    )
    return invitation_ics(**(arguments | overrides))


def parse(data: bytes) -> tuple[Calendar, Event]:
    calendar = Calendar.from_ical(data)
    events = calendar.events
    assert len(events) == 1
    return calendar, events[0]


def test_times_are_local_with_tzid_and_the_right_instant() -> None:
    _, event = parse(invitation())
    start, end = event.decoded("dtstart"), event.decoded("dtend")
    assert event["DTSTART"].params["TZID"] == "Europe/Paris"
    assert start.tzinfo is not None and str(start.tzinfo) == "Europe/Paris"
    assert (start.hour, start.minute) == (10, 0)
    # 26 October 2026 is after the autumn change: CET, UTC+1.
    assert start.astimezone(UTC) == datetime(2026, 10, 26, 9, 0, tzinfo=UTC)
    assert end - start == timedelta(minutes=45)


@pytest.mark.parametrize(
    ("start", "expected_utc"),
    [
        (datetime(2026, 10, 23, 10, 0, tzinfo=PARIS), datetime(2026, 10, 23, 8, 0, tzinfo=UTC)),
        (datetime(2026, 10, 26, 10, 0, tzinfo=PARIS), datetime(2026, 10, 26, 9, 0, tzinfo=UTC)),
        (datetime(2027, 3, 29, 10, 0, tzinfo=PARIS), datetime(2027, 3, 29, 8, 0, tzinfo=UTC)),
        # Second 02:30 of the autumn change: TZID form would mean the first, so UTC is used.
        (datetime(2026, 10, 25, 1, 30, tzinfo=UTC), datetime(2026, 10, 25, 1, 30, tzinfo=UTC)),
        (datetime(2026, 10, 25, 0, 30, tzinfo=UTC), datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
    ],
)
def test_utc_instant_round_trips_across_dst(start: datetime, expected_utc: datetime) -> None:
    _, event = parse(invitation(start=start, end=start + timedelta(minutes=45)))
    assert event.decoded("dtstart").astimezone(UTC) == expected_utc
    assert event.decoded("dtend").astimezone(UTC) == expected_utc + timedelta(minutes=45)


def test_second_occurrence_of_ambiguous_hour_is_written_in_utc() -> None:
    start = datetime(2026, 10, 25, 1, 30, tzinfo=UTC)  # 02:30 CET, the second 02:30
    data = invitation(start=start, end=start + timedelta(minutes=45))
    assert b"DTSTART:20261025T013000Z" in data
    # The first 02:30 keeps its local form.
    first = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert b"DTSTART;TZID=Europe/Paris:20261025T023000" in invitation(
        start=first, end=first + timedelta(minutes=30)
    )


def test_vtimezone_is_present_and_follows_rfc_5545() -> None:
    calendar, _ = parse(invitation())
    zones = calendar.walk("VTIMEZONE")
    assert [z["TZID"] for z in zones] == ["Europe/Paris"]
    observances = {c.name: c for c in zones[0].subcomponents}
    daylight, standard = observances["DAYLIGHT"], observances["STANDARD"]
    # Onsets are local times *before* the change (in TZOFFSETFROM): 02:00 CET, 03:00 CEST.
    assert daylight.decoded("dtstart").time().hour == 2
    assert standard.decoded("dtstart").time().hour == 3
    assert daylight["TZOFFSETFROM"].td == timedelta(hours=1)
    assert daylight["TZOFFSETTO"].td == timedelta(hours=2)
    assert daylight["RRULE"].to_ical() == b"FREQ=YEARLY;BYDAY=-1SU;BYMONTH=3"
    assert standard["RRULE"].to_ical() == b"FREQ=YEARLY;BYDAY=-1SU;BYMONTH=10"
    assert (str(daylight["TZNAME"]), str(standard["TZNAME"])) == ("CEST", "CET")


def offsets_from_vtimezone(component: Timezone, until: datetime) -> list[tuple[datetime, Any]]:
    """(UTC instant, new offset) of every change, read as RFC 5545 §3.6.5 says."""
    changes = []
    for observance in component.subcomponents:
        onset = observance.decoded("dtstart")
        offset_from = observance["TZOFFSETFROM"].td
        offset_to = observance["TZOFFSETTO"].td
        onsets = [onset]
        if "RRULE" in observance:
            rule = rrulestr(observance["RRULE"].to_ical().decode(), dtstart=onset)
            onsets = list(rule.between(onset, until.replace(tzinfo=None), inc=True))
        if "RDATE" in observance:
            rdates = observance["RDATE"]
            for rdate in rdates if isinstance(rdates, list) else [rdates]:
                onsets += [d.dt for d in rdate.dts]
        for local_onset in onsets:
            instant = (local_onset - offset_from).replace(tzinfo=UTC)
            changes.append((instant, offset_to))
    return sorted(changes)


@pytest.mark.parametrize(
    "name",
    [
        "Europe/Paris",
        "America/New_York",  # 2nd / 1st Sunday rules
        "Australia/Sydney",  # southern hemisphere
        "Australia/Lord_Howe",  # 30-minute DST
        "Africa/Casablanca",  # irregular (Ramadan): RDATE
        "Asia/Tokyo",  # no DST
    ],
)
def test_vtimezone_matches_zoneinfo_at_every_instant(name: str) -> None:
    zone = ZoneInfo(name)
    first = datetime(2025, 1, 1, tzinfo=UTC)
    last = datetime(2028, 1, 1, tzinfo=UTC)
    component = Timezone.from_ical(vtimezone(zone, first, last).to_ical())
    changes = offsets_from_vtimezone(component, last)
    instants = [c[0] for c in changes]
    # Check every 15 minutes of 2026–2027 and one second either side of each change.
    probes = [datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=15 * i) for i in range(70080)]
    probes += [c + d for c in instants for d in (timedelta(seconds=-1), timedelta(0))]
    for probe in probes:
        if probe < datetime(2026, 1, 1, tzinfo=UTC):
            continue
        index = bisect.bisect_right(instants, probe) - 1
        if index < 0:  # no change at all: the single observance
            expected = component.subcomponents[0]["TZOFFSETTO"].td
        else:
            expected = changes[index][1]
        assert expected == probe.astimezone(zone).utcoffset(), probe


def test_organizer_attendee_location_description() -> None:
    calendar, event = parse(invitation())
    assert str(calendar["METHOD"]) == "REQUEST"
    assert str(event["UID"]) == "booking-17@support.example.org"
    assert str(event["LOCATION"]) == LINK
    assert str(event["URL"]) == LINK
    assert str(event["DESCRIPTION"]) == "Ticket SP-2026-0042\nJoin: " + LINK
    assert str(event["SUMMARY"]) == "Support call SP-2026-0042"
    assert str(event["ORGANIZER"]) == "mailto:support@example.org"
    assert event["ORGANIZER"].params["CN"] == "LimeSurvey support"
    assert str(event["ATTENDEE"]) == "mailto:client@example.com"
    assert event["ATTENDEE"].params["ROLE"] == "REQ-PARTICIPANT"
    assert str(event["STATUS"]) == "CONFIRMED"
    assert event.decoded("dtstamp") == NOW
    assert event.decoded("sequence") == 0


def test_alarm_fifteen_minutes_before() -> None:
    _, event = parse(invitation())
    (alarm,) = event.walk("VALARM")
    assert str(alarm["ACTION"]) == "DISPLAY"
    assert alarm.decoded("trigger") == timedelta(minutes=-15)
    assert "RELATED" not in alarm["TRIGGER"].params  # default: relative to the start
    assert str(alarm["DESCRIPTION"])


def test_alarm_is_configurable_or_absent() -> None:
    _, event = parse(invitation(alarm_minutes=60))
    assert event.walk("VALARM")[0].decoded("trigger") == timedelta(hours=-1)
    _, event = parse(invitation(alarm_minutes=None))
    assert event.walk("VALARM") == []


def test_output_is_stable_for_the_same_booking() -> None:
    assert invitation() == invitation()
    later = invitation(now=NOW + timedelta(hours=1), sequence=1)
    assert parse(later)[1]["UID"] == parse(invitation())[1]["UID"]
    assert parse(later)[1].decoded("sequence") == 1


def test_without_attendee_it_is_published() -> None:
    calendar, event = parse(invitation(attendee_email=None))
    assert str(calendar["METHOD"]) == "PUBLISH"
    assert "ATTENDEE" not in event


def test_cancellation() -> None:
    calendar, event = parse(invitation(cancelled=True, sequence=2))
    assert str(calendar["METHOD"]) == "CANCEL"
    assert str(event["STATUS"]) == "CANCELLED"
    assert event.decoded("sequence") == 2
    assert event.walk("VALARM") == []


def test_utc_service_zone_has_no_vtimezone() -> None:
    calendar, event = parse(invitation(tz_name="UTC"))
    assert calendar.walk("VTIMEZONE") == []
    assert event.decoded("dtstart") == datetime(2026, 10, 26, 9, 0, tzinfo=UTC)
    assert b"DTSTART:20261026T090000Z" in invitation(tz_name="UTC")


def test_special_characters_are_escaped_or_refused() -> None:
    _, event = parse(
        invitation(summary="Call; a, b\nnext", organizer_name='Support "team"\r\nX-INJECT:1')
    )
    assert str(event["SUMMARY"]) == "Call; a, b\nnext"
    assert event["ORGANIZER"].params["CN"] == "Support team X-INJECT:1"
    assert "X-INJECT" not in event


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"start": datetime(2026, 10, 26, 10)}, "start"),  # noqa: DTZ001 - naive on purpose
        ({"now": datetime(2026, 10, 26, 10)}, "now"),  # noqa: DTZ001
        ({"end": datetime(2026, 10, 26, 9, tzinfo=PARIS)}, "after start"),
        ({"tz_name": "Mars/Olympus"}, "time zone"),
        ({"attendee_email": "a@b.org\r\nATTENDEE:mailto:x@y.org"}, "e-mail"),
        ({"organizer_email": "not-an-address"}, "e-mail"),
        ({"location_url": "javascript:alert(1)"}, "meeting link"),
        ({"location_url": LINK + "\r\nX: 1"}, "meeting link"),
    ],
)
def test_invalid_input_is_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        invitation(**overrides)


# --- staff feed -----------------------------------------------------------------------------


def feed_event(uid: str, day: int, hour: int, **extra: Any) -> FeedEvent:
    start = datetime(2026, 10, day, hour, 0, tzinfo=PARIS)
    return FeedEvent(
        uid=uid,
        start=start,
        end=start + timedelta(minutes=45),
        summary=f"Call {uid}",
        location_url=LINK,
        **extra,
    )


def test_staff_feed_lists_live_bookings_sorted_and_drops_cancelled() -> None:
    events = [
        feed_event("b3", 27, 14),
        feed_event("b1", 23, 10),
        feed_event("b2", 26, 9, cancelled=True),
        feed_event("b4", 26, 11, description="SP-2026-0007", sequence=3),
    ]
    calendar = Calendar.from_ical(staff_feed_ics(events, "Europe/Paris", NOW))
    assert str(calendar["METHOD"]) == "PUBLISH"
    assert str(calendar["X-WR-CALNAME"]) == "Support calls"
    assert calendar["REFRESH-INTERVAL"].params["VALUE"] == "DURATION"
    assert [z["TZID"] for z in calendar.walk("VTIMEZONE")] == ["Europe/Paris"]
    parsed = calendar.events
    assert [str(e["UID"]) for e in parsed] == ["b1", "b4", "b3"]
    starts = [e.decoded("dtstart").astimezone(UTC) for e in parsed]
    assert starts == [
        datetime(2026, 10, 23, 8, 0, tzinfo=UTC),  # CEST
        datetime(2026, 10, 26, 10, 0, tzinfo=UTC),  # CET
        datetime(2026, 10, 27, 13, 0, tzinfo=UTC),
    ]
    assert all(str(e["STATUS"]) == "CONFIRMED" for e in parsed)
    assert all(e.decoded("dtstamp") == NOW for e in parsed)
    assert parsed[1].decoded("sequence") == 3
    assert str(parsed[1]["DESCRIPTION"]) == "SP-2026-0007"
    assert all("ATTENDEE" not in e for e in parsed)


def test_empty_staff_feed_is_a_valid_calendar() -> None:
    calendar = Calendar.from_ical(staff_feed_ics([], "Europe/Paris", NOW, calendar_name="Alice"))
    assert calendar.events == []
    assert str(calendar["X-WR-CALNAME"]) == "Alice"
    assert len(calendar.walk("VTIMEZONE")) == 1


def test_staff_feed_refuses_naive_times() -> None:
    naive = FeedEvent("x", datetime(2026, 10, 23, 10), datetime(2026, 10, 23, 11), "x")  # noqa: DTZ001
    with pytest.raises(ValueError, match="start"):
        staff_feed_ics([naive], "Europe/Paris", NOW)
