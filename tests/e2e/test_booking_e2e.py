"""Booking a call end to end: the bot process on Synapse, real nio clients.

The call tickets are written straight into the bot's database (as the intake would have opened
them); each client then asks for times with `!rdv`, and books one by typing its number or by
reacting to the offer with its keycap. The `.ics` invitation is downloaded from the homeserver
and read back.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import aiohttp
import icalendar
import pytest
from nio import AsyncClient, MessageDirection, RoomMessagesResponse, RoomSendResponse

from bot.domain.tickets import Channel, Kind, initial_state
from bot.storage.models import Booking, Client, SlotOffer, Ticket
from bot.testing.matrix import send_text, sync_once, wait_for_message

pytestmark = pytest.mark.e2e

JITSI = "https://jitsi.test.invalid/"


def from_bot(bot_id: str, needle: str):
    def match(event) -> bool:
        content = event.source.get("content", {})
        return event.sender == bot_id and "m.relates_to" not in content and needle in event.body

    return match


async def call_ticket(client_id: str, room_id: str, ref: str) -> Ticket:
    now = datetime.now(UTC)
    owner, _ = await Client.get_or_create(key=client_id, defaults={"created_at": now})
    return await Ticket.create(
        ref=ref,
        kind=str(Kind.TICKET),
        status=str(initial_state(Kind.TICKET, Channel.VIDEO).status),
        category="expressions",
        channel=str(Channel.VIDEO),
        client=owner,
        room_id=room_id,
        locale="fr",
        description="Les quotas ne se déclenchent pas comme prévu sur mon questionnaire.",
        email="client@example.org",
        created_at=now,
        sla_due=now + timedelta(days=3),
        minutes_logged=0,
        version=0,
    )


async def invitation(running_bot, client: AsyncClient, room_id: str) -> icalendar.Event:
    """The last `.ics` file the bot uploaded to `room_id`, downloaded and parsed."""
    files: list[dict] = []
    for _ in range(100):  # the file follows the confirmation through the outbox
        response = await client.room_messages(
            room_id, start=client.next_batch, direction=MessageDirection.back, limit=30
        )
        assert isinstance(response, RoomMessagesResponse), response
        files = [
            e.source["content"]
            for e in response.chunk
            if e.source.get("content", {}).get("msgtype") == "m.file"
        ]
        if files:
            break
        await sync_once(client, timeout=0.2)
    assert files, "no file in the room"
    content = files[0]  # newest first
    assert content["info"]["mimetype"] == "text/calendar"
    server, media_id = content["url"].removeprefix("mxc://").split("/", 1)
    url = f"{running_bot.synapse.base_url}/_matrix/client/v1/media/download/{server}/{media_id}"
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"Authorization": f"Bearer {client.access_token}"}) as got,
    ):
        assert got.status == 200, await got.text()
        data = await got.read()
    (event,) = icalendar.Calendar.from_ical(data).walk("VEVENT")
    return event


async def ask_for_times(running_bot, client: AsyncClient, room_id: str, ref: str):
    await send_text(client, room_id, f"!rdv {ref}")
    return await wait_for_message(
        client, room_id, from_bot(running_bot.bot_user_id, "1️⃣"), timeout=30
    )


async def check_booked(running_bot, client: AsyncClient, room_id: str, ticket: Ticket) -> None:
    bot_id = running_bot.bot_user_id
    booked = await wait_for_message(client, room_id, from_bot(bot_id, JITSI), timeout=30)
    (call,) = await Booking.filter(ticket_id=ticket.id, status="active")
    assert call.client_url and call.client_url in booked.body
    assert ticket.ref in booked.body
    staff_note = await wait_for_message(
        running_bot.staff,
        running_bot.staff_room_id,
        lambda e: e.sender == bot_id and ticket.ref in e.body and (call.staff_url or "") in e.body,
        timeout=30,
    )
    assert staff_note.body.startswith("📅")
    event = await invitation(running_bot, client, room_id)
    assert event.decoded("dtstart") == call.start
    assert str(event["location"]) == call.client_url
    assert event.walk("VALARM")


async def test_booking_by_number_and_by_keycap_reaction(running_bot, bot_db):
    await running_bot.wait_joined(running_bot.staff, running_bot.staff_room_id)

    # By number.
    alice, alice_room = await running_bot.new_client("alice")
    alice_ticket = await call_ticket(alice.user_id, alice_room, "SP-2026-0801")
    offer_message = await ask_for_times(running_bot, alice, alice_room, alice_ticket.ref)
    assert "2️⃣" in offer_message.body
    await send_text(alice, alice_room, "2")
    await check_booked(running_bot, alice, alice_room, alice_ticket)

    # By reaction on the offer message (its event id was stored when it was sent).
    bob, bob_room = await running_bot.new_client("bob")
    bob_ticket = await call_ticket(bob.user_id, bob_room, "SP-2026-0802")
    offer_message = await ask_for_times(running_bot, bob, bob_room, bob_ticket.ref)
    for _ in range(100):  # remembered right after the send returns (a person is slower)
        offer = await SlotOffer.get(ticket_id=bob_ticket.id, active=True)
        if offer.event_id is not None:
            break
        await asyncio.sleep(0.05)
    assert offer.event_id == offer_message.event_id
    reacted = await bob.room_send(
        bob_room,
        "m.reaction",
        {
            "m.relates_to": {
                "rel_type": "m.annotation",
                "event_id": offer_message.event_id,
                "key": "1️⃣",
            }
        },
    )
    assert isinstance(reacted, RoomSendResponse), reacted
    await check_booked(running_bot, bob, bob_room, bob_ticket)
    (bobs,) = await Booking.filter(ticket_id=bob_ticket.id, status="active")
    assert bobs.start.isoformat() == offer.slots[0]["start"]
    # Two calls, never the same staff member at the same time.
    (alices,) = await Booking.filter(ticket_id=alice_ticket.id, status="active")
    assert (alices.staff, alices.start) != (bobs.staff, bobs.start)
