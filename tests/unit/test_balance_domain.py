"""Prepaid balances and organisation names (issue #16 §1): the pure rules, table-driven."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.domain import balance as prepaid
from bot.domain.balance import Balance, Level
from bot.domain.orgs import (
    MAX_NAME_CHARS,
    MAX_PURCHASE_TICKETS,
    MemberKind,
    OrgInputError,
    clean_name,
    clean_note,
    member,
    name_key,
    parse_tickets,
    take_words,
)


@pytest.mark.parametrize(
    ("purchased", "billed", "remaining", "level"),
    [
        (10, 6, 4, Level.OK),
        (10, 8, 2, Level.OK),
        (10, 9, 1, Level.LOW),
        (10, 10, 0, Level.LOW),
        (10, 11, -1, Level.NEGATIVE),
        (0, 0, 0, Level.LOW),
    ],
)
def test_remaining_and_level(purchased: int, billed: int, remaining: int, level: Level) -> None:
    balance = Balance(purchased, billed)
    assert balance.remaining == remaining
    assert prepaid.level(balance.remaining) is level


@pytest.mark.parametrize(
    ("before", "after", "crossed"),
    [
        (3, 2, None),  # still fine
        (2, 1, Level.LOW),  # down to one ticket
        (3, 0, Level.LOW),
        (1, 0, None),  # already low: no second warning
        (0, -1, Level.NEGATIVE),
        (1, -1, Level.NEGATIVE),
        (5, -2, Level.NEGATIVE),  # both at once: the worse one
        (-1, -3, None),  # already below zero
        (-1, 4, None),  # bought more: nothing to warn
        (2, 2, None),
    ],
)
def test_crossing_is_told_once(before: int, after: int, crossed: Level | None) -> None:
    assert prepaid.crossing(before, after) is crossed


@given(st.lists(st.integers(-5, 5), max_size=30), st.integers(-10, 10))
def test_warnings_along_any_path_match_the_levels_entered(moves: list[int], start: int) -> None:
    """Along any sequence of changes, a warning is given exactly when the level gets worse."""
    balance = start
    for move in moves:
        after = balance + move
        crossed = prepaid.crossing(balance, after)
        worse = prepaid.level(after) > prepaid.level(balance)
        assert (crossed is not None) == worse
        balance = after


@pytest.mark.parametrize(
    ("remaining", "billed_now", "estimate", "after"),
    [
        (2, 1, 3, 0),  # the ticket already bills one of the three
        (2, 1, 4, -1),
        (0, 1, 1, 0),  # within what it bills already
        (5, 0, 2, 3),
        (-1, 2, 2, -1),
    ],
)
def test_after_estimate(remaining: int, billed_now: int, estimate: int, after: int) -> None:
    assert prepaid.after_estimate(remaining, billed_now, estimate) == after


def test_signed_uses_a_true_minus() -> None:
    assert [prepaid.signed(n) for n in (-12, 0, 7)] == ["−12", "0", "7"]


# --- names and words --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "words", "rest"),
    [
        ("new ACME", 2, ["new", "ACME"], ""),
        ('add "Acme Europe" @bob:x.org', 2, ["add", "Acme Europe"], "@bob:x.org"),
        ("add “Acme Europe” Alice", 2, ["add", "Acme Europe"], "Alice"),
        ("add «Acme» Alice", 2, ["add", "Acme"], "Alice"),
        ("L'Atelier 10 paid: card", 2, ["L'Atelier", "10"], "paid: card"),
        ('ACME 10 a  note "quoted"', 2, ["ACME", "10"], 'a  note "quoted"'),
        ("", 2, [], ""),
        ("only", 3, ["only"], ""),
        ('"" 5', 1, [""], "5"),
    ],
)
def test_take_words(text: str, count: int, words: list[str], rest: str) -> None:
    assert take_words(text, count) == (words, rest)


def test_an_unclosed_quote_is_refused() -> None:
    with pytest.raises(OrgInputError) as caught:
        take_words('new "Acme Europe', 2)
    assert "Acme" not in str(caught.value)  # the input stays out of logs


@pytest.mark.parametrize(
    ("name", "cleaned", "key"),
    [
        ("ACME", "ACME", "acme"),
        ("  Acme   Europe ", "Acme Europe", "acme europe"),
        ("Straße", "Straße", "strasse"),
        ("Ａｃｍｅ", "Ａｃｍｅ", "acme"),
        ("L'Atelier #2", "L'Atelier #2", "l'atelier #2"),
    ],
)
def test_names_and_their_keys(name: str, cleaned: str, key: str) -> None:
    assert clean_name(name) == cleaned
    assert name_key(cleaned) == key


@pytest.mark.parametrize(
    "name",
    ["", "   ", "@acme:example.org", "SP-2026-0042", "bridge:!r:x:Bob", "a\x07b", "x" * 129],
)
def test_names_that_cannot_be(name: str) -> None:
    with pytest.raises(OrgInputError):
        clean_name(name)
    assert MAX_NAME_CHARS == 128


@pytest.mark.parametrize(
    ("word", "kind", "value"),
    [
        ("@bob:example.org", MemberKind.MATRIX_ID, "@bob:example.org"),
        ("sp-2026-0042", MemberKind.TICKET_REF, "SP-2026-0042"),
        ("bridge:!talk:example.org:Bob", MemberKind.BRIDGE_KEY, "bridge:!talk:example.org:Bob"),
        ("Bob Martin", MemberKind.NICKNAME, "Bob Martin"),
        ("@bob", MemberKind.NICKNAME, "@bob"),
    ],
)
def test_members(word: str, kind: MemberKind, value: str) -> None:
    found = member(word)
    assert (found.kind, found.value) == (kind, value)


@pytest.mark.parametrize(
    ("word", "tickets"), [("10", 10), ("+3", 3), ("-2", -2), ("−2", -2), (" 7 ", 7)]
)
def test_ticket_counts(word: str, tickets: int) -> None:
    assert parse_tickets(word) == tickets


@pytest.mark.parametrize("word", ["", "0", "-0", "1.5", "ten", "2h", "١٠", "10001", "1e3"])
def test_ticket_counts_refused(word: str) -> None:
    with pytest.raises(OrgInputError):
        parse_tickets(word)
    assert MAX_PURCHASE_TICKETS == 10_000


def test_notes() -> None:
    assert clean_note("  ") is None
    assert clean_note(" invoice 118 ") == "invoice 118"
    with pytest.raises(OrgInputError):
        clean_note("x" * 501)
