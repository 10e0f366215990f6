"""What the outbox's tags stand for: the rows that remember a sent message's event id.

The outbox knows nothing of tickets or offers. A row may carry a tag (`card:12`,
`slot_offer:5`, `resolved:12`): once sent, its event id is recorded under that tag here, and a
later edit or reaction whose target is that tag is resolved here. Cards and offers then look
their event up in their own column (`Ticket.card_event_id`, `SlotOffer.event_id`), and a
reaction on that event finds its ticket or offer after a restart. So do a ticket's rating
question (`rating:12`, `Ticket.rating_event_id`), its staff-room "start now?" prompt
(`start:12`, `Ticket.start_prompt_event_id`) and a call's latest staff-room message
(`call:7`, `Booking.staff_event_id`).
"""

from __future__ import annotations

from typing import Any

from bot.storage.models import Booking, SlotOffer, Ticket

# tag kind → (model, column holding the event id)
_COLUMNS: dict[str, tuple[Any, str]] = {
    "card": (Ticket, "card_event_id"),
    "slot_offer": (SlotOffer, "event_id"),
    "rating": (Ticket, "rating_event_id"),
    "start": (Ticket, "start_prompt_event_id"),
    "call": (Booking, "staff_event_id"),
}


class SentTags:
    """Records and resolves tags (the outbox's `TagBook`)."""

    async def resolve(self, tag: str) -> str | None:
        """The event id recorded under `tag` ("event:<id>" names one directly)."""
        kind, _, value = tag.partition(":")
        if kind == "event":
            return value
        if kind not in _COLUMNS or not value.isdigit():
            return None
        model, column = _COLUMNS[kind]
        row = await model.get_or_none(id=int(value))
        return getattr(row, column) if row else None

    async def record(self, tag: str, event_id: str) -> None:
        """`event_id` is now the message of `tag` (tags nobody looks up are kept on the
        outbox row only)."""
        kind, _, value = tag.partition(":")
        if kind not in _COLUMNS or not value.isdigit():
            return
        model, column = _COLUMNS[kind]
        await model.filter(id=int(value)).update(**{column: event_id})
