"""The dashboard's figures (`bot.domain.dashboard`) and its charts (`bot.web.charts`): local
months, deadlines kept, ratings, ISO weeks; charts with nothing a strict CSP would refuse."""

from __future__ import annotations

import itertools
import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bot.domain.dashboard import (
    DeadlineState,
    KeptMonth,
    deadline_state,
    deadlines_kept,
    month_of,
    months_ending,
    next_month,
    parse_week,
    ratings_by_month,
    week_label,
    week_of,
)
from bot.rules import BusinessCalendar
from bot.web.charts import Series, bar_chart

PARIS = ZoneInfo("Europe/Paris")
CALENDAR = BusinessCalendar()
NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)  # Tuesday 10:00 in Paris


@pytest.mark.parametrize(
    ("due", "answered", "expected"),
    [
        (None, None, DeadlineState.NONE),
        (NOW - timedelta(minutes=1), None, DeadlineState.OVERDUE),
        (NOW - timedelta(days=1), NOW, DeadlineState.ANSWERED),
        (NOW + timedelta(hours=2), None, DeadlineState.DUE_SOON),  # 12:00, within 4 hours
        (NOW + timedelta(hours=8), None, DeadlineState.LATER),  # 18:00: 8 working hours away
        (NOW + timedelta(days=3), None, DeadlineState.LATER),
    ],
)
def test_deadline_state(
    due: datetime | None, answered: datetime | None, expected: DeadlineState
) -> None:
    assert deadline_state(due, answered, NOW, CALENDAR, 4.0) is expected


def test_no_warning_lead_means_nothing_is_at_risk() -> None:
    soon = NOW + timedelta(minutes=5)
    assert deadline_state(soon, None, NOW, CALENDAR, 0) is DeadlineState.LATER


@pytest.mark.parametrize(
    ("moment", "month"),
    [
        (datetime(2026, 2, 28, 22, 59, tzinfo=UTC), date(2026, 2, 1)),  # 23:59 in Paris
        (datetime(2026, 2, 28, 23, 0, tzinfo=UTC), date(2026, 3, 1)),  # midnight in Paris
        (datetime(2025, 12, 31, 23, 30, tzinfo=UTC), date(2026, 1, 1)),
    ],
)
def test_months_are_the_services_local_months(moment: datetime, month: date) -> None:
    assert month_of(moment, PARIS) == month


def test_twelve_months_ending_with_this_one_across_a_new_year() -> None:
    months = months_ending(date(2026, 3, 10))
    assert len(months) == 12
    assert months[0] == date(2025, 4, 1) and months[-1] == date(2026, 3, 1)
    assert all(next_month(a) == b for a, b in itertools.pairwise(months))
    assert next_month(date(2025, 12, 1)) == date(2026, 1, 1)


def test_deadlines_kept_counts_met_missed_and_pending_in_the_month_due() -> None:
    months = [date(2026, 2, 1), date(2026, 3, 1)]
    feb = datetime(2026, 2, 4, 17, 0, tzinfo=UTC)
    rows = [
        (feb, feb - timedelta(hours=1)),  # met
        (feb, feb),  # met: at the deadline itself
        (feb, feb + timedelta(seconds=1)),  # missed: late
        (feb, None),  # missed: never answered, deadline past
        (NOW + timedelta(days=1), None),  # March, pending
        (NOW - timedelta(days=1), NOW - timedelta(days=2)),  # March, met
        (datetime(2025, 12, 1, tzinfo=UTC), None),  # outside the months asked: ignored
    ]
    kept = deadlines_kept(rows, months, NOW, PARIS)
    assert kept == [
        KeptMonth(date(2026, 2, 1), met=2, missed=2, pending=0),
        KeptMonth(date(2026, 3, 1), met=1, missed=0, pending=1),
    ]
    assert kept[0].share == 0.5 and kept[1].share == 1.0
    assert KeptMonth(date(2026, 1, 1)).share is None  # nothing decided: no share, not 0 %


def test_ratings_per_local_month_with_their_average() -> None:
    months = [date(2026, 2, 1), date(2026, 3, 1)]
    rows = [
        (datetime(2026, 2, 5, 12, 0, tzinfo=UTC), 5),
        (datetime(2026, 2, 15, 12, 0, tzinfo=UTC), 4),
        (datetime(2026, 2, 28, 23, 30, tzinfo=UTC), 3),  # 00:30 on 1 March in Paris
        (datetime(2026, 3, 2, 9, 0, tzinfo=UTC), 7),  # not a rating: ignored
    ]
    february, march = ratings_by_month(rows, months, PARIS)
    assert february.counts == (0, 0, 0, 1, 1) and february.total == 2
    assert february.average == 4.5
    assert march.counts == (0, 0, 1, 0, 0) and march.average == 3
    assert ratings_by_month([], months[:1], PARIS)[0].average is None


@pytest.mark.parametrize(
    ("text", "monday"),
    [
        ("2026-W11", date(2026, 3, 9)),
        ("2026-W1", date(2025, 12, 29)),  # ISO week 1 of 2026 starts in 2025
        ("2020-W53", date(2020, 12, 28)),
        ("2025-W53", None),  # 2025 has 52 ISO weeks (2026 has 53)
        ("2026-W00", None),
        ("next week", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_week(text: str | None, monday: date | None) -> None:
    assert parse_week(text) == monday
    if monday is not None:
        assert week_of(monday + timedelta(days=6)) == monday
        assert parse_week(week_label(monday)) == monday


def test_charts_hold_nothing_a_strict_csp_refuses() -> None:
    # Labels are what staff typed (organisation names): they must come out as text.
    chart = bar_chart(
        "Tickets <b>&",
        ["Acme <script>alert(1)</script>", "Févr. 2026"],
        [Series("Achetés", [10, 0]), Series("Facturés", [3, None])],
        stacked=True,
    )
    svg = chart.svg
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "<script" not in svg and "<style" not in svg and " style=" not in svg
    assert "&lt;script&gt;" in svg  # the label, escaped
    assert "<!--" not in svg
    # The only URL is the SVG namespace: nothing to load.
    assert set(re.findall(r"https?://[^\s\"'<>)]+", svg)) == {"http://www.w3.org/2000/svg"}
    assert 'role="img"' in svg and 'aria-label="Tickets &lt;b&gt;&amp;"' in svg
    # The CSS goes into the page's <style>: it must not be able to close it, nor load anything.
    assert chart.css and "</" not in chart.css
    assert "url(" not in chart.css and "@import" not in chart.css


def test_a_percent_line_chart_leaves_gaps_for_months_without_figures() -> None:
    chart = bar_chart(
        "Share",
        ["Jan", "Feb", "Mar"],
        [Series("Kept", [50.0, None, 100.0])],
        percent=True,
        line=True,
    )
    assert "<script" not in chart.svg
    assert "100 %" in chart.svg  # the y axis in percent
