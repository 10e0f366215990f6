"""The client's consent to an intervention estimated above two tickets (R7, SPEC §6).

This module owns the consent from end to end, whatever carries it: the rule texts the e-mail
and the page quote, the wording of the consent e-mail (`consent_mail`), issuing a link and the
e-mail carrying it (`prepare_consent`, one set of rules for every caller), what a link's page
shows (`consent_status`) and recording the consent (`confirm`). It does not send mail (the
caller hands the returned `Mail` to `bot.mail` or to an outbox) and renders no HTML page
(`bot.web.pages`, which imports the rule texts from here).

`issue_confirmation` stores a single-use, expiring link token (hashed) and returns the raw
token for the e-mail; `consent_status` tells what the link's page should show without changing
anything (mail scanners open links); `confirm` records the consent in one transaction.

Why a link can fail, checked in this order (the first that applies is reported, because it is
the most useful thing to tell the client):

1. `unknown` — no such token (mistyped, truncated or forged link);
2. `superseded` — a newer link was issued for the ticket (the estimate changed);
3. `used` — already used: the intervention was confirmed with it;
4. `expired` — past its `expires_at`;
5. `superseded` — the ticket's estimate is no longer the one the link was sent for;
6. `not_waiting` — the ticket no longer waits for the client (cancelled, re-estimated at two
   tickets or fewer, confirmed otherwise…); the lifecycle's refusal says why.
"""

from __future__ import annotations

import html as _html
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from bot.config import Config
from bot.domain.tickets import Refusal, client_confirm
from bot.i18n import N_, NP_, Catalogs, Msg, Translator
from bot.mail import Mail
from bot.rules import format_duration, tickets_for
from bot.storage.models import Client, ConfirmationToken, Ticket, UserPref
from bot.storage.repo import apply_state, audit, ticket_state
from bot.tokens import looks_like_token, new_token, token_hash

if TYPE_CHECKING:
    pass

__all__ = [
    "AUDIT_ACTION",
    "AUDIT_ACTOR",
    "CONFIRMATION_RULE",
    "LINK_EXPIRY",
    "RULE_INTRO",
    "ClientContact",
    "ConfirmResult",
    "Confirmed",
    "ConsentProblem",
    "ConsentRequest",
    "ConsentView",
    "NoAddress",
    "ProblemKind",
    "client_contact",
    "confirm",
    "confirmation_link",
    "consent_mail",
    "consent_status",
    "issue_confirmation",
    "prepare_consent",
    "summarize",
]

log = logging.getLogger(__name__)

AUDIT_ACTOR = "client:web"
AUDIT_ACTION = "client_confirmed"
SUMMARY_CHARS = 280
# Optimistic-lock retries when the ticket row changed under us (SQLite has no FOR UPDATE).
_ATTEMPTS = 3

# -- the rule, quoted by the e-mail and by the page -------------------------------------------

# Translators: the rule of the terms of service, quoted. The French terms say exactly:
# "Si l'intervention peut dépasser les deux (2) tickets une confirmation par courriel est
# demandée avant l'intervention."
CONFIRMATION_RULE = N_(
    "If the intervention may exceed two (2) tickets, a confirmation by e-mail is required "
    "before the intervention."
)
RULE_INTRO = N_("Our terms of service say:")
LINK_EXPIRY = N_("The link works once and expires on {expires_at}.")


class ProblemKind(StrEnum):
    UNKNOWN = "unknown"
    SUPERSEDED = "superseded"
    USED = "used"
    EXPIRED = "expired"
    NOT_WAITING = "not_waiting"


@dataclass(frozen=True, slots=True)
class ConsentView:
    """What the confirmation page shows."""

    ticket_id: int
    ref: str
    locale: str
    category: str
    summary: str
    estimate_minutes: int
    tickets: int
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class ConsentProblem:
    """Why a link cannot confirm. `reason` is the lifecycle's refusal for `not_waiting`."""

    kind: ProblemKind
    ticket_id: int | None = None
    ref: str | None = None
    locale: str | None = None
    used_at: datetime | None = None
    expires_at: datetime | None = None
    reason: Msg | None = None


@dataclass(frozen=True, slots=True)
class Confirmed:
    """A consent just recorded."""

    ticket_id: int
    ref: str
    locale: str
    tickets: int
    estimate_minutes: int
    confirmed_at: datetime


ConfirmResult = Confirmed | ConsentProblem


@dataclass(frozen=True, slots=True)
class ConsentRequest:
    """A link just issued for the ticket's estimate, and the e-mail carrying it (not sent)."""

    expires_at: datetime
    tickets: int
    mail: Mail


@dataclass(frozen=True, slots=True)
class NoAddress:
    """No link issued: neither the ticket nor its client has an e-mail address."""


@dataclass(frozen=True, slots=True)
class ClientContact:
    """Where and in which language to write to a ticket's client, as `prepare_consent` needs."""

    email: str | None = field(repr=False)  # personal data: kept out of logs
    locale: str


class _Changed(Exception):
    """The ticket row changed between read and write: try again."""


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


# -- issuing ----------------------------------------------------------------------------------


async def issue_confirmation(
    ticket: Ticket,
    *,
    tickets: int,
    estimate_minutes: int,
    now: datetime,
    days: int,
    secret: str,
) -> str:
    """Store a new link token for `ticket` and return it (raw; only its hash is kept).

    Earlier unused tokens of the ticket stop working at once (their expiry is set to `now`,
    and `consent_status` reports them as superseded by this one).
    """
    _require_aware(now)
    if days < 1:
        raise ValueError(f"a confirmation link must live at least one day, got {days}")
    token = new_token()
    async with in_transaction() as conn:
        await (
            ConfirmationToken.filter(ticket_id=ticket.id, used_at__isnull=True, expires_at__gt=now)
            .using_db(conn)
            .update(expires_at=now)
        )
        await ConfirmationToken.create(
            ticket_id=ticket.id,
            token_hash=token_hash(token, secret),
            tickets=tickets,
            estimate_minutes=estimate_minutes,
            created_at=now,
            expires_at=now + timedelta(days=days),
            using_db=conn,
        )
    log.info("consent: link issued for ticket %s (%d tickets)", ticket.ref, tickets)
    return token


def confirmation_link(public_url: str, token: str) -> str:
    """The URL of a consent page (`[web] public_url` + `/confirm/<token>`)."""
    return f"{public_url.rstrip('/')}/confirm/{token}"


async def client_contact(ticket: Ticket) -> ClientContact:
    """The client's address on file and current language: their preference (`UserPref`), else
    the ticket's locale. What the `!estimate` handler passes to `prepare_consent`."""
    client = await Client.get(id=ticket.client_id)  # type: ignore[attr-defined]
    pref = await UserPref.get_or_none(user_key=client.key)
    return ClientContact(email=client.email, locale=pref.locale if pref else ticket.locale)


async def prepare_consent(
    ticket: Ticket,
    *,
    client_email: str | None,
    locale: str,
    config: Config,
    catalogs: Catalogs,
    now: datetime,
) -> ConsentRequest | NoAddress:
    """Issue a link for the ticket's current estimate and write the e-mail that carries it.

    The rules, the same for every caller: the address is the ticket's, else `client_email`
    (the client's); the e-mail is in `locale` (the caller passes the client's current
    preference, else the ticket's locale). With no address, nothing is stored and `NoAddress`
    is returned. Otherwise the token row is written (in the caller's transaction when there is
    one, so it commits or rolls back with it) and the e-mail is returned, not sent: a link that
    goes unused is harmless, and asking again issues one that replaces it.
    """
    if ticket.estimate_minutes is None:
        raise ValueError(f"ticket {ticket.ref} has no estimate to confirm")
    address = ticket.email or client_email
    if not address:
        return NoAddress()
    tickets = tickets_for(ticket.estimate_minutes)
    days = config.service.confirmation_link_days
    token = await issue_confirmation(
        ticket,
        tickets=tickets,
        estimate_minutes=ticket.estimate_minutes,
        now=now,
        days=days,
        secret=config.web.secret,
    )
    expires_at = now + timedelta(days=days)
    subject, text, html = consent_mail(
        catalogs.get(locale),
        ref=ticket.ref,
        tickets=tickets,
        estimate_minutes=ticket.estimate_minutes,
        link=confirmation_link(config.web.public_url, token),
        expires_at=expires_at,
        tz=ZoneInfo(config.service.timezone),
    )
    mail = Mail(to=address, subject=subject, text=text, html=html)
    return ConsentRequest(expires_at=expires_at, tickets=tickets, mail=mail)


# -- reading ----------------------------------------------------------------------------------


async def consent_status(
    token: str, *, now: datetime, secret: str
) -> ConsentView | ConsentProblem:
    """What the page of `token` should show. Changes nothing."""
    _require_aware(now)
    row = await _find(token, secret, None)
    if row is None:
        return ConsentProblem(ProblemKind.UNKNOWN)
    ticket = await Ticket.get(id=row.ticket_id)
    return await _check(row, ticket, now, None) or _view(row, ticket)


async def _find(
    token: str, secret: str, conn: BaseDBAsyncClient | None
) -> ConfirmationToken | None:
    if not looks_like_token(token):
        return None
    query = ConfirmationToken.filter(token_hash=token_hash(token, secret))
    if conn is not None:
        query = query.using_db(conn)
    return await query.first()


async def _check(
    row: ConfirmationToken, ticket: Ticket, now: datetime, conn: BaseDBAsyncClient | None
) -> ConsentProblem | None:
    """The problem of a known token, or None when it can confirm now."""

    def problem(kind: ProblemKind, reason: Msg | None = None) -> ConsentProblem:
        return ConsentProblem(
            kind,
            ticket_id=ticket.id,
            ref=ticket.ref,
            locale=ticket.locale,
            used_at=row.used_at,
            expires_at=row.expires_at,
            reason=reason,
        )

    newer = ConfirmationToken.filter(ticket_id=ticket.id, id__gt=row.id)
    if conn is not None:
        newer = newer.using_db(conn)
    if await newer.exists():
        return problem(ProblemKind.SUPERSEDED)
    if row.used_at is not None:
        return problem(ProblemKind.USED)
    if now >= row.expires_at:
        return problem(ProblemKind.EXPIRED)
    if ticket.estimate_minutes != row.estimate_minutes:
        return problem(ProblemKind.SUPERSEDED)
    decision = client_confirm(ticket_state(ticket), now)
    if isinstance(decision, Refusal):
        return problem(ProblemKind.NOT_WAITING, decision.msg)
    return None


def _view(row: ConfirmationToken, ticket: Ticket) -> ConsentView:
    return ConsentView(
        ticket_id=ticket.id,
        ref=ticket.ref,
        locale=ticket.locale,
        category=ticket.category,
        summary=summarize(ticket.description),
        estimate_minutes=row.estimate_minutes,
        tickets=row.tickets,
        expires_at=row.expires_at,
    )


def summarize(text: str, limit: int = SUMMARY_CHARS) -> str:
    """The description on one paragraph, cut at a word boundary with an ellipsis."""
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    cut = flat[: limit - 1]
    if " " in cut[limit // 2 :]:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:.") + "…"


# -- confirming -------------------------------------------------------------------------------


async def confirm(token: str, *, now: datetime, secret: str) -> ConfirmResult:
    """Record the client's consent given through the link `token` (the page's POST).

    One transaction: the token and the ticket are re-checked, the token is marked used, the
    ticket moves on as `client_confirm` decides, and the audit entry is written. A second POST
    finds the token used and changes nothing.
    """
    _require_aware(now)
    for _ in range(_ATTEMPTS):
        try:
            return await _confirm_once(token, now=now, secret=secret)
        except _Changed:
            log.info("consent: ticket changed during confirmation, trying again")
    raise RuntimeError("the ticket kept changing during the confirmation")


async def _confirm_once(token: str, *, now: datetime, secret: str) -> ConfirmResult:
    async with in_transaction() as conn:
        found = await _find(token, secret, conn)
        if found is None:
            return ConsentProblem(ProblemKind.UNKNOWN)
        # Lock the ticket, then the token: the order of any code that changes a ticket and
        # then its tokens (a new estimate), so the two cannot deadlock (PostgreSQL).
        ticket = await Ticket.filter(id=found.ticket_id).using_db(conn).select_for_update().get()
        row = await ConfirmationToken.filter(id=found.id).using_db(conn).select_for_update().get()
        if problem := await _check(row, ticket, now, conn):
            return problem
        before = ticket_state(ticket)
        decision = client_confirm(before, now)
        if isinstance(decision, Refusal):  # _check asked the same question: cannot happen
            return ConsentProblem(ProblemKind.NOT_WAITING, reason=decision.msg)
        after = replace(decision, confirmed_tickets=row.tickets)
        version = ticket.version
        changes = {name: getattr(ticket, name) for name in apply_state(ticket, after)}
        # Single use even if two requests got this far at once: only one update matches.
        used = (
            await ConfirmationToken.filter(id=row.id, used_at__isnull=True)
            .using_db(conn)
            .update(used_at=now)
        )
        if used != 1:
            raise _Changed
        changed = await (
            Ticket.filter(id=ticket.id, version=version)
            .using_db(conn)
            .update(version=version + 1, **changes)
        )
        if changed != 1:
            raise _Changed
        # In the transaction: Tortoise routes queries through it (context variable).
        await audit(
            ticket,
            AUDIT_ACTOR,
            AUDIT_ACTION,
            before.status,
            after.status,
            f"tickets={row.tickets} estimate_minutes={row.estimate_minutes}",
            at=now,
        )
    log.info("consent: ticket %s confirmed by the client (%d tickets)", ticket.ref, row.tickets)
    return Confirmed(
        ticket_id=ticket.id,
        ref=ticket.ref,
        locale=ticket.locale,
        tickets=row.tickets,
        estimate_minutes=row.estimate_minutes,
        confirmed_at=now,
    )


def _require_aware(now: datetime) -> None:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("naive datetime refused: pass an aware datetime")
