"""Prepaid ticket balances (issue #16 §1): pure arithmetic, no storage.

Clients buy tickets in advance; an account (an organisation, or a client in none) has bought
`purchased` tickets (purchase rows, corrections included as negative rows) and used `billed`
tickets, each ticket billed as the terms say (`bot.domain.tickets.billed_tickets`: every
started hour, 45 minutes for calls, at least one). What is left is the difference.

Decisions worth knowing:

* **Two thresholds.** The balance is *low* at `LOW_BALANCE_TICKETS` (1) ticket or less and
  *negative* below zero. A warning is due when a change makes the balance enter a worse level
  than the one it was in (`crossing`), so each crossing is told once: staying low does not
  warn again, and a purchase that lifts the balance re-arms the warning for the next fall.
* **Estimates.** The ticket being estimated already bills what its logged time gives (at
  least one ticket), and that is already counted in the balance: an estimate of `n` tickets
  uses only `n - billed_now` more (`after_estimate`).
* **Nothing is blocked.** These functions only say what to tell; work goes on whatever the
  balance.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "LOW_BALANCE_TICKETS",
    "Balance",
    "Level",
    "after_estimate",
    "crossing",
    "level",
    "signed",
]

#: At this many tickets left or fewer the balance is low.
LOW_BALANCE_TICKETS = 1


@dataclass(frozen=True, slots=True)
class Balance:
    """Tickets bought (corrections included) and tickets billed, for one account."""

    purchased: int
    billed: int

    @property
    def remaining(self) -> int:
        """What is left; negative when more was billed than bought."""
        return self.purchased - self.billed


class Level(IntEnum):
    """How a balance stands; a larger value is worse."""

    OK = 0
    LOW = 1  # LOW_BALANCE_TICKETS or less
    NEGATIVE = 2  # below zero


def level(remaining: int) -> Level:
    """
    >>> [level(n).name for n in (2, 1, 0, -1)]
    ['OK', 'LOW', 'LOW', 'NEGATIVE']
    """
    if remaining < 0:
        return Level.NEGATIVE
    if remaining <= LOW_BALANCE_TICKETS:
        return Level.LOW
    return Level.OK


def crossing(before: int, after: int) -> Level | None:
    """The worse level a balance entered going from `before` to `after` tickets, or None.

    >>> crossing(3, 1), crossing(1, 0), crossing(0, -2), crossing(3, -1), crossing(-1, 5)
    (<Level.LOW: 1>, None, <Level.NEGATIVE: 2>, <Level.NEGATIVE: 2>, None)
    """
    entered = level(after)
    return entered if entered > level(before) else None


def after_estimate(remaining: int, billed_now: int, estimate_tickets: int) -> int:
    """The balance once an estimate of `estimate_tickets` is billed, for a ticket that already
    bills `billed_now` (counted in `remaining`). The estimate exceeds the balance when this
    is negative.

    >>> after_estimate(2, 1, 3), after_estimate(2, 1, 4), after_estimate(0, 2, 1)
    (0, -1, 0)
    """
    if estimate_tickets < 0 or billed_now < 0:
        raise ValueError("ticket counts must not be negative")
    return remaining - max(0, estimate_tickets - billed_now)


def signed(tickets: int) -> str:
    """A balance as shown: a true minus sign below zero.

    >>> signed(3), signed(0), signed(-2)
    ('3', '0', '−2')
    """
    return f"−{-tickets}" if tickets < 0 else str(tickets)
