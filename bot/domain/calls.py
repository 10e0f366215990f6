"""A booked call the client did not join: when staff may say so, and what it bills (issue #16
§3). Pure: the shell passes the booking's values and the time.

Decisions worth knowing (the issue leaves them open):

* **Which call.** The ticket's current call (its latest booking not cancelled). A no-show is
  marked once the call has started, never for a call still to come, and once per call.
* **What it changes.** The booking keeps its slot and stays in the history with who marked
  it and when; the ticket stays as it was, so the client can book a new time (`!book`). A new
  booking then is a new call, not a move of the missed one.
* **Billing** (`service.no_show_billed`, false by default). When true, the missed call bills
  its ticket as a call of `NO_SHOW_MINUTES` (45 minutes = 1 ticket, R5) logged by the staff
  member who marked it: a ticket with no time logged yet bills that one ticket, and a call
  booked again afterwards starts a second one. When the lifecycle refuses time on the ticket
  (closed, awaiting acceptance…), the no-show is recorded unbilled and staff are told why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bot import rules
from bot.domain.tickets import Refusal
from bot.i18n import N_

__all__ = ["NO_SHOW_MINUTES", "CallState", "no_show"]

#: The time a missed call bills when the operator says it does: one call unit (R5).
NO_SHOW_MINUTES = rules.CALL_UNIT_MINUTES

_NO_CALL = N_("It has no booked call.")
_NOT_STARTED = N_("Its call is on {when}: a no-show can be marked once the call has started.")
_ALREADY = N_("Its call of {when} is already marked as a no-show (by {staff}).")


@dataclass(frozen=True, slots=True)
class CallState:
    """What the decision needs of a booking."""

    start: datetime
    no_show_at: datetime | None = None
    no_show_by: str | None = None


def no_show(call: CallState | None, now: datetime) -> Refusal | None:
    """None when staff may mark `call` (the ticket's current call) as missed by the client."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("naive datetime refused: pass an aware datetime")
    if call is None:
        return Refusal(_NO_CALL)
    if call.no_show_at is not None:
        return Refusal(_ALREADY, {"when": call.start, "staff": call.no_show_by or "?"})
    if now < call.start:
        return Refusal(_NOT_STARTED, {"when": call.start})
    return None
