"""Interventions, time and billing, closing and warranty (SPEC §2 R2, R7, R11–R13; §4; §6).

Staff: `!estimate`, `!log`, `!resolve`, `!unsolvable`, `!refuse-warranty`, `!report`, and the
✅ / ❌ reactions on a ticket's card (removing the ✅ undoes the confirmation while nothing is
logged). Clients: `!confirm` (chat mode only), `!accept` (or ✅ on the "resolved" message),
`!notsolved`, `!reopen`.

Decisions worth knowing:

* Every state change goes through `handlers.common.change` (audit entry + card refresh).
  Fields the lifecycle does not carry (`resolved_at`, `closed_reason`) are saved beside it.
* The consent e-mail is sent at the very end of the `!estimate` handler, inside the
  dispatcher's transaction, so a refusal earlier in the handler never sends a link. When it
  cannot be sent (no address, no mail server, SMTP failure) the ticket still waits for the
  client's consent and both staff and the client are told; `!estimate` again sends a new link
  (the previous one stops working).
* A ✅ the bot acted on is stored as a `Reaction` row, so its redaction after a restart still
  finds the card. Only the reactor (or another staff member) removing it counts, and only while
  the confirmation is still theirs.
* The client's ✅ on the "resolved" message is recognised by the message's event id: it is
  sent with `on_sent="resolved:<ticket id>"`, which the outbox records with the event id once
  sent (the deliverer ignores hooks it does not know). Clients behind a bridge type the
  commands instead (SPEC §9).
* The staff reason of `!unsolvable` stays internal (audit, quote request card); the reason of
  `!refuse-warranty` is told to the client (R13).
"""

from __future__ import annotations

import html
import logging
import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from bot import rules
from bot.cards import defuse
from bot.consent import AUDIT_ACTION, confirmation_link, consent_mail, issue_confirmation
from bot.dispatch import Context, DomainError, Router
from bot.domain import tickets as lifecycle
from bot.domain.tickets import Channel, Kind, Refusal, Status, TicketState
from bot.events import IncomingReaction, IncomingRedaction
from bot.i18n import N_, NP_, Msg
from bot.mail import MailError
from bot.storage import repo
from bot.storage.models import AuditEntry, Client, OutboxItem, Reaction, Ticket, TimeLog
from handlers.common import (
    NEED_REF,
    NOT_FOUND,
    REF_RE,
    bridged_nick,
    change,
    client_translator,
    find_ref,
    post_card,
    refresh_card,
    staff_ticket,
    tell_client,
)

if TYPE_CHECKING:
    from bot.services import Services

__all__ = ["on_client_confirmed", "router"]

log = logging.getLogger(__name__)

router = Router("interventions")

CONFIRM_KEYS = ("✅", "✔️")
DECLINE_KEYS = ("❌",)
RESOLVED_HOOK = "resolved:"

# -- messages -----------------------------------------------------------------------------------

_TICKETS = NP_("{n} ticket", "{n} tickets")

_BAD_DURATION = N_("{reason} Example: {example}")
_NEED_REASON = N_("Please give a reason, for example: {example}")

# !estimate
_ESTIMATED_STAFF = N_("{ref} estimated at {duration} ({tickets}). React ✅ on its card to start.")
_ESTIMATED_STAFF_CONSENT_EMAIL = N_(
    "{ref} estimated at {duration} ({tickets}): more than two tickets, so the client must "
    "confirm it first. A confirmation link is sent by e-mail; the card accepts ✅ once they "
    "have confirmed."
)
_ESTIMATED_STAFF_CONSENT_CHAT = N_(
    "{ref} estimated at {duration} ({tickets}): more than two tickets, so the client must "
    "confirm it first (!confirm in their room); the card accepts ✅ once they have confirmed."
)
_ESTIMATE_UPDATED_STAFF = N_(
    "Estimate of {ref} changed to {duration} ({tickets}): still within the confirmed tickets."
)
_ESTIMATED_CLIENT = N_(
    "The support team estimated your intervention {ref} at {duration}, that is {tickets}. "
    "It starts once a staff member confirms it."
)
_ESTIMATE_UPDATED_CLIENT = N_(
    "The estimate of your intervention {ref} is now {duration}, that is {tickets}, within what "
    "was confirmed."
)
_CONSENT_NEEDED_CLIENT = N_(
    "The support team estimated your intervention {ref} at {duration}, that is {n} tickets: "
    "more than two, so it starts only after your confirmation."
)
_CONSENT_BY_EMAIL_CLIENT = N_(
    "We have sent you an e-mail with a confirmation link; it works once and expires on "
    "{expires_at}."
)
_CONSENT_BY_CHAT_CLIENT = N_("To confirm it, type: !confirm {ref}")
_MAIL_FAILED_CLIENT = N_(
    "We could not send you the confirmation e-mail for {ref}. The support team has been told "
    "and will get back to you."
)
_MAIL_FAILED_STAFF = N_(
    "{ref} estimated at {duration} ({tickets}): more than two tickets, so the client must "
    "confirm it first, but the confirmation e-mail could not be sent ({why}). Once this is "
    "fixed, send the estimate again (!estimate {ref} {duration}) to send a new link."
)
_MAIL_NO_ADDRESS = N_("the ticket has no e-mail address")
_MAIL_NOT_CONFIGURED = N_("no mail server is configured")
_MAIL_SMTP = N_("the mail server refused it or could not be reached")

# !confirm
_CONFIRM_BY_EMAIL = N_(
    "Your confirmation of {ref} must be given through the link in the e-mail we sent you. "
    "If you did not receive it, tell us here and the support team will send a new one."
)
_CLIENT_CONFIRMED_THANKS = N_(
    "Thank you for confirming intervention {ref}. The support team has been told and will "
    "start it."
)
_CLIENT_CONFIRMED_STAFF = N_("The client confirmed {ref}: react ✅ on its card to start.")

# ✅ / ❌ on cards
_CONFIRM_REFUSED = N_("✅ on {ref} refused: {reason}")
_STAFF_CONFIRMED_STAFF = N_("{staff} confirmed {ref} for {tickets}: the work may start.")
_STAFF_CONFIRMED_CLIENT = N_(
    "Your intervention {ref} is confirmed for {tickets}: the support team is starting it."
)
_UNCONFIRMED_STAFF = N_(
    "{staff} withdrew the confirmation of {ref}: it waits for a ✅ on its card again."
)
_UNCONFIRM_KEPT_STAFF = N_("The confirmation of {ref} stays: {reason}")
_DECLINE_REFUSED = N_("❌ on {ref} refused: {reason}")
_DECLINED_STAFF = N_("{staff} declined {ref}; the client has been told.")
_DECLINED_CLIENT = N_(
    "We are sorry: the support team cannot take on your request {ref}. It is closed and "
    "nothing is billed for it. If you have a question about this, you can write to us here."
)

# !log
_LOGGED_STAFF = N_("Logged {duration} on {ref}: {total} in total, {tickets} billed.")
_LOGGED_WARRANTY_STAFF = N_(
    "Logged {duration} on {ref} as warranty rework: not billed ({tickets} billed)."
)
_CROSSED_STAFF = N_("⚠️ {ref} now bills {tickets}: logged time ({total}) started a new ticket.")
_CROSSED_CLIENT = N_("The time spent on your request {ref} now counts as {tickets}. {rule}")
_RULE_HOUR = N_("As a reminder, each started hour is one more ticket.")
_RULE_CALL = N_("As a reminder, for calls each started 45 minutes is one more ticket.")

# !resolve, !accept, !notsolved
_RESOLVED_STAFF = N_("{ref} is marked as resolved: waiting for the client's acceptance.")
_RESOLVED_CLIENT = N_(
    "The support team considers your request {ref} solved. If it is, type !accept {ref} (or "
    "react ✅ to this message). If something is still wrong, type !notsolved {ref} and tell us "
    "what."
)
_RESOLVED_CLIENT_TYPED = N_(
    "The support team considers your request {ref} solved. If it is, type !accept {ref}. If "
    "something is still wrong, type !notsolved {ref} and tell us what."
)
_ACCEPTED_CLIENT = N_(
    "Thank you! {ref} is closed. The adaptations made are guaranteed until {warranty_until}: "
    "if the problem comes back before then, type !reopen {ref}."
)
_ACCEPTED_CLIENT_NO_WARRANTY = N_("Thank you! {ref} is closed.")
_ACCEPTED_STAFF = N_("The client accepted the resolution of {ref}: closed, warranty until {when}.")
_ACCEPTED_STAFF_NO_WARRANTY = N_("The client accepted the resolution of {ref}: closed.")
_NOT_SOLVED_CLIENT = N_(
    "Noted: {ref} is back with the support team. Please tell us here what is still wrong."
)
_NOT_SOLVED_STAFF = N_("The client says {ref} is not solved: it is back in progress.")

# !reopen, !refuse-warranty
_REOPENED_CLIENT = N_(
    "{ref} is reopened under the warranty, at no extra ticket. Please describe here what is "
    "wrong again; the support team has been told."
)
_REOPENED_STAFF = N_(
    "The client reopened {ref} under the warranty (no new ticket). If it is not covered "
    "(software update, hardware or hosting limits, changes made by others), refuse it: "
    "!refuse-warranty {ref} <reason>"
)
_REOPEN_TOO_LATE = N_(
    "{reason} To open a new ticket, simply describe the problem in a message: I will guide you."
)
_WARRANTY_REFUSED_CLIENT = N_(
    "The support team cannot handle {ref} under the warranty: {reason}. The one-week warranty "
    "does not cover software updates, hardware or hosting limits, or changes made by others. "
    "To open a new ticket, simply describe the problem in a message."
)
_WARRANTY_REFUSED_STAFF = N_("Warranty refused for {ref}; the client has been told the reason.")

# !unsolvable
_UNSOLVABLE_CANCELLED_CLIENT = N_(
    "We are sorry: the support team could not solve {ref} within the support service. As the "
    "assistance was by messaging only, the ticket is cancelled and not billed. We opened the "
    "quote request {quote} for a specific offer: the team will contact you about it."
)
_UNSOLVABLE_BILLED_CLIENT = N_(
    "We are sorry: the support team could not solve {ref} within the support service. The "
    "work already done stays billed ({tickets}). We opened the quote request {quote} for a "
    "specific offer: the team will contact you about it."
)
_UNSOLVABLE_FREE_CLIENT = N_(
    "We are sorry: the support team could not solve {ref} within the support service. Nothing "
    "is billed for it. We opened the quote request {quote} for a specific offer: the team "
    "will contact you about it."
)
_UNSOLVABLE_STAFF = N_(
    "{ref} closed as {status} ({tickets} billed); quote request {quote} opened for a specific "
    "offer."
)
_STATUS_CANCELLED = N_("cancelled")
_STATUS_UNSOLVABLE = N_("unsolvable")

# !report
_REPORT_STAFF_ROOM_ONLY = N_("Reports are shown in the staff room only.")
_REPORT_BAD_MONTH = N_("Please give a month as YYYY-MM, for example: !report {example}")
_REPORT_EMPTY = N_("Nothing was opened in {month}.")
_REPORT_TITLE = NP_(
    "Report {month}: {n} client (requests opened in the month, billed as of today)",
    "Report {month}: {n} clients (requests opened in the month, billed as of today)",
)
_COL_CLIENT = N_("Client")
_COL_TICKETS = N_("Tickets")
_COL_BILLED = N_("Billed")
_COL_MESSAGING = N_("Messaging")
_COL_VIDEO = N_("Video")
_COL_PHONE = N_("Phone")
_COL_INTERVENTION = N_("Intervention")
_COL_QUESTIONS = N_("Questions")
_COL_QUOTES = N_("Quotes")
_TOTAL = N_("Total")


def _tickets(n: int) -> Msg:
    return Msg(_TICKETS[0], {}, _TICKETS[1], n)


# -- loading tickets ----------------------------------------------------------------------------


async def _locked(ticket_id: int) -> Ticket:
    """The ticket row, locked until the handler's transaction ends (PostgreSQL; SQLite
    serialises writers anyway), so a web confirmation cannot interleave with a decision."""
    return await Ticket.filter(id=ticket_id).select_for_update().get()


async def _staff_ticket(ctx: Context) -> Ticket:
    found = await staff_ticket(ctx)
    return await _locked(found.id)


async def _client_ticket(ctx: Context, statuses: frozenset[Status]) -> Ticket:
    """The client's ticket named in the arguments; without a reference, their only ticket in
    one of `statuses`. Someone else's ticket is "not found"."""
    ref = find_ref(ctx.args)
    if ref is None:
        candidates = await Ticket.filter(
            client__key=ctx.sender.key, status__in=[str(s) for s in statuses]
        ).limit(2)
        if len(candidates) == 1:
            return await _locked(candidates[0].id)
        raise DomainError(Msg(NEED_REF, {"command": ctx.command, "example": "SP-2026-0042"}))
    ticket = await repo.ticket_for_client(ref, ctx.sender.key)
    if ticket is None:
        raise DomainError(Msg(NOT_FOUND, {"ref": ref}))
    return await _locked(ticket.id)


def _rest(args: str) -> str:
    """The arguments after the reference."""
    return REF_RE.sub("", args, count=1).strip()


def _decided(result: TicketState | Refusal) -> TicketState:
    if isinstance(result, Refusal):
        raise DomainError(result.msg)
    return result


async def _save_extra(ticket: Ticket, **values: Any) -> None:
    for name, value in values.items():
        setattr(ticket, name, value)
    await ticket.save(update_fields=list(values))


# -- !estimate and the client's consent ---------------------------------------------------------


@router.command(
    "estimate",
    "estimer",
    help=N_("Estimate an intervention; above two tickets the client must confirm first."),
    usage="SP-… 2h30",
    staff=True,
)
async def estimate(ctx: Context) -> None:
    ticket = await _staff_ticket(ctx)
    try:
        minutes = rules.parse_duration(_rest(ctx.args))
    except rules.DurationError as error:
        example = f"!{ctx.command} {ticket.ref} 2h30"
        raise DomainError(Msg(_BAD_DURATION, {"reason": error.msg, "example": example})) from None
    state = await change(
        ctx,
        ticket,
        lifecycle.set_estimate(repo.ticket_state(ticket), minutes),
        action="estimate",
        detail=f"estimate_minutes={minutes}",
    )
    n = rules.tickets_for(minutes)
    params = {
        "ref": ticket.ref,
        "duration": rules.format_duration(minutes),
        "tickets": _tickets(n),
    }
    if state.status is Status.CONFIRMED:
        ctx.reply(Msg(_ESTIMATE_UPDATED_STAFF, params))
        await tell_client(ctx, ticket, Msg(_ESTIMATE_UPDATED_CLIENT, params))
        return
    if state.status is not Status.AWAITING_CLIENT_CONFIRMATION:
        ctx.reply(Msg(_ESTIMATED_STAFF, params))
        await tell_client(ctx, ticket, Msg(_ESTIMATED_CLIENT, params))
        return
    warned = Msg(_CONSENT_NEEDED_CLIENT, {**params, "n": n})
    if ctx.services.config.service.confirmation == "chat":
        ctx.reply(Msg(_ESTIMATED_STAFF_CONSENT_CHAT, params))
        await tell_client(ctx, ticket, warned, Msg(_CONSENT_BY_CHAT_CLIENT, {"ref": ticket.ref}))
        return
    # Last: nothing after this can refuse, so a link is never mailed for a rolled-back change.
    outcome = await _mail_consent(ctx, ticket, n)
    if isinstance(outcome, datetime):
        ctx.reply(Msg(_ESTIMATED_STAFF_CONSENT_EMAIL, params))
        await tell_client(
            ctx, ticket, warned, Msg(_CONSENT_BY_EMAIL_CLIENT, {"expires_at": outcome})
        )
        return
    await tell_client(ctx, ticket, warned, Msg(_MAIL_FAILED_CLIENT, {"ref": ticket.ref}))
    ctx.send_staff(Msg(_MAIL_FAILED_STAFF, {**params, "why": outcome}))


async def _mail_consent(ctx: Context, ticket: Ticket, tickets: int) -> datetime | Msg:
    """Issue a link and e-mail it in the client's language: when it expires, or why not sent."""
    services = ctx.services
    client = await Client.get(id=ticket.client_id)  # type: ignore[attr-defined]
    address = ticket.email or client.email
    if not address:
        log.warning("consent mail for %s not sent: no address", ticket.ref)
        return Msg(_MAIL_NO_ADDRESS)
    if services.mailer is None:
        log.warning("consent mail for %s not sent: no mailer", ticket.ref)
        return Msg(_MAIL_NOT_CONFIGURED)
    assert ticket.estimate_minutes is not None
    days = services.config.service.confirmation_link_days
    token = await issue_confirmation(
        ticket,
        tickets=tickets,
        estimate_minutes=ticket.estimate_minutes,
        now=ctx.now,
        days=days,
        secret=services.config.web.secret,
    )
    expires_at = ctx.now + timedelta(days=days)
    subject, text, body_html = consent_mail(
        await client_translator(ctx, ticket),
        ref=ticket.ref,
        tickets=tickets,
        estimate_minutes=ticket.estimate_minutes,
        link=confirmation_link(services.config.web.public_url, token),
        expires_at=expires_at,
        tz=ctx.tz,
    )
    try:
        await services.mailer.send(address, subject, text, body_html)
    except MailError as error:  # its text never holds the address
        log.warning("consent mail for %s not sent: %s", ticket.ref, error)
        return Msg(_MAIL_SMTP)
    return expires_at


_CONFIRMABLE = frozenset({Status.AWAITING_CLIENT_CONFIRMATION})


@router.command(
    "confirm",
    "confirmer",
    help=N_("Confirm an intervention estimated at more than two tickets."),
    usage="SP-…",
)
async def confirm(ctx: Context) -> None:
    ticket = await _client_ticket(ctx, _CONFIRMABLE)
    decision = _decided(lifecycle.client_confirm(repo.ticket_state(ticket), ctx.now))
    if ctx.services.config.service.confirmation != "chat":
        ctx.reply(Msg(_CONFIRM_BY_EMAIL, {"ref": ticket.ref}))
        return
    await change(ctx, ticket, decision, action=AUDIT_ACTION, detail="chat", actor=ctx.sender.key)
    ctx.reply(Msg(_CLIENT_CONFIRMED_THANKS, {"ref": ticket.ref}))
    ctx.send_staff(Msg(_CLIENT_CONFIRMED_STAFF, {"ref": ticket.ref}))


async def on_client_confirmed(services: Services, ticket_id: int) -> None:
    """Called by the web server after a consent given through the e-mail link: refresh the
    card, tell the staff room and thank the client, once per confirmation."""
    dispatcher = services.jobs
    if dispatcher is None:
        log.warning("client confirmation of ticket %s: no dispatcher to tell anyone", ticket_id)
        return
    entry = (
        await AuditEntry.filter(ticket_id=ticket_id, action=AUDIT_ACTION).order_by("-id").first()
    )
    ticket = await Ticket.get_or_none(id=ticket_id)
    if entry is None or ticket is None:
        log.warning("client confirmation of ticket %s: nothing recorded", ticket_id)
        return

    async def announce(ctx: Context) -> None:
        current = await Ticket.get(id=ticket_id)
        await refresh_card(ctx, current)
        ctx.send_staff(Msg(_CLIENT_CONFIRMED_STAFF, {"ref": current.ref}))
        await tell_client(ctx, current, Msg(_CLIENT_CONFIRMED_THANKS, {"ref": current.ref}))

    await dispatcher.run_job(
        f"client-confirmed:{ticket_id}:{entry.id}",
        announce,
        room_id=ticket.room_id,
        locale=ticket.locale,
    )


# -- reactions on cards -------------------------------------------------------------------------


async def _card_ticket(ctx: Context, target: str) -> Ticket | None:
    """The ticket whose card is `target`, for a staff member's reaction in the staff room.
    Anyone else (clients, bridges) gets no answer at all."""
    if not ctx.in_staff_room or not ctx.is_staff:
        return None
    found = await Ticket.get_or_none(card_event_id=target)
    return None if found is None else await _locked(found.id)


@router.reaction(*CONFIRM_KEYS)
async def on_check(ctx: Context) -> None:
    event = ctx.event
    assert isinstance(event, IncomingReaction)
    if ctx.in_staff_room:
        await _staff_confirm(ctx, event)
    else:
        await _accept_by_reaction(ctx, event)


async def _staff_confirm(ctx: Context, event: IncomingReaction) -> None:
    ticket = await _card_ticket(ctx, event.target_event_id)
    if ticket is None:
        return
    staff = ctx.sender.user_id
    result = lifecycle.staff_confirm(repo.ticket_state(ticket), staff, ctx.now)
    if isinstance(result, Refusal):
        raise DomainError(Msg(_CONFIRM_REFUSED, {"ref": ticket.ref, "reason": result.msg}))
    state = await change(ctx, ticket, result, action="staff_confirmed", actor=staff)
    await Reaction.update_or_create(
        defaults={
            "room_id": event.room_id,
            "target_event_id": event.target_event_id,
            "sender": staff,
            "key": event.key,
            "at": ctx.now,
        },
        event_id=event.event_id,
    )
    tickets = _tickets(state.confirmed_tickets or 0)
    ctx.reply(Msg(_STAFF_CONFIRMED_STAFF, {"staff": staff, "ref": ticket.ref, "tickets": tickets}))
    await tell_client(
        ctx, ticket, Msg(_STAFF_CONFIRMED_CLIENT, {"ref": ticket.ref, "tickets": tickets})
    )


@router.reaction(*DECLINE_KEYS)
async def on_cross(ctx: Context) -> None:
    event = ctx.event
    assert isinstance(event, IncomingReaction)
    ticket = await _card_ticket(ctx, event.target_event_id)
    if ticket is None:
        return
    staff = ctx.sender.user_id
    result = lifecycle.decline(repo.ticket_state(ticket))
    if isinstance(result, Refusal):
        raise DomainError(Msg(_DECLINE_REFUSED, {"ref": ticket.ref, "reason": result.msg}))
    await change(ctx, ticket, result, action="declined", actor=staff)
    ctx.reply(Msg(_DECLINED_STAFF, {"staff": staff, "ref": ticket.ref}))
    await tell_client(ctx, ticket, Msg(_DECLINED_CLIENT, {"ref": ticket.ref}))


def _is_confirm_key(key: str) -> bool:
    return key.replace("\ufe0f", "") in {k.replace("\ufe0f", "") for k in CONFIRM_KEYS}


@router.redaction()
async def on_redaction(ctx: Context) -> None:
    """A ✅ removed from a card undoes the confirmation, unless work was logged since."""
    event = ctx.event
    assert isinstance(event, IncomingRedaction)
    reaction = await Reaction.get_or_none(event_id=event.redacts)
    if reaction is None or not _is_confirm_key(reaction.key):
        return
    if event.sender != reaction.sender and not ctx.is_staff:
        return
    await reaction.delete()
    found = await Ticket.get_or_none(card_event_id=reaction.target_event_id)
    if found is None:
        return
    ticket = await _locked(found.id)
    if ticket.staff_confirmed_by != reaction.sender:
        return  # confirmed again since, by someone else's ✅: that one stands
    result = lifecycle.staff_unconfirm(repo.ticket_state(ticket))
    if isinstance(result, Refusal):
        if ticket.status == Status.CONFIRMED:
            ctx.send_staff(Msg(_UNCONFIRM_KEPT_STAFF, {"ref": ticket.ref, "reason": result.msg}))
        return
    await change(ctx, ticket, result, action="staff_unconfirmed", actor=event.sender)
    ctx.send_staff(Msg(_UNCONFIRMED_STAFF, {"staff": event.sender, "ref": ticket.ref}))


# -- time and billing ---------------------------------------------------------------------------

#: How many words a duration may take ("1 h 30 min").
_DURATION_WORDS = 4


def _split_duration(text: str) -> tuple[int, str | None]:
    """(minutes, note) from "1h20 fixed the theme": the longest leading words that parse."""
    words = text.split()
    for count in range(min(_DURATION_WORDS, len(words)), 1, -1):
        try:
            minutes = rules.parse_duration(" ".join(words[:count]))
        except rules.DurationError:
            continue
        return minutes, " ".join(words[count:]) or None
    # One word, or nothing: its own error tells the accepted forms.
    minutes = rules.parse_duration(words[0] if words else "")
    return minutes, " ".join(words[1:]) or None


@router.command(
    "log",
    "temps",
    help=N_("Log time spent on a ticket, with an optional note."),
    usage="SP-… 1h20 [note]",
    staff=True,
)
async def log_time(ctx: Context) -> None:
    ticket = await _staff_ticket(ctx)
    try:
        minutes, note = _split_duration(_rest(ctx.args))
    except rules.DurationError as error:
        example = f"!{ctx.command} {ticket.ref} 1h20"
        raise DomainError(Msg(_BAD_DURATION, {"reason": error.msg, "example": example})) from None
    result = lifecycle.log_time(repo.ticket_state(ticket), minutes, ctx.now)
    if isinstance(result, Refusal):
        raise DomainError(result.msg)
    staff = ctx.sender.user_id
    await TimeLog.create(ticket_id=ticket.id, staff=staff, minutes=minutes, note=note, at=ctx.now)
    detail = f"minutes={minutes}" + (" warranty" if result.under_warranty else "")
    state = await change(ctx, ticket, result.state, action="log", detail=detail, actor=staff)
    params = {
        "ref": ticket.ref,
        "duration": rules.format_duration(minutes),
        "total": rules.format_duration(state.minutes_logged),
        "tickets": _tickets(result.tickets_after),
    }
    if result.under_warranty:
        ctx.reply(Msg(_LOGGED_WARRANTY_STAFF, params))
        return
    ctx.reply(Msg(_LOGGED_STAFF, params))
    if result.crossed_ticket:
        ctx.send_staff(Msg(_CROSSED_STAFF, params))
        unit = lifecycle.billing_unit_minutes(state.channel)
        rule = Msg(_RULE_CALL if unit == rules.CALL_UNIT_MINUTES else _RULE_HOUR)
        await tell_client(
            ctx,
            ticket,
            Msg(_CROSSED_CLIENT, {"ref": ticket.ref, "tickets": params["tickets"], "rule": rule}),
        )


# -- closing ------------------------------------------------------------------------------------


@router.command(
    "resolve",
    "resoudre",
    help=N_("Mark a ticket as solved and ask the client to accept it."),
    usage="SP-…",
    staff=True,
)
async def resolve(ctx: Context) -> None:
    ticket = await _staff_ticket(ctx)
    result = lifecycle.resolve(repo.ticket_state(ticket))
    await change(ctx, ticket, result, action="resolved", actor=ctx.sender.user_id)
    await _save_extra(ticket, resolved_at=ctx.now)
    ctx.reply(Msg(_RESOLVED_STAFF, {"ref": ticket.ref}))
    client = await Client.get(id=ticket.client_id)  # type: ignore[attr-defined]
    bridged = bridged_nick(client.key, ticket.room_id) is not None
    # The outbox keeps this message's event id with the hook: a ✅ on it is an acceptance.
    await tell_client(
        ctx,
        ticket,
        Msg(_RESOLVED_CLIENT_TYPED if bridged else _RESOLVED_CLIENT, {"ref": ticket.ref}),
        on_sent=f"{RESOLVED_HOOK}{ticket.id}",
    )


_RESOLVED_ONLY = frozenset({Status.RESOLVED})


@router.command("accept", "accepter", help=N_("Accept the resolution of a ticket."), usage="SP-…")
async def accept(ctx: Context) -> None:
    ticket = await _client_ticket(ctx, _RESOLVED_ONLY)
    await _accept(ctx, ticket)


async def _accept(ctx: Context, ticket: Ticket) -> None:
    days = ctx.services.config.service.warranty_days
    result = lifecycle.accept(repo.ticket_state(ticket), ctx.now, days)
    state = await change(ctx, ticket, result, action="accepted", actor=ctx.sender.key)
    if state.warranty_until is None:
        await tell_client(ctx, ticket, Msg(_ACCEPTED_CLIENT_NO_WARRANTY, {"ref": ticket.ref}))
        ctx.send_staff(Msg(_ACCEPTED_STAFF_NO_WARRANTY, {"ref": ticket.ref}))
        return
    until = state.warranty_until
    await tell_client(
        ctx, ticket, Msg(_ACCEPTED_CLIENT, {"ref": ticket.ref, "warranty_until": until})
    )
    ctx.send_staff(Msg(_ACCEPTED_STAFF, {"ref": ticket.ref, "when": until}))


async def _accept_by_reaction(ctx: Context, event: IncomingReaction) -> None:
    """A ✅ on the bot's "resolved" message, by the ticket's own client."""
    sent = await OutboxItem.get_or_none(
        event_id=event.target_event_id,
        room_id=event.room_id,
        on_sent__startswith=RESOLVED_HOOK,
    )
    if sent is None or sent.on_sent is None:
        return
    found = await Ticket.get_or_none(id=int(sent.on_sent[len(RESOLVED_HOOK) :]))
    if found is None:
        return
    client = await Client.get(id=found.client_id)  # type: ignore[attr-defined]
    if client.key != ctx.sender.key:
        return
    ticket = await _locked(found.id)
    if ticket.status != Status.RESOLVED:
        return  # already answered (by command or an earlier ✅)
    await _accept(ctx, ticket)


@router.command(
    "notsolved",
    "pasresolu",
    help=N_("Tell the support team that a ticket marked as solved is not."),
    usage="SP-…",
)
async def not_solved(ctx: Context) -> None:
    ticket = await _client_ticket(ctx, _RESOLVED_ONLY)
    await _not_solved(ctx, ticket, lifecycle.reject_resolution(repo.ticket_state(ticket)))


async def _not_solved(ctx: Context, ticket: Ticket, result: TicketState | Refusal) -> None:
    await change(ctx, ticket, result, action="not_solved", actor=ctx.sender.key)
    ctx.reply(Msg(_NOT_SOLVED_CLIENT, {"ref": ticket.ref}))
    ctx.send_staff(Msg(_NOT_SOLVED_STAFF, {"ref": ticket.ref}))


_REOPENABLE = frozenset({Status.CLOSED, Status.RESOLVED})


@router.command(
    "reopen",
    "rouvrir",
    help=N_("Reopen a closed ticket during its one-week warranty."),
    usage="SP-…",
)
async def reopen(ctx: Context) -> None:
    ticket = await _client_ticket(ctx, _REOPENABLE)
    state = repo.ticket_state(ticket)
    if state.status is Status.RESOLVED:
        await _not_solved(ctx, ticket, lifecycle.reject_resolution(state))
        return
    result = lifecycle.reopen(state, ctx.now)
    if isinstance(result, Refusal):
        if state.status is Status.CLOSED and state.kind is Kind.TICKET:
            raise DomainError(Msg(_REOPEN_TOO_LATE, {"reason": result.msg}))
        raise DomainError(result.msg)
    await change(ctx, ticket, result, action="reopened", actor=ctx.sender.key)
    ctx.reply(Msg(_REOPENED_CLIENT, {"ref": ticket.ref}))
    ctx.send_staff(Msg(_REOPENED_STAFF, {"ref": ticket.ref}))


def _reason(ctx: Context, ref: str) -> str:
    reason = _rest(ctx.args)
    if not reason:
        example = f"!{ctx.command} {ref} …"
        raise DomainError(Msg(_NEED_REASON, {"example": example}))
    return reason


@router.command(
    "refuse-warranty",
    "refuser-garantie",
    help=N_("Refuse a warranty reopening, with the reason told to the client."),
    usage="SP-… <reason>",
    staff=True,
)
async def refuse_warranty(ctx: Context) -> None:
    ticket = await _staff_ticket(ctx)
    reason = _reason(ctx, ticket.ref)
    result = lifecycle.refuse_warranty(repo.ticket_state(ticket))
    staff = ctx.sender.user_id
    await change(ctx, ticket, result, action="warranty_refused", detail=reason, actor=staff)
    await _save_extra(ticket, closed_reason=reason)
    ctx.reply(Msg(_WARRANTY_REFUSED_STAFF, {"ref": ticket.ref}))
    await tell_client(
        ctx, ticket, Msg(_WARRANTY_REFUSED_CLIENT, {"ref": ticket.ref, "reason": reason})
    )


@router.command(
    "unsolvable",
    "insoluble",
    help=N_("Close a ticket support cannot solve and open a quote request (R11)."),
    usage="SP-… <reason>",
    staff=True,
)
async def unsolvable(ctx: Context) -> None:
    ticket = await _staff_ticket(ctx)
    reason = _reason(ctx, ticket.ref)
    staff = ctx.sender.user_id
    result = lifecycle.mark_unsolvable(repo.ticket_state(ticket))
    state = await change(ctx, ticket, result, action="unsolvable", detail=reason, actor=staff)
    await _save_extra(ticket, closed_reason=reason)
    quote = await _open_quote(ctx, ticket, reason)
    billed = lifecycle.billed_tickets(state)
    params = {"ref": ticket.ref, "quote": quote.ref, "tickets": _tickets(billed)}
    if state.status is Status.CANCELLED:
        client_msg, status = _UNSOLVABLE_CANCELLED_CLIENT, _STATUS_CANCELLED
    else:
        client_msg = _UNSOLVABLE_BILLED_CLIENT if billed else _UNSOLVABLE_FREE_CLIENT
        status = _STATUS_UNSOLVABLE
    ctx.reply(Msg(_UNSOLVABLE_STAFF, {**params, "status": Msg(status)}))
    await tell_client(ctx, ticket, Msg(client_msg, params))


async def _open_quote(ctx: Context, ticket: Ticket, reason: str) -> Ticket:
    """The quote request for a specific offer (R11), with its card in the staff room."""
    prefix = ctx.services.config.service.quote_prefix
    ref = await repo.allocate_ref(prefix, ctx.now.astimezone(ctx.tz).year)
    initial = lifecycle.initial_state(Kind.QUOTE, Channel.MESSAGING)
    quote = await Ticket.create(
        ref=ref,
        kind=str(initial.kind),
        status=str(initial.status),
        category=ticket.category,
        channel=str(initial.channel),
        client_id=ticket.client_id,  # type: ignore[attr-defined]
        room_id=ticket.room_id,
        locale=ticket.locale,
        # Staff-facing: the card shows why the offer is needed.
        description=f"{ticket.description}\n\n— {ticket.ref}: {reason}",
        instance_url=ticket.instance_url,
        instance_version=ticket.instance_version,
        survey_id=ticket.survey_id,
        email=ticket.email,
        created_at=ctx.now,
        converted_from=ticket.ref,
    )
    await repo.audit(
        quote, ctx.sender.user_id, "opened", None, quote.status, f"from {ticket.ref}", at=ctx.now
    )
    await post_card(ctx, quote)
    ctx.services.metrics.tickets.labels(kind=str(Kind.QUOTE)).inc()
    return quote


# -- the monthly report -------------------------------------------------------------------------

_MONTH_RE = re.compile(r"^\s*(\d{4})-(\d{1,2})\s*$")
_REPORT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("tickets", _COL_TICKETS),
    ("billed_tickets", _COL_BILLED),
    (f"minutes_{Channel.MESSAGING}", _COL_MESSAGING),
    (f"minutes_{Channel.VIDEO}", _COL_VIDEO),
    (f"minutes_{Channel.PHONE}", _COL_PHONE),
    (f"minutes_{Channel.INTERVENTION}", _COL_INTERVENTION),
    ("questions", _COL_QUESTIONS),
    ("quotes", _COL_QUOTES),
)


@router.command(
    "report",
    "rapport",
    help=N_("Monthly report per client: requests, billed tickets, time by channel."),
    usage="2026-11",
    staff=True,
)
async def report(ctx: Context) -> None:
    if not ctx.in_staff_room:
        raise DomainError(Msg(_REPORT_STAFF_ROOM_ONLY))
    local_now = ctx.now.astimezone(ctx.tz)
    if ctx.args.strip():
        match = _MONTH_RE.match(ctx.args)
        if (
            match is None
            or not 1 <= int(match.group(2)) <= 12
            or not 1970 <= int(match.group(1)) <= 9998
        ):
            example = f"{local_now.year:04d}-{local_now.month:02d}"
            raise DomainError(Msg(_REPORT_BAD_MONTH, {"example": example}))
        year, month = int(match.group(1)), int(match.group(2))
    else:
        year, month = local_now.year, local_now.month
    label = f"{year:04d}-{month:02d}"
    rows = await repo.report_month(year, month, ctx.tz)
    if not rows:
        ctx.reply(Msg(_REPORT_EMPTY, {"month": label}))
        return
    plain, body_html = render_report(ctx, label, rows)
    ctx.reply(plain, html_body=body_html)


def _cell(column: str, value: int) -> str:
    if column.startswith("minutes_"):
        return rules.format_duration(value) if value else "0"
    return str(value)


def _width(text: str) -> int:
    return len(text.replace("\u2060", ""))  # the invisible joiner `defuse` adds


def render_report(ctx: Context, label: str, rows: list[dict[str, Any]]) -> tuple[str, str]:
    """A small table: plain text with aligned columns, and an HTML table."""
    tr = ctx.tr
    header = [tr.gettext(_COL_CLIENT), *(tr.gettext(title) for _, title in _REPORT_COLUMNS)]
    body: list[list[str]] = []
    totals = dict.fromkeys((column for column, _ in _REPORT_COLUMNS), 0)
    for row in rows:
        name = defuse(str(row.get("client_name") or row["client"]))
        body.append([name, *(_cell(column, int(row[column])) for column, _ in _REPORT_COLUMNS)])
        for column in totals:
            totals[column] += int(row[column])
    total = [tr.gettext(_TOTAL), *(_cell(column, value) for column, value in totals.items())]
    title = ctx.render(Msg(_REPORT_TITLE[0], {"month": label}, _REPORT_TITLE[1], len(rows)))
    table = [header, *body, total]
    widths = [max(_width(line[i]) for line in table) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [cells[0] + " " * (widths[0] - _width(cells[0]))]
        padded += [
            " " * (width - _width(cell)) + cell
            for cell, width in zip(cells[1:], widths[1:], strict=True)
        ]
        return " | ".join(padded).rstrip()

    plain = "\n".join([title, *(line(cells) for cells in table)])

    def html_row(cells: list[str], tag: str) -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"

    body_html = (
        f"<p><b>{html.escape(title)}</b></p><table><thead>{html_row(header, 'th')}</thead>"
        "<tbody>"
        + "".join(html_row(cells, "td") for cells in body)
        + f"</tbody><tfoot>{html_row(total, 'th')}</tfoot></table>"
    )
    return plain, body_html
