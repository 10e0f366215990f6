"""Issue #13: the bot as Element's users meet it, driven with Element's own SDK.

matrix-js-sdk with its Rust crypto (`tests/js`, run by Node ≥ 22) plays the client, in an
encrypted direct chat created as Element creates one, with the real bot process on the
session's Synapse. What is checked is what that user sees: every message of the bot readable,
the shield Element would draw next to it (`getEncryptionInfoForEvent`), the bot's identity
and whether Element would warn that it changed; and on the bot's side that it read every
message (nothing left undecryptable, never "I cannot read this").

The three settings of Element that matter here: its default (`AllDevicesIsolationMode`),
"exclude insecure devices" (`OnlySignedDevicesIsolationMode`, for which Element also sets up
the user's own cross-signing), and "never send encrypted messages to unverified sessions"
(`globalBlacklistUnverifiedDevices`).
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from bot.matrix.crosssign import RECOVERY_KEY_FILE, read_recovery_key

from .conftest import RunningBot, make_running_bot
from .element_sdk import ElementClient, Runtime, runtime
from .test_encrypted_intake import cannot_read_wordings
from .test_intake_e2e import DESCRIPTION_FR, FR_QUESTIONS, INSTANCE, REF, TIMEOUT, staff_card

# One bot for the whole module (its users and direct chats are each test's own), on one event
# loop: starting a bot per test would double the module's time.
pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

ElementFactory = Callable[..., Awaitable[ElementClient]]

# The intake in French, as in tests/e2e/test_intake_e2e.py: what the client writes, and a part
# of the bot's answer to it.
INTAKE = [
    (DESCRIPTION_FR, FR_QUESTIONS["category"]),
    ("5", FR_QUESTIONS["instance"]),
    (INSTANCE, FR_QUESTIONS["channel"]),
    ("1", FR_QUESTIONS["email"]),
    ("client@example.org", "client@example.org"),
    ("oui", "SP-"),
]


@pytest.fixture(scope="module", autouse=True)
def element_sdk_installed() -> Runtime:
    """Skip (with the reason) before the bot is started when the SDK or Node is missing."""
    return runtime()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bot(synapse, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningBot]:
    made = await make_running_bot(synapse, tmp_path_factory.mktemp("element-sdk"))
    await made.start()
    try:
        yield made
    finally:
        await made.stop()
        for client in [*made.clients, made.staff]:
            await client.close()


@pytest_asyncio.fixture(loop_scope="module")
async def element(bot: RunningBot) -> AsyncIterator[ElementFactory]:
    """`await element("erin", isolation=..., cross_sign=...)`: a new user on the js-sdk."""
    clients: list[ElementClient] = []

    async def make(localpart: str, **modes: Any) -> ElementClient:
        user = f"{localpart}{secrets.token_hex(3)}"
        password = "pw-" + secrets.token_hex(8)
        user_id, _ = await bot.synapse.register(user, password)
        client = await ElementClient.start(
            bot.synapse.base_url,
            user_id,
            password,
            log_path=bot.workdir / "element" / f"{user}.log",
            **modes,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def undecrypted_in(bot: RunningBot, room_id: str) -> set[str]:
    """The events of `room_id` the bot keeps as undecryptable."""
    with sqlite3.connect(bot.workdir / "bot.sqlite3", timeout=5) as conn:
        rows = conn.execute("SELECT event_id FROM undecrypted_event WHERE room_id = ?", (room_id,))
        return {row[0] for row in rows}


async def full_intake(client: ElementClient, dm: str, bot: RunningBot) -> str:
    """Go through the whole intake; return the reference of the ticket the bot opened (after
    checking that the staff room got its card)."""
    answer: dict[str, Any] = {}
    for text, expected in INTAKE:
        await client.send(dm, text)
        answer = await client.wait_for(dm, bot.bot_user_id, expected, timeout=TIMEOUT)
    match = REF.search(answer["body"])
    assert match, answer
    card = await staff_card(bot, match.group(0))
    assert DESCRIPTION_FR in card.body
    return match.group(0)


async def bot_messages_as_seen(client: ElementClient, dm: str, bot: RunningBot) -> list[dict]:
    """Every message of the bot in `dm`, each one decrypted by the client: none that it could
    not read, none that it could read only later (Element shows "Unable to decrypt" meanwhile),
    none still waiting."""
    seen = await client.messages(dm, bot.bot_user_id)
    assert seen, "the client saw no message of the bot"
    for message in seen:
        assert not message.get("pending"), message
        assert message["encrypted"], f"sent in the clear: {message}"
        assert message["failure"] is None, f"the client could not decrypt: {message}"
        assert not message["failed_before"], f"the client could decrypt only late: {message}"
        assert message["decrypted"], message
    return seen


def assert_bot_read_everything(bot: RunningBot, dm: str, seen: list[dict]) -> None:
    """The bot kept no event of `dm` it could not decrypt, and never told the client it could
    not read them."""
    assert undecrypted_in(bot, dm) == set()
    for wording in cannot_read_wordings():
        for message in seen:
            assert wording not in message["body"], message


# -- Element's default settings ---------------------------------------------------------------


async def test_default_mode_full_intake_readable_both_ways_and_no_shield(bot, element):
    client = await element("erin")
    dm = await client.create_dm(bot.bot_user_id)

    await full_intake(client, dm, bot)

    seen = await bot_messages_as_seen(client, dm, bot)
    assert_bot_read_everything(bot, dm, seen)
    # Element draws no shield next to them ("Encrypted by a device not verified by its owner"
    # was the red one): the bot's device is signed by its own cross-signing identity.
    shields = {(m["shield"], m["shield_reason"]) for m in seen}
    assert shields == {("NONE", None)}, seen


# -- "exclude insecure devices" ---------------------------------------------------------------


async def test_only_signed_devices_mode_full_intake_readable_both_ways(bot, element):
    client = await element("farid", isolation="only_signed", cross_sign=True)
    assert client.master_key  # Element's own cross-signing, set up for this mode
    dm = await client.create_dm(bot.bot_user_id)

    await full_intake(client, dm, bot)

    seen = await bot_messages_as_seen(client, dm, bot)
    assert_bot_read_everything(bot, dm, seen)
    identity = await client.identity(bot.bot_user_id)
    assert identity["master_key"] and not identity["needs_user_approval"], identity
    assert identity["devices"] and all(d["signed_by_owner"] for d in identity["devices"])


# -- "never send encrypted messages to unverified sessions" -----------------------------------


async def test_blacklisting_unverified_devices_the_bot_says_at_once_what_to_do(bot, element):
    """The client withholds its room key from the bot's device (this user has not verified
    the bot), so the bot cannot read the message: it says so at once, in the client's language,
    with what to do, rather than waiting a day for a key that will not come; and it keeps the
    event in case the key comes. The client can read that answer (the blacklist concerns what
    the client sends)."""
    client = await element("gwen", blacklist_unverified=True)
    dm = await client.create_dm(bot.bot_user_id)

    event_id = await client.send(dm, DESCRIPTION_FR)
    answer = await client.wait_for(dm, bot.bot_user_id, timeout=TIMEOUT)

    assert answer["failure"] is None and answer["body"], f"unreadable: {answer}"
    body = answer["body"]
    assert FR_QUESTIONS["category"] not in body  # it could not read the request
    assert "Je ne peux pas lire le message chiffré" in body
    # What to do: turn off Element's setting (named as in French), then write again.
    assert "désactivez « Ne jamais envoyer de messages chiffrés aux sessions non vérifiées" in body
    assert "envoyez à nouveau votre message" in body
    assert event_id in undecrypted_in(bot, dm)


# -- the bot's identity across a restart and a restore ----------------------------------------


async def identity_with_signed_devices(client: ElementClient, bot: RunningBot) -> dict:
    identity = await client.identity(bot.bot_user_id)
    assert identity["master_key"], f"the bot has no cross-signing identity: {identity}"
    assert not identity["needs_user_approval"], f"Element would warn: {identity}"
    assert identity["devices"], identity
    assert all(d["signed_by_owner"] for d in identity["devices"]), identity
    return identity


async def new_device_seen(client: ElementClient, bot: RunningBot, old_device: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        identity = await client.identity(bot.bot_user_id)
        if {d["device_id"] for d in identity["devices"]} - {old_device}:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the client never saw the bot's new device: {identity}")
        await asyncio.sleep(0.2)


async def test_a_restart_keeps_the_identity_the_client_sees(bot, element):
    """A restart with the same store: the same device, the same identity, nothing for Element
    to warn about, and the conversation goes on."""
    client = await element("hugo")
    dm = await client.create_dm(bot.bot_user_id)
    steps = iter(INTAKE)
    for text, expected in [next(steps), next(steps)]:
        await client.send(dm, text)
        await client.wait_for(dm, bot.bot_user_id, expected, timeout=TIMEOUT)
    before = await identity_with_signed_devices(client, bot)

    await bot.restart(kill=False)
    # Two exchanges: the client's second message is sent after it has caught up with any
    # change of the bot's keys (it queries them before sharing its room key).
    for text, expected in [next(steps), next(steps)]:
        await client.send(dm, text)
        await client.wait_for(dm, bot.bot_user_id, expected, timeout=TIMEOUT)

    after = await identity_with_signed_devices(client, bot)
    assert after["master_key"] == before["master_key"]
    assert after["devices"] == before["devices"]  # the same device, signed as before
    seen = await bot_messages_as_seen(client, dm, bot)
    assert_bot_read_everything(bot, dm, seen)
    assert {m["shield"] for m in seen} == {"NONE"}, seen


async def test_a_restore_from_the_recovery_key_keeps_the_identity_the_client_sees(
    bot, element, monkeypatch
):
    """A new installation: the bot's store is lost (the database is kept), the operator gives
    the recovery key the bot wrote at its first start. The bot logs in as a new device, which
    its identity signs: the client sees the same identity, and no warning."""
    client = await element("iris")
    dm = await client.create_dm(bot.bot_user_id)
    steps = iter(INTAKE)
    text, expected = next(steps)
    await client.send(dm, text)
    await client.wait_for(dm, bot.bot_user_id, expected, timeout=TIMEOUT)
    before = await identity_with_signed_devices(client, bot)
    (old_device,) = (d["device_id"] for d in before["devices"])
    store = bot.workdir / "store"
    recovery_key = read_recovery_key((store / RECOVERY_KEY_FILE).read_text())

    await bot.stop()
    shutil.rmtree(store)
    monkeypatch.setenv("SUPPORT_BOT_MATRIX_RECOVERY_KEY", recovery_key)
    await bot.start()
    # The client writes once it knows the bot's new device (as a user writing a little later).
    await new_device_seen(client, bot, old_device)
    for text, expected in [next(steps), next(steps)]:
        await client.send(dm, text)
        await client.wait_for(dm, bot.bot_user_id, expected, timeout=TIMEOUT)

    after = await identity_with_signed_devices(client, bot)
    assert after["master_key"] == before["master_key"]
    assert {d["device_id"] for d in after["devices"]} > {old_device}
    seen = await bot_messages_as_seen(client, dm, bot)
    assert_bot_read_everything(bot, dm, seen)
    assert {m["shield"] for m in seen} == {"NONE"}, seen
