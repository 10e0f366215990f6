"""Durations typed by staff (`!log SP-… 1h20`, `!estimate SP-… 2h30`) and how they are shown."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.i18n import Msg
from bot.rules import MAX_DURATION_MINUTES, DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("90", 90),
        ("90m", 90),
        ("90 min", 90),
        ("90min", 90),
        ("90mn", 90),
        ("90 minutes", 90),
        ("1 minute", 1),
        ("1h30", 90),
        ("1h30m", 90),
        ("1h30min", 90),
        ("1 h 30", 90),
        ("1h 30 min", 90),
        ("1h05", 65),
        ("1h5", 65),
        ("1.5h", 90),
        ("1,5h", 90),
        ("1.5 h", 90),
        ("0.25h", 15),
        ("0,75 h", 45),
        ("0.01h", 1),  # 36 seconds round to one minute
        ("2h", 120),
        ("2 h", 120),
        ("2H", 120),
        ("2 heures", 120),
        ("1 hour", 60),
        ("3hrs", 180),
        ("1H30M", 90),
        ("90 MIN", 90),
        ("1:30", 90),
        ("0:45", 45),
        ("  45  ", 45),
        ("90\u00a0min", 90),  # non-breaking space, as French keyboards type it
        ("1\th\n30", 90),
        ("0h30", 30),
        ("100h", MAX_DURATION_MINUTES),
        ("6000", MAX_DURATION_MINUTES),
        ("99h59", MAX_DURATION_MINUTES - 1),
    ],
)
def test_accepted_durations(text: str, minutes: int) -> None:
    assert parse_duration(text) == minutes


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "h",
        "min",
        "abc",
        "-90",
        "-1h",
        "+90",
        "1.5",  # decimal minutes make no sense
        "1.5m",
        "1.h",
        ".5h",
        "1.555h",  # more precision than a minute
        "1.5h30",
        "1h30h",
        "1h-30",
        "1 30",
        "90 sec",
        "1d",
        "1e3",
        "0x10",
        "١٢٠",  # Arabic-Indic digits: only ASCII digits are read
        "1h 30 min ago",
        "90m!",
        "1:5",
        "1:30:00",
        "９０",  # full-width digits
    ],
)
def test_garbage_is_refused(text: str) -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration(text)
    # The user gets a localisable explanation, never the raw input echoed into the logs.
    error = caught.value
    assert error.msg == Msg(
        "That is not a duration I understand. Write it like 90, 90m, 1h30 or 1.5h."
    )
    assert str(error) == error.msg.text


@pytest.mark.parametrize("text", ["0", "0m", "0 min", "0h", "0h00", "0:00", "0.00h", "0,0h"])
def test_zero_is_refused(text: str) -> None:
    with pytest.raises(DurationError, match="longer than zero"):
        parse_duration(text)


@pytest.mark.parametrize(
    "text", ["6001", "100h01", "100.5h", "101h", "999h", "9999", "100:01", "99999", "1" * 50]
)
def test_too_long_or_huge_is_refused(text: str) -> None:
    with pytest.raises(DurationError):
        parse_duration(text)


def test_too_long_says_the_limit() -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration("120h")
    assert caught.value.msg == Msg(
        "A duration cannot be longer than {max_hours} hours.", {"max_hours": 100}
    )


@pytest.mark.parametrize("text", ["1h60", "1h75", "2:60", "0h99"])
def test_minutes_after_hours_must_be_below_sixty(text: str) -> None:
    with pytest.raises(DurationError, match="below 60"):
        parse_duration(text)


def test_duration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_duration("soon")


@pytest.mark.parametrize(
    ("minutes", "text"),
    [
        (0, "0 min"),
        (1, "1 min"),
        (45, "45 min"),
        (59, "59 min"),
        (60, "1h"),
        (65, "1h05"),
        (80, "1h20"),
        (180, "3h"),
        (605, "10h05"),
    ],
)
def test_format_duration(minutes: int, text: str) -> None:
    assert format_duration(minutes) == text


def test_format_duration_refuses_negative() -> None:
    with pytest.raises(ValueError):
        format_duration(-1)


# --- properties ----------------------------------------------------------------------------

_DURATION_ALPHABET = st.sampled_from(list("0123456789hHmMiInN:.,- \t\u00a0ueros"))


@given(st.one_of(st.text(), st.text(alphabet=_DURATION_ALPHABET, max_size=12)))
def test_any_text_parses_or_raises_duration_error(text: str) -> None:
    try:
        minutes = parse_duration(text)
    except DurationError:
        return
    assert type(minutes) is int
    assert 1 <= minutes <= MAX_DURATION_MINUTES


@given(st.integers(min_value=1, max_value=MAX_DURATION_MINUTES))
def test_formatted_durations_parse_back(minutes: int) -> None:
    assert parse_duration(format_duration(minutes)) == minutes


@given(st.integers(min_value=0, max_value=99), st.integers(min_value=0, max_value=59))
def test_hours_and_minutes_forms_agree(hours: int, rest: int) -> None:
    total = hours * 60 + rest
    if total == 0:
        return
    assert parse_duration(f"{hours}h{rest:02d}") == total
    assert parse_duration(f"{hours} h {rest} min") == total
    assert parse_duration(f"{hours}:{rest:02d}") == total
    assert parse_duration(str(total)) == total
