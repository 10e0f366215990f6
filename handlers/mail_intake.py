"""The intake by e-mail and the e-mail channel's shared pieces (used by `handlers.mail`).

A mail that belongs to no request starts an intake (`start_intake`): the pure turn of
`bot.domain.mail_intake` decides, this module stores it (a `Conversation` row of the
`EMAIL_ROOM`: the chat intake's data, plus the questions asked and the language), writes the
numbered questions back, and once everything is known opens the request with the chat
intake's `create_request` (deadline from the arrival of the mail that completed it), threads
the intake's mails to it, posts their files in the card's thread and mails the receipt
(`send_receipt`, also used for requests made in chat). An intake left alone is reminded once
(the questions again) and dropped after `service.intake_expiry_days`, keeping nothing of
what was written (`sweep_mail_intakes`).

Also here: recording a mail received (`record_in`), keeping its attachments (`keep_files`:
bytes stored up to `mail.attachment_max_kib`, larger ones refused politely) and posting them
in a card's thread (`post_files`).
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from bot.cards import defuse
from bot.domain.intake import (
    CATEGORIES,
    CHANNELS,
    AddToTicket,
    Intake,
    IntakeStep,
    OpenRequest,
    expire,
    intake_from_data,
    intake_to_data,
    question_for,
    remind,
    timeout_due,
)
from bot.domain.intake import due_at as intake_due_at
from bot.domain.intake_answers import choice_by_key
from bot.domain.mail_intake import (
    MailTurn,
    answer_by_mail,
    asked_from_data,
    start_by_mail,
    subject_topic,
    turn_to_data,
)
from bot.domain.tickets import ENDED_STATUSES, Channel, Kind, Status
from bot.events import EMAIL_ROOM, IncomingMail
from bot.i18n import N_, NP_, Msg, Translator
from bot.mail import Mail
from bot.routing import Context, DomainError
from bot.storage import repo
from bot.storage.models import Conversation, MailAttachmentRow, MailMessage, Ticket, TicketNote
from handlers.common import (
    COMMITMENT,
    NEXT_INTERVENTION,
    NEXT_QUESTION,
    NEXT_QUOTE,
    OPENED,
    TERMS,
    create_request,
    locked,
    refresh_card,
    ticket_opened,
)
from handlers.mail_thread import (
    DEFAULT_TOPIC,
    compose,
    mail_about,
    new_message_id,
    record_out,
    reply_headers,
)
from handlers.mail_thread import reply_subject as _reply_subject

if TYPE_CHECKING:
    from bot.services import Services

log = logging.getLogger(__name__)

#: How much of a client's mail the card's thread shows (a Matrix event is at most 64 KiB).
THREAD_TEXT_CHARS = 8_000
#: How much of the description the questions mail recalls.
RECALL_CHARS = 300
_NOT_OPEN = ENDED_STATUSES | {Status.CLOSED}
_CALLS = frozenset({Channel.VIDEO, Channel.PHONE})

THREAD_MAIL = N_("✉️ {name} wrote by e-mail:\n{text}")
THREAD_FILE = N_("📎 {file} ({size})")
THREAD_FILE_REFUSED = N_("📎 {file} ({size}): not kept, larger than {limit}")
GREETING = N_("Hello,")
INTRO_FIRST = N_("Thank you for your message: the LimeSurvey support team has received it.")
INTRO_NEXT = N_("Thank you for your answer.")
SO_FAR = N_("What we have so far:")
SO_FAR_DESCRIPTION = N_("Description: {text}")
SO_FAR_CATEGORY = N_("Category: {category}")
SO_FAR_INSTANCE = N_("LimeSurvey: {instance}")
SO_FAR_CHANNEL = N_("Channel: {channel}")
SO_FAR_EMAIL = N_("Contact e-mail: {email}")
ASK = N_(
    "To register your request, please answer these questions by replying to this e-mail, one "
    "answer per line, numbered like the questions:"
)
ASK_RELATED = N_("If it is a new problem, please also answer the questions that follow it.")
EXAMPLE = N_("For example:")
EXAMPLE_DESCRIPTION = N_("a few sentences describing the problem")
PENDING = NP_(
    "Nothing is registered until then; without an answer, this request is dropped after {n} day.",
    "Nothing is registered until then; without an answer, this request is dropped after {n} days.",
)
ADDED = N_("Your message has been added to {ref}: the support team has it.")
FILES_REFUSED = N_(
    "These attached files were not kept because each file may be at most {limit}: {files}. "
    "Please send a link to them instead."
)
NEXT_BY_MAIL = N_("A member of the support team will answer you by e-mail before that date.")
NEXT_IN_CHAT = N_(
    "A member of the support team will answer you in your support chat before that date."
)
NEXT_CALL_BY_MAIL = N_("The support team will write to you to agree on a time for the call.")
NEXT_CALL_IN_CHAT = N_("The support team will offer you call slots in your support chat.")
FOLLOW_BY_MAIL = N_("To add information, reply to this e-mail.")
FOLLOW_HINT = N_(
    "To receive the support team's answers by e-mail too, type !follow email on in your "
    "support chat."
)


async def record_in(
    ctx: Context,
    mail: IncomingMail,
    kind: str,
    *,
    ticket: Ticket | None = None,
    conversation: Conversation | None = None,
    detail: str | None = None,
) -> MailMessage:
    return await MailMessage.create(
        ticket_id=ticket.pk if ticket is not None else None,
        conversation_id=conversation.pk if conversation is not None else None,
        direction="in",
        kind=kind,
        message_id=mail.message_id,
        address=mail.address,
        subject=mail.subject,
        detail=detail,
        event_id=mail.event_id,
        at=mail.ts,
    )


def size_text(size: int) -> str:
    if size >= 1024 * 1024:
        return f"{size / (1024 * 1024):.1f} MB"
    if size >= 1024:
        return f"{size / 1024:.0f} KB"
    return f"{size} B"


async def keep_files(
    ctx: Context, ticket: Ticket | None, row: MailMessage, mail: IncomingMail
) -> list[tuple[str, int]]:
    """Store the mail's attachments (the small enough ones with their bytes), list them in
    the card's thread (when the request exists), post the kept ones there as files; returns
    the refused ones (name, size)."""
    cap = ctx.services.config.mail.attachment_max_kib * 1024
    refused: list[tuple[str, int]] = []
    for item in mail.attachments:
        kept = item.size <= cap
        await MailAttachmentRow.create(
            mail=row,
            filename=item.filename,
            content_type=item.content_type[:255],
            size=item.size,
            data=item.data if kept else None,
        )
        if not kept:
            refused.append((item.filename, item.size))
    if ticket is not None:
        await post_files(ctx, ticket, [row.pk])
    return refused


async def post_files(ctx: Context, ticket: Ticket, mail_ids: list[int]) -> None:
    """The attachments of these mails in the card's thread: kept ones as files, refused ones
    named."""
    room = ctx.services.staff_room_id()
    if room is None:
        return
    limit = size_text(ctx.services.config.mail.attachment_max_kib * 1024)
    staff_tr = ctx.services.staff_tr()
    thread = f"card:{ticket.id}"
    for file in await MailAttachmentRow.filter(mail_id__in=mail_ids).order_by("id"):
        params = {"file": defuse(file.filename), "size": size_text(file.size)}
        if file.data is None:
            ctx.send_staff(Msg(THREAD_FILE_REFUSED, {**params, "limit": limit}), thread=thread)
            continue
        body = ctx.render(Msg(THREAD_FILE, params), staff_tr)
        ctx.send_file(
            room, bytes(file.data), file.filename, file.content_type, body, thread=thread
        )


def refused_msg(ctx: Context, refused: list[tuple[str, int]]) -> Msg:
    files = ", ".join(f"{name} ({size_text(size)})" for name, size in refused)
    limit = size_text(ctx.services.config.mail.attachment_max_kib * 1024)
    return Msg(FILES_REFUSED, {"files": files, "limit": limit})


# -- the intake by e-mail -----------------------------------------------------------------------


async def running_intake(client_key: str) -> Conversation | None:
    conversation = await Conversation.get_or_none(room_id=EMAIL_ROOM, client_key=client_key)
    if conversation is None or IntakeStep(conversation.step).is_terminal:
        return None
    return conversation


def mail_data(conversation: Conversation) -> dict[str, Any]:
    data = conversation.data if isinstance(conversation.data, dict) else {}
    mail = data.get("mail")
    return mail if isinstance(mail, dict) else {}


async def start_intake(ctx: Context, mail: IncomingMail, tr: Translator) -> None:
    assert mail.address is not None
    open_tickets = await repo.open_tickets_for(mail.sender)
    turn = start_by_mail(
        now=mail.ts,
        subject=mail.subject,
        text=mail.text,
        address=mail.address,
        open_ticket_ref=open_tickets[-1].ref if open_tickets else None,
    )
    existing = await Conversation.get_or_none(room_id=EMAIL_ROOM, client_key=mail.sender)
    conversation = await _save_intake(ctx, existing, turn, tr, mail)
    row = await record_in(ctx, mail, "request", conversation=conversation)
    refused = await keep_files(ctx, None, row, mail)
    await _after_turn(ctx, mail, conversation, turn, tr, first=True, refused=refused)


async def answer_intake(
    ctx: Context, mail: IncomingMail, conversation: Conversation, tr: Translator
) -> None:
    intake = intake_from_data(conversation.data)
    asked, instance_asked = asked_from_data(conversation.data)
    if not asked:  # a damaged row: ask what is missing again
        asked = (IntakeStep.CATEGORY, IntakeStep.INSTANCE, IntakeStep.CHANNEL)
    turn = answer_by_mail(intake, asked, mail.text, now=mail.ts, instance_asked=instance_asked)
    conversation = await _save_intake(ctx, conversation, turn, tr, mail)
    row = await record_in(ctx, mail, "answers", conversation=conversation)
    refused = await keep_files(ctx, None, row, mail)
    await _after_turn(ctx, mail, conversation, turn, tr, first=False, refused=refused)


async def _save_intake(
    ctx: Context,
    conversation: Conversation | None,
    turn: MailTurn,
    tr: Translator,
    mail: IncomingMail,
) -> Conversation:
    """Store the intake (optimistic version, as the chat intake does) and what the mail side
    needs besides: the questions asked (their numbering) and the language."""
    service = ctx.services.config.service
    data = intake_to_data(turn.intake)
    data["mail"] = {**turn_to_data(turn), "language": tr.locale}
    values = {
        "step": turn.intake.step.value,
        "data": data,
        "updated_at": ctx.now,
        "due_at": intake_due_at(
            turn.intake,
            remind_after=timedelta(hours=service.intake_reminder_hours),
            expire_after=timedelta(days=service.intake_expiry_days),
        ),
    }
    if conversation is None:
        return await Conversation.create(
            room_id=EMAIL_ROOM, client_key=mail.sender, version=1, **values
        )
    updated = await Conversation.filter(id=conversation.id, version=conversation.version).update(
        version=conversation.version + 1, **values
    )
    if not updated:
        raise DomainError(Msg(N_("Your message crossed another one. Please send it again.")))
    return await Conversation.get(id=conversation.id)


async def _after_turn(
    ctx: Context,
    mail: IncomingMail,
    conversation: Conversation,
    turn: MailTurn,
    tr: Translator,
    *,
    first: bool,
    refused: list[tuple[str, int]],
) -> None:
    for effect in turn.effects:
        if isinstance(effect, OpenRequest):
            await _open_by_mail(ctx, mail, conversation, effect, tr, refused=refused)
            return
        if isinstance(effect, AddToTicket):
            await _add_held_mail(ctx, mail, conversation, effect, tr, refused=refused)
            return
    await _questions_mail(
        ctx, conversation, turn, tr, answering=mail, first=first, refused=refused
    )


async def _questions_mail(
    ctx: Context,
    conversation: Conversation,
    turn: MailTurn,
    tr: Translator,
    *,
    answering: IncomingMail | None,
    first: bool = False,
    refused: list[tuple[str, int]] | None = None,
    lead: Msg | None = None,
) -> None:
    """The numbered questions, after what was understood (`lead` instead of the thanks:
    a reminder's note)."""
    parts: list[Msg | str] = [Msg(GREETING), lead or Msg(INTRO_FIRST if first else INTRO_NEXT)]
    parts.extend(turn.notes)
    if refused:
        parts.append(refused_msg(ctx, refused))
    parts.append(_so_far(ctx, turn.intake, tr))
    parts.append(Msg(ASK))
    parts.append(_numbered_questions(ctx, turn, tr))
    if IntakeStep.RELATED in turn.asked:
        parts.append(Msg(ASK_RELATED))
    parts.append(_example(ctx, turn, tr))
    days = ctx.services.config.service.intake_expiry_days
    parts.append(Msg(PENDING[0], {}, PENDING[1], days))
    await _intake_mail(
        ctx, conversation, compose(tr, ctx, parts, None), tr, answering, "questions"
    )


async def _intake_mail(
    ctx: Context,
    conversation: Conversation,
    text: str,
    tr: Translator,
    answering: IncomingMail | None,
    kind: str,
) -> None:
    """A mail of the intake, threaded to the mail it answers, else to the intake's latest."""
    if answering is not None and answering.address is not None:
        in_reply_to, references = reply_headers(answering)
        subject, to = _reply_subject(answering, tr), answering.address
    else:
        last = await MailMessage.filter(conversation_id=conversation.pk).order_by("-id").first()
        in_reply_to = last.message_id if last is not None else None
        references = (in_reply_to,) if in_reply_to else ()
        topic = subject_topic(last.subject or "") if last is not None else ""
        subject = f"Re: {topic or tr.gettext(DEFAULT_TOPIC)}"
        to = intake_from_data(conversation.data).email or ""
    if not to:
        return
    out = Mail(
        to=to,
        subject=subject,
        text=text,
        message_id=new_message_id(ctx),
        in_reply_to=in_reply_to,
        references=references,
        auto_submitted="auto-replied" if answering is not None else "auto-generated",
    )
    await record_out(ctx, out, kind, conversation_id=conversation.pk)
    ctx.send_mail(out)


def _so_far(ctx: Context, intake: Intake, tr: Translator) -> str:
    lines = [ctx.render(Msg(SO_FAR), tr)]
    description = intake.description or intake.pending_text or ""
    if description:
        if len(description) > RECALL_CHARS:
            description = description[:RECALL_CHARS].rstrip() + " […]"
        lines.append(ctx.render(Msg(SO_FAR_DESCRIPTION, {"text": description}), tr))
    category = choice_by_key(CATEGORIES, intake.category)
    if category is not None:
        lines.append(ctx.render(Msg(SO_FAR_CATEGORY, {"category": Msg(category.label)}), tr))
    if intake.instance_url:
        instance = " ".join(
            p for p in (intake.instance_url, intake.instance_version, intake.survey_id) if p
        )
        lines.append(ctx.render(Msg(SO_FAR_INSTANCE, {"instance": instance}), tr))
    channel = choice_by_key(CHANNELS, intake.channel)
    if channel is not None:
        lines.append(ctx.render(Msg(SO_FAR_CHANNEL, {"channel": Msg(channel.label)}), tr))
    if intake.email:
        lines.append(ctx.render(Msg(SO_FAR_EMAIL, {"email": intake.email}), tr))
    return "\n".join(lines[:1] + [f"- {line}" for line in lines[1:]])


def _numbered_questions(ctx: Context, turn: MailTurn, tr: Translator) -> str:
    blocks = []
    for number, step in enumerate(turn.asked, start=1):
        question = ctx.render(question_for(dataclasses.replace(turn.intake, step=step)), tr)
        first, *rest = question.split("\n")
        blocks.append("\n".join([f"{number}. {first}", *(f"   {line}" for line in rest)]))
    return "\n\n".join(blocks)


_EXAMPLES = {
    IntakeStep.RELATED: "2",
    IntakeStep.CATEGORY: "8",
    IntakeStep.INSTANCE: "https://survey.example.org 6.4.2 123456",
    IntakeStep.CHANNEL: "1",
}


def _example(ctx: Context, turn: MailTurn, tr: Translator) -> str:
    lines = [ctx.render(Msg(EXAMPLE), tr)]
    for number, step in enumerate(turn.asked, start=1):
        answer = _EXAMPLES.get(step) or ctx.render(Msg(EXAMPLE_DESCRIPTION), tr)
        lines.append(f"{number}. {answer}")
    return "\n".join(lines)


async def _open_by_mail(
    ctx: Context,
    mail: IncomingMail,
    conversation: Conversation,
    effect: OpenRequest,
    tr: Translator,
    *,
    refused: list[tuple[str, int]],
) -> None:
    """The request is complete: a ticket (deadline from this mail's arrival), its card, the
    mails of its intake threaded to it, their files in the card's thread, and the receipt."""
    client = await repo.get_or_create_client(
        mail.sender, now=ctx.now, display_name=mail.display_name or None
    )
    ticket = await create_request(
        ctx, effect, client, room_id=EMAIL_ROOM, locale=tr.locale, received_at=mail.ts
    )
    client.email = effect.email
    first_request = client.terms_shown_at is None
    if first_request:
        client.terms_shown_at = ctx.now
        client.terms_url = ctx.services.config.service.terms_url
    await client.save(update_fields=["email", "terms_shown_at", "terms_url"])
    await MailMessage.filter(conversation_id=conversation.pk, ticket_id=None).update(
        ticket_id=ticket.id
    )
    mail_ids = await MailMessage.filter(ticket_id=ticket.id, direction="in").values_list(
        "id", flat=True
    )
    await post_files(ctx, ticket, [int(i) for i in mail_ids])
    extra = [refused_msg(ctx, refused)] if refused else []
    # The prepaid balance, as for a request made in chat: other cards redrawn, staff warned,
    # and the client's warning in the receipt.
    balance_warning = await ticket_opened(ctx, ticket)
    if balance_warning is not None:
        extra.append(balance_warning)
    await send_receipt(ctx, ticket, tr, by_mail=True, first_request=first_request, extra=extra)


async def _add_held_mail(
    ctx: Context,
    mail: IncomingMail,
    conversation: Conversation,
    effect: AddToTicket,
    tr: Translator,
    *,
    refused: list[tuple[str, int]],
) -> None:
    """The client said the mail was about their open request: it goes there."""
    ticket = await repo.ticket_for_client(effect.ref, mail.sender)
    if ticket is None or Status(ticket.status) in _NOT_OPEN:
        gone = N_("{ref} is no longer open, so I could not add your message to it.")
        raise DomainError(Msg(gone, {"ref": effect.ref}))
    ticket = await locked(ticket.id)
    await MailMessage.filter(conversation_id=conversation.pk, ticket_id=None).update(
        ticket_id=ticket.id
    )
    await TicketNote.create(ticket=ticket, author_key=mail.sender, text=effect.text, at=mail.ts)
    await repo.audit(
        ticket, mail.sender, "mail_received", ticket.status, ticket.status, at=ctx.now
    )
    await refresh_card(ctx, ticket)
    name = mail.display_name or mail.address or "?"
    ctx.send_staff(
        Msg(THREAD_MAIL, {"name": defuse(name), "text": defuse(effect.text[:THREAD_TEXT_CHARS])}),
        thread=f"card:{ticket.id}",
    )
    mail_ids = await MailMessage.filter(
        conversation_id=conversation.pk, direction="in"
    ).values_list("id", flat=True)
    await post_files(ctx, ticket, [int(i) for i in mail_ids])
    parts: list[Msg | str] = [Msg(GREETING), Msg(ADDED, {"ref": ticket.ref})]
    if refused:
        parts.append(refused_msg(ctx, refused))
    await mail_about(ctx, ticket, parts, tr=tr, kind="receipt", auto="auto-replied")


async def send_receipt(
    ctx: Context,
    ticket: Ticket,
    tr: Translator,
    *,
    by_mail: bool,
    first_request: bool,
    extra: list[Msg] | None = None,
) -> None:
    """The receipt: reference, commitment date, what happens next (SPEC §3), by mail."""
    kind, channel = Kind(ticket.kind), Channel(ticket.channel)
    if kind is Kind.QUESTION:
        next_step = NEXT_QUESTION
    elif kind is Kind.QUOTE:
        next_step = NEXT_QUOTE
    elif channel in _CALLS:
        next_step = NEXT_CALL_BY_MAIL if by_mail else NEXT_CALL_IN_CHAT
    elif channel is Channel.INTERVENTION:
        next_step = NEXT_INTERVENTION
    else:
        next_step = NEXT_BY_MAIL if by_mail else NEXT_IN_CHAT
    parts: list[Msg | str] = [
        Msg(GREETING),
        Msg(OPENED[kind], {"ref": ticket.ref}),
        Msg(COMMITMENT, {"due": ticket.sla_due}),
        Msg(next_step),
        *(extra or []),
        Msg(FOLLOW_BY_MAIL if by_mail else FOLLOW_HINT),
    ]
    if first_request:
        parts.append(Msg(TERMS, {"url": ctx.services.config.service.terms_url}))
    auto = "auto-replied" if by_mail else "auto-generated"
    await mail_about(ctx, ticket, parts, tr=tr, kind="receipt", auto=auto)


# -- intakes left alone -------------------------------------------------------------------------


async def sweep_mail_intakes(services: Services, now: datetime) -> None:
    """Remind once (the questions again), then drop, as the chat intake does (each once)."""
    jobs = services.jobs
    if jobs is None:
        return
    service = services.config.service
    remind_after = timedelta(hours=service.intake_reminder_hours)
    expire_after = timedelta(days=service.intake_expiry_days)
    due = (
        await Conversation.filter(room_id=EMAIL_ROOM, due_at__lte=now)
        .order_by("due_at", "id")
        .limit(200)
    )
    for conversation in due:
        action, later = timeout_due(
            intake_from_data(conversation.data),
            now,
            remind_after=remind_after,
            expire_after=expire_after,
        )
        if action is None:
            await Conversation.filter(id=conversation.id, version=conversation.version).update(
                due_at=later
            )
            continue
        await jobs.run_job(
            f"mail-intake-{action}:{conversation.id}:{conversation.version}",
            partial(_time_out, conversation.id, conversation.version, action),
        )


async def _time_out(conversation_id: int, version: int, action: str, ctx: Context) -> None:
    conversation = await Conversation.get_or_none(id=conversation_id)
    if conversation is None or conversation.version != version:
        return  # the client wrote meanwhile
    service = ctx.services.config.service
    expire_after = timedelta(days=service.intake_expiry_days)
    intake = intake_from_data(conversation.data)
    tr = ctx.services.tr(mail_data(conversation).get("language"))
    asked, instance_asked = asked_from_data(conversation.data)
    if action == "expire":
        transition = expire(intake, ctx.now, expire_after)
        turn = MailTurn(transition.intake, (), ())
        dropped = Intake(transition.intake.step, intake.started_at, intake.last_activity_at)
        data: dict[str, Any] = intake_to_data(dropped)  # nothing kept of a dropped request
        data["mail"] = {"language": tr.locale}
    else:
        transition = remind(intake, ctx.now, expire_after)
        turn = MailTurn(transition.intake, asked, (), (), instance_asked)
        data = intake_to_data(transition.intake)
        data["mail"] = {**turn_to_data(turn), "language": tr.locale}
    updated = await Conversation.filter(id=conversation.id, version=version).update(
        step=transition.intake.step.value,
        data=data,
        version=version + 1,
        updated_at=ctx.now,
        due_at=intake_due_at(
            transition.intake,
            remind_after=timedelta(hours=service.intake_reminder_hours),
            expire_after=expire_after,
        ),
    )
    if not updated or not intake.email:
        return
    if action == "remind":
        note = transition.replies[0]
        await _questions_mail(ctx, conversation, turn, tr, answering=None, lead=note)
        return
    text = compose(tr, ctx, [Msg(GREETING), transition.replies[0]], None)
    await _intake_mail(ctx, conversation, text, tr, None, "expired")


SWEEPERS = [sweep_mail_intakes]
