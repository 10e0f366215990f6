"""Outgoing e-mail over SMTP: the `Mailer`, the MIME message, and `Mail`, one message to send.

This module knows how to send, never what to say: the wording of an e-mail belongs to its
subject's module (the consent e-mail is `bot.consent.consent_mail`). A `Mail` is a plain value,
so it can be built in one place, stored (`to_content`/`from_content`, JSON) and sent later.

`Mailer.send` speaks SMTP through aiosmtplib with the `[mail]` settings and raises `MailError`
on any failure. Recipient addresses are personal data: they are never logged, and `MailError`
messages never contain them (SMTP error texts often quote the address, so only the error's
class and code are kept); nor does the `repr` of a `Mail`, whose body may also carry a secret
link.

Recipients are written in their ASCII form (`smtp_address`): an internationalised domain
becomes its IDNA name (`jean@xn--exmple-cua.org`), which every server accepts. A local part
outside ASCII (`élise@…`) has no such form: it is kept, and aiosmtplib then asks the server for
SMTPUTF8; a server without it refuses the mail (`MailError`), the one case left to the server.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

import aiosmtplib
from email_validator import EmailNotValidError, validate_email

from bot.config import MailConfig

__all__ = ["IMPLICIT_TLS_PORT", "Mail", "MailError", "Mailer", "build_message", "smtp_address"]

log = logging.getLogger(__name__)

#: SMTP submission over implicit TLS ("SMTPS"); any other port starts in clear text.
IMPLICIT_TLS_PORT = 465


class MailError(Exception):
    """An e-mail could not be sent. The message never contains the recipient's address."""


@dataclass(frozen=True, slots=True)
class Mail:
    """One e-mail to send: recipient, subject, plain text and an optional HTML alternative.

    Only the subject shows in its `repr`: the address is personal data and the body may carry
    a secret link.
    """

    to: str = field(repr=False)
    subject: str
    text: str = field(repr=False)
    html: str | None = field(default=None, repr=False)

    def to_content(self) -> dict[str, str | None]:
        """The mail as a JSON object (for an outbox row); `from_content` reads it back."""
        return {"to": self.to, "subject": self.subject, "text": self.text, "html": self.html}

    @classmethod
    def from_content(cls, content: Mapping[str, object]) -> Mail:
        """The mail stored by `to_content`; raises `ValueError` if `content` is not one."""
        to, subject, text, html = (content.get(key) for key in ("to", "subject", "text", "html"))
        if not (isinstance(to, str) and isinstance(subject, str) and isinstance(text, str)):
            raise ValueError("not a stored mail: to, subject and text must be strings")
        if html is not None and not isinstance(html, str):
            raise ValueError("not a stored mail: html must be a string or null")
        return cls(to=to, subject=subject, text=text, html=html)


class Mailer:
    """Sends e-mail through the configured SMTP server (one connection per message)."""

    def __init__(self, config: MailConfig, *, timeout: float = 30.0) -> None:
        self._config = config
        self._timeout = timeout

    async def send(
        self,
        to: str,
        subject: str,
        text: str,
        html: str | None = None,
        *,
        message_key: str | None = None,
    ) -> None:
        """Send one message; raises `MailError` when it cannot be handed to the server.
        `message_key` makes the Message-ID stable: a resend after a crash is the same mail
        to the recipient's client, which shows it once."""
        config = self._config
        try:
            message = build_message(config.from_, to, subject, text, html, message_key=message_key)
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

    async def send_mail(self, mail: Mail, *, message_key: str | None = None) -> None:
        """Send `mail`; raises `MailError` when it cannot be handed to the server."""
        await self.send(mail.to, mail.subject, mail.text, mail.html, message_key=message_key)


def build_message(
    sender: str,
    to: str,
    subject: str,
    text: str,
    html: str | None = None,
    *,
    message_key: str | None = None,
) -> EmailMessage:
    """A MIME message: plain text, plus an HTML alternative when given."""
    _, address = parseaddr(to)
    if not address or "@" not in address or any(c.isspace() for c in address):
        raise ValueError("not an e-mail address")
    local, _, domain = smtp_address(address).rpartition("@")
    message = EmailMessage()
    message["From"] = sender
    # By parts: parsing an addr-spec refuses a non-ASCII local part, which SMTPUTF8 may carry.
    message["To"] = Address(username=local, domain=domain)
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    domain = parseaddr(sender)[1].rpartition("@")[2] or None
    if message_key is not None:
        message["Message-ID"] = f"<{message_key}@{domain or 'support-bot'}>"
    else:
        message["Message-ID"] = make_msgid(domain=domain)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text)
    if html is not None:
        message.add_alternative(html, subtype="html")
    return message


def smtp_address(address: str) -> str:
    """`address` as written to SMTP: its ASCII form when it has one (IDNA domain), else the
    normalised address, whose non-ASCII local part needs the server's SMTPUTF8. Raises
    `ValueError` (without the address) for anything `email_validator` refuses; no DNS."""
    try:
        valid = validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        raise ValueError("not an e-mail address") from None
    return valid.ascii_email or valid.normalized
