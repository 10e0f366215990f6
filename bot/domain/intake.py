"""The client intake conversation (SPEC §3, R1): a pure, persisted state machine.

`start` handles a client's first message, `advance` every later one; both return a
`Transition`: the new `Intake` (the shell saves it before answering), the replies (`Msg`
values, translated at the edge) and the effects the shell executes (`OpenRequest`,
`AddToTicket`). Time-outs are pure too: the sweeper asks `needs_reminder` / `is_expired` and
applies `remind` / `expire`. Nothing here reads a clock, a database or Matrix. The flow is drawn
in `intake.md` beside this file; what an answer means (a category, "yes", a URL, an e-mail
address) is read by `bot.domain.intake_answers`.

At about 650 lines this module is over the project's ~600: it is one concern (the steps, their
questions and the summary they show all read the same `Intake` value), and moving the wording
out would need the values in a third module for nothing but the count.

Decisions (the "why" behind the rules below)
--------------------------------------------
* **Describing the problem.** Every non-empty message at the description step is kept as one
  more part. As soon as the parts together reach `MIN_DESCRIPTION_CHARS`, the category question
  is asked. Clients often split a description over several messages; a message that arrives at
  the category step, is not a category and is at least `MIN_DESCRIPTION_CHARS` long is therefore
  *added to the description* (the client is told so) and the category question is asked again.
  A short unknown answer is a wrong category, explained. Nothing written is ever dropped
  silently.
* **Editing after "no".** The client names a step (number or word); that step's question is
  asked and, once answered, the summary comes back (`return_to_summary`) instead of walking every
  later step. Editing the description *adds* to it: what was written stays, staff see it all.
  `!skip` while editing the instance clears it (skip means "no instance").
* **Reminders.** Any client message resets the inactivity clock and the `reminded` flag, so each
  silence gets at most one reminder; expiry counts from the last client message.
* **Size.** The first description part is always kept (a Matrix event is already bounded); after
  that the description is capped at `MAX_DESCRIPTION_CHARS` and a message that would exceed it is
  refused with an explanation. The summary shows a preview of long descriptions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from bot.domain import intake_answers as answers

# Re-exported: callers know the choices, the instance and the two parsers as parts of the intake.
from bot.domain.intake_answers import CATEGORIES as CATEGORIES
from bot.domain.intake_answers import CHANNELS as CHANNELS
from bot.domain.intake_answers import Choice as Choice
from bot.domain.intake_answers import InstanceInfo as InstanceInfo
from bot.domain.intake_answers import extract_email as extract_email
from bot.domain.intake_answers import parse_instance as parse_instance
from bot.i18n import N_, Msg

MIN_DESCRIPTION_CHARS = 20
MAX_DESCRIPTION_CHARS = 50_000
SUMMARY_PREVIEW_CHARS = 1_000
REMIND_AFTER = timedelta(hours=24)
EXPIRE_AFTER = timedelta(days=7)


class IntakeStep(StrEnum):
    """Where a conversation stands. The values are stored: add steps, never rename them."""

    DESCRIPTION = "description"
    CATEGORY = "category"
    INSTANCE = "instance"
    CHANNEL = "channel"
    EMAIL = "email"
    CONFIRM = "confirm"
    RELATED = "related"  # R1: "about your open ticket, or a new problem?"
    EDIT = "edit"  # after "no" at the summary: which step to change
    DONE = "done"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({IntakeStep.DONE, IntakeStep.CANCELLED, IntakeStep.EXPIRED})

# The questions asked in order for a new request; EDIT can jump back to any of them.
_ORDER = (
    IntakeStep.DESCRIPTION,
    IntakeStep.CATEGORY,
    IntakeStep.INSTANCE,
    IntakeStep.CHANNEL,
    IntakeStep.EMAIL,
    IntakeStep.CONFIRM,
)


class RequestKind(StrEnum):
    """What a confirmed intake opens (R9, R10)."""

    TICKET = "ticket"
    QUESTION = "question"
    QUOTE = "quote"


# Categories 1–8 are billed tickets; 9 opens a free feasibility question; 10 a quote request.
CATEGORY_KINDS: Mapping[str, RequestKind] = {
    **{choice.key: RequestKind.TICKET for choice in CATEGORIES[:8]},
    "feasibility": RequestKind.QUESTION,
    "other": RequestKind.QUOTE,
}
_CHANNEL_KEYS = frozenset(choice.key for choice in CHANNELS)

# The answers to the EDIT question, numbered as `question_for` lists them.
_EDIT_WORDS: Mapping[IntakeStep, tuple[str, ...]] = {
    IntakeStep.DESCRIPTION: ("1", "description", "problem", "problème", "desc"),
    IntakeStep.CATEGORY: ("2", "category", "catégorie"),
    IntakeStep.INSTANCE: ("3", "instance", "url", "version", "survey", "questionnaire"),
    IntakeStep.CHANNEL: ("4", "channel", "canal", "mode", "contact mode", "mode de contact"),
    IntakeStep.EMAIL: ("5", "email", "e-mail", "mail", "courriel", "adresse e-mail", "address"),
    IntakeStep.CONFIRM: ("0", "summary", "résumé", "récapitulatif", "nothing", "rien"),
}
_EDIT_INDEX = answers.word_index(_EDIT_WORDS)


# -- values ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Intake:
    """One client's conversation so far. Everything the client gave is kept here."""

    step: IntakeStep
    started_at: datetime
    last_activity_at: datetime
    description_parts: tuple[str, ...] = ()
    category: str | None = None
    instance_url: str | None = None
    instance_version: str | None = None
    survey_id: str | None = None
    channel: str | None = None
    email: str | None = None
    known_email: str | None = None  # from the client's previous ticket, offered at EMAIL
    reminded: bool = False
    return_to_summary: bool = False  # set while editing one step from the summary
    pending_text: str | None = None  # the message waiting for the RELATED answer
    open_ticket_ref: str | None = None

    @property
    def description(self) -> str:
        return "\n\n".join(self.description_parts)

    @property
    def kind(self) -> RequestKind | None:
        return CATEGORY_KINDS.get(self.category) if self.category else None

    @property
    def is_active(self) -> bool:
        return not self.step.is_terminal


@dataclass(frozen=True, slots=True)
class OpenRequest:
    """Open a ticket, a feasibility question or a quote request (by `kind`)."""

    kind: RequestKind
    category: str
    channel: str
    description: str
    instance_url: str | None
    instance_version: str | None
    survey_id: str | None
    email: str


@dataclass(frozen=True, slots=True)
class AddToTicket:
    """Add the client's message to their open ticket `ref` (R1)."""

    ref: str
    text: str


Effect = OpenRequest | AddToTicket


@dataclass(frozen=True, slots=True)
class Transition:
    intake: Intake
    replies: tuple[Msg, ...]
    effects: tuple[Effect, ...] = ()


# -- the conversation --------------------------------------------------------------------


def start(
    *,
    now: datetime,
    text: str,
    known_email: str | None = None,
    open_ticket_ref: str | None = None,
) -> Transition:
    """A new intake from the client's first message (not a command).

    With an open ticket (R1) the message is held and the client asked whether it belongs to
    that ticket; otherwise it is the first part of the description.
    """
    intake = Intake(
        step=IntakeStep.DESCRIPTION,
        started_at=now,
        last_activity_at=now,
        known_email=known_email,
        open_ticket_ref=open_ticket_ref,
    )
    body = text.strip()
    if open_ticket_ref and body:
        intake = replace(intake, step=IntakeStep.RELATED, pending_text=body)
        return Transition(intake, (question_for(intake),))
    welcome = Msg(
        N_(
            "Hello! I will ask you a few questions to prepare your support request. "
            "You can type !cancel at any time to drop it."
        )
    )
    if not body:
        return Transition(intake, (welcome, question_for(intake)))
    moved = _on_description(intake, body)
    return replace(moved, replies=(welcome, *moved.replies))


def advance(intake: Intake, text: str, *, now: datetime) -> Transition:
    """The client's next message (not a command): the new intake, replies and effects."""
    if intake.step.is_terminal:
        return Transition(intake, (question_for(intake),))
    intake = replace(intake, last_activity_at=now, reminded=False)
    body = text.strip()
    if not body:
        return _again(intake, Msg(N_("Your message was empty.")))
    if intake.step not in (IntakeStep.INSTANCE, IntakeStep.DESCRIPTION) and answers.is_skip(body):
        return _again(intake, Msg(N_("This question cannot be skipped.")))
    return _HANDLERS[intake.step](intake, body)


def cancel(intake: Intake, now: datetime) -> Transition:
    """`!cancel` during the intake: dropped, no ticket."""
    if intake.step.is_terminal:
        return Transition(intake, (Msg(N_("There is no request in progress to cancel.")),))
    intake = replace(intake, step=IntakeStep.CANCELLED, last_activity_at=now)
    return Transition(intake, (Msg(N_("Request dropped, no ticket was opened.")),))


def needs_reminder(intake: Intake, now: datetime, after: timedelta = REMIND_AFTER) -> bool:
    """True once per silence: the intake is waiting and the client has been quiet `after`."""
    return intake.is_active and not intake.reminded and now - intake.last_activity_at >= after


def is_expired(intake: Intake, now: datetime, after: timedelta = EXPIRE_AFTER) -> bool:
    return intake.is_active and now - intake.last_activity_at >= after


def due_at(
    intake: Intake,
    *,
    remind_after: timedelta = REMIND_AFTER,
    expire_after: timedelta = EXPIRE_AFTER,
) -> datetime | None:
    """When the sweeper should next look at this intake (the stored `expires_at`)."""
    if not intake.is_active:
        return None
    if not intake.reminded:
        return intake.last_activity_at + remind_after
    return intake.last_activity_at + expire_after


def timeout_due(
    intake: Intake, now: datetime, *, remind_after: timedelta, expire_after: timedelta
) -> tuple[str | None, datetime | None]:
    """What the sweeper does with an intake it finds due: ("expire", None), ("remind", None),
    or (None, when to look again) when nothing is to do yet (already reminded, or finished).
    Shared by the intake in chat and by e-mail."""
    if is_expired(intake, now, expire_after):
        return "expire", None
    if needs_reminder(intake, now, remind_after):
        return "remind", None
    return None, due_at(intake, remind_after=remind_after, expire_after=expire_after)


def remind(intake: Intake, now: datetime, expire_after: timedelta = EXPIRE_AFTER) -> Transition:
    """The one reminder: says when the request will be dropped and restates the question."""
    if not intake.is_active:
        return Transition(intake, ())
    left = intake.last_activity_at + expire_after - now
    days = max(1, math.ceil(left / timedelta(days=1)))
    note = Msg(
        N_(
            "Reminder: your request is not sent yet. "
            "Without an answer it is dropped in {days} day."
        ),
        {"days": days},
        plural=N_(
            "Reminder: your request is not sent yet. "
            "Without an answer it is dropped in {days} days."
        ),
        n=days,
    )
    intake = replace(intake, reminded=True)
    return Transition(intake, (note, question_for(intake)))


def expire(intake: Intake, now: datetime, after: timedelta = EXPIRE_AFTER) -> Transition:
    """Drop an intake left alone: no ticket."""
    if not intake.is_active:
        return Transition(intake, ())
    days = max(1, round(after / timedelta(days=1)))
    note = Msg(
        N_(
            "Your request was dropped after {days} day without an answer; no ticket was opened. "
            "Send a new message whenever you need help."
        ),
        {"days": days},
        plural=N_(
            "Your request was dropped after {days} days without an answer; no ticket was opened. "
            "Send a new message whenever you need help."
        ),
        n=days,
    )
    return Transition(replace(intake, step=IntakeStep.EXPIRED), (note,))


def question_for(intake: Intake) -> Msg:
    """The question the client is expected to answer now."""
    step = intake.step
    if step is IntakeStep.DESCRIPTION:
        if intake.return_to_summary:
            return Msg(N_("Send what you want to add to the description."))
        if not intake.description_parts:
            return Msg(
                N_("Please describe the problem in a few sentences (at least {min} characters)."),
                {"min": MIN_DESCRIPTION_CHARS},
            )
        return Msg(
            N_(
                "Please tell me a bit more about the problem: I need at least {min} characters "
                "in total to understand it."
            ),
            {"min": MIN_DESCRIPTION_CHARS},
        )
    if step is IntakeStep.CATEGORY:
        return Msg(
            N_("Which category fits your request? Answer with the number or the word:\n{choices}"),
            {"choices": answers.choice_lines(CATEGORIES)},
        )
    if step is IntakeStep.INSTANCE:
        return Msg(
            N_(
                "What is the address of your LimeSurvey, starting with https://? Add its version "
                "and the survey ID if you know them, for example: "
                "https://survey.example.org 6.4.2 123456. Type !skip if this does not apply."
            )
        )
    if step is IntakeStep.CHANNEL:
        return Msg(
            N_("How would you like to be helped? Answer with the number or the word:\n{choices}"),
            {"choices": answers.choice_lines(CHANNELS)},
        )
    if step is IntakeStep.EMAIL:
        current = intake.email or intake.known_email
        if current:
            return Msg(
                N_(
                    "Your contact e-mail is {email}. Answer yes to keep it, or send another "
                    "address."
                ),
                {"email": current},
            )
        return Msg(N_("Which e-mail address can we use to contact you?"))
    if step is IntakeStep.CONFIRM:
        return _summary(intake)
    if step is IntakeStep.RELATED:
        return Msg(
            N_(
                "You already have an open ticket, {ref}. Is this message about it, or a new "
                "problem?\n1. About {ref}: add the message to it\n2. A new problem: a new request"
            ),
            {"ref": intake.open_ticket_ref or ""},
        )
    if step is IntakeStep.EDIT:
        return Msg(
            N_(
                "Which part do you want to change? Answer with the number or the word:\n"
                "1. Description (add details)\n2. Category\n3. LimeSurvey instance\n"
                "4. Channel\n5. Contact e-mail\n0. Nothing: show the summary again"
            )
        )
    return Msg(N_("This request is closed. Send a new message to start another one."))


# -- step handlers -----------------------------------------------------------------------


def _on_description(intake: Intake, body: str) -> Transition:
    if answers.is_skip(body):
        return _again(intake, Msg(N_("This question cannot be skipped.")))
    grown = _append_description(intake, body)
    if grown is None:
        return _again(intake, _too_long())
    if grown.return_to_summary or _description_length(grown) >= MIN_DESCRIPTION_CHARS:
        return _answered(grown)
    return Transition(grown, (question_for(grown),))


def _on_category(intake: Intake, body: str) -> Transition:
    key = answers.pick_category(body)
    if key is not None:
        return _answered(replace(intake, category=key))
    if len(body) < MIN_DESCRIPTION_CHARS:
        return _again(intake, Msg(N_("That is not one of the categories.")))
    grown = _append_description(intake, body)
    if grown is None:
        return _again(intake, _too_long())
    return _again(grown, Msg(N_("I added this message to your description.")))


def _on_instance(intake: Intake, body: str) -> Transition:
    if answers.is_skip(body):
        cleared = replace(intake, instance_url=None, instance_version=None, survey_id=None)
        return _answered(cleared)
    parsed = answers.parse_instance(body)
    if isinstance(parsed, Msg):
        return _again(intake, parsed)
    return _answered(
        replace(
            intake,
            instance_url=parsed.url,
            instance_version=parsed.version,
            survey_id=parsed.survey_id,
        )
    )


def _on_channel(intake: Intake, body: str) -> Transition:
    key = answers.pick_channel(body)
    if key is None:
        return _again(intake, Msg(N_("That is not one of the ways we can help.")))
    return _answered(replace(intake, channel=key))


def _on_email(intake: Intake, body: str) -> Transition:
    current = intake.email or intake.known_email
    if current and answers.is_yes(body):
        return _answered(replace(intake, email=current))
    address = answers.extract_email(body)
    if address is not None:
        return _answered(replace(intake, email=address))
    if current and answers.is_no(body):
        return Transition(intake, (Msg(N_("Please send the address you want to use.")),))
    return _again(
        intake,
        Msg(N_("That does not look like an e-mail address (for example name@example.org).")),
    )


def _on_confirm(intake: Intake, body: str) -> Transition:
    missing = _first_missing(intake)
    if missing is not None:  # only a damaged stored row can get here
        return _ask(replace(intake, step=missing, return_to_summary=True))
    if answers.is_yes(body):
        return _open(intake)
    target = answers.edit_target(body, _EDIT_INDEX, numbers=False)
    if target is not None and target is not IntakeStep.CONFIRM:
        return _ask(replace(intake, step=target, return_to_summary=True))
    if answers.begins_with_no(body):
        return _ask(replace(intake, step=IntakeStep.EDIT))
    return _again(intake, Msg(N_("Please answer yes or no.")))


def _on_edit(intake: Intake, body: str) -> Transition:
    target = answers.edit_target(body, _EDIT_INDEX, numbers=True)
    if target is None and answers.is_yes(body):
        target = IntakeStep.CONFIRM
    if target is None:
        return _again(intake, Msg(N_("I did not recognise that part of the request.")))
    return _ask(replace(intake, step=target, return_to_summary=target is not IntakeStep.CONFIRM))


def _on_related(intake: Intake, body: str) -> Transition:
    ref = intake.open_ticket_ref or ""
    pending = intake.pending_text or ""
    if answers.is_about_ticket(body, ref):
        done = replace(intake, step=IntakeStep.DONE)
        return Transition(
            done,
            (Msg(N_("I added your message to {ref}."), {"ref": ref}),),
            (AddToTicket(ref, pending),) if pending else (),
        )
    if answers.wants_new_request(body):
        fresh = replace(intake, step=IntakeStep.DESCRIPTION, pending_text=None)
        if not pending:
            return _ask(fresh)
        moved = _on_description(fresh, pending)
        return replace(moved, replies=(Msg(N_("All right, a new request.")), *moved.replies))
    if len(body) >= MIN_DESCRIPTION_CHARS:
        if len(pending) + len(body) > MAX_DESCRIPTION_CHARS:
            return _again(intake, _too_long())
        kept = replace(intake, pending_text=f"{pending}\n\n{body}" if pending else body)
        return _again(kept, Msg(N_("I kept this message with the previous one.")))
    return _again(intake, Msg(N_("Please answer 1 or 2.")))


_HANDLERS: Mapping[IntakeStep, Callable[[Intake, str], Transition]] = {
    IntakeStep.DESCRIPTION: _on_description,
    IntakeStep.CATEGORY: _on_category,
    IntakeStep.INSTANCE: _on_instance,
    IntakeStep.CHANNEL: _on_channel,
    IntakeStep.EMAIL: _on_email,
    IntakeStep.CONFIRM: _on_confirm,
    IntakeStep.EDIT: _on_edit,
    IntakeStep.RELATED: _on_related,
}


def _ask(intake: Intake) -> Transition:
    return Transition(intake, (question_for(intake),))


def _again(intake: Intake, why: Msg) -> Transition:
    """A short explanation, then the same question: nothing given is lost."""
    return Transition(intake, (why, question_for(intake)))


def _answered(intake: Intake) -> Transition:
    """The current step got its answer: the next question, or the summary after an edit."""
    if intake.return_to_summary:
        nxt = IntakeStep.CONFIRM
    else:
        nxt = _ORDER[_ORDER.index(intake.step) + 1]
    moved = replace(intake, step=nxt, return_to_summary=False)
    missing = _first_missing(moved) if nxt is IntakeStep.CONFIRM else None
    if missing is not None:
        moved = replace(moved, step=missing, return_to_summary=True)
    return _ask(moved)


def _first_missing(intake: Intake) -> IntakeStep | None:
    if _description_length(intake) < MIN_DESCRIPTION_CHARS:
        return IntakeStep.DESCRIPTION
    if intake.category not in CATEGORY_KINDS:
        return IntakeStep.CATEGORY
    if intake.channel not in _CHANNEL_KEYS:
        return IntakeStep.CHANNEL
    if not intake.email:
        return IntakeStep.EMAIL
    return None


def _open(intake: Intake) -> Transition:
    assert intake.category is not None and intake.channel is not None and intake.email
    effect = OpenRequest(
        kind=CATEGORY_KINDS[intake.category],
        category=intake.category,
        channel=intake.channel,
        description=intake.description,
        instance_url=intake.instance_url,
        instance_version=intake.instance_version,
        survey_id=intake.survey_id,
        email=intake.email,
    )
    done = replace(intake, step=IntakeStep.DONE, return_to_summary=False)
    return Transition(done, (Msg(N_("Thank you! I am registering your request.")),), (effect,))


def _append_description(intake: Intake, body: str) -> Intake | None:
    """The intake with one more description part, or None if that would be too long."""
    too_long = _description_length(intake) + len(body) > MAX_DESCRIPTION_CHARS
    if intake.description_parts and too_long:
        return None
    return replace(intake, description_parts=(*intake.description_parts, body))


def _description_length(intake: Intake) -> int:
    return sum(len(part) for part in intake.description_parts)


def _too_long() -> Msg:
    return Msg(
        N_(
            "This message would make the description longer than {max} characters, so I did "
            "not add it. Please shorten it; staff can ask for more details later."
        ),
        {"max": MAX_DESCRIPTION_CHARS},
    )


# -- rendering ---------------------------------------------------------------------------


def _summary(intake: Intake) -> Msg:
    description = intake.description
    if len(description) > SUMMARY_PREVIEW_CHARS:
        description = description[:SUMMARY_PREVIEW_CHARS].rstrip() + " […]"
    category = answers.choice_by_key(CATEGORIES, intake.category)
    channel = answers.choice_by_key(CHANNELS, intake.channel)
    unknown = Msg(N_("not given"))
    if intake.instance_url:
        instance: Msg = Msg(
            N_("{url} (version: {version}, survey ID: {survey_id})"),
            {
                "url": intake.instance_url,
                "version": intake.instance_version or unknown,
                "survey_id": intake.survey_id or unknown,
            },
        )
    else:
        instance = unknown
    return Msg(
        N_(
            "Here is your request:\n"
            "Description: {description}\n"
            "Category: {category}\n"
            "LimeSurvey: {instance}\n"
            "Channel: {channel}\n"
            "Contact e-mail: {email}\n"
            "{kind_note}\n"
            "Answer yes to send it, no to change something, or !cancel to drop it."
        ),
        {
            "description": description,
            "category": Msg(category.label) if category else unknown,
            "instance": instance,
            "channel": Msg(channel.label) if channel else unknown,
            "email": intake.email or unknown,
            "kind_note": _KIND_NOTES[intake.kind or RequestKind.TICKET],
        },
    )


_KIND_NOTES: Mapping[RequestKind, Msg] = {
    RequestKind.TICKET: Msg(N_("This opens a support ticket (one ticket covers up to one hour).")),
    RequestKind.QUESTION: Msg(N_("This is a feasibility question: it does not use a ticket.")),
    RequestKind.QUOTE: Msg(
        N_(
            "This is a request for a quote (development, training or project): it does not use "
            "a ticket; we will come back to you with an offer."
        )
    ),
}


# -- storage -----------------------------------------------------------------------------


def intake_to_data(intake: Intake) -> dict[str, Any]:
    """JSON-ready values of every field (the step as its stored string, times in ISO 8601)."""
    data: dict[str, Any] = {}
    for item in fields(Intake):
        value = getattr(intake, item.name)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, IntakeStep):
            value = value.value
        data[item.name] = value
    return data


def intake_from_data(data: Mapping[str, Any]) -> Intake:
    """The inverse of `intake_to_data`; unknown keys are ignored (written by a newer version)."""
    known = {item.name for item in fields(Intake)}
    values = {key: value for key, value in data.items() if key in known}
    values["step"] = IntakeStep(values["step"])
    values["started_at"] = datetime.fromisoformat(values["started_at"])
    values["last_activity_at"] = datetime.fromisoformat(values["last_activity_at"])
    values["description_parts"] = tuple(values.get("description_parts") or ())
    return Intake(**values)
