"""The client's consent to an intervention estimated above two tickets (R7, SPEC §6).

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

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.transactions import in_transaction

from bot.config import Config
from bot.domain.tickets import Refusal, client_confirm
from bot.i18n import Catalogs, Msg
from bot.mail import Mailer, MailError, consent_mail
from bot.rules import tickets_for
from bot.storage.models import ConfirmationToken, Ticket
from bot.storage.repo import apply_state, audit, ticket_state
from bot.web.tokens import looks_like_token, new_token, token_hash

__all__ = [
    "AUDIT_ACTION",
    "AUDIT_ACTOR",
    "ConfirmResult",
    "Confirmed",
    "ConsentProblem",
    "ConsentView",
    "ProblemKind",
    "confirm",
    "confirmation_link",
    "consent_status",
    "issue_confirmation",
    "request_consent",
    "summarize",
]

log = logging.getLogger(__name__)

AUDIT_ACTOR = "client:web"
AUDIT_ACTION = "client_confirmed"
SUMMARY_CHARS = 280
# Optimistic-lock retries when the ticket row changed under us (SQLite has no FOR UPDATE).
_ATTEMPTS = 3


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


class _Changed(Exception):
    """The ticket row changed between read and write: try again."""


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


async def request_consent(
    ticket: Ticket,
    *,
    config: Config,
    catalogs: Catalogs,
    mailer: Mailer,
    now: datetime,
) -> datetime:
    """Issue a link for the ticket's current estimate and e-mail it to the client.

    Returns when the link expires. Raises `MailError` when the e-mail cannot be sent (also when
    the ticket has no address); the stored link then simply goes unused, and asking again
    issues a new one that replaces it.
    """
    if ticket.estimate_minutes is None:
        raise ValueError(f"ticket {ticket.ref} has no estimate to confirm")
    if not ticket.email:
        raise MailError("the ticket has no e-mail address")
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
        catalogs.get(ticket.locale),
        ref=ticket.ref,
        tickets=tickets,
        estimate_minutes=ticket.estimate_minutes,
        link=confirmation_link(config.web.public_url, token),
        expires_at=expires_at,
        tz=ZoneInfo(config.service.timezone),
    )
    await mailer.send(ticket.email, subject, text, html)
    return expires_at


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
