"""The e-mail channel (issue #17): mails to the support address become requests, replies
thread both ways, staff answer from the staff room.

A mail read from the mailbox reaches `on_mail` through the dispatcher like any event (one
transaction with the mailbox position, the error boundary, a lock per sender). In order:

1. **Unreadable, bounces, automatic mails.** A mail without a usable sender is shown to staff
   (it stays in the mailbox). A delivery status notification (DSN) is matched to the mail of
   ours that bounced (its Message-ID, else its recipient) and shown in that request's card
   thread and audit; nobody is answered. An automatic mail (RFC 3834: `Auto-Submitted`,
   `X-Autoreply`, `Precedence`, a list, an empty Return-Path, a daemon, our own address) is
   never answered: one on a request is noted in its card's thread (an out-of-office answer to
   staff is worth knowing), any other is only recorded.
2. **Flood.** More than `mail.sender_mails_per_hour` mails from one address in the last hour
   (counted in the database, so a restart gives no fresh allowance) are recorded and left
   unanswered; staff are told once an hour. This is what ends a loop with an auto-responder
   that does not say it is one.
3. **Too big, too long.** A mail the reader found over its size cap, or whose new text is
   over `service.max_message_chars`, is refused politely by mail.
4. **A reply to a request** (In-Reply-To/References naming one of its mails, or its reference
   in the subject from the request's address): a note on the ticket, posted in the card's
   thread as plain text with its attachments listed (and posted as files when under
   `mail.attachment_max_kib`; larger ones are refused politely). A request that has ended
   still gets the note, and the client is told to write anew for a new problem.
5. **Otherwise an intake by e-mail** (`bot.domain.mail_intake`): the questions of the chat
   intake, numbered in one mail; the reply's answers; then the request opens with the same
   rules as in chat (kind from the category, deadline counted from the arrival of the mail
   that completed it), a staff card, and a receipt by mail. A new mail from a sender whose
   intake is running answers that intake (nothing they write is lost).

Staff answer with `!reply REF text`, or by writing in the thread of a request made by e-mail
(only there: the thread of a chat request stays internal). The mail goes out after the
commit; the thread then says it went out, or why it failed. The first answer is the ticket's
first response (R3). Clients who made a request in chat get its receipt by mail too, and may
follow their requests by e-mail (`!follow email on` / `!suivi mail oui`): what the bot writes
to them about a request is then mailed as well (`handlers.common.tell_client`).

The mail saying a request is solved asks for a reply of 1 (solved) or 2 (something is still
wrong, and what): the first line of a reply is read for it, and `handlers.closing` then does
what `!accept` or `!notsolved` do in chat (2 on a closed ticket, under its warranty: `!reopen`).

Calls asked for by mail are not offered slots by mail: the receipt says the team will write to
agree on a time. Commands (`!accept`…) are not read from mails.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING

from bot.cards import defuse
from bot.domain.intake import (
    IntakeStep,
)
from bot.domain.mail_in import resolution_answer
from bot.domain.tickets import ENDED_STATUSES, Channel, Status, record_staff_answer
from bot.events import EMAIL_ROOM, IncomingMail
from bot.i18n import N_, Msg, Translator
from bot.routing import Context, DomainError, Outgoing, Router, Situation, notice_content
from bot.storage import repo
from bot.storage.models import (
    Client,
    Conversation,
    MailMessage,
    Notice,
    Ticket,
    TicketNote,
)
from handlers.common import (
    change,
    client_translator,
    locked,
    refresh_card,
    refuse_if_bridged,
    rest_of_args,
    staff_private,
    staff_ticket,
)
from handlers.effects import RequestOpened, ResolutionAnswered
from handlers.mail_intake import (
    GREETING,
    THREAD_MAIL,
    THREAD_TEXT_CHARS,
    answer_intake,
    keep_files,
    mail_data,
    record_in,
    refused_msg,
    running_intake,
    send_receipt,
    size_text,
    start_intake,
    sweep_mail_intakes,
)
from handlers.mail_thread import (
    answer_mail,
    compose,
    mail_about,
)

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

router = Router("mail")

_NOT_OPEN = ENDED_STATUSES | {Status.CLOSED}
_CALLS = frozenset({Channel.VIDEO, Channel.PHONE})
_ANSWERABLE = frozenset(Status) - _NOT_OPEN
# Where a reply of 1 or 2 answers the "solved" mail (closed: 2 under the warranty).
_RESOLUTION_ASKED = frozenset({Status.RESOLVED, Status.CLOSED})

# -- what staff read (the staff room's language) -----------------------------------------------

THREAD_NO_TEXT = N_("(no text)")
THREAD_ENDED = N_("This request is {status}: the client was told to write anew for a new problem.")
THREAD_AUTO = N_("🤖 An automatic answer came back from the client ({why}): {subject}")
THREAD_BOUNCE = N_(
    "⚠️ A mail to the client could not be delivered ({action}, status {status}): {diagnostic}"
)
STAFF_BOUNCE = N_(
    "⚠️ A mail of ours could not be delivered ({action}, status {status}), and I do not know "
    "which request it was about: {diagnostic}"
)
STAFF_BOUNCE_INTAKE = N_(
    "⚠️ The questions mailed to a new client ({address}) could not be delivered ({action}, "
    "status {status}): {diagnostic}"
)
STAFF_LIMITED = N_(
    "⚠️ Mails from {address} arrive faster than {limit} an hour: I leave the next ones "
    "unanswered for now (they stay in the mailbox)."
)
STAFF_UNREADABLE = N_(
    "⚠️ A mail (number {uid} in the folder {folder}) could not be read: it stays in the "
    "mailbox, please look at it there."
)
THREAD_SENT = N_("✉️ Mail sent to the client.")
THREAD_FAILED = N_("⚠️ The mail to the client could not be sent")
REPLY_QUEUED = N_(
    "✉️ {ref}: the mail to the client is on its way; the card's thread says when it is sent."
)
REPLY_NO_ADDRESS = N_("{ref} has no e-mail address: nothing was sent.")
REPLY_EMPTY = N_("Please write the text to send, for example: !reply {ref} Hello, …")
REPLY_ENDED = N_("{ref} is {status}: nothing was sent.")

# -- what clients read (the language of their mail) -------------------------------------------

TOO_BIG = N_(
    "Your e-mail is too large for us to receive ({size}). Please send it again without the "
    "large files: a link to a shared file works well."
)
TOO_LONG = N_(
    "Your e-mail is too long ({length} characters; the limit is {limit}). Please shorten it "
    "or split it into several e-mails."
)
REPLY_CLOSED = N_(
    "We have passed your message on to the support team. Note that {ref} is closed: for a new "
    "problem, please send a new e-mail without the reference in its subject."
)

# -- !follow -----------------------------------------------------------------------------------

HELP_FOLLOW = N_("Receive your requests' news by e-mail too: !follow email on, or off.")
FOLLOW_ON = N_(
    "From now on, what the support team writes to you about your requests is also sent to {email}."
)
FOLLOW_OFF = N_("Your requests' news is no longer sent by e-mail.")
FOLLOW_STATE_ON = N_("Your requests' news is also sent to {email}. To stop: {command}")
FOLLOW_STATE_OFF = N_("Your requests' news is not sent by e-mail. To receive it: {command}")
FOLLOW_NO_ADDRESS = N_(
    "I do not know your e-mail address yet: it is asked when you make a request. Please make "
    "one first, then try again."
)
FOLLOW_WHICH = N_("Please say on or off, for example: {command}")
NOT_FOR_STAFF = N_("Client requests are made from a client room, not from the staff room.")
_ON_WORDS = frozenset({"on", "oui", "yes", "y", "o", "1", "true", "activer", "enable"})
_OFF_WORDS = frozenset({"off", "non", "no", "n", "0", "false", "désactiver", "disable"})
_MAIL_WORDS = frozenset({"email", "e-mail", "mail", "courriel", "mails", "e-mails"})


# -- a mail arrives ------------------------------------------------------------------------


@router.mail()
async def on_mail(ctx: Context) -> None:
    mail = ctx.event
    assert isinstance(mail, IncomingMail)
    if mail.address is None or mail.auto == "unreadable":
        await record_in(ctx, mail, "auto", detail=mail.auto)
        if mail.auto == "unreadable":
            ctx.send_staff(Msg(STAFF_UNREADABLE, {"uid": mail.uid, "folder": mail.folder}))
        log.info("mail %s not answered: %s", mail.uid, mail.auto or "no sender")
        return
    if mail.bounce is not None:
        await _on_bounce(ctx, mail)
        return
    ticket, conversation = await _thread_of(mail)
    if mail.auto is not None:
        await _on_auto(ctx, mail, ticket, conversation)
        return
    if await _over_limit(ctx, mail):
        return
    tr = await _mail_translator(ctx, mail, ticket, conversation)
    # From here on, refusals and the error boundary's apology go back by mail.
    ctx.answer = partial(_answer, ctx, mail, tr)
    if mail.too_big:
        await record_in(ctx, mail, "refused", ticket=ticket, detail="too big")
        ctx.reply(Msg(TOO_BIG, {"size": size_text(mail.size)}))
        return
    limit = ctx.services.config.service.max_message_chars
    if len(mail.text) > limit:
        await record_in(ctx, mail, "refused", ticket=ticket, detail="too long")
        ctx.reply(Msg(TOO_LONG, {"length": len(mail.text), "limit": limit}))
        return
    if ticket is not None:
        await _on_ticket_mail(ctx, mail, ticket, tr)
        return
    conversation = conversation or await running_intake(mail.sender)
    if conversation is not None:
        await answer_intake(ctx, mail, conversation, tr)
    else:
        await start_intake(ctx, mail, tr)


def _answer(ctx: Context, mail: IncomingMail, tr: Translator, msg: Msg | str) -> None:
    """`ctx.reply` for a mail: an automatic answer by mail, threaded to it."""
    text = compose(tr, ctx, [Msg(GREETING), msg], None)
    ctx.send_mail(answer_mail(ctx, mail, text, tr))


async def _mail_translator(
    ctx: Context,
    mail: IncomingMail,
    ticket: Ticket | None,
    conversation: Conversation | None,
) -> Translator:
    """The language of the mail; when it cannot be told (a short answer), the request's or
    the intake's; else the service's (French by default)."""
    if mail.language is not None:
        return ctx.services.tr(mail.language)
    if ticket is not None:
        return await client_translator(ctx, ticket)
    if conversation is not None:
        return ctx.services.tr(mail_data(conversation).get("language"))
    return ctx.services.tr(ctx.services.config.service.default_locale)


async def _thread_of(mail: IncomingMail) -> tuple[Ticket | None, Conversation | None]:
    """The request (or running intake) a mail belongs to: one of its Message-IDs answered,
    else a reference in the subject from that request's address."""
    if mail.thread_ids:
        rows = await MailMessage.filter(message_id__in=list(mail.thread_ids)).order_by("-id")
        for row in rows:
            if row.ticket_id is not None:  # type: ignore[attr-defined]
                return await Ticket.get(id=row.ticket_id), None  # type: ignore[attr-defined]
            conversation_id = row.conversation_id  # type: ignore[attr-defined]
            if conversation_id is not None:
                conversation = await Conversation.get_or_none(id=conversation_id)
                if conversation is not None and not IntakeStep(conversation.step).is_terminal:
                    return None, conversation
    for ref in mail.refs:
        ticket = await repo.ticket_by_ref(ref)
        if ticket is None:
            continue
        addresses = {ticket.email, ticket.client.email}
        if mail.address in {a.lower() for a in addresses if a}:
            return ticket, None
    return None, None


# -- bounces, automatic mails, floods -------------------------------------------------------


async def _on_bounce(ctx: Context, mail: IncomingMail) -> None:
    bounce = mail.bounce
    assert bounce is not None
    ours = None
    if bounce.original_message_id is not None:
        ours = await MailMessage.filter(
            message_id=bounce.original_message_id, direction="out"
        ).first()
    if ours is None and bounce.recipients:
        recipients = [r.lower() for r in bounce.recipients]
        ours = (
            await MailMessage.filter(direction="out", address__in=recipients)
            .order_by("-id")
            .first()
        )
    detail = f"{bounce.action} {bounce.status} {bounce.diagnostic}".strip()
    params = {
        "action": bounce.action,
        "status": bounce.status or "?",
        "diagnostic": defuse(bounce.diagnostic or "-"),
    }
    ticket_id = ours.ticket_id if ours is not None else None  # type: ignore[attr-defined]
    if ticket_id is not None:
        ticket = await Ticket.get(id=ticket_id)
        await record_in(ctx, mail, "bounce", ticket=ticket, detail=detail)
        await repo.audit(
            ticket,
            "system",
            "mail_bounced",
            ticket.status,
            ticket.status,
            bounce.status,
            at=ctx.now,
        )
        ctx.send_staff(Msg(THREAD_BOUNCE, params), thread=f"card:{ticket.id}")
    elif ours is not None:
        await record_in(ctx, mail, "bounce", detail=detail)
        ctx.send_staff(Msg(STAFF_BOUNCE_INTAKE, {**params, "address": ours.address or "?"}))
    else:
        await record_in(ctx, mail, "bounce", detail=detail)
        ctx.send_staff(Msg(STAFF_BOUNCE, params))
    log.info("bounce received (%s %s)", bounce.action, bounce.status)


async def _on_auto(
    ctx: Context, mail: IncomingMail, ticket: Ticket | None, conversation: Conversation | None
) -> None:
    """Never answered (RFC 3834): recorded, and shown on the request it answers."""
    await record_in(ctx, mail, "auto", ticket=ticket, conversation=conversation, detail=mail.auto)
    if ticket is not None:
        params = {"why": mail.auto, "subject": defuse(mail.subject or "-")}
        ctx.send_staff(Msg(THREAD_AUTO, params), thread=f"card:{ticket.id}")
    log.info("automatic mail not answered (%s)", mail.auto)


async def _over_limit(ctx: Context, mail: IncomingMail) -> bool:
    """More mails from this address in the last hour than allowed: recorded, unanswered,
    and staff told once an hour."""
    limit = ctx.services.config.mail.sender_mails_per_hour
    since = mail.ts - timedelta(hours=1)
    recent = await MailMessage.filter(direction="in", address=mail.address, at__gte=since).count()
    if recent < limit:
        return False
    await record_in(ctx, mail, "limited")
    digest = hashlib.sha256((mail.address or "").encode()).hexdigest()[:16]
    key = f"mail-limit:{digest}:{ctx.now:%Y%m%d%H}"
    if not await Notice.exists(key=key):
        await Notice.create(key=key, at=ctx.now)
        ctx.send_staff(Msg(STAFF_LIMITED, {"address": defuse(mail.address or ""), "limit": limit}))
    log.warning("mail flood: a sender is over %d mails an hour, left unanswered", limit)
    return True


# -- a reply on a request ---------------------------------------------------------------------


async def _on_ticket_mail(
    ctx: Context, mail: IncomingMail, ticket: Ticket, tr: Translator
) -> None:
    """The client's mail about a request: a note, and the card's thread."""
    ticket = await locked(ticket.id)
    row = await record_in(ctx, mail, "reply", ticket=ticket)
    text = mail.text.strip()
    await TicketNote.create(ticket=ticket, author_key=mail.sender, text=text or "-", at=mail.ts)
    await repo.audit(
        ticket, mail.sender, "mail_received", ticket.status, ticket.status, at=ctx.now
    )
    await refresh_card(ctx, ticket)
    _post_mail(ctx, ticket, mail, text)
    refused = await keep_files(ctx, ticket, row, mail)
    answer = resolution_answer(text)
    before = ticket.status
    if answer is not None and Status(ticket.status) in _RESOLUTION_ASKED:
        # 1 or 2 in reply to the mail saying it is solved: `handlers.closing` decides and
        # tells the client; a mail it did not act on is a note like any other.
        await ctx.emit(ResolutionAnswered(ticket.id, solved=answer))
        ticket = await Ticket.get(id=ticket.id)
    ended = Status(ticket.status) in _NOT_OPEN and ticket.status == before
    if ended:
        status = ctx.render(Msg(_status_label(ticket.status)), ctx.services.staff_tr())
        ctx.send_staff(Msg(THREAD_ENDED, {"status": status}), thread=f"card:{ticket.id}")
    parts: list[Msg] = []
    if ended:
        parts.append(Msg(REPLY_CLOSED, {"ref": ticket.ref}))
    if refused:
        parts.append(refused_msg(ctx, refused))
    if parts:
        await mail_about(
            ctx, ticket, [Msg(GREETING), *parts], tr=tr, kind="refusal", auto="auto-replied"
        )
    log.info("client mail added to %s", ticket.ref)


def _post_mail(ctx: Context, ticket: Ticket, mail: IncomingMail, text: str) -> None:
    shown = text if len(text) <= THREAD_TEXT_CHARS else text[:THREAD_TEXT_CHARS] + " […]"
    name = mail.display_name or mail.address or "?"
    params = {"name": defuse(name), "text": defuse(shown) if shown else Msg(THREAD_NO_TEXT)}
    ctx.send_staff(Msg(THREAD_MAIL, params), thread=f"card:{ticket.id}")


def _status_label(status: str) -> str:
    from bot.cards import STATUS_LABELS

    return STATUS_LABELS[Status(status)]


@router.effect(RequestOpened)
async def on_request_opened(ctx: Context, effect: RequestOpened) -> None:
    """A request opened in chat: its receipt by mail too, to the address the client gave."""
    ticket = await Ticket.get(id=effect.ticket_id)
    if not ticket.email or ticket.room_id == EMAIL_ROOM:
        return
    tr = await client_translator(ctx, ticket)
    await send_receipt(ctx, ticket, tr, by_mail=False, first_request=effect.first_request)


# -- staff answer ------------------------------------------------------------------------------


@router.command(
    "reply",
    "répondre",
    help=N_("Answer a request's client by e-mail, in its thread."),
    usage="SP-… text",
    staff=True,
)
async def reply_command(ctx: Context) -> None:
    ticket = await staff_ticket(ctx)
    if not staff_private(ctx):
        raise DomainError(
            Msg(
                N_(
                    "Please use this command in the staff room: other people can read this "
                    "room, and it shows other clients' requests."
                )
            )
        )
    text = rest_of_args(ctx.args)
    if not text:
        raise DomainError(Msg(REPLY_EMPTY, {"ref": ticket.ref}))
    await _staff_mail(ctx, ticket, text)
    ctx.reply(ctx.render(Msg(REPLY_QUEUED, {"ref": ticket.ref}), ctx.services.staff_tr()))


@router.text(Situation.STAFF_THREAD)
async def staff_in_thread(ctx: Context) -> None:
    """Staff writing in a card's thread: for a request made by e-mail, an answer mailed to
    the client; the thread of a chat request stays internal."""
    assert ctx.state is not None
    ticket: Ticket = ctx.state.found
    if ticket.room_id != EMAIL_ROOM or not ctx.args.strip():
        return
    await _staff_mail(ctx, ticket, ctx.args.strip())


async def _staff_mail(ctx: Context, ticket: Ticket, text: str) -> None:
    """A staff answer mailed to the client, threaded; its outcome in the card's thread; the
    first answer is the first response (R3)."""
    ticket = await locked(ticket.id)
    staff_tr = ctx.services.staff_tr()
    if Status(ticket.status) in _NOT_OPEN:
        status = ctx.render(Msg(_status_label(ticket.status)), staff_tr)
        raise DomainError(Msg(REPLY_ENDED, {"ref": ticket.ref, "status": status}))
    room = ctx.services.staff_room_id() or ""
    thread = f"card:{ticket.id}"
    sent = Outgoing(
        room,
        "message",
        notice_content(ctx.render(Msg(THREAD_SENT), staff_tr), None),
        target=thread,
    )
    failed = Outgoing(
        room,
        "message",
        notice_content(ctx.render(Msg(THREAD_FAILED), staff_tr), None),
        target=thread,
    )
    tr = await client_translator(ctx, ticket)
    queued = await mail_about(
        ctx,
        ticket,
        [text],
        tr=tr,
        kind="staff",
        auto=None,
        if_sent=[sent] if room else [],
        if_failed=[failed] if room else [],
        with_reason=True,
    )
    if not queued:
        raise DomainError(Msg(REPLY_NO_ADDRESS, {"ref": ticket.ref}))
    await repo.audit(
        ticket, ctx.sender.user_id, "mail_sent", ticket.status, ticket.status, at=ctx.now
    )
    if ticket.first_response_at is None and Status(ticket.status) in _ANSWERABLE:
        result = record_staff_answer(repo.ticket_state(ticket), ctx.now)
        await change(ctx, ticket, result, action="first_response", actor=ctx.sender.user_id)
    log.info("staff mail queued for %s", ticket.ref)


# -- following by e-mail ------------------------------------------------------------------------


@router.command("follow", "suivi", "suivre", help=HELP_FOLLOW, usage="email on|off")
async def follow(ctx: Context) -> None:
    # An address on file is shown and mailed: never on a nickname's word.
    refuse_if_bridged(ctx)
    if ctx.in_staff_room or ctx.is_staff:
        raise DomainError(Msg(NOT_FOR_STAFF))
    words = [w.strip(".,!").casefold() for w in ctx.args.split()]
    words = [w for w in words if w not in _MAIL_WORDS]
    client = await Client.get_or_none(key=ctx.sender.key)
    email = client.email if client is not None else None
    if email is None or client is None:
        ctx.reply(Msg(FOLLOW_NO_ADDRESS))
        return
    on_word = "oui" if ctx.tr.locale == "fr" else "on"
    off_word = "non" if ctx.tr.locale == "fr" else "off"
    name = "suivi mail" if ctx.tr.locale == "fr" else "follow email"
    if not words:
        if client.follow_by_email:
            ctx.reply(Msg(FOLLOW_STATE_ON, {"email": email, "command": f"!{name} {off_word}"}))
        else:
            ctx.reply(Msg(FOLLOW_STATE_OFF, {"command": f"!{name} {on_word}"}))
        return
    if words[0] in _ON_WORDS:
        client.follow_by_email = True
        ctx.reply(Msg(FOLLOW_ON, {"email": email}))
    elif words[0] in _OFF_WORDS:
        client.follow_by_email = False
        ctx.reply(Msg(FOLLOW_OFF))
    else:
        raise DomainError(Msg(FOLLOW_WHICH, {"command": f"!{name} {on_word}"}))
    await client.save(update_fields=["follow_by_email"])
    log.info("client follows by e-mail: %s", client.follow_by_email)


SWEEPERS = [sweep_mail_intakes]

__all__ = ["SWEEPERS", "router"]
