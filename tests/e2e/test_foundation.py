"""The foundation, end to end: the real bot process on a real Synapse with real nio clients."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter

import pytest
from nio import RoomCreateResponse

from bot.testing.matrix import (
    login_client,
    send_text,
    sync_once,
    wait_for_message,
    wait_for_messages,
)

from .conftest import make_running_bot

pytestmark = pytest.mark.e2e


def from_bot(bot):
    return lambda event: event.sender == bot.bot_user_id


async def test_help_in_plain_room_and_encrypted_dm_french_then_english(running_bot):
    client, dm = await running_bot.new_client("alice")
    await send_text(client, dm, "!aide")
    answer = await wait_for_message(client, dm, from_bot(running_bot), timeout=20)
    assert "Voici ce que je comprends" in answer.body
    assert answer.source["content"]["msgtype"] == "m.notice"

    await send_text(client, dm, "!lang en")
    await wait_for_message(client, dm, from_bot(running_bot), timeout=20)
    await send_text(client, dm, "!help")
    answer = await wait_for_message(client, dm, from_bot(running_bot), timeout=20)
    assert "Here is what I understand" in answer.body

    secret_client, secret_dm = await running_bot.new_client("bob", encrypted=True)
    await send_text(secret_client, secret_dm, "!aide")
    answer = await wait_for_message(secret_client, secret_dm, from_bot(running_bot), timeout=30)
    assert "Voici ce que je comprends" in answer.body
    assert answer.decrypted  # it came encrypted and the client could read it


async def test_sigkill_while_client_keeps_sending_every_message_answered_once(running_bot):
    client, dm = await running_bot.new_client("carol")
    sent = 0
    for _round in range(3):
        for _ in range(4):
            sent += 1
            await send_text(client, dm, f"!aide {sent}")
            await asyncio.sleep(0.05)
        running_bot.kill()
        # Messages sent while the bot is down must be answered after the restart.
        for _ in range(3):
            sent += 1
            await send_text(client, dm, f"!aide {sent}")
        await running_bot.start()
    answers = await wait_for_messages(client, dm, sent, from_bot(running_bot), timeout=60)
    assert len(answers) == sent
    # And nothing more arrives: each message was answered exactly once.
    await asyncio.sleep(2)
    extra = await sync_once(client, timeout=1)
    assert not [e for _, e in extra if e.sender == running_bot.bot_user_id]


async def test_burst_of_30_messages_all_answered_once(running_bot):
    client, dm = await running_bot.new_client("dave")
    await asyncio.gather(*(send_text(client, dm, f"!aide {n}") for n in range(30)))
    answers = await wait_for_messages(client, dm, 30, from_bot(running_bot), timeout=90)
    assert len(answers) == 30
    txn_like = Counter(a.event_id for a in answers)
    assert max(txn_like.values()) == 1


async def test_invite_from_foreign_server_is_not_joined(synapse, tmp_path):
    bot = await make_running_bot(synapse, tmp_path, allowed_servers=["example.org"])
    await bot.start()
    try:
        user = f"eve{secrets.token_hex(3)}"
        user_id, _ = await synapse.register(user, "pw-eve-123456")
        eve = await login_client(
            synapse.base_url,
            user_id,
            "pw-eve-123456",
            store_path=tmp_path / "eve",
            encryption=False,
        )
        bot.clients.append(eve)
        response = await eve.room_create(is_direct=True, invite=[bot.bot_user_id])
        assert isinstance(response, RoomCreateResponse)
        await asyncio.sleep(4)
        await sync_once(eve, timeout=0.5)
        room = eve.rooms[response.room_id]
        assert bot.bot_user_id not in room.users
        # A staff member's invite is accepted, as the foreign rule does not apply to staff.
        staff_room = await bot.staff.room_create(is_direct=True, invite=[bot.bot_user_id])
        await bot.wait_joined(bot.staff, staff_room.room_id)
    finally:
        await bot.stop()
        for client in [*bot.clients, bot.staff]:
            await client.close()


async def test_handler_that_raises_apologises_with_reference_and_next_message_works(
    synapse, tmp_path, monkeypatch
):
    """The bot runs in this process (same `run_bot` as production) with one extra command
    whose handler raises, which a subprocess could not be given."""
    import handlers
    from bot.app import run_bot
    from bot.config import load_config
    from bot.routing import CommandSpec

    real_build = handlers.build_router

    def build_with_a_bug():
        router = real_build()

        async def boom(ctx):
            raise RuntimeError("a bug in a handler")

        router.commands.insert(0, CommandSpec(("boom",), "x", handler=boom))
        return router

    monkeypatch.setattr(handlers, "build_router", build_with_a_bug)
    bot = await make_running_bot(synapse, tmp_path)
    config = load_config(bot.config_path, env={})
    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.create_task(run_bot(config, stop=stop, ready=ready.set))
    try:
        await asyncio.wait_for(ready.wait(), 60)
        client, dm = await bot.new_client("frank")
        await send_text(client, dm, "!boom")
        apology = await wait_for_message(client, dm, from_bot(bot), timeout=20)
        assert "Désolé" in apology.body and "référence" in apology.body
        await send_text(client, dm, "!aide")
        answer = await wait_for_message(client, dm, from_bot(bot), timeout=20)
        assert "Voici ce que je comprends" in answer.body
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        for client in [*bot.clients, bot.staff]:
            await client.close()
