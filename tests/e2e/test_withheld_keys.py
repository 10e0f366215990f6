"""Issue #13: a client's app withholds the room key from the bot (`m.room_key.withheld`).

The real bot process on the session's Synapse, and a client with end-to-end encryption (nio)
that does what Element does in "Never send encrypted messages to unverified sessions" mode:
instead of the room key of its message, it sends the bot's device `m.room_key.withheld`. The
bot answers at once, in the client's language, in clear (their app may refuse what the bot
encrypts); once the app shares the key after all, the message is handled as usual and
nothing more is said about it. The bot's log says one line per change of the event's state,
and none of nio's warnings at every key that arrives meanwhile.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from nio import AsyncClient, ToDeviceMessage, ToDeviceResponse
from nio.crypto import OlmDevice

from bot.testing.matrix import send_text, wait_for_message

from .conftest import RunningBot
from .test_encrypted_intake import (
    MEGOLM,
    bot_device,
    share_room_key,
    undecrypted_ids,
    wait_until,
    wire_events,
    withhold_room_key,
)
from .test_intake_e2e import (
    DESCRIPTION_EN,
    DESCRIPTION_FR,
    FR_QUESTIONS,
    TIMEOUT,
    ask,
    from_bot,
)

pytestmark = pytest.mark.e2e

FR_NOTICE = "Je ne peux pas lire le message chiffré que vous avez envoyé le"
FR_WHAT_TO_DO = "désactivez « Ne jamais envoyer de messages chiffrés aux sessions non vérifiées »"
EN_NOTICE = "I cannot read the encrypted message you sent on"
EN_WHAT_TO_DO = "turn off “Never send encrypted messages to unverified sessions”"


async def send_withheld(
    client: AsyncClient, device: OlmDevice, key: dict[str, str], code: str = "m.unverified"
) -> None:
    """What the client's app sends the bot's device instead of `key` (unencrypted, as apps
    send it)."""
    content = {
        "algorithm": MEGOLM,
        "room_id": key["room_id"],
        "session_id": key["session_id"],
        "sender_key": client.olm.account.identity_keys["curve25519"],
        "code": code,
        "reason": "The sender has disabled encrypting to unverified devices.",
        "from_device": client.device_id,
    }
    message = ToDeviceMessage("m.room_key.withheld", device.user_id, device.id, content)
    response = await client.to_device(message)
    assert isinstance(response, ToDeviceResponse), response


def kept_rows(database: Path) -> dict[str, tuple[str | None, int]]:
    """Kept undecryptable events: event id → (withheld code, retry attempts)."""
    with sqlite3.connect(database, timeout=5) as conn:
        rows = conn.execute("SELECT event_id, withheld, attempts FROM undecrypted_event")
        return {event_id: (code, attempts) for event_id, code, attempts in rows}


async def bots_messages_on_the_wire(bot: RunningBot, client: AsyncClient, room: str) -> list[Any]:
    events = await wire_events(bot, client, room)
    return [
        e
        for e in events
        if e["sender"] == bot.bot_user_id and e["type"] in ("m.room.message", "m.room.encrypted")
    ]


async def test_withheld_key_before_the_message_is_answered_at_once_in_french(running_bot):
    bot = running_bot
    database = bot.workdir / "bot.sqlite3"
    client, dm = await bot.new_client("nora", encrypted=True)
    device = await bot_device(client, bot, dm)
    key = withhold_room_key(client, dm)

    await send_withheld(client, device, key)  # the app withholds, then sends the message
    event_id = await send_text(client, dm, DESCRIPTION_FR)
    notice = await wait_for_message(client, dm, from_bot(bot, FR_NOTICE), timeout=TIMEOUT)
    assert FR_WHAT_TO_DO in notice.body
    assert "puis envoyez à nouveau votre message" in notice.body
    # Readable whatever the app thinks of the bot's device: sent in clear.
    assert not notice.decrypted
    (on_wire,) = [
        e for e in await wire_events(bot, client, dm) if e["event_id"] == notice.event_id
    ]
    assert on_wire["type"] == "m.room.message"
    assert on_wire["content"]["msgtype"] == "m.notice"
    assert kept_rows(database)[event_id][0] == "m.unverified"  # kept all the same

    # The user allows the bot's session after all: the key comes, the message is handled
    # as any other, and the conversation goes on.
    await share_room_key(client, device, key)
    question = await wait_for_message(
        client, dm, from_bot(bot, FR_QUESTIONS["category"]), timeout=TIMEOUT
    )
    assert question.decrypted
    await wait_until(lambda: event_id not in undecrypted_ids(database), "the event stayed kept")
    await ask(client, dm, bot, "5", FR_QUESTIONS["instance"])

    # Nothing more said about it: one notice, in clear; every other message encrypted.
    sent = await bots_messages_on_the_wire(bot, client, dm)
    clear = [e for e in sent if e["type"] == "m.room.message"]
    assert [e["event_id"] for e in clear] == [notice.event_id]
    assert len(sent) >= 3 and all(e["content"].get("algorithm") == MEGOLM for e in sent[1:])


async def test_withheld_after_the_message_was_kept_in_english_and_one_log_line_per_state(
    running_bot,
):
    bot = running_bot
    database = bot.workdir / "bot.sqlite3"
    client, dm = await bot.new_client("owen", encrypted=True)
    await ask(client, dm, bot, "!lang en", "English")
    device = await bot_device(client, bot, dm)
    key = withhold_room_key(client, dm)

    event_id = await send_text(client, dm, DESCRIPTION_EN)
    await wait_until(lambda: event_id in kept_rows(database), "the sealed event was not kept")
    # Keys of other sessions arrive while it waits: each makes the bot try it again (nio
    # used to log about five warnings at each).
    for attempt in range(1, 4):
        await share_room_key(client, device, withhold_room_key(client, dm))
        await wait_until(
            lambda n=attempt: kept_rows(database)[event_id][1] >= n,
            f"the bot did not retry the kept event after key {attempt}",
        )

    await send_withheld(client, device, key, code="m.blacklisted")
    notice = await wait_for_message(client, dm, from_bot(bot, EN_NOTICE), timeout=TIMEOUT)
    assert EN_WHAT_TO_DO in notice.body and not notice.decrypted
    assert kept_rows(database)[event_id][0] == "m.blacklisted"

    await share_room_key(client, device, key)
    await wait_for_message(
        client, dm, from_bot(bot, "Which category fits your request?"), timeout=TIMEOUT
    )
    await wait_until(lambda: event_id not in kept_rows(database), "the event stayed kept")
    sent = await bots_messages_on_the_wire(bot, client, dm)
    assert [e["event_id"] for e in sent if e["type"] == "m.room.message"] == [notice.event_id]

    log = bot.logs()
    about_it = [line for line in log.splitlines() if event_id in line]
    states = [re.sub(r"^\S+ \S+ ", "", line) for line in about_it]
    assert states == [
        f"INFO bot.matrix.pending: event {event_id} in {dm} cannot be decrypted yet: keeping it",
        f"INFO bot.matrix.pending: event {event_id} in {dm}: its key is withheld (m.blacklisted)",
        f"INFO bot.matrix.pending: event {event_id} in {dm} decrypted after its keys arrived",
    ]
    noise = [line for line in log.splitlines() if " WARNING nio." in line]
    assert noise == []
