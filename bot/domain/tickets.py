"""Ticket lifecycle: statuses, the decisions that move between them, and billing.

Every decision is a pure function of a `TicketState` (and the acting staff member or the time
when it matters) that returns either the new state or a `Refusal` carrying an English msgid a
client or staff member can read once translated. The shell loads the row, decides, saves the
new state and the audit entry, and tells people; nothing here touches the database or clock.

```mermaid
stateDiagram-v2
    [*] --> open: ticket (messaging, video, phone), question, quote
    [*] --> awaiting_estimate: intervention
    open --> in_progress: take / log_time
    open --> cancelled: cancel_by_client (R12)
    awaiting_estimate --> awaiting_client_confirmation: set_estimate > 2 tickets (R7)
    awaiting_estimate --> awaiting_staff_confirmation: set_estimate <= 2 tickets
    awaiting_client_confirmation --> awaiting_staff_confirmation: client_confirm
    awaiting_staff_confirmation --> confirmed: staff_confirm
    confirmed --> awaiting_staff_confirmation: staff_unconfirm (nothing logged)
    confirmed --> awaiting_client_confirmation: set_estimate above the confirmed tickets
    in_progress --> resolved: resolve
    confirmed --> resolved: resolve
    resolved --> in_progress: reject_resolution
    resolved --> confirmed: reject_resolution (intervention)
    resolved --> closed: accept (warranty 7 days, R13)
    closed --> in_progress: reopen inside the warranty
    closed --> confirmed: reopen inside the warranty (intervention)
    in_progress --> closed: refuse_warranty (warranty rework only)
    open --> declined: decline (nothing logged)
    in_progress --> unsolvable: mark_unsolvable (call, intervention; R11)
    in_progress --> cancelled: mark_unsolvable (messaging only; R11)
```

Decisions worth knowing (the SPEC leaves them open):

* A ticket reopened under warranty keeps its `accepted_at`; that is how "warranty rework" is
  recognised. Time logged during rework is free (R13): `log_time` reports it but does not add
  it to `minutes_logged`, so the bill cannot grow.
* Billing (`billed_tickets`): questions and quote requests are never billed; cancelled and
  declined tickets bill 0; an unsolvable ticket bills the tickets its logged time consumed and
  0 when nothing was logged (R11 keeps "the logged tickets" billed, and none were); any other
  ticket bills at least one, even when no time was logged (R2: 0 minutes is one ticket).
* An intervention logs time only once confirmed, and only within its confirmed tickets; going
  beyond asks for a new estimate and a new confirmation (R7), even below the two-ticket
  threshold, because the confirmed count is what client and staff agreed to.
* A client may withdraw a question or a quote request at any time before it ends: neither is
  billed, so R12 (which protects billed work) does not apply to them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from bot import rules
from bot.i18n import N_, Msg

__all__ = [
    "ACTIVE_STATUSES",
    "ENDED_STATUSES",
    "REF_RE",
    "Channel",
    "Kind",
    "LogResult",
    "Refusal",
    "Status",
    "TicketState",
    "accept",
    "billed_tickets",
    "billing_unit_minutes",
    "cancel_by_client",
    "client_confirm",
    "convert_to_ticket",
    "decline",
    "initial_state",
    "is_warranty_rework",
    "log_time",
    "mark_unsolvable",
    "record_staff_answer",
    "refuse_warranty",
    "reject_resolution",
    "reopen",
    "resolve",
    "set_estimate",
    "sla_business_days",
    "staff_confirm",
    "staff_unconfirm",
    "take",
]

#: A request reference as written anywhere (`SP-2026-0042`, `q-2026-0007`): prefix, year,
#: number. Upper-cased by whoever reads it.
REF_RE = re.compile(r"\b([A-Za-z]{1,10}-\d{4}-\d{4,})\b")


class Kind(StrEnum):
    """Stored values: never rename."""

    TICKET = "ticket"
    QUESTION = "question"  # feasibility opinion (R9): not billed unless converted
    QUOTE = "quote"  # out of scope (R10): handled as an offer, not billed in tickets


class Channel(StrEnum):
    """Stored values: never rename."""

    MESSAGING = "messaging"
    VIDEO = "video"
    PHONE = "phone"
    INTERVENTION = "intervention"


class Status(StrEnum):
    """Stored values: never rename or reuse."""

    OPEN = "open"  # waiting for staff
    IN_PROGRESS = "in_progress"  # taken by a staff member
    AWAITING_ESTIMATE = "awaiting_estimate"  # intervention without estimate
    AWAITING_CLIENT_CONFIRMATION = "awaiting_client_confirmation"  # > 2 tickets, no consent
    AWAITING_STAFF_CONFIRMATION = "awaiting_staff_confirmation"  # staff ✅ pending
    CONFIRMED = "confirmed"  # intervention confirmed: work may start
    RESOLVED = "resolved"  # staff said solved; waiting for the client's acceptance
    CLOSED = "closed"  # client accepted; warranty running
    CANCELLED = "cancelled"
    DECLINED = "declined"
    UNSOLVABLE = "unsolvable"


#: Statuses nothing can leave (a closed ticket can still be reopened under warranty).
ENDED_STATUSES = frozenset({Status.CANCELLED, Status.DECLINED, Status.UNSOLVABLE})
#: Statuses in which staff owe something (for the queue and SLA warnings).
ACTIVE_STATUSES = frozenset(
    {
        Status.OPEN,
        Status.IN_PROGRESS,
        Status.AWAITING_ESTIMATE,
        Status.AWAITING_STAFF_CONFIRMATION,
        Status.CONFIRMED,
    }
)
_AWAITING = frozenset(
    {
        Status.AWAITING_ESTIMATE,
        Status.AWAITING_CLIENT_CONFIRMATION,
        Status.AWAITING_STAFF_CONFIRMATION,
    }
)

WARRANTY_DAYS = 7


@dataclass(frozen=True, slots=True)
class TicketState:
    """What the lifecycle decisions need to know about one ticket (field names match storage)."""

    kind: Kind
    channel: Channel
    status: Status
    minutes_logged: int = 0
    first_response_at: datetime | None = None
    assigned_to: str | None = None
    estimate_minutes: int | None = None
    confirmed_tickets: int | None = None
    client_confirmed_at: datetime | None = None
    staff_confirmed_by: str | None = None
    accepted_at: datetime | None = None
    warranty_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a decision was refused: an English msgid (marked with `N_`) and its parameters."""

    reason: str
    params: Mapping[str, Any] = field(default_factory=dict)
    plural: str | None = None
    n: int | None = None

    @property
    def msg(self) -> Msg:
        return Msg(self.reason, self.params, self.plural, self.n)


@dataclass(frozen=True, slots=True)
class LogResult:
    """The outcome of logging time.

    `crossed_ticket` is true when the log made the ticket bill one more ticket (staff are
    warned); `under_warranty` when the time was warranty rework and is not billed.
    """

    state: TicketState
    tickets_before: int
    tickets_after: int
    under_warranty: bool = False

    @property
    def crossed_ticket(self) -> bool:
        return self.tickets_after > self.tickets_before


# --- Refusal texts -------------------------------------------------------------------------

_ENDED = {
    Status.CANCELLED: N_("This ticket has been cancelled."),
    Status.DECLINED: N_("This request was declined by the support team."),
    Status.UNSOLVABLE: N_("This ticket was closed as unsolvable by the support team."),
    Status.CLOSED: N_("This ticket is closed."),
}
_NOT_A_TICKET = {
    Kind.QUESTION: N_(
        "This is a feasibility question, not a ticket: convert it to a ticket first (!convert)."
    ),
    Kind.QUOTE: N_("This is a quote request, not a ticket: it is handled as a separate offer."),
}
_NOT_AN_INTERVENTION = N_(
    "Only interventions are estimated and confirmed; this ticket is not one."
)
_AWAITING_ACCEPTANCE = N_("This ticket is resolved and waits for the client's acceptance.")
_IN_WARRANTY_REWORK = N_(
    "This ticket was reopened under warranty: refuse the warranty with a reason instead."
)
_CANCEL_CHANNEL = N_(
    "Only messaging assistance can be cancelled: calls and interventions cannot be cancelled."
)
_CANCEL_WORKED = N_(
    "This ticket can no longer be cancelled: the support team has already worked on it."
)
_CANCEL_ANSWERED = N_(
    "This ticket can no longer be cancelled: a staff member has already answered."
)
_NO_ESTIMATE_YET = N_(
    "This intervention has not been estimated yet: estimate it first (!estimate)."
)
_CLIENT_NO_ESTIMATE_YET = N_(
    "There is nothing to confirm yet: the support team has not estimated this intervention."
)
_CLIENT_ALREADY_CONFIRMED = N_("You have already confirmed this intervention.")
_CLIENT_NOT_NEEDED = N_(
    "This intervention does not need your confirmation: it is estimated at two tickets or fewer."
)
_WAITING_FOR_CLIENT = N_(
    "The client has not confirmed this intervention yet: it is estimated at more than two "
    "tickets, so it cannot start before the client confirms it."
)
_ALREADY_CONFIRMED = N_("This intervention is already confirmed by {staff}.")
_NOT_CONFIRMED = N_("This intervention is not confirmed.")
_UNCONFIRM_WORKED = N_(
    "The confirmation can no longer be withdrawn: time has already been logged on this "
    "intervention."
)
_DECLINE_WORKED = N_(
    "This ticket cannot be declined: time has already been logged on it. "
    "Mark it as unsolvable instead (!unsolvable)."
)
_LOG_NOT_CONFIRMED = N_(
    "This intervention is not confirmed yet: no time can be logged on it before it is."
)
_LOG_OVER_CONFIRMED = N_(
    "This intervention was confirmed for {confirmed} ticket; this time would bring it to "
    "{tickets}. Estimate it again (!estimate) and have it confirmed before going on."
)
_LOG_OVER_CONFIRMED_PLURAL = N_(
    "This intervention was confirmed for {confirmed} tickets; this time would bring it to "
    "{tickets}. Estimate it again (!estimate) and have it confirmed before going on."
)
_RESOLVE_UNCONFIRMED = N_(
    "This intervention was never confirmed, so it cannot be resolved: decline it or mark it "
    "as unsolvable instead."
)
_NOTHING_TO_ACCEPT = N_(
    "There is no resolution to answer yet: the support team has not marked this ticket as "
    "resolved."
)
_ALREADY_ACCEPTED = N_("You have already accepted the resolution of this ticket.")
_REOPEN_ONLY_TICKETS = N_("Only tickets can be reopened; please send a new request (!new).")
_REOPEN_STILL_OPEN = N_("This ticket is still open: there is nothing to reopen.")
_WARRANTY_OVER = N_(
    "The one-week warranty of this ticket ended on {warranty_until}; please open a new ticket "
    "(!new)."
)
_NOT_IN_WARRANTY = N_("This ticket is not reopened under warranty.")
_CONVERT_ONLY_QUESTIONS = N_("Only a feasibility question can be converted to a ticket.")
_CONVERT_NOT_OPEN = N_("This question is no longer open, so it cannot be converted.")


# --- Small helpers -------------------------------------------------------------------------


def _aware(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("naive datetime refused: pass an aware datetime")
    return now


def _ended(state: TicketState) -> Refusal | None:
    """The refusal for a ticket that has ended (closed included), if it has."""
    reason = _ENDED.get(state.status)
    return Refusal(reason) if reason is not None else None


def _not_a_ticket(state: TicketState) -> Refusal | None:
    reason = _NOT_A_TICKET.get(state.kind)
    return Refusal(reason) if reason is not None else None


def _is_intervention(state: TicketState) -> bool:
    return state.kind is Kind.TICKET and state.channel is Channel.INTERVENTION


def _working_status(state: TicketState) -> Status:
    """Where work happens: a confirmed intervention stays `confirmed` while staff work on it."""
    return Status.CONFIRMED if _is_intervention(state) else Status.IN_PROGRESS


def is_warranty_rework(state: TicketState) -> bool:
    """Reopened under warranty and not accepted again yet (R13)."""
    return state.accepted_at is not None and state.status in {
        Status.IN_PROGRESS,
        Status.CONFIRMED,
        Status.RESOLVED,
    }


def billing_unit_minutes(channel: Channel) -> int:
    """Calls bill per 45 minutes (R5); everything else per hour (R2)."""
    if channel in {Channel.VIDEO, Channel.PHONE}:
        return rules.CALL_UNIT_MINUTES
    return rules.TICKET_UNIT_MINUTES


def sla_business_days(channel: Channel) -> int:
    """Business days within which the request is taken into account (R3, R4)."""
    return 3 if channel in {Channel.VIDEO, Channel.PHONE} else 2


def billed_tickets(state: TicketState) -> int:
    """Tickets this ticket bills now (see the module docstring for the decisions)."""
    if state.kind is not Kind.TICKET:
        return 0
    if state.status in {Status.CANCELLED, Status.DECLINED}:
        return 0
    if state.status is Status.UNSOLVABLE and state.minutes_logged == 0:
        return 0
    unit = billing_unit_minutes(state.channel)
    return rules.tickets_for(state.minutes_logged, unit_minutes=unit)


# --- Decisions -----------------------------------------------------------------------------


def initial_state(kind: Kind, channel: Channel) -> TicketState:
    """A new ticket, question or quote request as the intake opens it."""
    kind, channel = Kind(kind), Channel(channel)
    needs_estimate = kind is Kind.TICKET and channel is Channel.INTERVENTION
    status = Status.AWAITING_ESTIMATE if needs_estimate else Status.OPEN
    return TicketState(kind=kind, channel=channel, status=status)


def record_staff_answer(state: TicketState, now: datetime) -> TicketState:
    """A staff member answered the client: the SLA is met (R3) and R12 cancelling ends."""
    _aware(now)
    if state.first_response_at is not None:
        return state
    return replace(state, first_response_at=now)


def take(state: TicketState, staff: str, now: datetime) -> TicketState | Refusal:
    """Staff 👀: assign to `staff` (taking someone else's ticket reassigns it).

    Taking counts as the first response (R3). An intervention keeps its confirmation status:
    taking it does not start the work.
    """
    _aware(now)
    if refusal := _ended(state):
        return refusal
    if state.status is Status.RESOLVED:
        return Refusal(_AWAITING_ACCEPTANCE)
    status = Status.IN_PROGRESS if state.status is Status.OPEN else state.status
    return replace(
        state,
        status=status,
        assigned_to=staff,
        first_response_at=state.first_response_at or now,
    )


def cancel_by_client(state: TicketState) -> TicketState | Refusal:
    """Client `!cancel` (R12): messaging only, before any staff time or answer."""
    if refusal := _ended(state):
        return refusal
    # The R12 reasons come first: they tell the client why, which "resolved" would not.
    if state.kind is Kind.TICKET:
        if state.channel is not Channel.MESSAGING:
            return Refusal(_CANCEL_CHANNEL)
        if state.minutes_logged > 0:
            return Refusal(_CANCEL_WORKED)
        if state.first_response_at is not None:
            return Refusal(_CANCEL_ANSWERED)
    if state.status is Status.RESOLVED:
        return Refusal(_AWAITING_ACCEPTANCE)
    return replace(state, status=Status.CANCELLED)


def set_estimate(state: TicketState, minutes: int) -> TicketState | Refusal:
    """Staff `!estimate`: record it and move to the confirmation the estimate requires (R7, §6).

    Re-estimating a confirmed intervention within its confirmed tickets changes nothing else;
    above them the intervention needs confirming again. A client's earlier consent still covers
    a new estimate that does not bill more tickets than the one they agreed to.
    """
    if minutes <= 0:
        raise ValueError(f"an estimate must be positive, got {minutes}")
    if refusal := _not_a_ticket(state) or _ended(state):
        return refusal
    if not _is_intervention(state):
        return Refusal(_NOT_AN_INTERVENTION)
    if is_warranty_rework(state):
        return Refusal(_IN_WARRANTY_REWORK)
    if state.status is Status.RESOLVED:
        return Refusal(_AWAITING_ACCEPTANCE)
    tickets = rules.tickets_for(minutes)
    if state.status is Status.CONFIRMED and tickets <= (state.confirmed_tickets or 0):
        return replace(state, estimate_minutes=minutes)
    consent_covers = (
        state.client_confirmed_at is not None
        and state.estimate_minutes is not None
        and tickets <= rules.tickets_for(state.estimate_minutes)
    )
    if rules.needs_confirmation(minutes) and not consent_covers:
        return replace(
            state,
            status=Status.AWAITING_CLIENT_CONFIRMATION,
            estimate_minutes=minutes,
            client_confirmed_at=None,
            staff_confirmed_by=None,
        )
    return replace(
        state,
        status=Status.AWAITING_STAFF_CONFIRMATION,
        estimate_minutes=minutes,
        staff_confirmed_by=None,
    )


def client_confirm(state: TicketState, now: datetime) -> TicketState | Refusal:
    """The client confirms an intervention estimated above two tickets (R7)."""
    _aware(now)
    if refusal := _not_a_ticket(state) or _ended(state):
        return refusal
    if not _is_intervention(state):
        return Refusal(_NOT_AN_INTERVENTION)
    if state.status is Status.AWAITING_CLIENT_CONFIRMATION:
        return replace(state, status=Status.AWAITING_STAFF_CONFIRMATION, client_confirmed_at=now)
    if state.status is Status.AWAITING_ESTIMATE:
        return Refusal(_CLIENT_NO_ESTIMATE_YET)
    if state.client_confirmed_at is not None:
        return Refusal(_CLIENT_ALREADY_CONFIRMED)
    if state.status is Status.RESOLVED:
        return Refusal(_AWAITING_ACCEPTANCE)
    return Refusal(_CLIENT_NOT_NEEDED)


def staff_confirm(state: TicketState, staff: str, now: datetime) -> TicketState | Refusal:
    """Staff ✅: the intervention may start, for the tickets of its estimate (§6).

    Refused while the client's consent is required and missing: no reaction or command can
    start such an intervention (R7).
    """
    _aware(now)
    if refusal := _not_a_ticket(state) or _ended(state):
        return refusal
    if not _is_intervention(state):
        return Refusal(_NOT_AN_INTERVENTION)
    if state.status is Status.AWAITING_ESTIMATE or state.estimate_minutes is None:
        return Refusal(_NO_ESTIMATE_YET)
    if state.status is Status.AWAITING_CLIENT_CONFIRMATION or (
        rules.needs_confirmation(state.estimate_minutes) and state.client_confirmed_at is None
    ):
        return Refusal(_WAITING_FOR_CLIENT)
    if state.status is Status.CONFIRMED:
        return Refusal(_ALREADY_CONFIRMED, {"staff": state.staff_confirmed_by or ""})
    if state.status is not Status.AWAITING_STAFF_CONFIRMATION:
        return Refusal(_AWAITING_ACCEPTANCE)
    return replace(
        state,
        status=Status.CONFIRMED,
        staff_confirmed_by=staff,
        confirmed_tickets=rules.tickets_for(state.estimate_minutes),
    )


def staff_unconfirm(state: TicketState) -> TicketState | Refusal:
    """Staff removed their ✅: allowed only while no work has been logged."""
    if refusal := _not_a_ticket(state) or _ended(state):
        return refusal
    if not _is_intervention(state):
        return Refusal(_NOT_AN_INTERVENTION)
    if state.status is not Status.CONFIRMED or is_warranty_rework(state):
        return Refusal(_NOT_CONFIRMED)
    if state.minutes_logged > 0:
        return Refusal(_UNCONFIRM_WORKED)
    return replace(
        state,
        status=Status.AWAITING_STAFF_CONFIRMATION,
        staff_confirmed_by=None,
        confirmed_tickets=None,
    )


def decline(state: TicketState) -> TicketState | Refusal:
    """Staff ❌: the support team will not handle this request (bills 0)."""
    if refusal := _ended(state):
        return refusal
    if state.status is Status.RESOLVED:
        return Refusal(_AWAITING_ACCEPTANCE)
    if is_warranty_rework(state):
        return Refusal(_IN_WARRANTY_REWORK)
    if state.minutes_logged > 0:
        return Refusal(_DECLINE_WORKED)
    return replace(state, status=Status.DECLINED)


def log_time(state: TicketState, minutes: int, now: datetime) -> LogResult | Refusal:
    """Staff `!log`: add work time; tells whether one more ticket is now billed.

    Logging work counts as taking the ticket into account (R3), so it sets `first_response_at`
    when nobody had answered yet. An intervention accepts time only when confirmed and within
    its confirmed tickets (R7). Warranty rework is recorded but not billed (R13).
    """
    _aware(now)
    if minutes <= 0:
        raise ValueError(f"logged minutes must be positive, got {minutes}")
    if refusal := _not_a_ticket(state) or _ended(state):
        return refusal
    unit = billing_unit_minutes(state.channel)
    before = billed_tickets(state)
    first_response_at = state.first_response_at or now
    if is_warranty_rework(state):
        return LogResult(replace(state, first_response_at=first_response_at), before, before, True)
    if _is_intervention(state):
        if state.status in _AWAITING or state.confirmed_tickets is None:
            return Refusal(_LOG_NOT_CONFIRMED)
        after = rules.tickets_for(state.minutes_logged + minutes, unit_minutes=unit)
        if after > state.confirmed_tickets:
            return Refusal(
                _LOG_OVER_CONFIRMED,
                {"confirmed": state.confirmed_tickets, "tickets": after},
                plural=_LOG_OVER_CONFIRMED_PLURAL,
                n=state.confirmed_tickets,
            )
    status = Status.IN_PROGRESS if state.status is Status.OPEN else state.status
    new_state = replace(
        state,
        status=status,
        minutes_logged=state.minutes_logged + minutes,
        first_response_at=first_response_at,
    )
    return LogResult(new_state, before, billed_tickets(new_state))


def resolve(state: TicketState) -> TicketState | Refusal:
    """Staff `!resolve`: the problem is solved; the client is asked to accept."""
    if refusal := _ended(state):
        return refusal
    if state.status is Status.RESOLVED:
        return Refusal(_AWAITING_ACCEPTANCE)
    if _is_intervention(state) and state.status in _AWAITING:
        return Refusal(_RESOLVE_UNCONFIRMED)
    return replace(state, status=Status.RESOLVED)


def accept(
    state: TicketState, now: datetime, warranty_days: int = WARRANTY_DAYS
) -> TicketState | Refusal:
    """The client accepts the resolution: the ticket closes and its warranty starts (R13).

    Accepting again after warranty rework restarts the week: that is the new final acceptance.
    Questions and quote requests close without warranty (no adaptation was delivered).
    """
    _aware(now)
    if warranty_days < 0:
        raise ValueError(f"warranty_days must not be negative, got {warranty_days}")
    if state.status is Status.CLOSED:
        return Refusal(_ALREADY_ACCEPTED)
    if refusal := _ended(state):
        return refusal
    if state.status is not Status.RESOLVED:
        return Refusal(_NOTHING_TO_ACCEPT)
    warranty_until = now + timedelta(days=warranty_days) if state.kind is Kind.TICKET else None
    return replace(state, status=Status.CLOSED, accepted_at=now, warranty_until=warranty_until)


def reject_resolution(state: TicketState) -> TicketState | Refusal:
    """The client says the problem is not solved: work resumes on the same ticket."""
    if refusal := _ended(state):
        return refusal
    if state.status is not Status.RESOLVED:
        return Refusal(_NOTHING_TO_ACCEPT)
    return replace(state, status=_working_status(state))


def reopen(state: TicketState, now: datetime) -> TicketState | Refusal:
    """Client `!reopen`: inside the warranty the same ticket reopens at no extra ticket (R13).

    After the warranty a new ticket is needed. On a resolved ticket, reopening means the
    client does not accept the resolution, so it is handled as `reject_resolution`.
    """
    _aware(now)
    if state.kind is not Kind.TICKET:
        return Refusal(_REOPEN_ONLY_TICKETS)
    if state.status is Status.RESOLVED:
        return reject_resolution(state)
    if state.status in ENDED_STATUSES:
        return Refusal(_ENDED[state.status])
    if state.status is not Status.CLOSED:
        return Refusal(_REOPEN_STILL_OPEN)
    if state.warranty_until is None or now > state.warranty_until:
        return Refusal(_WARRANTY_OVER, {"warranty_until": state.warranty_until})
    return replace(state, status=_working_status(state))


def refuse_warranty(state: TicketState) -> TicketState | Refusal:
    """Staff refuse a warranty reopening (update, hardware, hosting, others' changes: R13).

    The ticket closes again as it was accepted; the reason is told to the client by the shell.
    """
    if not is_warranty_rework(state):
        return Refusal(_NOT_IN_WARRANTY)
    return replace(state, status=Status.CLOSED)


def mark_unsolvable(state: TicketState) -> TicketState | Refusal:
    """Staff `!unsolvable` (R11): messaging-only assistance is cancelled and bills 0; calls and
    interventions end as unsolvable and keep the tickets their logged time consumed.

    The shell then opens a quote request for a specific offer.
    """
    if refusal := _not_a_ticket(state) or _ended(state):
        return refusal
    if state.status is Status.RESOLVED:
        return Refusal(_AWAITING_ACCEPTANCE)
    if is_warranty_rework(state):
        return Refusal(_IN_WARRANTY_REWORK)
    status = Status.CANCELLED if state.channel is Channel.MESSAGING else Status.UNSOLVABLE
    return replace(state, status=status)


def convert_to_ticket(state: TicketState) -> TicketState | Refusal:
    """Staff `!convert`: a feasibility question becomes a billed ticket (R9)."""
    if state.kind is not Kind.QUESTION:
        return Refusal(_CONVERT_ONLY_QUESTIONS)
    if state.status not in {Status.OPEN, Status.IN_PROGRESS}:
        return Refusal(_CONVERT_NOT_OPEN)
    status = Status.AWAITING_ESTIMATE if state.channel is Channel.INTERVENTION else state.status
    return replace(state, kind=Kind.TICKET, status=status)
