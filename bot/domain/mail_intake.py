"""The intake by e-mail: the chat intake's questions, asked all at once, answered by mail.

A mail that belongs to no request starts an intake (`start_by_mail`): its subject and text
are the description, its sender's address the contact e-mail, and the bot writes back with
numbered questions for what is missing (category, LimeSurvey instance, channel; the
description when it is too short; first of all, as in chat (R1), whether it is about the
client's open request). Each reply is read by `answer_by_mail`: numbered answers ("1. 8",
"2) https://…", "Q3: video"), else unnumbered lines tried against each question in turn.

This module holds no rules of its own: every answer goes through the chat intake's state
machine (`bot.domain.intake.advance`, at the step of its question, as when a client edits one
step from the summary), so an answer means by mail exactly what it means in chat, with the
same explanations when it is wrong. Once everything is known the request opens at once (the
mail itself is the confirmation: the client is told what was registered in the receipt).

Decisions:

* **One mail, all the questions.** A person answering by mail expects to do it once; the
  answers are independent, so a wrong one does not lose the right ones: it is explained and
  asked again, alone with whatever is still missing.
* **The LimeSurvey instance is asked once.** It is optional (as `!skip` makes it in chat): a
  reply that answers the category and the channel but not the instance opens the request.
  An instance given wrongly is asked again, with the explanation.
* **Text that answers nothing** (at least `MIN_DESCRIPTION_CHARS` long) is added to the
  description, as chat does with a long text at the category step: nothing written is lost.
* **Open request (R1).** Its question comes first; a reply that ignores it but answers the
  others means a new request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from bot.domain.intake import CATEGORY_KINDS as _KINDS
from bot.domain.intake import (
    MIN_DESCRIPTION_CHARS,
    AddToTicket,
    Effect,
    Intake,
    IntakeStep,
    Transition,
    advance,
    start,
)
from bot.i18n import Msg

__all__ = [
    "AddToTicket",
    "MailTurn",
    "answer_by_mail",
    "asked_from_data",
    "read_answers",
    "start_by_mail",
    "subject_topic",
    "turn_to_data",
]

S = IntakeStep
#: The order questions are numbered in.
_ORDER = (S.RELATED, S.DESCRIPTION, S.CATEGORY, S.INSTANCE, S.CHANNEL)
_NUMBERED = re.compile(r"^\s*(?:q(?:uestion)?\s*)?(\d{1,2})\s*[.):\-–—]\s*(.*)$", re.I)
_BULLET = re.compile(r"^\s*[-*•·]\s+")
_SUBJECT_PREFIX = re.compile(
    r"^\s*((re|tr|fw|fwd|aw|wg|réf|ref)\s*(\[\d+\])?\s*:\s*|\[[^\]]{1,40}\]\s*)", re.I
)


@dataclass(frozen=True, slots=True)
class MailTurn:
    """Where an intake by mail stands after a mail: the intake (its `step` is the first
    question asked), the questions of the bot's next mail in their numbered order (none when
    the request is done), explanations of answers that were not understood, and the effects
    (`OpenRequest`, `AddToTicket`)."""

    intake: Intake
    asked: tuple[IntakeStep, ...]
    notes: tuple[Msg, ...] = ()
    effects: tuple[Effect, ...] = ()
    instance_asked: bool = False

    @property
    def done(self) -> bool:
        return bool(self.effects) or self.intake.step.is_terminal


def subject_topic(subject: str) -> str:
    """A subject without its "Re:", "Fwd:", "TR:" and bracketed tags ("[SP-2026-0042]")."""
    topic = subject
    while True:
        stripped = _SUBJECT_PREFIX.sub("", topic, count=1)
        if stripped == topic:
            return topic.strip()
        topic = stripped


def start_by_mail(
    *,
    now: datetime,
    subject: str,
    text: str,
    address: str,
    open_ticket_ref: str | None = None,
) -> MailTurn:
    """A new request from a mail: subject and text are the description, `address` the
    contact e-mail; with an open request, whether it is about it is asked first."""
    topic = subject_topic(subject)
    body = text.strip()
    description = f"{topic}\n\n{body}" if topic and not body.startswith(topic) else body
    transition = start(now=now, text=description or topic, open_ticket_ref=open_ticket_ref)
    intake = replace(transition.intake, email=address, known_email=address)
    return _settle(intake, now=now, rejected=(), notes=(), instance_asked=False)


def answer_by_mail(
    intake: Intake,
    asked: Iterable[IntakeStep],
    text: str,
    *,
    now: datetime,
    instance_asked: bool = True,
) -> MailTurn:
    """A reply to the questions `asked` (numbered from 1 in that order)."""
    asked = tuple(asked)
    numbered, loose = read_answers(text, len(asked))
    intake = replace(intake, last_activity_at=now, reminded=False)
    notes: list[Msg] = []
    rejected: list[IntakeStep] = []
    used: set[int] = set()
    if S.RELATED in asked and intake.step is S.RELATED:
        number = asked.index(S.RELATED) + 1
        answer = numbered.get(number)
        if answer is None:
            answer = _pick_loose(intake, S.RELATED, loose, used, now)
        if answer is None and len(numbered) > 0:
            answer = "2"  # the other questions answered: a new request
        if answer is not None:
            transition = _try(intake, S.RELATED, answer, now)
            if transition.effects:  # about the open request: the mail goes to it
                done = transition.intake
                return MailTurn(done, (), (), transition.effects, instance_asked)
            if transition.intake.step is S.RELATED:
                notes.append(transition.replies[0])
                rejected.append(S.RELATED)
            else:
                intake = transition.intake
    for number, step in enumerate(asked, start=1):
        if step in (S.RELATED, S.DESCRIPTION) or intake.step is S.RELATED:
            continue
        answer = numbered.get(number)
        if answer is not None:
            transition = _try(intake, step, answer, now)
            if _accepted(transition, step):
                intake = transition.intake
            else:
                notes.append(transition.replies[0])
                rejected.append(step)
            continue
        found = _pick_loose(intake, step, loose, used, now)
        if found is not None:
            intake = _try(intake, step, found, now).intake
    leftover = "\n".join(line for n, line in enumerate(loose) if n not in used).strip()
    described = numbered.get(asked.index(S.DESCRIPTION) + 1) if S.DESCRIPTION in asked else None
    more = "\n\n".join(part for part in (described, leftover) if part)
    if more and intake.step is not S.RELATED:
        if S.DESCRIPTION in asked or len(more) >= MIN_DESCRIPTION_CHARS:
            intake = _add_description(intake, more, now)
    return _settle(
        intake,
        now=now,
        rejected=tuple(rejected),
        notes=tuple(notes),
        instance_asked=instance_asked or S.INSTANCE in asked,
    )


def read_answers(text: str, count: int) -> tuple[dict[int, str], list[str]]:
    """Numbered answers (1…`count`) of a reply, and its other non-empty lines. A number
    alone on its line takes the next line as its answer."""
    numbered: dict[int, str] = {}
    loose: list[str] = []
    waiting: int | None = None
    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            continue
        if waiting is not None:
            numbered[waiting], waiting = line, None
            continue
        match = _NUMBERED.match(line)
        if match and 1 <= int(match.group(1)) <= count and int(match.group(1)) not in numbered:
            number, answer = int(match.group(1)), match.group(2).strip()
            if answer:
                numbered[number] = answer
            else:
                waiting = number
            continue
        loose.append(_BULLET.sub("", line))
    return numbered, loose


# -- steps ------------------------------------------------------------------------------------


def _try(intake: Intake, step: IntakeStep, answer: str, now: datetime) -> Transition:
    """`answer` to the question of `step`, through the chat intake's state machine."""
    if step is S.RELATED:
        return advance(replace(intake, step=S.RELATED), answer, now=now)
    return advance(replace(intake, step=step, return_to_summary=True), answer, now=now)


def _accepted(transition: Transition, step: IntakeStep) -> bool:
    return transition.intake.step is not step


def _pick_loose(
    intake: Intake, step: IntakeStep, loose: list[str], used: set[int], now: datetime
) -> str | None:
    """The first unnumbered line that answers `step` (short lines only: prose is no answer)."""
    for n, line in enumerate(loose):
        if n in used or len(line) > 200:
            continue
        if _accepted(_try(intake, step, line, now), step):
            used.add(n)
            return line
    return None


def _add_description(intake: Intake, text: str, now: datetime) -> Intake:
    grown = advance(replace(intake, step=S.DESCRIPTION, return_to_summary=True), text, now=now)
    return grown.intake if _accepted(grown, S.DESCRIPTION) else intake


def _settle(
    intake: Intake,
    *,
    now: datetime,
    rejected: tuple[IntakeStep, ...],
    notes: tuple[Msg, ...],
    instance_asked: bool,
) -> MailTurn:
    """Open the request when nothing is missing, else the questions of the next mail."""
    if intake.step is S.RELATED:
        asked = (S.RELATED, S.CATEGORY, S.INSTANCE, S.CHANNEL)
        return MailTurn(intake, asked, notes, (), instance_asked=True)
    missing = []
    if sum(len(part) for part in intake.description_parts) < MIN_DESCRIPTION_CHARS:
        missing.append(S.DESCRIPTION)
    if intake.category not in _KINDS:
        missing.append(S.CATEGORY)
    if S.INSTANCE in rejected or (not instance_asked and intake.instance_url is None):
        missing.append(S.INSTANCE)
    if intake.channel is None:
        missing.append(S.CHANNEL)
    asked = tuple(step for step in _ORDER if step in missing or step in rejected)
    if asked:
        intake = replace(intake, step=asked[0], return_to_summary=False)
        return MailTurn(intake, asked, notes, (), instance_asked or S.INSTANCE in asked)
    opened = advance(replace(intake, step=S.CONFIRM, return_to_summary=False), "yes", now=now)
    return MailTurn(opened.intake, (), notes, opened.effects, instance_asked)


# -- storage ----------------------------------------------------------------------------------


def turn_to_data(turn: MailTurn) -> dict[str, Any]:
    """What the conversation row keeps besides the intake (`intake_to_data`)."""
    return {
        "asked": [step.value for step in turn.asked],
        "instance_asked": turn.instance_asked,
    }


def asked_from_data(data: Mapping[str, Any]) -> tuple[tuple[IntakeStep, ...], bool]:
    mail = data.get("mail") if isinstance(data.get("mail"), Mapping) else {}
    steps = tuple(IntakeStep(value) for value in mail.get("asked") or () if value in _VALUES)
    return steps, bool(mail.get("instance_asked", True))


_VALUES = frozenset(step.value for step in IntakeStep)
