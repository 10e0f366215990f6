"""The staff 👀 end to end: the real bot process, a real Synapse, real nio clients.

A client opens a ticket through the intake; its card appears in the staff room. A 👀 from a
member of the staff room who is not staff changes nothing; a 👀 from the staff member takes
the ticket: the card is edited in place and the client is told who took it.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import sqlite3
from contextlib import closing

import pytest
from nio import AsyncClient, RoomSendResponse

from bot.testing.matrix import (
    discard_messages,
    login_client,
    send_text,
    sync_once,
    wait_for_message,
)

pytestmark = pytest.mark.e2e

REF = re.compile(r"\bSP-\d{4}-\d{4,}\b")
INTAKE = (
    "My survey no longer sends the invitation e-mails since Monday.",
    "5",
    "https://survey.example.org 6.4.2 123456",
    "1",
    "alice@example.org",
    "yes",
)


def from_bot(bot):
    return lambda event: event.sender == bot.bot_user_id


def is_card(bot):
    def match(event) -> bool:
        relates = event.source.get("content", {}).get("m.relates_to")
        return event.sender == bot.bot_user_id and relates is None and bool(REF.search(event.body))

    return match


def edits(bot, event_id: str):
    def match(event) -> bool:
        relates = event.source.get("content", {}).get("m.relates_to") or {}
        return (
            event.sender == bot.bot_user_id
            and relates.get("rel_type") == "m.replace"
            and relates.get("event_id") == event_id
        )

    return match


async def react(client: AsyncClient, room_id: str, event_id: str, key: str) -> str:
    sent = await client.room_send(
        room_id,
        "m.reaction",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}},
        ignore_unverified_devices=True,
    )
    assert isinstance(sent, RoomSendResponse), sent
    return sent.event_id


async def quiet(client: AsyncClient, room_id: str, bot, seconds: float) -> list:
    """What the bot says in `room_id` during `seconds` (expected: nothing)."""
    said = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        for event_room, event in await sync_once(client, timeout=0.5):
            if event_room == room_id and event.sender == bot.bot_user_id:
                said.append(event.body)
    return said


async def test_eyes_on_a_real_card_by_staff_takes_and_by_others_does_nothing(running_bot):
    bot = running_bot
    client, dm = await bot.new_client("alice")
    await send_text(client, dm, "!lang en")
    await wait_for_message(client, dm, from_bot(bot), timeout=20)
    for text in INTAKE[:-1]:
        await send_text(client, dm, text)
        await wait_for_message(client, dm, from_bot(bot), timeout=20)
    await send_text(client, dm, INTAKE[-1])
    opened = await wait_for_message(
        client, dm, lambda e: e.sender == bot.bot_user_id and REF.search(e.body), timeout=30
    )
    ref = REF.search(opened.body).group(0)
    card = await wait_for_message(
        bot.staff, bot.staff_room_id, lambda e: is_card(bot)(e) and ref in e.body, timeout=30
    )
    await quiet(client, dm, bot, 2)  # the rest of the intake's answers
    discard_messages(client)

    # A member of the staff room who is not staff (default power level, not configured).
    user = f"intern{secrets.token_hex(3)}"
    user_id, _ = await bot.synapse.register(user, "pw-intern-123456")
    intern = await login_client(
        bot.synapse.base_url,
        user_id,
        "pw-intern-123456",
        store_path=bot.workdir / "intern",
        encryption=False,
    )
    bot.clients.append(intern)
    await bot.staff.room_invite(bot.staff_room_id, user_id)
    await intern.join(bot.staff_room_id)
    await sync_once(intern)
    await sync_once(client)
    ignored = await react(intern, bot.staff_room_id, card.event_id, "👀")
    assert await quiet(client, dm, bot, 4) == []
    assert await quiet(bot.staff, bot.staff_room_id, bot, 0.5) == []

    await react(bot.staff, bot.staff_room_id, card.event_id, "👀")
    told = await wait_for_message(client, dm, from_bot(bot), timeout=20)
    assert told.body == f"{bot.staff.user_id} from the support team has taken your request {ref}."
    edit = await wait_for_message(
        bot.staff, bot.staff_room_id, edits(bot, card.event_id), timeout=20
    )
    # The card is in the staff room's language; it now names who took it.
    assert bot.staff.user_id in edit.source["content"]["m.new_content"]["body"]
    assert bot.staff.user_id not in card.body

    # The intern's 👀 was received and handled, and left no trace on the ticket.
    with closing(sqlite3.connect(bot.workdir / "bot.sqlite3")) as db:
        assert db.execute("SELECT 1 FROM handled_event WHERE event_id = ?", (ignored,)).fetchone()
        assert db.execute(
            "SELECT sender FROM reaction WHERE target_event_id = ?", (card.event_id,)
        ).fetchall() == [(bot.staff.user_id,)]
        assert db.execute("SELECT assigned_to FROM ticket WHERE ref = ?", (ref,)).fetchone() == (
            bot.staff.user_id,
        )
