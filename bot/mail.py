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

Transport security (`[mail] tls`, resolved by `tls_mode`). Mails carry consent links and the
login carries the SMTP password, so clear text is never chosen silently:

* not set (the default): STARTTLS whenever the server offers it. A server that is not on this
  machine (`is_local_host`) and offers none gets nothing: the mail fails rather than cross the
  network in clear, where a man in the middle could also have removed the offer. Port 465
  means TLS from the first byte, as before;
* `"starttls"`: STARTTLS required, whatever the host; `"implicit"`: TLS from the first byte;
* `"none"`: never TLS, for a relay on this machine (check-config warns about any other host).

Certificates are always verified, against the system's CAs or `[mail] ca_file`. The login
(`username`) happens only once the connection is in its final state, so a password is never
sent in clear unless `"none"` or a local relay says so. The old boolean `starttls` is read as a
deprecated alias: true is `"starttls"`, false is the default above (it used to turn STARTTLS
off, which is how the example sent links in clear); `config_warnings` says so.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import Literal, cast

import aiosmtplib
from email_validator import EmailNotValidError, validate_email

from bot.config import MailConfig

__all__ = [
    "IMPLICIT_TLS_PORT",
    "Mail",
    "MailError",
    "Mailer",
    "TlsMode",
    "build_message",
    "config_warnings",
    "is_local_host",
    "smtp_address",
    "tls_mode",
]

log = logging.getLogger(__name__)

#: SMTP submission over implicit TLS ("SMTPS"): the default on this port is TLS from the start.
IMPLICIT_TLS_PORT = 465

#: `[mail] tls` once resolved; "default" is STARTTLS when offered, required off this machine.
TlsMode = Literal["starttls", "implicit", "none", "default"]


def tls_mode(config: MailConfig) -> TlsMode:
    """What protects the connection: `tls` when set, else the deprecated `starttls = true`,
    else TLS from the start on port 465, else the default (see the module docstring)."""
    if config.tls is not None:  # one of MAIL_TLS: the parser checked it
        return cast(TlsMode, config.tls)
    if config.starttls:
        return "starttls"
    if config.port == IMPLICIT_TLS_PORT:
        return "implicit"
    return "default"


def is_local_host(host: str) -> bool:
    """Whether `host` names this machine without any network in between: `localhost` (and
    `*.localhost`, RFC 6761) or a loopback address. No DNS: a name that merely resolves to
    a loopback address could resolve elsewhere tomorrow."""
    name = host.strip().rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def config_warnings(config: MailConfig) -> list[tuple[str, str]]:
    """(key, message) for what the bot accepts but an operator must hear of: the deprecated
    `starttls`, and clear text to a server that is not on this machine. check-config prints
    them, `Mailer` logs them at start."""
    warnings: list[tuple[str, str]] = []
    if config.starttls is True and config.tls is None:
        warnings.append(
            ("mail.starttls", 'deprecated: write tls = "starttls" instead (same meaning)')
        )
    elif config.starttls is False and config.tls is None:
        warnings.append(
            (
                "mail.starttls",
                "deprecated, and false no longer turns STARTTLS off: the bot now uses STARTTLS"
                ' whenever the server offers it. Remove the line (tls = "none" sends in clear,'
                " for a relay on this machine only)",
            )
        )
    if tls_mode(config) == "none" and not is_local_host(config.host):
        what = "the SMTP password and " if config.username else ""
        warnings.append(
            (
                "mail.tls",
                f'"none" sends {what}every e-mail, consent links included, in clear to'
                f' {config.host}, which is not this machine: use "starttls" or "implicit",'
                " or leave tls out",
            )
        )
    return warnings


def _tls_failure(error: BaseException) -> str | None:
    """The TLS error behind `error` (aiosmtplib wraps it in SMTPConnectError), as its class and,
    for a certificate, OpenSSL's reason ("unable to get local issuer certificate", "Hostname
    mismatch…"): what an operator needs to fix `ca_file` or the server, and never an address
    of a recipient."""
    seen: BaseException | None = error
    for _ in range(5):  # a short chain; never a loop
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"{type(seen).__name__}: {seen.verify_message}"
        if isinstance(seen, ssl.SSLError):
            return f"{type(seen).__name__}: {seen.reason or 'TLS error'}"
        seen = seen.__cause__ or seen.__context__
    return None


class _ClearText(Exception):
    """The connection ended up unencrypted where `[mail] tls` requires TLS."""


class MailError(Exception):
    """An e-mail could not be sent. The message never contains the recipient's address."""


@dataclass(frozen=True, slots=True)
class Mail:
    """One e-mail to send: recipient, subject, plain text and an optional HTML alternative.

    Threading (the e-mail channel): `message_id` (else one derived from the outbox row),
    `in_reply_to` and `references`. `auto_submitted` is the RFC 3834 header: "auto-generated"
    (a notification), "auto-replied" (an automatic answer to a mail), or None for a mail a
    person wrote (a staff answer), which then carries no such header.

    Only the subject shows in its `repr`: the address is personal data and the body may carry
    a secret link.
    """

    to: str = field(repr=False)
    subject: str
    text: str = field(repr=False)
    html: str | None = field(default=None, repr=False)
    message_id: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    auto_submitted: str | None = "auto-generated"

    def to_content(self) -> dict[str, object]:
        """The mail as a JSON object (for an outbox row); `from_content` reads it back."""
        content: dict[str, object] = {
            "to": self.to,
            "subject": self.subject,
            "text": self.text,
            "html": self.html,
        }
        if self.message_id is not None:
            content["message_id"] = self.message_id
        if self.in_reply_to is not None:
            content["in_reply_to"] = self.in_reply_to
        if self.references:
            content["references"] = list(self.references)
        if self.auto_submitted != "auto-generated":
            content["auto_submitted"] = self.auto_submitted
        return content

    @classmethod
    def from_content(cls, content: Mapping[str, object]) -> Mail:
        """The mail stored by `to_content`; raises `ValueError` if `content` is not one."""
        to, subject, text, html = (content.get(key) for key in ("to", "subject", "text", "html"))
        if not (isinstance(to, str) and isinstance(subject, str) and isinstance(text, str)):
            raise ValueError("not a stored mail: to, subject and text must be strings")
        if html is not None and not isinstance(html, str):
            raise ValueError("not a stored mail: html must be a string or null")
        message_id, in_reply_to = content.get("message_id"), content.get("in_reply_to")
        references = content.get("references") or []
        auto = content.get("auto_submitted", "auto-generated")
        if not all(isinstance(v, str | None) for v in (message_id, in_reply_to, auto)):
            raise ValueError("not a stored mail: threading headers must be strings")
        if not isinstance(references, list) or not all(isinstance(r, str) for r in references):
            raise ValueError("not a stored mail: references must be a list of strings")
        return cls(
            to=to,
            subject=subject,
            text=text,
            html=html,
            message_id=message_id,  # type: ignore[arg-type]
            in_reply_to=in_reply_to,  # type: ignore[arg-type]
            references=tuple(references),
            auto_submitted=auto,  # type: ignore[arg-type]
        )


class Mailer:
    """Sends e-mail through the configured SMTP server (one connection per message)."""

    def __init__(self, config: MailConfig, *, timeout: float = 30.0) -> None:
        self._config = config
        self._timeout = timeout
        self._mode = tls_mode(config)
        self._context: ssl.SSLContext | None = None
        for key, message in config_warnings(config):
            log.warning("config: %s: %s", key, message)

    async def send(
        self,
        to: str,
        subject: str,
        text: str,
        html: str | None = None,
        *,
        message_key: str | None = None,
        threading: Mail | None = None,
    ) -> None:
        """Send one message; raises `MailError` when it cannot be handed to the server.
        `message_key` makes the Message-ID stable: a resend after a crash is the same mail
        to the recipient's client, which shows it once. `threading`: the mail whose
        Message-ID, In-Reply-To, References and Auto-Submitted headers to use."""
        config = self._config
        try:
            message = build_message(
                config.from_, to, subject, text, html, message_key=message_key, headers=threading
            )
        except ValueError as exc:  # a malformed address or a line break in a header
            raise MailError(f"message refused before sending: {type(exc).__name__}") from None
        # Logs name the mail by its Message-ID (ours: a random part and our domain), never by
        # its subject, which may quote what a client wrote ("Re: …").
        label = message.get("Message-ID", "(no Message-ID)")
        try:
            await self._deliver(message)
        except _ClearText:
            log.warning(
                "mail: sending %s refused: %s:%d offered no STARTTLS and [mail] tls does not"
                " allow clear text to it (tls = %s)",
                label,
                config.host,
                config.port,
                self._mode,
            )
            raise MailError("SMTP delivery refused: the server offered no TLS") from None
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            code = getattr(exc, "code", None)
            detail = type(exc).__name__ + (f" {code}" if code is not None else "")
            if (tls := _tls_failure(exc)) is not None:
                detail = tls
            log.warning(
                "mail: sending %s failed via %s:%d (%s)", label, config.host, config.port, detail
            )
            raise MailError(f"SMTP delivery failed: {detail}") from None
        log.info("mail: sent %s", label)

    async def _deliver(self, message: EmailMessage) -> None:
        """Connect as `[mail] tls` says, check the connection is encrypted where it must be,
        then log in and send. Not `aiosmtplib.send`: it logs in as soon as it can, so a server
        (or a man in the middle) that offers no STARTTLS would receive the password in clear.
        """
        config, mode = self._config, self._mode
        client = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            timeout=self._timeout,
            use_tls=mode == "implicit",
            # None: upgrade when the server offers it; whether that was required is checked
            # below, with a clearer error than aiosmtplib's.
            start_tls=False if mode in ("implicit", "none") else None,
            tls_context=None if mode == "none" else await self._tls_context(),
        )
        async with client:
            encrypted = client.get_transport_info("sslcontext") is not None
            required = mode in ("starttls", "implicit") or (
                mode == "default" and not is_local_host(config.host)
            )
            if required and not encrypted:
                raise _ClearText()
            if config.username:
                await client.login(config.username, config.password or "")
            await client.send_message(message)

    async def _tls_context(self) -> ssl.SSLContext:
        """Certificates verified (host name included), against `ca_file` when given, else the
        system's CAs; built once, in a thread (reading the CA files blocks)."""
        if self._context is None:
            ca_file = self._config.ca_file
            self._context = await asyncio.to_thread(ssl.create_default_context, cafile=ca_file)
        return self._context

    async def send_mail(self, mail: Mail, *, message_key: str | None = None) -> None:
        """Send `mail`; raises `MailError` when it cannot be handed to the server."""
        await self.send(
            mail.to, mail.subject, mail.text, mail.html, message_key=message_key, threading=mail
        )


def build_message(
    sender: str,
    to: str,
    subject: str,
    text: str,
    html: str | None = None,
    *,
    message_key: str | None = None,
    headers: Mail | None = None,
) -> EmailMessage:
    """A MIME message: plain text, plus an HTML alternative when given. `headers`: a `Mail`
    whose threading headers it carries (see `Mail`)."""
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
    if headers is not None and headers.message_id:
        message["Message-ID"] = headers.message_id
    elif message_key is not None:
        message["Message-ID"] = f"<{message_key}@{domain or 'support-bot'}>"
    else:
        message["Message-ID"] = make_msgid(domain=domain)
    if headers is not None and headers.in_reply_to:
        message["In-Reply-To"] = headers.in_reply_to
    if headers is not None and headers.references:
        message["References"] = " ".join(headers.references)
    auto = "auto-generated" if headers is None else headers.auto_submitted
    if auto:
        message["Auto-Submitted"] = auto
        # Exchange and Outlook: no out-of-office answer to what the bot sends on its own.
        message["X-Auto-Response-Suppress"] = "All"
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
