"""Satisfaction and no-show decisions (bot.domain.rating, bot.domain.calls): pure, table-driven."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.domain import calls
from bot.domain import rating as satisfaction
from bot.domain.rating import RatingText
from bot.domain.tickets import Channel, Kind, Status, TicketState

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4", RatingText(4, None)),
        (" 5 ", RatingText(5, None)),
        ("1", RatingText(1, None)),
        ("4/5", RatingText(4, None)),
        ("4 / 5 merci", RatingText(4, "merci")),
        ("4 great work", RatingText(4, "great work")),
        ("4, très clair", RatingText(4, "très clair")),
        ("4 - quick", RatingText(4, "quick")),
        ("3. Slow first answer\nbut fine", RatingText(3, "Slow first answer\nbut fine")),
        ("4️⃣", RatingText(4, None)),
        ("5️⃣ parfait", RatingText(5, "parfait")),
        ("5!", RatingText(5, None)),
        # Numbers that are not a rating from 1 to 5: a clear answer, not silence.
        ("0", RatingText(None, None)),
        ("6", RatingText(None, None)),
        ("10/10", RatingText(None, None)),
        ("4/10", RatingText(None, None)),
        ("4,5", RatingText(None, None)),
        ("4.5 good", RatingText(None, "good")),
        # Not a rating at all: maybe a new request.
        ("abc", None),
        ("", None),
        ("super, 5", None),
        ("4h30 of work", None),
        ("3rd survey broken", None),
        ("!rate 4", None),
    ],
)
def test_parse_rating(text: str, expected: RatingText | None) -> None:
    assert satisfaction.parse_rating(text) == expected


def test_a_long_comment_is_clipped() -> None:
    parsed = satisfaction.parse_rating("5 " + "x" * 5000)
    assert parsed is not None and parsed.comment is not None
    assert len(parsed.comment) == satisfaction.COMMENT_MAX_CHARS
    assert parsed.comment.endswith("…")


@pytest.mark.parametrize(
    ("key", "value"),
    [("1️⃣", 1), ("5️⃣", 5), ("3\u20e3", 3), ("6️⃣", None), ("✅", None), ("0️⃣", None)],
)
def test_keycap_value(key: str, value: int | None) -> None:
    assert satisfaction.keycap_value(key) == value


def _state(kind: Kind, status: Status) -> TicketState:
    return TicketState(kind=kind, channel=Channel.MESSAGING, status=status)


@pytest.mark.parametrize(
    ("kind", "status", "asked", "expected"),
    [
        (Kind.TICKET, Status.CLOSED, None, True),
        (Kind.TICKET, Status.CLOSED, NOW, False),  # never twice
        (Kind.QUESTION, Status.CLOSED, None, False),
        (Kind.QUOTE, Status.CLOSED, None, False),
        (Kind.TICKET, Status.RESOLVED, None, False),
        (Kind.TICKET, Status.DECLINED, None, False),
        (Kind.TICKET, Status.CANCELLED, None, False),
        (Kind.TICKET, Status.UNSOLVABLE, None, False),
    ],
)
def test_should_ask(kind: Kind, status: Status, asked: datetime | None, expected: bool) -> None:
    assert satisfaction.should_ask(_state(kind, status), asked) is expected


@pytest.mark.parametrize(
    ("asked_ago", "rated", "expected"),
    [
        (timedelta(minutes=1), False, True),
        (satisfaction.ANSWER_WINDOW, False, True),
        (satisfaction.ANSWER_WINDOW + timedelta(seconds=1), False, False),
        (timedelta(minutes=1), True, False),
        (None, False, False),
    ],
)
def test_typed_answer_open(asked_ago: timedelta | None, rated: bool, expected: bool) -> None:
    asked = None if asked_ago is None else NOW - asked_ago
    rated_at = NOW if rated else None
    assert satisfaction.typed_answer_open(asked, rated_at, NOW) is expected


@pytest.mark.parametrize(
    ("rated_ago", "comment", "expected"),
    [
        (timedelta(minutes=2), None, True),
        (satisfaction.COMMENT_WINDOW, None, True),
        (satisfaction.COMMENT_WINDOW + timedelta(seconds=1), None, False),
        (timedelta(minutes=2), "already said", False),
        (None, None, False),
    ],
)
def test_comment_open(rated_ago: timedelta | None, comment: str | None, expected: bool) -> None:
    rated = None if rated_ago is None else NOW - rated_ago
    assert satisfaction.comment_open(rated, comment, NOW) is expected


def test_windows_refuse_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="naive"):
        satisfaction.typed_answer_open(NOW, None, datetime(2026, 12, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="naive"):
        calls.no_show(None, datetime(2026, 12, 1))  # noqa: DTZ001


START = NOW - timedelta(minutes=20)


@pytest.mark.parametrize(
    ("call", "now", "refused"),
    [
        (calls.CallState(START), NOW, None),
        (calls.CallState(START), START, None),  # from the call's first minute
        (calls.CallState(START), START - timedelta(seconds=1), calls._NOT_STARTED),
        (None, NOW, calls._NO_CALL),
        (calls.CallState(START, NOW, "@staff:test"), NOW, calls._ALREADY),
    ],
)
def test_no_show(call: calls.CallState | None, now: datetime, refused: str | None) -> None:
    result = calls.no_show(call, now)
    assert (None if result is None else result.reason) == refused


def test_a_missed_call_bills_one_call_unit() -> None:
    from bot import rules

    assert rules.tickets_for(calls.NO_SHOW_MINUTES, unit_minutes=rules.CALL_UNIT_MINUTES) == 1
