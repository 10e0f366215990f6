"""Satisfaction: when a ticket is rated, and what a client's typed answer means (issue #16 §2).

Pure: the shell passes the rows' values and the time; nothing here reads the clock or the
database.

Decisions worth knowing (the issue leaves them open):

* **Which closings ask.** A *ticket* (not a feasibility question, not a quote request) is
  asked once, when it becomes `closed`: the client accepted the resolution (`!accept` or ✅),
  or staff closed a warranty rework (`!refuse-warranty`, which finds it already asked).
  Declined, cancelled and unsolvable tickets end without a resolution to rate: not asked.
  `rating_asked_at` is what makes "never twice" hold, across reopenings too.
* **Answers.** A reaction 1️⃣–5️⃣ on the question, a typed answer ("4", "4/5", "4 great work",
  "4️⃣ merci"), or `!rate [REF] N [comment]`. The latest rating given counts (a client who
  clicked 3️⃣ then 4️⃣ meant 4); removing the reaction that gave the rating falls back to the
  client's other rating reaction on the question, else withdraws the rating.
* **Typed answers are read as ratings only for a while** (`ANSWER_WINDOW` after the question,
  and only until a rating is given): later, "2 questions about quotas" is a new request, not a
  rating. Reactions and `!rate` are unambiguous and work at any time after the question.
* **The comment** is the text after the number in the same message, or, when the rating came
  alone, the client's next message within `COMMENT_WINDOW` (the thanks says so). Comments are
  kept up to `COMMENT_MAX_CHARS`.
* **Bad numbers** (0, 6, 10/10, 4,5) get a clear answer; a text that does not start with a
  number is not a rating (it may be a new request), except a short one while the question
  waits, which gets the reminder of how to rate (see `handlers.state` for the precedence).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from bot.domain.tickets import Kind, Status, TicketState

__all__ = [
    "ANSWER_WINDOW",
    "COMMENT_MAX_CHARS",
    "COMMENT_WINDOW",
    "RATING_KEYS",
    "RATING_MAX",
    "RATING_MIN",
    "RatingText",
    "clip_comment",
    "comment_open",
    "keycap_value",
    "parse_rating",
    "should_ask",
    "typed_answer_open",
]

RATING_MIN, RATING_MAX = 1, 5
#: The reactions that rate, 1️⃣ … 5️⃣ (keycaps, as clients send them).
RATING_KEYS = tuple(f"{n}\ufe0f\u20e3" for n in range(RATING_MIN, RATING_MAX + 1))
#: How long after the question a typed number is read as the rating.
ANSWER_WINDOW = timedelta(hours=48)
#: How long after a rating given alone the next message is read as its comment.
COMMENT_WINDOW = timedelta(minutes=10)
COMMENT_MAX_CHARS = 2000

# A number first ("4", "4.5", "4,5", "4️⃣"), then optionally "/5" (any scale: "8/10" is refused,
# not misread), then either nothing or a separator before the comment. "4h30" or "3rd" are not
# ratings: the number must stand on its own.
_RATING = re.compile(
    r"\s*(?P<number>\d{1,3}(?:[.,]\d+)?)(?:\ufe0f?\u20e3)?"
    r"(?:\s*/\s*(?P<scale>\d{1,3}))?"
    r"(?P<rest>(?:[\s\-–—:,;.!)]|$).*)",
    re.DOTALL,
)
_LEADING_SEPARATORS = " \t\r\n-–—:,;.!)"


@dataclass(frozen=True, slots=True)
class RatingText:
    """A typed answer that starts with a number: the rating when it is a whole number from 1
    to 5 on a scale of 5 (else None: the client gets a clear answer), and the comment after it."""

    stars: int | None
    comment: str | None


def parse_rating(text: str) -> RatingText | None:
    """The rating a client typed, or None when `text` does not start with a number."""
    match = _RATING.fullmatch(text)
    if match is None:
        return None
    number, scale = match.group("number"), match.group("scale")
    stars: int | None = None
    if number.isdigit() and (scale is None or int(scale) == RATING_MAX):
        value = int(number)
        stars = value if RATING_MIN <= value <= RATING_MAX else None
    comment = match.group("rest").lstrip(_LEADING_SEPARATORS).strip()
    return RatingText(stars, clip_comment(comment))


def clip_comment(text: str | None) -> str | None:
    """A comment as stored: stripped, None when empty, at most `COMMENT_MAX_CHARS`."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    if len(text) > COMMENT_MAX_CHARS:
        return text[: COMMENT_MAX_CHARS - 1].rstrip() + "…"
    return text


def keycap_value(key: str) -> int | None:
    """The rating of a reaction key (1️⃣ … 5️⃣, with or without the variation selector)."""
    plain = key.replace("\ufe0f", "")
    for value, keycap in enumerate(RATING_KEYS, start=RATING_MIN):
        if keycap.replace("\ufe0f", "") == plain:
            return value
    return None


def should_ask(state: TicketState, asked_at: datetime | None) -> bool:
    """Whether the client is asked to rate now: a ticket just closed, never asked before."""
    return asked_at is None and state.kind is Kind.TICKET and state.status is Status.CLOSED


def typed_answer_open(asked_at: datetime | None, rated_at: datetime | None, now: datetime) -> bool:
    """Whether a typed number is read as the answer to the question: asked, not answered yet,
    and asked at most `ANSWER_WINDOW` ago."""
    _aware(now)
    return asked_at is not None and rated_at is None and now - asked_at <= ANSWER_WINDOW


def comment_open(rated_at: datetime | None, comment: str | None, now: datetime) -> bool:
    """Whether the client's next message is the comment of their rating: it has none, and
    was given at most `COMMENT_WINDOW` ago."""
    _aware(now)
    return rated_at is not None and comment is None and now - rated_at <= COMMENT_WINDOW


def _aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("naive datetime refused: pass an aware datetime")
