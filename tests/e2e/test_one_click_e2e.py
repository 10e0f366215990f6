"""A ✅ that needs one click (issue #16 §4), end to end: the bot process on Synapse, real nio
clients playing what Element does.

Element sends a reaction when a reaction key is clicked that the user has not given, and
redacts the user's own reaction when it is clicked again; the homeserver refuses a second
identical reaction (same sender, key and target). So a staff member whose early ✅ is still
on the card cannot "press ✅ again" there in one click. The bot's "start now?" prompt carries
the bot's own ✅: pressing it sends the staff member's ✅, a different sender's, which the
homeserver accepts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import quote
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from nio import AsyncClient, RoomRedactResponse, RoomSendResponse

from bot.domain import tickets as lifecycle
from bot.domain.tickets import Status
from bot.i18n import Catalogs, Msg
from bot.storage.db import close_db, open_db
from bot.storage.models import AuditEntry, Ticket
from bot.testing.matrix import send_text, wait_for_message
from handlers import consent

from .conftest import RunningBot, intervention_ticket, make_running_bot

pytestmark = pytest.mark.e2e

CHAT_CONSENT = '\n[service]\nconfirmation = "chat"\n'


async def _running(synapse, tmp_path, extra: str) -> AsyncIterator[RunningBot]:
    bot = await make_running_bot(synapse, tmp_path, extra_toml=extra)
    await bot.start()
    await open_db(f"sqlite://{bot.workdir / 'bot.sqlite3'}", run_migrations=False)
    try:
        yield bot
    finally:
        await close_db()
        await bot.stop()
        for client in [*bot.clients, bot.staff]:
            await client.close()


@pytest.fixture
async def prompting_bot(synapse, tmp_path) -> AsyncIterator[RunningBot]:
    async for bot in _running(synapse, tmp_path, CHAT_CONSENT):
        yield bot


@pytest.fixture
async def early_check_bot(synapse, tmp_path) -> AsyncIterator[RunningBot]:
    async for bot in _running(synapse, tmp_path, CHAT_CONSENT + "confirm_on_early_check = true\n"):
        yield bot


def staff_text(msgid: str, locale: str = "fr", **params: object) -> str:
    """A message as the bot writes it (the staff room's language: French)."""
    return Catalogs.load().get(locale).render(Msg(msgid, params), ZoneInfo("Europe/Paris"))


async def check_early(bot: RunningBot, ref: str, card: str, noted: str):
    """The staff member's ✅ on the card before the client's consent, and the bot's answer
    (`noted`, a msgid of handlers.consent); the reaction's send response."""
    early = await react(bot.staff, bot.staff_room_id, card)
    assert isinstance(early, RoomSendResponse), early
    reason = Msg(lifecycle._WAITING_FOR_CLIENT)
    answer = staff_text(noted, ref=ref, reason=reason)
    await wait_for_message(bot.staff, bot.staff_room_id, from_bot(bot, start=answer), timeout=30)
    return early


def from_bot(bot: RunningBot, *words: str, start: str = ""):
    """A new message (not an edit) from the bot holding `words`, beginning with `start`."""

    def match(event) -> bool:
        content = event.source.get("content", {})
        return (
            event.sender == bot.bot_user_id
            and "m.relates_to" not in content
            and event.body.startswith(start)
            and all(word in event.body for word in words)
        )

    return match


async def react(client: AsyncClient, room: str, target: str, key: str = "✅"):
    return await client.room_send(
        room,
        "m.reaction",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": key}},
    )


async def annotations(bot: RunningBot, room: str, event_id: str) -> list[tuple[str, str]]:
    """(sender, key) of the reactions on `event_id`, as the homeserver holds them."""
    synapse = bot.synapse
    url = (
        f"{synapse.base_url}/_matrix/client/v1/rooms/{quote(room)}/relations/"
        f"{quote(event_id)}/m.annotation"
    )
    headers = {"Authorization": f"Bearer {bot.staff.access_token}"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        chunk = (await resp.json())["chunk"]
    return [(e["sender"], e["content"]["m.relates_to"]["key"]) for e in chunk]


async def estimated_card(bot: RunningBot, ref: str) -> tuple[AsyncClient, str, str, Ticket]:
    """A client in a DM, their intervention estimated at 3 h (more than two tickets): the
    card is in the staff room. Returns (client, DM, card event id, ticket)."""
    staff_room = bot.staff_room_id
    await bot.wait_joined(bot.staff, staff_room)
    client, dm = await bot.new_client("alice")
    ticket = await intervention_ticket(ref, client.user_id, dm, locale="en")
    await send_text(bot.staff, staff_room, f"!estimate {ref} 3h")
    card = await wait_for_message(
        bot.staff,
        staff_room,
        lambda e: e.sender == bot.bot_user_id and e.body.startswith(f"🎫 {ref}"),
        timeout=30,
    )
    return client, dm, card.event_id, ticket


async def test_early_check_then_one_click_on_the_bot_check_of_the_prompt(prompting_bot):
    bot = prompting_bot
    staff, room, staff_id = bot.staff, bot.staff_room_id, bot.staff.user_id
    ref = "SP-2026-0951"
    client, dm, card, ticket = await estimated_card(bot, ref)

    # The early ✅: refused (the client has not consented), remembered.
    early = await check_early(bot, ref, card, consent._EARLY_NOTED_PROMPT)
    row = await Ticket.get(id=ticket.id)
    assert row.status == Status.AWAITING_CLIENT_CONFIRMATION
    assert (row.early_confirm_by, row.early_confirm_event_id) == (staff_id, early.event_id)

    # "Press ✅ again" on the card: the homeserver refuses the same reaction twice.
    again = await react(staff, room, card)
    assert not isinstance(again, RoomSendResponse)
    assert (await annotations(bot, room, card)) == [(staff_id, "✅")]

    # The client consents in their room: the staff room is asked, with the bot's own ✅.
    await send_text(client, dm, f"!confirm {ref}")
    asked = staff_text(
        consent._START_PROMPT_EARLY, ref=ref, tickets=consent._tickets(3), staff=staff_id
    )
    prompt = await wait_for_message(staff, room, from_bot(bot, start=asked), timeout=30)
    for _ in range(50):
        if (await annotations(bot, room, prompt.event_id)) == [(bot.bot_user_id, "✅")]:
            break
        await staff.sync(timeout=200)
    assert (await annotations(bot, room, prompt.event_id)) == [(bot.bot_user_id, "✅")]
    assert (await Ticket.get(id=ticket.id)).start_prompt_event_id == prompt.event_id

    # One click on that ✅: Element sends the staff member's own, which the homeserver takes.
    pressed = await react(staff, room, prompt.event_id)
    assert isinstance(pressed, RoomSendResponse), pressed
    started = staff_text(
        consent._STAFF_CONFIRMED_STAFF, staff=staff_id, ref=ref, tickets=consent._tickets(3)
    )
    await wait_for_message(staff, room, from_bot(bot, start=started), timeout=30)
    row = await Ticket.get(id=ticket.id)
    assert (row.status, row.staff_confirmed_by, row.confirmed_tickets) == (
        Status.CONFIRMED,
        staff_id,
        3,
    )
    entry = await AuditEntry.filter(ticket_id=ticket.id, action="staff_confirmed").first()
    assert entry is not None and (entry.actor, entry.detail) == (staff_id, "prompt")
    told = staff_text(consent._STAFF_CONFIRMED_CLIENT, "en", ref=ref, tickets=consent._tickets(3))
    await wait_for_message(client, dm, from_bot(bot, start=told), timeout=30)

    # Element: a click on the old ✅ still on the card removes it (a redaction). It confirmed
    # nothing, so nothing is undone; `!ticket` after it (same sender, same order) shows it.
    removed = await staff.room_redact(room, early.event_id)
    assert isinstance(removed, RoomRedactResponse), removed
    await send_text(staff, room, f"!ticket {ref}")
    await wait_for_message(staff, room, from_bot(bot, start=f"🎫 {ref}"), timeout=30)
    assert (await Ticket.get(id=ticket.id)).status == Status.CONFIRMED


async def test_with_confirm_on_early_check_the_early_check_confirms_at_consent(early_check_bot):
    bot = early_check_bot
    staff, room, staff_id = bot.staff, bot.staff_room_id, bot.staff.user_id
    ref = "SP-2026-0952"
    client, dm, card, ticket = await estimated_card(bot, ref)
    await check_early(bot, ref, card, consent._EARLY_NOTED_AUTO)

    await send_text(client, dm, f"!confirm {ref}")
    started = staff_text(
        consent._EARLY_CONFIRMED_STAFF, staff=staff_id, ref=ref, tickets=consent._tickets(3)
    )
    await wait_for_message(staff, room, from_bot(bot, start=started), timeout=30)
    row = await Ticket.get(id=ticket.id)
    assert (row.status, row.staff_confirmed_by) == (Status.CONFIRMED, staff_id)
    entry = await AuditEntry.filter(ticket_id=ticket.id, action="staff_confirmed").first()
    assert entry is not None and entry.detail == "early"
    assert row.start_prompt_event_id is None  # nothing to press
