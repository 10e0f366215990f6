"""Issue #6: the intake in an encrypted direct chat, end to end.

The real bot process on the session's Synapse, and a client with end-to-end encryption (nio):
what that user sees is checked (every answer readable, in French, the ticket reference at the
end, never "I cannot read this"), and what goes over the wire (the bot's messages are
`m.room.encrypted`).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from nio import AsyncClient, ToDeviceMessage, ToDeviceResponse
from nio.crypto import OlmDevice

from bot.dispatch import ONLY_TEXT
from bot.i18n import Translator
from bot.testing.matrix import send_text, sync_once, wait_for_message, wait_for_messages

from .conftest import RunningBot
from .test_intake_e2e import (
    DESCRIPTION_FR,
    FR_QUESTIONS,
    INSTANCE,
    REF,
    TIMEOUT,
    ask,
    from_bot,
    staff_card,
)

pytestmark = pytest.mark.e2e

MEGOLM = "m.megolm.v1.aes-sha2"


def cannot_read_wordings() -> list[str]:
    """The bot's "I cannot read that" answer, in English and as the French catalog says it
    (the part before the colon, so a prefix or a change of punctuation does not hide it)."""
    french = Translator.load("fr").gettext(ONLY_TEXT)
    assert french != ONLY_TEXT, "the French catalog lost the 'only text' message"
    return [text.split(":")[0].strip() for text in (ONLY_TEXT, french)]


def assert_readable_and_never_cannot_read(answers: list[Any]) -> None:
    wordings = cannot_read_wordings()
    for answer in answers:
        assert answer.decrypted, f"not sent encrypted: {answer.body!r}"
        for wording in wordings:
            assert wording not in answer.body, f"the client was told: {answer.body!r}"


async def wire_events(bot: RunningBot, client: AsyncClient, room_id: str) -> list[dict]:
    """The room's events as the homeserver holds them (not decrypted), oldest first."""
    url = f"{bot.synapse.base_url}/_matrix/client/v3/rooms/{quote(room_id, safe='')}/messages"
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            url,
            params={"dir": "b", "limit": "200"},
            headers={"Authorization": f"Bearer {client.access_token}"},
        ) as response,
    ):
        assert response.status == 200, await response.text()
        page = await response.json()
    return list(reversed(page["chunk"]))


async def the_other_answers(
    bot: RunningBot, client: AsyncClient, room_id: str, taken: list[Any]
) -> list[Any]:
    """Check on the wire that every message of the bot in `room_id` is encrypted, then
    return, as `client` decrypted them, those not already `taken` by a wait."""
    bot_events = [
        e for e in await wire_events(bot, client, room_id) if e["sender"] == bot.bot_user_id
    ]
    sent = [e for e in bot_events if e["type"] in ("m.room.message", "m.room.encrypted")]
    assert sent and all(e["type"] == "m.room.encrypted" for e in sent), [
        e["type"] for e in bot_events
    ]
    assert all(e["content"].get("algorithm") == MEGOLM for e in sent)
    assert {e["event_id"] for e in sent} >= {answer.event_id for answer in taken}
    return await wait_for_messages(
        client, room_id, len(sent) - len(taken), from_bot(bot), timeout=TIMEOUT
    )


async def test_full_intake_in_an_encrypted_direct_chat(running_bot):
    bot = running_bot
    client, dm = await bot.new_client("erin", encrypted=True)
    assert client.rooms[dm].encrypted

    answers = [
        await ask(client, dm, bot, DESCRIPTION_FR, FR_QUESTIONS["category"]),
        await ask(client, dm, bot, "5", FR_QUESTIONS["instance"]),
        await ask(client, dm, bot, INSTANCE, FR_QUESTIONS["channel"]),
        await ask(client, dm, bot, "1", FR_QUESTIONS["email"]),
        await ask(client, dm, bot, "erin@example.org", "erin@example.org"),
    ]
    assert DESCRIPTION_FR in answers[-1].body  # the summary reads back the description
    opened = await ask(client, dm, bot, "oui", "SP-")
    answers.append(opened)
    ref = REF.search(opened.body).group(0)
    assert " à 18:00" in opened.body  # the commitment date, written in French
    card = await staff_card(bot, ref)
    assert DESCRIPTION_FR in card.body

    answers += await the_other_answers(bot, client, dm, answers)
    assert_readable_and_never_cannot_read(answers)


# -- a message whose room key reaches the bot late --------------------------------------------


async def bot_device(client: AsyncClient, bot: RunningBot, room_id: str) -> OlmDevice:
    """The bot's device as `client` knows it, with an Olm session open to it."""
    deadline = time.monotonic() + TIMEOUT
    while not client.olm.device_store.active_user_devices(bot.bot_user_id):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{client.user_id} never saw the bot's device keys")
        if client.should_query_keys:
            await client.keys_query()
        await sync_once(client, timeout=0.5)
    missing = client.get_missing_sessions(room_id)
    if missing:
        await client.keys_claim(missing)
    (device,) = client.olm.device_store.active_user_devices(bot.bot_user_id)
    assert client.olm.session_store.get(device.curve25519) is not None
    return device


def withhold_room_key(client: AsyncClient, room_id: str) -> dict[str, str]:
    """Start a Megolm session in `room_id` that nobody else receives; return its room key
    (`m.room_key` content, from message index 0) for sharing later."""
    olm = client.olm
    olm.create_outbound_group_session(room_id)
    session = olm.outbound_group_sessions[room_id]
    key = {
        "algorithm": MEGOLM,
        "room_id": room_id,
        "session_id": session.id,
        "session_key": session.session_key,
    }
    session.shared = True  # shared with no device: `room_send` then just encrypts
    return key


async def share_room_key(client: AsyncClient, device: OlmDevice, key: dict[str, str]) -> None:
    olm = client.olm
    session = olm.session_store.get(device.curve25519)
    content = olm._olm_encrypt(session, device, "m.room_key", key)
    message = ToDeviceMessage("m.room.encrypted", device.user_id, device.id, content)
    response = await client.to_device(message)
    assert isinstance(response, ToDeviceResponse), response


def undecrypted_ids(database: Path) -> set[str]:
    with sqlite3.connect(database, timeout=5) as conn:
        return {row[0] for row in conn.execute("SELECT event_id FROM undecrypted_event")}


async def wait_until(condition, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.2)


async def test_message_whose_key_arrives_late_is_answered_when_it_arrives(running_bot):
    """The client's first message is encrypted with a Megolm session the bot's device has not
    received; its `m.room_key` is sent only once the bot has stored the event as undecryptable
    (as when a to-device message is delayed). The bot says nothing meanwhile, then answers.

    (The bot's own room key request cannot help here: nio addresses it to the bot's own
    devices, and accepts forwarded keys only from them.)"""
    bot = running_bot
    database = bot.workdir / "bot.sqlite3"
    client, dm = await bot.new_client("lena", encrypted=True)
    device = await bot_device(client, bot, dm)
    key = withhold_room_key(client, dm)

    event_id = await send_text(client, dm, DESCRIPTION_FR)
    await wait_until(
        lambda: event_id in undecrypted_ids(database), "the bot did not keep the sealed event"
    )
    # The bot cannot read it yet and says nothing (no "I cannot read this").
    await asyncio.sleep(1)
    early = [e for _, e in await sync_once(client, timeout=0.5) if e.sender == bot.bot_user_id]
    assert early == []

    await share_room_key(client, device, key)  # the key arrives late
    question = await wait_for_message(
        client, dm, from_bot(bot, FR_QUESTIONS["category"]), timeout=TIMEOUT
    )
    await wait_until(
        lambda: event_id not in undecrypted_ids(database), "the late event stayed undecrypted"
    )
    # The conversation goes on in the same session.
    following = await ask(client, dm, bot, "5", FR_QUESTIONS["instance"])
    answers = [question, following]
    answers += await the_other_answers(bot, client, dm, answers)
    assert_readable_and_never_cannot_read(answers)
