"""Mails about a request, threaded both ways (shared by `handlers.common` and `handlers.mail`).

Every mail the bot sends about a request goes out through the outbox (`Context.send_mail`:
after the commit, retried, its outcome followed by messages) from the support address
(`mail.from`), with:

* the reference in its subject: `[SP-2026-0042] <the subject of the client's first mail>`
  (or "Your support request" for a request made in chat);
* its own `Message-ID` in the domain of the support address, recorded (`MailMessage`, with
  the request) in the handler's transaction, and `In-Reply-To` / `References` built from the
  request's recorded mails, so the client's mail program shows one conversation and the
  client's reply finds its request again;
* `Auto-Submitted: auto-replied` (automatic answers to a mail), `auto-generated`
  (notifications), or nothing when a person wrote it (a staff answer).

Recipient addresses and bodies are never logged.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from email.utils import parseaddr

from bot.domain.mail_intake import subject_topic
from bot.events import IncomingMail
from bot.i18n import N_, Msg, Translator
from bot.mail import Mail
from bot.routing import Context, Outgoing
from bot.storage.models import Client, MailMessage, Ticket

log = logging.getLogger(__name__)

#: Message-IDs a mail's References header carries at most (the most recent ones).
REFERENCES_KEPT = 20
#: Kinds of mails received that are a client's words about a request (threading anchors).
_CLIENT_KINDS = ("request", "answers", "reply")

DEFAULT_TOPIC = N_("Your support request")
SIGNATURE = N_("The LimeSurvey support team")
# Translators: the end of every mail about a request; {tag} is "[SP-2026-0042]".
FOOTER = N_(
    "To write to us about this request, reply to this e-mail and keep {tag} in the subject."
)


def support_domain(ctx: Context) -> str:
    address = parseaddr(ctx.services.config.mail.from_)[1]
    return address.rpartition("@")[2] or "support-bot"


def new_message_id(ctx: Context) -> str:
    """A Message-ID of our own: random (the outbox row keeps it, so a resend after a crash
    is the same mail), in the support address's domain."""
    return f"<{secrets.token_hex(16)}@{support_domain(ctx)}>"


async def ticket_address(ticket: Ticket) -> str | None:
    """Where a request's mails go: its own address, else its client's."""
    if ticket.email:
        return ticket.email
    client = await Client.get_or_none(id=ticket.client_id)  # type: ignore[attr-defined]
    return client.email if client is not None else None


async def topic(ticket: Ticket, tr: Translator) -> str:
    """What the request's mails are about: the subject of the client's first mail."""
    first = (
        await MailMessage.filter(ticket_id=ticket.pk, direction="in", kind__in=_CLIENT_KINDS)
        .exclude(subject=None)
        .order_by("id")
        .first()
    )
    found = subject_topic(first.subject or "") if first is not None else ""
    return found or tr.gettext(DEFAULT_TOPIC)


async def thread_headers(
    *, ticket_id: int | None = None, conversation_id: int | None = None
) -> tuple[str | None, tuple[str, ...]]:
    """(In-Reply-To, References) for a new mail in a request's thread: the client's latest
    mail answered, and the recorded Message-IDs in order."""
    rows = MailMessage.filter(message_id__not_isnull=True)
    if ticket_id is not None:
        rows = rows.filter(ticket_id=ticket_id)
    elif conversation_id is not None:
        rows = rows.filter(conversation_id=conversation_id)
    else:
        return None, ()
    found = (
        await rows.order_by("-id").limit(REFERENCES_KEPT).values_list("message_id", "direction")
    )
    found.reverse()
    ids = tuple(dict.fromkeys(str(mid) for mid, _ in found))
    latest_in = next((str(mid) for mid, way in reversed(found) if way == "in"), None)
    return latest_in or (ids[-1] if ids else None), ids


def compose(tr: Translator, ctx: Context, parts: Sequence[Msg | str], ref: str | None) -> str:
    """A mail's text: its paragraphs, the signature and (for a request) the footer."""
    paragraphs = [ctx.render(part, tr) for part in parts if part]
    paragraphs.append(tr.gettext(SIGNATURE))
    if ref is not None:
        paragraphs.append(ctx.render(Msg(FOOTER, {"tag": f"[{ref}]"}), tr))
    return "\n\n".join(paragraphs)


async def mail_about(
    ctx: Context,
    ticket: Ticket,
    parts: Sequence[Msg | str],
    *,
    tr: Translator,
    kind: str,
    to: str | None = None,
    auto: str | None = "auto-generated",
    if_sent: Sequence[Outgoing] = (),
    if_failed: Sequence[Outgoing] = (),
    with_reason: bool = False,
) -> bool:
    """Mail `parts` to the request's client, in its thread; False when there is no
    address to mail (nothing queued)."""
    address = to or await ticket_address(ticket)
    if not address:
        return False
    in_reply_to, references = await thread_headers(ticket_id=ticket.pk)
    subject = f"[{ticket.ref}] {await topic(ticket, tr)}"
    mail = Mail(
        to=address,
        subject=subject,
        text=compose(tr, ctx, parts, ticket.ref),
        message_id=new_message_id(ctx),
        in_reply_to=in_reply_to,
        references=references,
        auto_submitted=auto,
    )
    await record_out(ctx, mail, kind, ticket_id=ticket.pk)
    ctx.send_mail(mail, if_sent=if_sent, if_failed=if_failed, with_reason=with_reason)
    return True


def reply_headers(mail: IncomingMail) -> tuple[str | None, tuple[str, ...]]:
    """(In-Reply-To, References) of an answer to `mail` (RFC 5322 §3.6.4)."""
    if mail.message_id is None:
        return None, mail.references[-REFERENCES_KEPT:]
    refs = (*mail.references, mail.message_id)
    return mail.message_id, tuple(dict.fromkeys(refs))[-REFERENCES_KEPT:]


def reply_subject(mail: IncomingMail, tr: Translator, ref: str | None = None) -> str:
    topic_ = subject_topic(mail.subject) or tr.gettext(DEFAULT_TOPIC)
    return f"Re: [{ref}] {topic_}" if ref else f"Re: {topic_}"


def answer_mail(
    ctx: Context, mail: IncomingMail, text: str, tr: Translator, *, ref: str | None = None
) -> Mail:
    """An automatic answer to `mail`, threaded to it (not recorded: refusals, apologies)."""
    assert mail.address is not None
    in_reply_to, references = reply_headers(mail)
    return Mail(
        to=mail.address,
        subject=reply_subject(mail, tr, ref),
        text=text,
        message_id=new_message_id(ctx),
        in_reply_to=in_reply_to,
        references=references,
        auto_submitted="auto-replied",
    )


async def record_out(
    ctx: Context,
    mail: Mail,
    kind: str,
    *,
    ticket_id: int | None = None,
    conversation_id: int | None = None,
) -> MailMessage:
    return await MailMessage.create(
        ticket_id=ticket_id,
        conversation_id=conversation_id,
        direction="out",
        kind=kind,
        message_id=mail.message_id,
        address=mail.to,
        subject=mail.subject,
        at=ctx.now,
    )
