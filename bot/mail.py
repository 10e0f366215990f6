"""Outgoing e-mail: the SMTP sender and the consent e-mail (R7).

`Mailer.send` speaks SMTP through aiosmtplib with the `[mail]` settings and raises `MailError`
on any failure. Recipient addresses are personal data: they are never logged, and `MailError`
messages never contain them (SMTP error texts often quote the address, so only the error's
class and code are kept).
"""

from __future__ import annotations

import html as _html
import logging
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from zoneinfo import ZoneInfo

import aiosmtplib

from bot.config import MailConfig
from bot.i18n import N_, NP_, Msg, Translator
from bot.rules import format_duration
from bot.web.pages import CONFIRMATION_RULE, LINK_EXPIRY, RULE_INTRO

__all__ = ["IMPLICIT_TLS_PORT", "MailError", "Mailer", "build_message", "consent_mail"]

log = logging.getLogger(__name__)

#: SMTP submission over implicit TLS ("SMTPS"); any other port starts in clear text.
IMPLICIT_TLS_PORT = 465


class MailError(Exception):
    """An e-mail could not be sent. The message never contains the recipient's address."""


class Mailer:
    """Sends e-mail through the configured SMTP server (one connection per message)."""

    def __init__(self, config: MailConfig, *, timeout: float = 30.0) -> None:
        self._config = config
        self._timeout = timeout

    async def send(self, to: str, subject: str, text: str, html: str | None = None) -> None:
        """Send one message; raises `MailError` when it cannot be handed to the server."""
        config = self._config
        try:
            message = build_message(config.from_, to, subject, text, html)
        except ValueError as exc:  # a malformed address or a line break in a header
            raise MailError(f"message refused before sending: {type(exc).__name__}") from None
        try:
            await aiosmtplib.send(
                message,
                hostname=config.host,
                port=config.port,
                username=config.username,
                password=config.password if config.username else None,
                use_tls=config.port == IMPLICIT_TLS_PORT,
                start_tls=True if config.starttls else False,
                timeout=self._timeout,
            )
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            code = getattr(exc, "code", None)
            detail = type(exc).__name__ + (f" {code}" if code is not None else "")
            log.warning(
                "mail: sending %r failed via %s:%d (%s)", subject, config.host, config.port, detail
            )
            raise MailError(f"SMTP delivery failed: {detail}") from None
        log.info("mail: sent %r", subject)


def build_message(
    sender: str, to: str, subject: str, text: str, html: str | None = None
) -> EmailMessage:
    """A MIME message: plain text, plus an HTML alternative when given."""
    _, address = parseaddr(to)
    if not address or "@" not in address or any(c.isspace() for c in address):
        raise ValueError("not an e-mail address")
    message = EmailMessage()
    message["From"] = sender
    message["To"] = Address(addr_spec=address)
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    domain = parseaddr(sender)[1].rpartition("@")[2] or None
    message["Message-ID"] = make_msgid(domain=domain)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    return message


# -- the consent e-mail -----------------------------------------------------------------------

_SUBJECT = NP_(
    "{ref}: please confirm the intervention ({n} ticket)",
    "{ref}: please confirm the intervention ({n} tickets)",
)
_ESTIMATE = NP_(
    "The support team estimated intervention {ref} at {duration}, that is {n} ticket.",
    "The support team estimated intervention {ref} at {duration}, that is {n} tickets.",
)
_GREETING = N_("Hello,")
_HOW = N_("To confirm it, open this link and press the “Confirm” button:")
_NOTHING_BEFORE = N_(
    "Nothing will be done before you confirm. If you do not want this intervention, ignore "
    "this e-mail and tell us in the support room."
)
_SIGNATURE = N_("The support team")
_BUTTON = N_("Review and confirm")


def consent_mail(
    tr: Translator,
    *,
    ref: str,
    tickets: int,
    estimate_minutes: int,
    link: str,
    expires_at: datetime,
    tz: ZoneInfo,
) -> tuple[str, str, str]:
    """(subject, text, html) of the e-mail asking the client to confirm an intervention."""
    subject = tr.render(Msg(_SUBJECT[0], {"ref": ref}, _SUBJECT[1], tickets), tz)
    estimate = tr.render(
        Msg(
            _ESTIMATE[0],
            {"ref": ref, "duration": format_duration(estimate_minutes)},
            _ESTIMATE[1],
            tickets,
        ),
        tz,
    )
    rule = tr.gettext(CONFIRMATION_RULE)
    expiry = tr.render(Msg(LINK_EXPIRY, {"expires_at": expires_at}), tz)
    greeting, rule_intro, how = tr.gettext(_GREETING), tr.gettext(RULE_INTRO), tr.gettext(_HOW)
    nothing, signature = tr.gettext(_NOTHING_BEFORE), tr.gettext(_SIGNATURE)

    text = "\n\n".join(
        [
            greeting,
            estimate,
            f"{rule_intro}\n« {rule} »" if tr.locale == "fr" else f'{rule_intro}\n"{rule}"',
            f"{how}\n{link}",
            expiry,
            nothing,
            f"-- \n{signature}",
        ]
    )

    def p(value: str) -> str:
        return f"<p>{_html.escape(value)}</p>"

    href = _html.escape(link, quote=True)
    html = (
        f'<!DOCTYPE html>\n<html lang="{_html.escape(tr.locale)}"><head><meta charset="utf-8">'
        f"<title>{_html.escape(subject)}</title></head>"
        '<body style="font-family:sans-serif;line-height:1.5;color:#1a1a1a;max-width:40em">'
        + p(greeting)
        + p(estimate)
        + p(rule_intro)
        + '<blockquote style="margin:0 0 1em;padding:.5em 1em;border-left:4px solid #888">'
        + _html.escape(rule)
        + "</blockquote>"
        + p(how)
        + f'<p><a href="{href}" style="display:inline-block;padding:.7em 1.2em;'
        'background:#1f5fbf;color:#fff;text-decoration:none;border-radius:6px">'
        + _html.escape(tr.gettext(_BUTTON))
        + "</a></p>"
        + f'<p style="word-break:break-all;font-size:.9em"><a href="{href}">'
        + _html.escape(link)
        + "</a></p>"
        + p(expiry)
        + p(nothing)
        + p(signature)
        + "</body></html>\n"
    )
    return subject, text, html
