"""Satisfaction inside the conversation (issue #16 §2): the rating question, its answers and
their comments. The pure decisions (which closings ask, what a typed answer means, the
windows) are `bot.domain.rating`; which text reaches `on_rating_text` is `handlers.state`.

Clients: a reaction 1️⃣–5️⃣ on the question, a typed answer ("4", "4/5", "4 great work"), or
`!rate [REF] N [comment]` (`!noter`). Bridged rooms: typed answers and `!rate`.

Decisions worth knowing:

* **Asked once.** A closing emits `AskRating` (`handlers.closing`: acceptance, or a warranty
  rework closed by staff); the question is sent only when `should_ask` says so, and
  `rating_asked_at` is set with it in the closing's transaction. Its message is tagged
  `rating:<ticket id>`, so its event id lands in `Ticket.rating_event_id` (`bot.storage.tags`)
  and a reaction on it finds the ticket after a restart. Only the ticket's client rates it.
* **Stored with the ticket**: `rating`, `rating_comment`, `rated_at`; an audit entry per
  rating (`rated`, detail `rating=N`, never the comment). The latest rating counts; staff are
  told each rating and comment in the staff room, and the card shows the rating.
* **Reactions can be taken back.** A rating reaction is kept as a `Reaction` row; removing
  the one that gave the current rating (Element removes a reaction clicked twice) falls back
  to the client's other rating reaction on the question, else withdraws the rating.
* **Not for requests made by e-mail** (for now): a digit replied to a mail answers the
  resolution question there (`handlers.mail`), and a rating of 2 would read as "not solved".
* **Answers go where the ticket lives**, in the client's language (`tell_client`), checked
  against the room's members like every message about a ticket.
* **Behind a bridge** a nickname is not an identity: anyone in the Talk conversation could
  answer for it. A rating is feedback, not a decision, and nothing stored is shown back there
  (the thanks repeats only what was just typed), so typed ratings are taken as they come.
"""

from __future__ import annotations

from bot.cards import defuse
from bot.domain import rating as satisfaction
from bot.domain.rating import RATING_KEYS, keycap_value
from bot.events import EMAIL_ROOM, IncomingReaction, IncomingRedaction
from bot.i18n import N_, Msg
from bot.routing import Context, Router, Situation
from bot.storage import repo
from bot.storage.models import Client, Reaction, Ticket
from handlers.common import (
    bridged_nick,
    client_ticket,
    find_ref,
    locked,
    refresh_card,
    remember_reaction,
    rest_of_args,
    tell_client,
)
from handlers.effects import AskRating
from handlers.state import RatingAnswer

__all__ = ["router"]

router = Router("satisfaction")

RATING_TAG = "rating:"

# -- messages -----------------------------------------------------------------------------------

_QUESTION = N_(
    "How satisfied are you with how {ref} was handled? React to this message with 1️⃣ (not "
    "at all) to 5️⃣ (very), or type a digit from 1 to 5; a comment may follow it, for "
    "example: 5 clear and quick."
)
_QUESTION_TYPED = N_(
    "How satisfied are you with how {ref} was handled? Answer with a digit from 1 (not at "
    "all) to 5 (very); a comment may follow it, for example: 5 clear and quick."
)
_THANKS = N_("Thank you for rating {ref}: {stars}/5.")
_THANKS_WITH_COMMENT = N_("Thank you for rating {ref}: {stars}/5, and for your comment.")
_RATING_NOW = N_("Your rating of {ref} is now {stars}/5. Thank you!")
_COMMENT_INVITE = N_(
    "If you wish, write a comment in your next message (within 10 minutes). To ask for "
    "something new instead, type !new first."
)
_COMMENT_THANKS = N_("Thank you for your comment on {ref}: the support team will read it.")
_BAD_NUMBER = N_(
    "Please rate {ref} with a whole number from 1 (not at all satisfied) to 5 (very "
    "satisfied), for example: 4, or 4 clear answer."
)
_HOW_TO_RATE = N_(
    "To rate {ref}, type a digit from 1 to 5 (a comment may follow it). To ask for something "
    "new, describe it in a sentence or two, or type !new."
)
_WITHDRAWN = N_("Your rating of {ref} is withdrawn. To rate it again: !rate {ref} 1-5")
_RATE_USAGE = N_(
    "Please give a rating from 1 to 5 after the reference, for example: !rate {ref} 4 clear answer"
)
_NOTHING_TO_RATE = N_("You have no closed ticket to rate.")
_NOT_RATEABLE = N_(
    "{ref} cannot be rated: tickets are rated once closed (feasibility questions and quote "
    "requests are not rated)."
)
_RATED_STAFF = N_("⭐ {ref}: the client rated it {stars}/5.")
_RATED_STAFF_COMMENT = N_("⭐ {ref}: the client rated it {stars}/5: “{comment}”")
_COMMENT_STAFF = N_("💬 {ref}: the client's comment on their rating ({stars}/5): “{comment}”")
_WITHDRAWN_STAFF = N_("{ref}: the client withdrew their rating.")


# -- asking -------------------------------------------------------------------------------------


@router.effect(AskRating)
async def on_ask_rating(ctx: Context, effect: AskRating) -> None:
    """Ask the client of a ticket that just closed to rate it, unless asked before."""
    ticket = await locked(effect.ticket_id)
    if not satisfaction.should_ask(repo.ticket_state(ticket), ticket.rating_asked_at):
        return
    if ticket.room_id == EMAIL_ROOM:
        # Not by mail (for now): a reply's first digit there answers the resolution mail
        # (1 solved, 2 not solved or back under warranty), and a rating "2" would reopen it.
        return
    ticket.rating_asked_at = ctx.now
    await ticket.save(update_fields=["rating_asked_at"])
    await repo.audit(ticket, "system", "rating_asked", ticket.status, ticket.status, at=ctx.now)
    client = await Client.get(id=ticket.client_id)  # type: ignore[attr-defined]
    typed_only = bridged_nick(client.key, ticket.room_id) is not None  # no reactions relayed
    await tell_client(
        ctx,
        ticket,
        Msg(_QUESTION_TYPED if typed_only else _QUESTION, {"ref": ticket.ref}),
        on_sent=f"{RATING_TAG}{ticket.id}",
    )


# -- answers ------------------------------------------------------------------------------------


@router.text(Situation.RATING)
async def on_rating_text(ctx: Context) -> None:
    """A typed rating, its comment, or a short text while the question waits."""
    assert ctx.state is not None
    answer: RatingAnswer = ctx.state.found
    ticket = await locked(answer.ticket_id)
    if answer.comment is not None:
        await _comment(ctx, ticket, answer.comment)
    elif answer.typed is None:
        await tell_client(ctx, ticket, Msg(_HOW_TO_RATE, {"ref": ticket.ref}))
    elif answer.typed.stars is None:
        await tell_client(ctx, ticket, Msg(_BAD_NUMBER, {"ref": ticket.ref}))
    else:
        await _rate(ctx, ticket, answer.typed.stars, answer.typed.comment)


@router.reaction(*RATING_KEYS)
async def rate_by_reaction(ctx: Context) -> None:
    """1️⃣–5️⃣ on the rating question, by the ticket's own client (on a slot offer, the same
    keycaps choose a time: `handlers.booking`)."""
    event = ctx.event
    assert isinstance(event, IncomingReaction)
    stars = keycap_value(event.key)
    found = await Ticket.get_or_none(rating_event_id=event.target_event_id)
    if stars is None or found is None or not await _is_client_of(ctx.sender.key, found):
        return
    await remember_reaction(ctx, event)
    await _rate(ctx, await locked(found.id), stars, None)


@router.redaction()
async def on_rating_redaction(ctx: Context) -> None:
    """The client took a rating reaction back: the rating falls back to their other rating
    reaction on the question, or is withdrawn."""
    event = ctx.event
    assert isinstance(event, IncomingRedaction)
    reaction = await Reaction.get_or_none(event_id=event.redacts)
    if reaction is None or keycap_value(reaction.key) is None:
        return
    if event.room_id != reaction.room_id or event.sender != reaction.sender:
        return
    found = await Ticket.get_or_none(rating_event_id=reaction.target_event_id)
    await reaction.delete()
    if found is None:
        return
    ticket = await locked(found.id)
    if ticket.rating != keycap_value(reaction.key):
        return  # not the reaction that gave the rating that counts
    others = await Reaction.filter(
        target_event_id=reaction.target_event_id, sender=reaction.sender
    ).order_by("-at", "-event_id")
    for other in others:
        stars = keycap_value(other.key)
        if stars is not None:
            await _rate(ctx, ticket, stars, None)
            return
    ticket.rating = ticket.rated_at = ticket.rating_comment = None
    await ticket.save(update_fields=["rating", "rated_at", "rating_comment"])
    await repo.audit(
        ticket, ctx.sender.key, "rating_withdrawn", ticket.status, ticket.status, at=ctx.now
    )
    await tell_client(ctx, ticket, Msg(_WITHDRAWN, {"ref": ticket.ref}))
    ctx.send_staff(Msg(_WITHDRAWN_STAFF, {"ref": ticket.ref}))
    await refresh_card(ctx, ticket)


@router.command(
    "rate",
    "noter",
    help=N_("Rate a closed ticket from 1 to 5, with an optional comment."),
    usage="[SP-…] 1-5 [comment]",
)
async def rate(ctx: Context) -> None:
    if find_ref(ctx.args) is not None:
        ticket = await locked((await client_ticket(ctx)).id)  # someone else's is "not found"
    else:
        latest = (
            await Ticket.filter(client__key=ctx.sender.key, rating_asked_at__isnull=False)
            .order_by("-rating_asked_at", "-id")
            .first()
        )
        if latest is None:
            ctx.reply(Msg(_NOTHING_TO_RATE))
            return
        ticket = await locked(latest.id)
    if ticket.rating_asked_at is None:
        ctx.reply(Msg(_NOT_RATEABLE, {"ref": ticket.ref}))
        return
    typed = satisfaction.parse_rating(rest_of_args(ctx.args))
    if typed is None:
        ctx.reply(Msg(_RATE_USAGE, {"ref": ticket.ref}))
    elif typed.stars is None:
        ctx.reply(Msg(_BAD_NUMBER, {"ref": ticket.ref}))
    else:
        await _rate(ctx, ticket, typed.stars, typed.comment)


# -- recording ----------------------------------------------------------------------------------


async def _is_client_of(key: str, ticket: Ticket) -> bool:
    client = await Client.get(id=ticket.client_id)  # type: ignore[attr-defined]
    return client.key == key


async def _rate(ctx: Context, ticket: Ticket, stars: int, comment: str | None) -> None:
    """Store a rating (the latest counts), thank the client, tell staff, refresh the card."""
    again = ticket.rating is not None
    ticket.rating, ticket.rated_at = stars, ctx.now
    changed = ["rating", "rated_at"]
    if comment is not None:
        ticket.rating_comment = comment
        changed.append("rating_comment")
    await ticket.save(update_fields=changed)
    detail = f"rating={stars}" + (" with comment" if comment is not None else "")
    await repo.audit(
        ticket, ctx.sender.key, "rated", ticket.status, ticket.status, detail, at=ctx.now
    )
    params = {"ref": ticket.ref, "stars": stars}
    parts = [Msg(_RATING_NOW if again else _THANKS_WITH_COMMENT if comment else _THANKS, params)]
    if ticket.rating_comment is None:
        parts.append(Msg(_COMMENT_INVITE))  # the next message within the window is its comment
    await tell_client(ctx, ticket, *parts)
    if comment is not None:
        ctx.send_staff(Msg(_RATED_STAFF_COMMENT, {**params, "comment": defuse(comment)}))
    else:
        ctx.send_staff(Msg(_RATED_STAFF, params))
    await refresh_card(ctx, ticket)


async def _comment(ctx: Context, ticket: Ticket, text: str) -> None:
    comment = satisfaction.clip_comment(text)
    if comment is None or ticket.rating is None:
        return
    ticket.rating_comment = comment
    await ticket.save(update_fields=["rating_comment"])
    await repo.audit(
        ticket, ctx.sender.key, "rating_comment", ticket.status, ticket.status, at=ctx.now
    )
    await tell_client(ctx, ticket, Msg(_COMMENT_THANKS, {"ref": ticket.ref}))
    params = {"ref": ticket.ref, "stars": ticket.rating, "comment": defuse(comment)}
    ctx.send_staff(Msg(_COMMENT_STAFF, params))
