"""What the outbox's tags stand for: the rows that remember a sent message's event id.

The outbox knows nothing of tickets or offers. A row may carry a tag (`card:12`,
`slot_offer:5`, `resolved:12`): once sent, its event id is recorded under that tag here, and a
later edit or reaction whose target is that tag is resolved here. Cards and offers then look
their event up in their own column (`Ticket.card_event_id`, `SlotOffer.event_id`), and a
reaction on that event finds its ticket or offer after a restart.
"""

from __future__ import annotations

from bot.storage.models import SlotOffer, Ticket


class SentTags:
    """Records and resolves tags (the outbox's `TagBook`)."""

    async def resolve(self, tag: str) -> str | None:
        """The event id recorded under `tag` ("event:<id>" names one directly)."""
        kind, _, value = tag.partition(":")
        if kind == "event":
            return value
        if kind == "card" and value.isdigit():
            ticket = await Ticket.get_or_none(id=int(value))
            return ticket.card_event_id if ticket else None
        if kind == "slot_offer" and value.isdigit():
            offer = await SlotOffer.get_or_none(id=int(value))
            return offer.event_id if offer else None
        return None

    async def record(self, tag: str, event_id: str) -> None:
        """`event_id` is now the message of `tag` (tags nobody looks up are kept on the
        outbox row only)."""
        kind, _, value = tag.partition(":")
        if not value.isdigit():
            return
        if kind == "card":
            await Ticket.filter(id=int(value)).update(card_event_id=event_id)
        elif kind == "slot_offer":
            await SlotOffer.filter(id=int(value)).update(event_id=event_id)
