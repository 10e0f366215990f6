"""Work one handler module asks of another, as values.

Handler modules never import each other: the intake emits `OfferSlots` after opening a call
ticket, a lifecycle change emits `FreeCall` when its ticket no longer needs its call, a closing
emits `AskRating`, a billed no-show emits `LogTime`, and the module that owns that work
registers for the value's type (`router.effect(OfferSlots)`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OfferSlots:
    """Offer call slots for a ticket to its client (in the room of the emitting context)."""

    ticket_id: int


@dataclass(frozen=True, slots=True)
class FreeCall:
    """The ticket ended: cancel its future call and give the slot back."""

    ticket_id: int
    actor: str


@dataclass(frozen=True, slots=True)
class RequestOpened:
    """A request was opened in chat: its receipt goes by e-mail too (the e-mail channel)."""

    ticket_id: int
    first_request: bool = False


@dataclass(frozen=True, slots=True)
class AskRating:
    """The ticket closed: ask its client to rate it, unless that was done before."""

    ticket_id: int


@dataclass(frozen=True, slots=True)
class LogTime:
    """Log `minutes` of staff time on a ticket, as `!log` does (what it bills, warnings)."""

    ticket_id: int
    minutes: int
    staff: str
    note: str | None = None


@dataclass(frozen=True, slots=True)
class ResolutionAnswered:
    """The client of a request made by e-mail answered the mail saying it is solved: 1
    (`solved`) accepts the resolution, 2 says something is still wrong (or, once the ticket
    is closed, that the problem came back under the warranty)."""

    ticket_id: int
    solved: bool
