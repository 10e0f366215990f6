"""Ticket lifecycle decisions: billing, cancelling, interventions, warranty, unsolvable."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from bot.domain.tickets import (
    Channel,
    Kind,
    LogResult,
    Refusal,
    Status,
    TicketState,
    accept,
    billed_tickets,
    cancel_by_client,
    client_confirm,
    convert_to_ticket,
    decline,
    initial_state,
    log_time,
    mark_unsolvable,
    record_staff_answer,
    refuse_warranty,
    reject_resolution,
    reopen,
    resolve,
    set_estimate,
    sla_business_days,
    staff_confirm,
    staff_unconfirm,
    take,
)

PARIS = ZoneInfo("Europe/Paris")
NOW = datetime(2026, 12, 1, 10, 0, tzinfo=PARIS)
WORKING = Status.IN_PROGRESS
ALICE = "@alice:support.example"
BOB = "@bob:support.example"


def ticket(channel: Channel = Channel.MESSAGING, **changes: object) -> TicketState:
    return replace(initial_state(Kind.TICKET, channel), **changes)  # type: ignore[arg-type]


def ok(result: TicketState | Refusal) -> TicketState:
    assert isinstance(result, TicketState), result
    return result


def refused(result: object) -> Refusal:
    assert isinstance(result, Refusal), result
    return result


def confirmed_intervention(estimate: int) -> TicketState:
    """An intervention estimated and confirmed by everyone needed."""
    state = ok(set_estimate(ticket(Channel.INTERVENTION), estimate))
    if state.status is Status.AWAITING_CLIENT_CONFIRMATION:
        state = ok(client_confirm(state, NOW))
    return ok(staff_confirm(state, ALICE, NOW))


# --- opening, SLA ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "channel", "status"),
    [
        (Kind.TICKET, Channel.MESSAGING, Status.OPEN),
        (Kind.TICKET, Channel.VIDEO, Status.OPEN),
        (Kind.TICKET, Channel.PHONE, Status.OPEN),
        (Kind.TICKET, Channel.INTERVENTION, Status.AWAITING_ESTIMATE),
        (Kind.QUESTION, Channel.INTERVENTION, Status.OPEN),
        (Kind.QUOTE, Channel.MESSAGING, Status.OPEN),
    ],
)
def test_initial_status(kind: Kind, channel: Channel, status: Status) -> None:
    assert initial_state(kind, channel).status is status


@pytest.mark.parametrize(
    ("channel", "days"),
    [
        (Channel.MESSAGING, 2),
        (Channel.INTERVENTION, 2),
        (Channel.VIDEO, 3),
        (Channel.PHONE, 3),
    ],
)
def test_sla_business_days(channel: Channel, days: int) -> None:
    assert sla_business_days(channel) == days


def test_stored_status_values_do_not_change() -> None:
    assert [s.value for s in Status] == [
        "open",
        "in_progress",
        "awaiting_estimate",
        "awaiting_client_confirmation",
        "awaiting_staff_confirmation",
        "confirmed",
        "resolved",
        "closed",
        "cancelled",
        "declined",
        "unsolvable",
    ]


# --- billing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "minutes", "tickets"),
    [
        (Channel.MESSAGING, 0, 1),
        (Channel.MESSAGING, 60, 1),
        (Channel.MESSAGING, 61, 2),
        (Channel.MESSAGING, 120, 2),
        (Channel.MESSAGING, 121, 3),
        (Channel.INTERVENTION, 60, 1),
        (Channel.INTERVENTION, 61, 2),
        (Channel.VIDEO, 45, 1),
        (Channel.VIDEO, 46, 2),
        (Channel.VIDEO, 60, 2),
        (Channel.VIDEO, 90, 2),
        (Channel.VIDEO, 91, 3),
        (Channel.PHONE, 45, 1),
        (Channel.PHONE, 46, 2),
    ],
)
def test_billed_tickets_by_channel(channel: Channel, minutes: int, tickets: int) -> None:
    state = ticket(channel, status=Status.CLOSED, minutes_logged=minutes)
    assert billed_tickets(state) == tickets


@pytest.mark.parametrize(
    ("kind", "channel", "status", "minutes", "tickets"),
    [
        (Kind.TICKET, Channel.MESSAGING, Status.CANCELLED, 0, 0),
        (Kind.TICKET, Channel.MESSAGING, Status.CANCELLED, 50, 0),
        (Kind.TICKET, Channel.MESSAGING, Status.DECLINED, 0, 0),
        (Kind.TICKET, Channel.VIDEO, Status.UNSOLVABLE, 0, 0),
        (Kind.TICKET, Channel.VIDEO, Status.UNSOLVABLE, 50, 2),
        (Kind.TICKET, Channel.INTERVENTION, Status.UNSOLVABLE, 130, 3),
        (Kind.TICKET, Channel.MESSAGING, Status.OPEN, 0, 1),
        (Kind.QUESTION, Channel.MESSAGING, Status.CLOSED, 30, 0),
        (Kind.QUOTE, Channel.MESSAGING, Status.CLOSED, 0, 0),
    ],
)
def test_billed_tickets_by_outcome(
    kind: Kind, channel: Channel, status: Status, minutes: int, tickets: int
) -> None:
    state = TicketState(kind=kind, channel=channel, status=status, minutes_logged=minutes)
    assert billed_tickets(state) == tickets


@pytest.mark.parametrize(
    ("channel", "logged", "added", "before", "after"),
    [
        (Channel.MESSAGING, 0, 60, 1, 1),
        (Channel.MESSAGING, 0, 61, 1, 2),
        (Channel.MESSAGING, 50, 10, 1, 1),
        (Channel.MESSAGING, 50, 11, 1, 2),
        (Channel.MESSAGING, 120, 1, 2, 3),
        (Channel.VIDEO, 0, 45, 1, 1),
        (Channel.VIDEO, 40, 6, 1, 2),
        (Channel.PHONE, 45, 45, 1, 2),
    ],
)
def test_log_time_reports_a_new_ticket_crossed(
    channel: Channel, logged: int, added: int, before: int, after: int
) -> None:
    state = ticket(channel, status=Status.IN_PROGRESS, minutes_logged=logged)
    result = log_time(state, added, NOW)
    assert isinstance(result, LogResult)
    assert (result.tickets_before, result.tickets_after) == (before, after)
    assert result.crossed_ticket is (after > before)
    assert result.state.minutes_logged == logged + added


def test_log_time_on_an_open_ticket_starts_it_and_counts_as_taken_into_account() -> None:
    result = log_time(ticket(), 20, NOW)
    assert isinstance(result, LogResult)
    assert result.state.status is Status.IN_PROGRESS
    assert result.state.first_response_at == NOW


@pytest.mark.parametrize("kind", [Kind.QUESTION, Kind.QUOTE])
def test_no_time_is_logged_on_questions_or_quotes(kind: Kind) -> None:
    refused(log_time(initial_state(kind, Channel.MESSAGING), 30, NOW))


@pytest.mark.parametrize("status", [Status.CANCELLED, Status.DECLINED, Status.CLOSED])
def test_no_time_is_logged_on_an_ended_ticket(status: Status) -> None:
    refused(log_time(ticket(status=status), 30, NOW))


# --- cancelling (R12) -------------------------------------------------------------------------


def test_client_cancels_a_fresh_messaging_ticket() -> None:
    state = ok(cancel_by_client(ticket()))
    assert state.status is Status.CANCELLED
    assert billed_tickets(state) == 0


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (ticket(Channel.VIDEO), "Only messaging assistance can be cancelled"),
        (ticket(Channel.PHONE), "Only messaging assistance can be cancelled"),
        (ticket(Channel.INTERVENTION), "Only messaging assistance can be cancelled"),
        (ticket(minutes_logged=5), "already worked on it"),
        (ticket(first_response_at=NOW), "a staff member has already answered"),
        (ok(take(ticket(), ALICE, NOW)), "a staff member has already answered"),
        (record_staff_answer(ticket(), NOW), "a staff member has already answered"),
        (ticket(status=Status.CANCELLED), "has been cancelled"),
        (ticket(status=Status.CLOSED), "is closed"),
    ],
)
def test_cancel_refusals_say_why(state: TicketState, reason: str) -> None:
    assert reason in refused(cancel_by_client(state)).reason


@pytest.mark.parametrize("kind", [Kind.QUESTION, Kind.QUOTE])
def test_questions_and_quotes_can_be_withdrawn_even_after_an_answer(kind: Kind) -> None:
    state = replace(initial_state(kind, Channel.VIDEO), first_response_at=NOW)
    assert ok(cancel_by_client(state)).status is Status.CANCELLED


# --- taking, answering --------------------------------------------------------------------------


def test_take_assigns_and_meets_the_sla() -> None:
    state = ok(take(ticket(), ALICE, NOW))
    assert (state.status, state.assigned_to, state.first_response_at) == (
        Status.IN_PROGRESS,
        ALICE,
        NOW,
    )
    later = NOW + timedelta(hours=2)
    reassigned = ok(take(state, BOB, later))
    assert reassigned.assigned_to == BOB
    assert reassigned.first_response_at == NOW  # the first response does not move


def test_take_keeps_an_intervention_waiting_for_its_estimate() -> None:
    state = ok(take(ticket(Channel.INTERVENTION), ALICE, NOW))
    assert state.status is Status.AWAITING_ESTIMATE
    assert state.assigned_to == ALICE


def test_first_staff_answer_is_kept() -> None:
    state = record_staff_answer(ticket(), NOW)
    assert record_staff_answer(state, NOW + timedelta(days=1)).first_response_at == NOW


@pytest.mark.parametrize("status", [Status.CANCELLED, Status.DECLINED, Status.RESOLVED])
def test_take_refused_once_done(status: Status) -> None:
    refused(take(ticket(status=status), ALICE, NOW))


# --- interventions (R7, SPEC §6) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("estimate", "status"),
    [
        (30, Status.AWAITING_STAFF_CONFIRMATION),
        (120, Status.AWAITING_STAFF_CONFIRMATION),
        (121, Status.AWAITING_CLIENT_CONFIRMATION),
        (300, Status.AWAITING_CLIENT_CONFIRMATION),
    ],
)
def test_estimate_decides_whether_the_client_must_confirm(estimate: int, status: Status) -> None:
    state = ok(set_estimate(ticket(Channel.INTERVENTION), estimate))
    assert (state.status, state.estimate_minutes) == (status, estimate)


def test_staff_cannot_start_before_the_client_confirmed() -> None:
    state = ok(set_estimate(ticket(Channel.INTERVENTION), 121))
    refusal = refused(staff_confirm(state, ALICE, NOW))
    assert "has not confirmed" in refusal.reason
    state = ok(client_confirm(state, NOW))
    assert (state.status, state.client_confirmed_at) == (Status.AWAITING_STAFF_CONFIRMATION, NOW)
    state = ok(staff_confirm(state, ALICE, NOW))
    assert (state.status, state.staff_confirmed_by, state.confirmed_tickets) == (
        Status.CONFIRMED,
        ALICE,
        3,
    )


def test_small_intervention_is_confirmed_by_staff_at_once() -> None:
    state = ok(set_estimate(ticket(Channel.INTERVENTION), 120))
    state = ok(staff_confirm(state, BOB, NOW))
    assert (state.status, state.staff_confirmed_by, state.confirmed_tickets) == (
        Status.CONFIRMED,
        BOB,
        2,
    )
    assert state.client_confirmed_at is None


def test_staff_cannot_confirm_without_an_estimate() -> None:
    assert "estimate" in refused(staff_confirm(ticket(Channel.INTERVENTION), ALICE, NOW)).reason


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (ticket(Channel.INTERVENTION), "nothing to confirm yet"),
        (ok(set_estimate(ticket(Channel.INTERVENTION), 90)), "does not need your confirmation"),
        (
            ok(client_confirm(ok(set_estimate(ticket(Channel.INTERVENTION), 200)), NOW)),
            "already confirmed",
        ),
        (ticket(Channel.MESSAGING), "Only interventions"),
    ],
)
def test_client_confirm_refusals(state: TicketState, reason: str) -> None:
    assert reason in refused(client_confirm(state, NOW)).reason


def test_estimate_is_only_for_interventions() -> None:
    assert "Only interventions" in refused(set_estimate(ticket(Channel.VIDEO), 60)).reason


def test_staff_unconfirm_before_work_only() -> None:
    state = confirmed_intervention(90)
    back = ok(staff_unconfirm(state))
    assert (back.status, back.staff_confirmed_by, back.confirmed_tickets) == (
        Status.AWAITING_STAFF_CONFIRMATION,
        None,
        None,
    )
    worked = log_time(state, 10, NOW)
    assert isinstance(worked, LogResult)
    assert "already been logged" in refused(staff_unconfirm(worked.state)).reason


def test_no_time_logged_on_an_unconfirmed_intervention() -> None:
    state = ok(set_estimate(ticket(Channel.INTERVENTION), 60))
    assert "not confirmed yet" in refused(log_time(state, 10, NOW)).reason


@pytest.mark.parametrize(
    ("estimate", "logged", "added", "refusal_params"),
    [
        (180, 0, 180, None),
        (180, 0, 181, {"confirmed": 3, "tickets": 4}),
        (180, 170, 10, None),
        (180, 170, 11, {"confirmed": 3, "tickets": 4}),
        (60, 0, 60, None),
        # Confirmed for one ticket: a second one needs a new estimate and confirmation.
        (60, 0, 61, {"confirmed": 1, "tickets": 2}),
        (60, 30, 100, {"confirmed": 1, "tickets": 3}),
    ],
)
def test_logged_time_stops_at_the_confirmed_tickets(
    estimate: int, logged: int, added: int, refusal_params: dict[str, int] | None
) -> None:
    state = replace(confirmed_intervention(estimate), minutes_logged=logged)
    result = log_time(state, added, NOW)
    if refusal_params is None:
        assert isinstance(result, LogResult)
        assert result.state.minutes_logged == logged + added
    else:
        message = refused(result).msg
        assert message.params == refusal_params
        assert message.n == refusal_params["confirmed"]
        assert "Estimate it again" in message.text
        assert message.plural is not None and "tickets;" in message.plural


def test_going_past_the_confirmed_tickets_asks_the_client_again() -> None:
    state = replace(confirmed_intervention(180), minutes_logged=180)
    state = ok(set_estimate(state, 240))
    assert state.status is Status.AWAITING_CLIENT_CONFIRMATION
    assert state.client_confirmed_at is None
    refused(staff_confirm(state, ALICE, NOW))
    refused(log_time(state, 10, NOW))
    state = ok(staff_confirm(ok(client_confirm(state, NOW)), ALICE, NOW))
    assert state.confirmed_tickets == 4
    assert isinstance(log_time(state, 60, NOW), LogResult)


def test_reestimate_within_the_confirmed_tickets_keeps_the_confirmation() -> None:
    state = ok(set_estimate(confirmed_intervention(180), 150))
    assert (state.status, state.estimate_minutes, state.confirmed_tickets) == (
        Status.CONFIRMED,
        150,
        3,
    )


def test_client_consent_covers_a_lower_reestimate_before_staff_confirmed() -> None:
    state = ok(client_confirm(ok(set_estimate(ticket(Channel.INTERVENTION), 240)), NOW))
    state = ok(set_estimate(state, 200))
    assert state.status is Status.AWAITING_STAFF_CONFIRMATION
    assert state.client_confirmed_at == NOW


def test_an_unconfirmed_intervention_cannot_be_resolved() -> None:
    state = ok(set_estimate(ticket(Channel.INTERVENTION), 200))
    refused(resolve(state))


# --- declining --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [
        ticket(),
        ticket(Channel.VIDEO, status=Status.IN_PROGRESS, assigned_to=ALICE),
        ticket(Channel.INTERVENTION),
        initial_state(Kind.QUOTE, Channel.MESSAGING),
    ],
)
def test_decline_before_any_work(state: TicketState) -> None:
    declined = ok(decline(state))
    assert declined.status is Status.DECLINED
    assert billed_tickets(declined) == 0


def test_decline_refused_once_time_is_logged() -> None:
    assert "unsolvable" in refused(decline(ticket(minutes_logged=15))).reason


# --- resolution, acceptance, warranty (R13) -------------------------------------------------


def test_resolve_accept_starts_a_week_of_warranty() -> None:
    state = ok(resolve(ticket(status=Status.IN_PROGRESS, minutes_logged=70)))
    assert state.status is Status.RESOLVED
    state = ok(accept(state, NOW))
    assert (state.status, state.accepted_at, state.warranty_until) == (
        Status.CLOSED,
        NOW,
        NOW + timedelta(days=7),
    )
    assert billed_tickets(state) == 2


def test_client_rejects_the_resolution() -> None:
    state = ok(reject_resolution(ok(resolve(ticket(status=Status.IN_PROGRESS)))))
    assert state.status is Status.IN_PROGRESS
    intervention = ok(reject_resolution(ok(resolve(confirmed_intervention(60)))))
    assert intervention.status is Status.CONFIRMED


def test_accept_needs_a_resolution() -> None:
    assert "not marked this ticket as resolved" in refused(accept(ticket(), NOW)).reason
    closed = ok(accept(ok(resolve(ticket())), NOW))
    assert "already accepted" in refused(accept(closed, NOW)).reason


def _closed_ticket(channel: Channel = Channel.MESSAGING) -> TicketState:
    state = ticket(channel, status=Status.IN_PROGRESS, minutes_logged=50)
    if channel is Channel.INTERVENTION:
        state = replace(confirmed_intervention(60), minutes_logged=50)
    return ok(accept(ok(resolve(state)), NOW))


@pytest.mark.parametrize(
    ("after", "reopens"),
    [
        (timedelta(0), True),
        (timedelta(days=3), True),
        (timedelta(days=7) - timedelta(seconds=1), True),
        (timedelta(days=7), True),
        (timedelta(days=7, seconds=1), False),
        (timedelta(days=30), False),
    ],
)
def test_reopen_inside_and_outside_the_warranty(after: timedelta, reopens: bool) -> None:
    result = reopen(_closed_ticket(), NOW + after)
    if reopens:
        assert ok(result).status is Status.IN_PROGRESS
    else:
        refusal = refused(result)
        assert "new ticket" in refusal.reason
        assert refusal.params == {"warranty_until": NOW + timedelta(days=7)}


def test_warranty_rework_is_not_billed() -> None:
    closed = _closed_ticket()
    reopened = ok(reopen(closed, NOW + timedelta(days=2)))
    result = log_time(reopened, 120, NOW + timedelta(days=2))
    assert isinstance(result, LogResult)
    assert result.under_warranty
    assert not result.crossed_ticket
    assert billed_tickets(result.state) == billed_tickets(closed) == 1
    # Accepting the rework is the new final acceptance: the week starts again.
    later = NOW + timedelta(days=3)
    again = ok(accept(ok(resolve(result.state)), later))
    assert (again.status, again.warranty_until) == (Status.CLOSED, later + timedelta(days=7))


def test_reopened_intervention_goes_back_to_work_without_a_new_confirmation() -> None:
    state = ok(reopen(_closed_ticket(Channel.INTERVENTION), NOW + timedelta(days=1)))
    assert state.status is Status.CONFIRMED
    # Rework is free, so the confirmed-ticket limit does not apply to it.
    assert isinstance(log_time(state, 200, NOW), LogResult)


def test_staff_refuse_the_warranty() -> None:
    reopened = ok(reopen(_closed_ticket(), NOW + timedelta(days=1)))
    assert ok(refuse_warranty(reopened)).status is Status.CLOSED
    refused(refuse_warranty(ticket(status=Status.IN_PROGRESS)))


def test_reopen_on_a_resolved_ticket_means_not_solved() -> None:
    state = ok(resolve(ticket(status=Status.IN_PROGRESS)))
    assert ok(reopen(state, NOW)).status is Status.IN_PROGRESS


@pytest.mark.parametrize(
    "state",
    [
        ticket(),
        ticket(status=Status.CANCELLED),
        initial_state(Kind.QUESTION, Channel.MESSAGING),
    ],
)
def test_reopen_refusals(state: TicketState) -> None:
    refused(reopen(state, NOW))


def test_question_closes_without_warranty() -> None:
    question = initial_state(Kind.QUESTION, Channel.MESSAGING)
    assert ok(accept(ok(resolve(question)), NOW)).warranty_until is None


# --- unsolvable (R11) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "status", "tickets"),
    [
        (ticket(status=Status.IN_PROGRESS, minutes_logged=90), Status.CANCELLED, 0),
        (ticket(), Status.CANCELLED, 0),
        (
            ticket(Channel.VIDEO, status=Status.IN_PROGRESS, minutes_logged=50),
            Status.UNSOLVABLE,
            2,
        ),
        (
            ticket(Channel.PHONE, status=Status.IN_PROGRESS, minutes_logged=45),
            Status.UNSOLVABLE,
            1,
        ),
        (replace(confirmed_intervention(180), minutes_logged=130), Status.UNSOLVABLE, 3),
        (ticket(Channel.INTERVENTION), Status.UNSOLVABLE, 0),
    ],
)
def test_unsolvable(state: TicketState, status: Status, tickets: int) -> None:
    ended = ok(mark_unsolvable(state))
    assert ended.status is status
    assert billed_tickets(ended) == tickets


@pytest.mark.parametrize(
    "state",
    [
        initial_state(Kind.QUESTION, Channel.MESSAGING),
        ticket(status=Status.DECLINED),
        ticket(status=Status.CLOSED),
    ],
)
def test_unsolvable_refused(state: TicketState) -> None:
    refused(mark_unsolvable(state))


# --- questions ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "status"),
    [(Channel.MESSAGING, Status.OPEN), (Channel.INTERVENTION, Status.AWAITING_ESTIMATE)],
)
def test_convert_question_to_ticket(channel: Channel, status: Status) -> None:
    state = ok(convert_to_ticket(initial_state(Kind.QUESTION, channel)))
    assert (state.kind, state.status) == (Kind.TICKET, status)
    assert billed_tickets(state) == 1


def test_only_questions_convert() -> None:
    refused(convert_to_ticket(ticket()))


# --- time ---------------------------------------------------------------------------------------

NAIVE = datetime(2026, 12, 1, 10)  # noqa: DTZ001 - the value under test


@pytest.mark.parametrize(
    "call",
    [
        lambda: take(ticket(), ALICE, NAIVE),
        lambda: log_time(ticket(), 10, NAIVE),
        lambda: accept(ok(resolve(ticket())), NAIVE),
        lambda: reopen(_closed_ticket(), NAIVE),
        lambda: record_staff_answer(ticket(), NAIVE),
    ],
    ids=["take", "log_time", "accept", "reopen", "record_staff_answer"],
)
def test_naive_datetimes_are_refused(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match="naive"):
        call()


@pytest.mark.parametrize("minutes", [0, -5])
def test_log_and_estimate_need_positive_minutes(minutes: int) -> None:
    with pytest.raises(ValueError):
        log_time(ticket(), minutes, NOW)
    with pytest.raises(ValueError):
        set_estimate(ticket(Channel.INTERVENTION), minutes)
