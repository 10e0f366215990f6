"""An incoming mail, read: raw RFC 822 bytes → `bot.events.IncomingMail` (pure, no I/O).

`parse_mail` never raises on what a sender wrote: a malformed header, an unknown charset or a
broken MIME structure give a mail with less in it, never an exception. What it reads:

* **Who and what.** The From address (normalised by `email-validator`, lower case: the
  sender's key is `mailto:<address>`), the display name, the subject, Message-ID,
  In-Reply-To and References, and the request references (`SP-2026-0042`) in the subject.
* **The new text.** The text/plain part, else the HTML one turned into text (`html_to_text`:
  `nh3` keeps only structural tags and drops scripts, styles and quoted blocks; nothing is
  ever fetched, images included). Then the quoted history and the signature are cut by
  `mail-parser-reply` (Outlook's header blocks, Gmail's and Thunderbird's "On … wrote:",
  French and English), and what is still quoted with ">" goes too.
* **Language.** French or English by `py3langid` when the text says so clearly, else the
  `Content-Language` header, else None (the caller then keeps the conversation's language,
  French by default).
* **Automatic mails (RFC 3834).** `Auto-Submitted` other than "no", `X-Autoreply`,
  `X-Autorespond`, `Precedence: bulk/junk/list/auto_reply`, a mailing list (`List-Id`), an
  empty Return-Path (`<>`: bounces and most auto-replies), a mailer daemon, or the support
  address itself (a loop): `auto` says which. Such mails are never answered.
* **Bounces.** A `multipart/report; report-type=delivery-status` (RFC 3464): the action,
  status and diagnostic of the first recipient, and the Message-ID of the mail that bounced
  (from its `message/rfc822` or `text/rfc822-headers` part).
* **Attachments.** Parts marked as attachments, or inline with a file name and no
  Content-ID (images embedded in an HTML body, such as signature logos, are not files the
  sender chose to send).

Decisions: the arrival time is the server's INTERNALDATE when given (what the sender wrote in
`Date` is their clock), else `Date`, else `now`; never later than `now`. A mail whose text
cannot be decoded keeps what could be (`errors="replace"`).
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import html
import re
import unicodedata
from collections.abc import Iterator
from datetime import datetime
from email.message import EmailMessage, Message
from email.parser import BytesParser, HeaderParser
from email.utils import getaddresses, parsedate_to_datetime
from functools import cache
from html.parser import HTMLParser
from typing import Any

import nh3
from email_validator import EmailNotValidError, validate_email
from mailparser_reply.parser import EmailMessage as ReplyText

from bot.domain.tickets import REF_RE
from bot.events import (
    EMAIL_ROOM,
    MAILTO,
    IncomingMail,
    MailAttachment,
    MailBounce,
)

__all__ = ["html_to_text", "mail_event_id", "new_text", "parse_mail", "resolution_answer"]

#: Languages the reply cutter knows the "On … wrote:" lines of.
_REPLY_LANGUAGES = ["fr", "en"]
#: Below this confidence (or this many letters) the text's language is not trusted.
_LANGUAGE_CONFIDENCE = 0.9
_LANGUAGE_MIN_LETTERS = 12
_SUPPORTED = ("fr", "en")
_MAX_FILENAME = 200
_MAX_SUBJECT = 500
_MAX_ID = 900
_ID_RE = re.compile(r"<[^<>\s]{1,900}>")
_PRECEDENCE_AUTO = frozenset({"bulk", "junk", "list", "auto_reply", "auto-reply"})
_DAEMONS = frozenset({"mailer-daemon", "postmaster", "noreply", "no-reply", "donotreply"})
# The answer to a "resolved" mail: 1 or 2 alone, or followed by a separator and text.
_RESOLUTION = re.compile(r"\s*([12])(?:\s*[.):\-–—]|\s|$)")


def mail_event_id(folder: str, uidvalidity: int, uid: int) -> str:
    """The event id of a mail of the support mailbox: unique per folder, UIDVALIDITY and UID
    (a folder renumbered by the server has a new UIDVALIDITY)."""
    return f"mail:{folder}:{uidvalidity}:{uid}"


def parse_mail(
    raw: bytes,
    *,
    folder: str,
    uidvalidity: int,
    uid: int,
    now: datetime,
    own_address: str,
    internal_date: datetime | None = None,
    too_big: bool = False,
    size: int | None = None,
) -> IncomingMail:
    """Read one mail (see the module doc). `own_address`: the support address, whose own
    mails coming back are a loop."""
    message = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    address, display = _sender(message)
    text, html_only = ("", False) if too_big else _body_text(message)
    language = _language(text) or _header_language(message)
    bounce = None if too_big else _bounce(message)
    auto = _automatic(message, address, own_address, bounce is not None)
    subject = _one_line(_header(message, "subject"))[:_MAX_SUBJECT]
    return IncomingMail(
        event_id=mail_event_id(folder, uidvalidity, uid),
        room_id=EMAIL_ROOM,
        sender=MAILTO + (address or ""),
        ts=_arrival(message, internal_date, now),
        folder=folder,
        uidvalidity=uidvalidity,
        uid=uid,
        address=address,
        display_name=display,
        subject=subject,
        text=new_text(text),
        message_id=_first_id(_header(message, "message-id")),
        in_reply_to=_ids(_header(message, "in-reply-to")),
        references=_ids(_header(message, "references")),
        refs=tuple(dict.fromkeys(m.upper() for m in REF_RE.findall(subject))),
        language=language,
        auto=auto,
        bounce=bounce,
        attachments=() if too_big else tuple(_attachments(message)),
        size=len(raw) if size is None else size,
        too_big=too_big,
        html_only=html_only,
    )


# -- headers ----------------------------------------------------------------------------------


def _header(message: Message, name: str) -> str:
    """A header as text; '' when missing or unreadable (a malformed header is no reason to
    lose the mail)."""
    try:
        value = message.get(name)
    except Exception:  # the default policy parses lazily and may fail on garbage
        return ""
    return "" if value is None else str(value)


def _one_line(value: str) -> str:
    return " ".join(_printable(value).split())


def _printable(value: str) -> str:
    """Without control characters (newlines and tabs kept) nor bidirectional overrides."""
    return "".join(
        ch
        for ch in value
        if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn")
    )


def _sender(message: Message) -> tuple[str | None, str]:
    """The From address, normalised and lower-cased, and its display name."""
    pairs = getaddresses([_header(message, "from")])
    if not pairs:
        return None, ""
    name, address = pairs[0]
    try:
        valid = validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        return None, _one_line(name)[:200]
    return valid.normalized.lower(), _one_line(name)[:200]


def _ids(value: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_ID_RE.findall(value)))


def _first_id(value: str) -> str | None:
    found = _ids(value)
    if found:
        return found[0]
    bare = value.strip()
    return f"<{bare}>" if bare and len(bare) < _MAX_ID and " " not in bare else None


def _arrival(message: Message, internal_date: datetime | None, now: datetime) -> datetime:
    when = internal_date
    if when is None:
        with contextlib.suppress(TypeError, ValueError, IndexError):
            when = parsedate_to_datetime(_header(message, "date"))
    if when is None or when.tzinfo is None or when.utcoffset() is None:
        return now
    return min(when, now)


def _automatic(
    message: Message, address: str | None, own_address: str, bounce: bool
) -> str | None:
    """Why the mail is automatic (RFC 3834 and common practice), None for a person's mail."""
    if bounce:
        return "delivery-status"
    if address is not None and address == own_address.lower():
        return "loop"
    submitted = _header(message, "auto-submitted").split(";", 1)[0].strip().lower()
    if submitted and submitted != "no":
        return f"auto-submitted: {submitted}"[:64]
    for name in ("x-autoreply", "x-autorespond", "x-autogenerated"):
        if _header(message, name):
            return name
    precedence = _header(message, "precedence").strip().lower()
    if precedence in _PRECEDENCE_AUTO:
        return f"precedence: {precedence}"
    if _header(message, "list-id") or _header(message, "list-unsubscribe"):
        return "list"
    return_path = _header(message, "return-path")
    if return_path and return_path.strip() in ("<>", ""):
        return "null return-path"
    if address is None:
        return "no sender"
    if address.split("@", 1)[0] in _DAEMONS:
        return "daemon"
    return None


# -- body -------------------------------------------------------------------------------------


def _parts(message: Message) -> Iterator[Message]:
    """The leaves of the MIME tree, without descending into attached messages."""
    if message.is_multipart() and message.get_content_maintype() == "multipart":
        for part in message.get_payload() or []:
            if isinstance(part, Message):
                yield from _parts(part)
    else:
        yield message


def _is_attachment(part: Message) -> bool:
    disposition = (part.get_content_disposition() or "").lower()
    if disposition == "attachment":
        return True
    has_name = bool(part.get_filename())
    return has_name and not part.get("content-id") and part.get_content_maintype() != "text"


def _decoded(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:  # a charset Python does not know
        return payload.decode("utf-8", errors="replace")


def _body_text(message: Message) -> tuple[str, bool]:
    """The mail's text (plain, else from its HTML) and whether it came from HTML only."""
    plain: str | None = None
    markup: str | None = None
    if message.get_content_type() == "multipart/report":
        # A report's readable part is its first; the rest is for machines.
        payload = message.get_payload()
        first = payload[0] if isinstance(payload, list) and payload else None
        leaves = list(_parts(first)) if isinstance(first, Message) else []
    else:
        leaves = list(_parts(message))
    for part in leaves:
        if _is_attachment(part):
            continue
        kind = part.get_content_type()
        if kind == "text/plain" and plain is None:
            plain = _decoded(part)
        elif kind == "text/html" and markup is None:
            markup = _decoded(part)
    if plain is not None and plain.strip():
        return _clean_text(plain), False
    if markup is not None:
        return _clean_text(html_to_text(markup)), True
    return "", False


def _clean_text(text: str) -> str:
    text = _printable(text.replace("\r\n", "\n").replace("\r", "\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def new_text(text: str) -> str:
    """What the sender wrote in this mail: the quoted history, signature and disclaimers cut
    (`mail-parser-reply`), and lines still quoted with ">" removed."""
    if not text.strip():
        return ""
    try:
        parsed = ReplyText(text=text, languages=list(_REPLY_LANGUAGES), keep_hyphen_lists=True)
        replies = parsed.read().replies
    except Exception:  # a pathological text for its expressions: keep it whole
        replies = []
    first = replies[0] if replies else None
    body = first.body if first is not None else text
    if not body.strip() and first is not None:
        body = first.full_body  # everything looked like a signature: keep it
    lines = [line for line in body.split("\n") if not line.lstrip().startswith(">")]
    kept = "\n".join(lines).strip()
    return re.sub(r"\n{3,}", "\n\n", kept)


#: Tags kept by the sanitizer: structure only (line breaks, paragraphs, lists, tables).
_STRUCTURE = {"p", "br", "div", "li", "ul", "ol", "tr", "td", "th", "table", "tbody"}
_STRUCTURE |= {"h1", "h2", "h3", "h4", "h5", "h6", "pre", "hr", "span", "b", "i", "em"}
_STRUCTURE |= {"strong", "u", "a"}
#: Dropped with everything in them: code, styles, and the quoted history of a reply.
_DROPPED = {"script", "style", "head", "title", "blockquote", "template", "noscript"}
_BREAKS = frozenset({"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre"})
_BREAKS |= frozenset({"hr", "table", "ul", "ol"})


def resolution_answer(text: str) -> bool | None:
    """What a client answers to the mail saying their request is solved, from the first line
    of a reply's new text: 1 (it is solved) is True, 2 (something is still wrong, usually
    followed by what) is False; anything else is None, a mail like any other.

    >>> [resolution_answer(t) for t in ("1", "2. Toujours vide", "10 réponses manquent", "Merci")]
    [True, False, None, None]
    """
    for line in text.splitlines():
        if line.strip():
            match = _RESOLUTION.match(line)
            return None if match is None else match.group(1) == "1"
    return None


def html_to_text(markup: str) -> str:
    """Text from an HTML body, safely: `nh3` first keeps only structural tags, without any
    attribute (no image, no link target, nothing remote), and drops scripts, styles and
    quoted blocks with their content; then block tags become line breaks."""
    safe = nh3.clean(
        markup,
        tags=_STRUCTURE,
        clean_content_tags=_DROPPED,
        attributes={},
        link_rel=None,
        strip_comments=True,
    )
    reader = _TextReader()
    reader.feed(safe)
    reader.close()
    lines = [" ".join(line.split()) for line in "".join(reader.parts).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


class _TextReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        # Open lists: the next item's number in an <ol> (mail programs turn typed "1. 8"
        # lines into one), None in a <ul>.
        self.lists: list[int | None] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in _BREAKS:
            self.parts.append("\n")
        if tag in ("ol", "ul"):
            self.lists.append(1 if tag == "ol" else None)
        elif tag == "li":
            number = self.lists[-1] if self.lists else None
            if number is None:
                self.parts.append("- ")
            else:
                self.parts.append(f"{number}. ")
                self.lists[-1] = number + 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("ol", "ul") and self.lists:
            self.lists.pop()
        if tag in _BREAKS:
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        self.parts.append(html.unescape(data) if "&" in data else data)


# -- language ---------------------------------------------------------------------------------


@cache
def _identifier() -> Any:
    """py3langid's model, restricted to French and English (loaded once, ~2 s: the caller
    parses mails in a worker thread)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    identifier.set_languages(list(_SUPPORTED))
    return identifier


def _language(text: str) -> str | None:
    sample = text[:2000]
    if sum(ch.isalpha() for ch in sample) < _LANGUAGE_MIN_LETTERS:
        return None
    language, confidence = _identifier().classify(sample)
    return str(language) if confidence >= _LANGUAGE_CONFIDENCE else None


def _header_language(message: Message) -> str | None:
    value = _header(message, "content-language").split(",", 1)[0].strip().lower()
    language = value.split("-", 1)[0]
    return language if language in _SUPPORTED else None


# -- bounces and attachments ------------------------------------------------------------------


def _bounce(message: Message) -> MailBounce | None:
    if message.get_content_type() != "multipart/report":
        return None
    if (message.get_param("report-type") or "").lower() != "delivery-status":
        return None
    status_part = original = None
    for part in message.walk():
        kind = part.get_content_type()
        if kind == "message/delivery-status" and status_part is None:
            status_part = part
        elif kind in ("message/rfc822", "text/rfc822-headers") and original is None:
            original = part
    fields: dict[str, str] = {}
    recipients: list[str] = []
    if status_part is not None:
        for block in status_part.get_payload() or []:
            if not isinstance(block, Message):
                continue
            recipient = _header(block, "final-recipient") or _header(block, "original-recipient")
            if recipient:
                recipients.append(recipient.split(";", 1)[-1].strip())
                if not fields:
                    fields = {
                        name: _one_line(_header(block, name))
                        for name in ("action", "status", "diagnostic-code")
                    }
    return MailBounce(
        original_message_id=_original_id(original),
        action=(fields.get("action") or "failed").lower()[:32],
        status=(fields.get("status") or "")[:32],
        diagnostic=(fields.get("diagnostic-code") or "")[:500],
        recipients=tuple(recipients),
    )


def _original_id(part: Message | None) -> str | None:
    if part is None:
        return None
    if part.get_content_type() == "message/rfc822":
        payload = part.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else None
        return _first_id(_header(inner, "message-id")) if isinstance(inner, Message) else None
    headers = HeaderParser().parsestr(_decoded(part) or str(part.get_payload()))
    return _first_id(_header(headers, "message-id"))


def _attachments(message: Message) -> Iterator[MailAttachment]:
    for part in _parts(message):
        if not _is_attachment(part):
            continue
        if part.get_content_maintype() == "message":  # a forwarded mail, kept whole
            inner = part.get_payload()
            first = inner[0] if isinstance(inner, list) and inner else None
            data = first.as_bytes() if isinstance(first, Message) else b""
        else:
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
        yield MailAttachment(
            filename=_filename(part),
            content_type=part.get_content_type(),
            size=len(data),
            data=data,
        )


def _filename(part: Message) -> str:
    try:
        name = part.get_filename() or ""
    except Exception:
        name = ""
    name = _one_line(name).replace("\\", "/").rsplit("/", 1)[-1].strip(". ")
    return name[:_MAX_FILENAME] or "attachment"
