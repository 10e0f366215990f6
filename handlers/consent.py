"""Estimates and the consent to them, before any work (SPEC §2 R7; §4; §6).

Staff: `!estimate`, and ✅ on a ticket's card to confirm it (removing that ✅ undoes the
confirmation while nothing is logged). Clients: `!confirm` (chat mode only), or the consent
given on the web page, which the web server announces through `on_client_confirmed`. The ❌ on
a card (decline) and the client's ✅ on the "resolved" message belong to `handlers.closing`.

Decisions worth knowing:

* Every state change goes through `handlers.common.change` (audit entry + card refresh).
* The consent e-mail is issued by `bot.consent.prepare_consent` (the one path for a link: its
  token row is written in the handler's transaction) and handed to the outbox, which sends it
  after the commit: a refusal or a rolled-back transaction never mails a link whose token does
  not exist. The staff and client messages that depend on the mail are held with it and
  posted once its outcome is known. When it cannot be sent (no address or no mail server: no
  link is issued and this is told at once; SMTP failure: told once the outbox gives up) the
  ticket still waits for the client's consent and both staff and the client are told;
  `!estimate` again sends a new link (the previous one stops working).
* A ✅ the bot acted on is stored as a `Reaction` row, so its redaction after a restart still
  finds the card. Only its removal in the staff room by someone who is staff at that moment
  (the reactor or another member) counts, and only while the confirmation is still theirs.
* **One click once the client consents** (issue #16 §4). A staff ✅ on a card that waits for
  the client's consent is refused (R7) but remembered (`Ticket.early_confirm_by`,
  `early_confirm_event_id`, and its `Reaction` row); removing it forgets it. When the client
  consents (chat `!confirm`, or the web page through `on_client_confirmed`):
  - by default the staff room gets a "start now?" message (tagged `start:<ticket id>`, so its
    event id is `Ticket.start_prompt_event_id`) carrying the bot's own ✅: pressing it adds the
    staff member's ✅, a different sender's, which the homeserver accepts — whereas the early
    ✅ still on the card would be toggled off by Element's first click. The card's ✅ and the
    typed `!confirm REF` in the staff room work as well;
  - with `service.confirm_on_early_check = true`, the remembered ✅ confirms at once, in the
    name of who gave it (if they are still staff; else the prompt is posted).
  Either way `staff_confirmed_by` and the audit entry (`staff_confirmed`, detail `reaction`,
  `prompt`, `command` or `early`) say who confirmed and how. Once confirmed, an early ✅ that
  did not do it is forgotten: removing it later undoes nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from bot import rules
from bot.cards import BRIDGE_KEY_PREFIX, defuse
from bot.consent import AUDIT_ACTION, NoAddress, client_contact, prepare_consent
from bot.domain import balance as prepaid
from bot.domain import tickets as lifecycle
from bot.domain.tickets import Refusal, Status, TicketState
from bot.events import IncomingReaction, IncomingRedaction
from bot.i18n import N_, Msg
from bot.routing import Context, DomainError, Router
from bot.storage import balances, repo
from bot.storage.models import AuditEntry, Client, Reaction, Ticket
from handlers.common import (
    CONFIRM_KEYS,
    bad_duration,
    balance_subject,
    balance_tickets,
    card_ticket,
    change,
    locked,
    locked_client_ticket,
    locked_staff_ticket,
    refresh_card,
    refuse_if_bridged,
    remember_reaction,
    rest_of_args,
    tell_client,
)
from handlers.common import tickets_msg as _tickets

if TYPE_CHECKING:
    from bot.services import Services

__all__ = ["on_client_confirmed", "router"]

#: The tag of the staff-room "start now?" prompt (its event id: `Ticket.start_prompt_event_id`).
START_TAG = "start:"

log = logging.getLogger(__name__)

router = Router("consent")

# -- messages -----------------------------------------------------------------------------------

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
_START_PROMPT = N_(
    "The client confirmed {ref} ({tickets}). Start now? Press ✅ on this message (or type "
    "!confirm {ref})."
)
_START_PROMPT_EARLY = N_(
    "The client confirmed {ref} ({tickets}); {staff} reacted ✅ on its card before that. Start "
    "now? Press ✅ on this message (or type !confirm {ref})."
)

# ✅ on cards
_CONFIRM_REFUSED = N_("✅ on {ref} refused: {reason}")
_STAFF_CONFIRMED_STAFF = N_("{staff} confirmed {ref} for {tickets}: the work may start.")
_STAFF_CONFIRMED_CLIENT = N_(
    "Your intervention {ref} is confirmed for {tickets}: the support team is starting it."
)
_UNCONFIRMED_STAFF = N_(
    "{staff} withdrew the confirmation of {ref}: it waits for a ✅ on its card again."
)
_UNCONFIRM_KEPT_STAFF = N_("The confirmation of {ref} stays: {reason}")
_EARLY_NOTED_PROMPT = N_(
    "✅ on {ref} refused for now: {reason} Noted: once the client confirms, I will ask here "
    "whether to start, with a ✅ to press once."
)
_EARLY_NOTED_AUTO = N_(
    "✅ on {ref} refused for now: {reason} Noted: once the client confirms, your ✅ confirms "
    "it at once (remove it to cancel that)."
)
_EARLY_CONFIRMED_STAFF = N_(
    "The client confirmed {ref}: the ✅ {staff} gave before confirms it for {tickets}; the "
    "work may start."
)
_EARLY_FORGOTTEN_STAFF = N_("{staff} removed their early ✅ on {ref}: it will confirm nothing.")

# an estimate above the prepaid balance
_OVER_BALANCE_STAFF = N_(
    "⚠️ {ref}: the estimate ({tickets}) is more than the prepaid balance of {account} covers "
    "({remaining}); once billed it would be {after}. The client is told; nothing is held up."
)
_OVER_BALANCE_CLIENT = N_(
    "{subject} is {remaining}: once the intervention {ref} is billed as estimated, it would be "
    "{after}. The work is not held up; to buy tickets, contact the support team."
)
_OVER_BALANCE_CLIENT_BRIDGED = N_(
    "{subject} does not cover the estimate of {ref}. The work is not held up; to buy tickets, "
    "contact the support team."
)


def _decided(result: TicketState | Refusal) -> TicketState:
    if isinstance(result, Refusal):
        raise DomainError(result.msg)
    return result


# -- !estimate ----------------------------------------------------------------------------------


@router.command(
    "estimate",
    "estimer",
    help=N_("Estimate an intervention; above two tickets the client must confirm first."),
    usage="SP-… 2h30",
    staff=True,
)
async def estimate(ctx: Context) -> None:
    ticket = await locked_staff_ticket(ctx)
    try:
        minutes = rules.parse_duration(rest_of_args(ctx.args))
    except rules.DurationError as error:
        raise bad_duration(ctx, ticket.ref, error.msg, "2h30") from None
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
    await _tell_over_balance(ctx, ticket, n)  # before any consent is asked
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
    await _ask_consent_by_mail(ctx, ticket, params, warned)


async def _tell_over_balance(ctx: Context, ticket: Ticket, estimate_tickets: int) -> None:
    """Staff and the client hear it when the estimate would take a prepaid account below
    zero (what the ticket bills already is counted in the balance). Work is not held up."""
    account = await balances.account_of(ticket.client_id)  # type: ignore[attr-defined]
    if not await balances.is_prepaid(account):
        return
    balance = await balances.balance_of(account)
    billed_now = lifecycle.billed_tickets(repo.ticket_state(ticket))
    after = prepaid.after_estimate(balance.remaining, billed_now, estimate_tickets)
    if after >= 0:
        return
    remaining, then = balance_tickets(balance.remaining), balance_tickets(after)
    ctx.reply(
        Msg(
            _OVER_BALANCE_STAFF,
            {
                "ref": ticket.ref,
                "tickets": _tickets(estimate_tickets),
                "account": defuse(account.name),
                "remaining": remaining,
                "after": then,
            },
        )
    )
    subject = balance_subject(account)
    client = await Client.get(id=ticket.client_id)  # type: ignore[attr-defined]
    if client.key.startswith(BRIDGE_KEY_PREFIX):
        told = Msg(_OVER_BALANCE_CLIENT_BRIDGED, {"subject": subject, "ref": ticket.ref})
    else:
        told = Msg(
            _OVER_BALANCE_CLIENT,
            {"subject": subject, "remaining": remaining, "after": then, "ref": ticket.ref},
        )
    await tell_client(ctx, ticket, told)


async def _ask_consent_by_mail(
    ctx: Context, ticket: Ticket, params: dict[str, object], warned: Msg
) -> None:
    """Issue a link and queue its e-mail in the client's language; staff and client hear
    how it went once the outbox knows (at once when there is nothing to send)."""
    services = ctx.services
    contact = await client_contact(ticket)
    # Without a mail server nothing could carry a link, so none is issued (an earlier one keeps
    # working). A missing address (the ticket's, else the client's) is still the reason told.
    if services.mailer is None and (ticket.email or contact.email):
        log.warning("consent mail for %s not sent: no mailer", ticket.ref)
        await _tell_mail_failed(ctx, ticket, params, warned, Msg(_MAIL_NOT_CONFIGURED))
        return
    request = await prepare_consent(
        ticket,
        client_email=contact.email,
        locale=contact.locale,
        config=services.config,
        catalogs=services.catalogs,
        now=ctx.now,
    )
    if isinstance(request, NoAddress):
        log.warning("consent mail for %s not sent: no address", ticket.ref)
        await _tell_mail_failed(ctx, ticket, params, warned, Msg(_MAIL_NO_ADDRESS))
        return
    with ctx.collect() as if_sent:
        ctx.reply(Msg(_ESTIMATED_STAFF_CONSENT_EMAIL, params))
        expires = Msg(_CONSENT_BY_EMAIL_CLIENT, {"expires_at": request.expires_at})
        await tell_client(ctx, ticket, warned, expires)
    with ctx.collect() as if_failed:
        await _tell_mail_failed(ctx, ticket, params, warned, Msg(_MAIL_SMTP))
    ctx.send_mail(request.mail, if_sent=if_sent, if_failed=if_failed)


async def _tell_mail_failed(
    ctx: Context, ticket: Ticket, params: dict[str, object], warned: Msg, why: Msg
) -> None:
    await tell_client(ctx, ticket, warned, Msg(_MAIL_FAILED_CLIENT, {"ref": ticket.ref}))
    ctx.send_staff(Msg(_MAIL_FAILED_STAFF, {**params, "why": why}))


# -- the client's consent -----------------------------------------------------------------------

_CONFIRMABLE = frozenset({Status.AWAITING_CLIENT_CONFIRMATION})


@router.command(
    "confirm",
    "confirmer",
    help=N_(
        "Confirm an intervention estimated at more than two tickets (in the staff room: "
        "start it, as ✅ on its card does)."
    ),
    usage="SP-…",
)
async def confirm(ctx: Context) -> None:
    if ctx.is_staff and ctx.in_staff_room:
        await _confirm_by_command(ctx)
        return
    ticket = await locked_client_ticket(ctx, _CONFIRMABLE)
    # A nickname cannot give a client's consent to be billed. Refused after the lookup, so that
    # someone else's reference still answers exactly like one that does not exist.
    refuse_if_bridged(ctx)
    decision = _decided(lifecycle.client_confirm(repo.ticket_state(ticket), ctx.now))
    if ctx.services.config.service.confirmation != "chat":
        ctx.reply(Msg(_CONFIRM_BY_EMAIL, {"ref": ticket.ref}))
        return
    await change(ctx, ticket, decision, action=AUDIT_ACTION, detail="chat", actor=ctx.sender.key)
    ctx.reply(Msg(_CLIENT_CONFIRMED_THANKS, {"ref": ticket.ref}))
    await _after_client_consent(ctx, ticket)


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
        current = await locked(ticket_id)
        await refresh_card(ctx, current)
        await tell_client(ctx, current, Msg(_CLIENT_CONFIRMED_THANKS, {"ref": current.ref}))
        await _after_client_consent(ctx, current)

    await dispatcher.run_job(
        f"client-confirmed:{ticket_id}:{entry.id}",
        announce,
        room_id=ticket.room_id,
        locale=ticket.locale,
    )


# -- the staff's ✅ on cards ---------------------------------------------------------------------


@router.reaction(*CONFIRM_KEYS)
async def on_check(ctx: Context) -> None:
    """A staff ✅ on a card or on a "start now?" prompt (elsewhere, a ✅ is the client's:
    `handlers.closing`)."""
    event = ctx.event
    assert isinstance(event, IncomingReaction)
    if not ctx.in_staff_room:
        return
    ticket = await card_ticket(ctx, event.target_event_id)
    on_card = ticket is not None
    if ticket is None:
        ticket = await _prompt_ticket(ctx, event.target_event_id)
    if ticket is None:
        return
    staff = ctx.sender.user_id
    result = lifecycle.staff_confirm(repo.ticket_state(ticket), staff, ctx.now)
    if isinstance(result, Refusal):
        if on_card and ticket.status == Status.AWAITING_CLIENT_CONFIRMATION:
            await _remember_early(ctx, ticket, event, result)
            return
        raise DomainError(Msg(_CONFIRM_REFUSED, {"ref": ticket.ref, "reason": result.msg}))
    await remember_reaction(ctx, event)
    how = "reaction" if on_card else "prompt"
    await _staff_confirmed(ctx, ticket, result, staff, how, by_reaction=event.event_id)


async def _confirm_by_command(ctx: Context) -> None:
    """`!confirm REF` in the staff room: the typed ✅ (refused before the client's consent,
    and not remembered: there is no reaction to take back)."""
    ticket = await locked_staff_ticket(ctx)
    staff = ctx.sender.user_id
    result = lifecycle.staff_confirm(repo.ticket_state(ticket), staff, ctx.now)
    if isinstance(result, Refusal):
        raise DomainError(Msg(_CONFIRM_REFUSED, {"ref": ticket.ref, "reason": result.msg}))
    await _staff_confirmed(ctx, ticket, result, staff, "command")


async def _prompt_ticket(ctx: Context, target: str) -> Ticket | None:
    """The ticket whose "start now?" prompt is `target`, locked, for staff in the staff room."""
    if not ctx.in_staff_room or not ctx.is_staff:
        return None
    found = await Ticket.get_or_none(start_prompt_event_id=target)
    return None if found is None else await locked(found.id)


async def _remember_early(
    ctx: Context, ticket: Ticket, event: IncomingReaction, refusal: Refusal
) -> None:
    """A ✅ before the client's consent: refused (R7), kept for when they consent."""
    ticket.early_confirm_by = ctx.sender.user_id
    ticket.early_confirm_event_id = event.event_id
    await ticket.save(update_fields=["early_confirm_by", "early_confirm_event_id"])
    await remember_reaction(ctx, event)
    noted = _EARLY_NOTED_AUTO if _confirms_on_early_check(ctx) else _EARLY_NOTED_PROMPT
    ctx.reply(Msg(noted, {"ref": ticket.ref, "reason": refusal.msg}))


def _confirms_on_early_check(ctx: Context) -> bool:
    return ctx.services.config.service.confirm_on_early_check


async def _staff_confirmed(
    ctx: Context,
    ticket: Ticket,
    result: TicketState,
    staff: str,
    how: str,
    *,
    by_reaction: str | None = None,
) -> None:
    """Record the confirmation (who, how), forget the other ✅ on the card and the prompt,
    tell the staff room and the client. `by_reaction`: the ✅ that confirmed, if one did."""
    state = await change(ctx, ticket, result, action="staff_confirmed", detail=how, actor=staff)
    # The ✅ that did not confirm (refused early ones, an earlier round's) mean nothing now:
    # taking one of them off later must not undo this confirmation.
    targets = [t for t in (ticket.card_event_id, ticket.start_prompt_event_id) if t]
    for row in await Reaction.filter(target_event_id__in=targets):
        if _is_confirm_key(row.key) and row.event_id != by_reaction:
            await row.delete()
    if ticket.early_confirm_event_id is not None:
        ticket.early_confirm_by = ticket.early_confirm_event_id = None
        await ticket.save(update_fields=["early_confirm_by", "early_confirm_event_id"])
    tickets = _tickets(state.confirmed_tickets or 0)
    params = {"staff": staff, "ref": ticket.ref, "tickets": tickets}
    tell_staff = ctx.reply if ctx.in_staff_room else ctx.send_staff
    tell_staff(Msg(_EARLY_CONFIRMED_STAFF if how == "early" else _STAFF_CONFIRMED_STAFF, params))
    await tell_client(
        ctx, ticket, Msg(_STAFF_CONFIRMED_CLIENT, {"ref": ticket.ref, "tickets": tickets})
    )


async def _after_client_consent(ctx: Context, ticket: Ticket) -> None:
    """The client consented: confirm on the remembered ✅ (when the operator says so and its
    giver is still staff), else ask the staff room "start now?" with a ✅ to press."""
    if ticket.status != Status.AWAITING_STAFF_CONFIRMATION:
        return  # changed since the consent (e.g. ended): nothing to start
    early = ticket.early_confirm_by
    if (
        early is not None
        and _confirms_on_early_check(ctx)
        and ctx.services.identity.is_staff_user(early)
    ):
        result = lifecycle.staff_confirm(repo.ticket_state(ticket), early, ctx.now)
        if not isinstance(result, Refusal):
            check = ticket.early_confirm_event_id
            await _staff_confirmed(ctx, ticket, result, early, "early", by_reaction=check)
            return
    room = ctx.services.staff_room_id()
    if room is None:
        return
    n = rules.tickets_for(ticket.estimate_minutes or 0)
    params = {"ref": ticket.ref, "tickets": _tickets(n), "staff": early or ""}
    tag = f"{START_TAG}{ticket.id}"
    ctx.send_staff(Msg(_START_PROMPT_EARLY if early else _START_PROMPT, params), on_sent=tag)
    ctx.react(room, tag, CONFIRM_KEYS[0])  # the ✅ to press: one click adds the staff's own


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
    # Only from the ✅'s own room, and only by someone who is staff now: a demoted member who
    # left must not take back, from another room, what they confirmed while staff.
    if event.room_id != reaction.room_id or not ctx.is_staff:
        return
    await reaction.delete()
    found = await Ticket.get_or_none(card_event_id=reaction.target_event_id)
    if found is None:
        found = await Ticket.get_or_none(start_prompt_event_id=reaction.target_event_id)
    if found is None:
        return
    ticket = await locked(found.id)
    if ticket.early_confirm_event_id == reaction.event_id:
        ticket.early_confirm_by = ticket.early_confirm_event_id = None
        await ticket.save(update_fields=["early_confirm_by", "early_confirm_event_id"])
        ctx.send_staff(Msg(_EARLY_FORGOTTEN_STAFF, {"staff": event.sender, "ref": ticket.ref}))
        return
    if ticket.staff_confirmed_by != reaction.sender:
        return  # confirmed again since, by someone else's ✅: that one stands
    result = lifecycle.staff_unconfirm(repo.ticket_state(ticket))
    if isinstance(result, Refusal):
        if ticket.status == Status.CONFIRMED:
            ctx.send_staff(Msg(_UNCONFIRM_KEPT_STAFF, {"ref": ticket.ref, "reason": result.msg}))
        return
    await change(ctx, ticket, result, action="staff_unconfirmed", actor=event.sender)
    ctx.send_staff(Msg(_UNCONFIRMED_STAFF, {"staff": event.sender, "ref": ticket.ref}))
