"""The test homeserver harness itself: users, rooms, bursts, restarts."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from bot.testing.matrix import send_text, shared_room, wait_for_message, wait_for_messages
from bot.testing.synapse import (
    GENERATED_CONFIG,
    Synapse,
    SynapseError,
    generate_config,
    synapse_available,
)

pytestmark = pytest.mark.skipif(not synapse_available(), reason="matrix-synapse not installed")

ENCRYPTION = {"algorithm": "m.megolm.v1.aes-sha2"}


async def test_invited_user_receives_message(matrix_user) -> None:
    alice = await matrix_user("alice")
    bob = await matrix_user("bob")
    room_id = await shared_room(alice, bob)

    await send_text(alice, room_id, "hello bob")

    message = await wait_for_message(bob, room_id, lambda m: m.body == "hello bob")
    assert message.sender == alice.user_id


async def test_messages_from_one_sync_are_kept_for_the_next_wait(matrix_user) -> None:
    alice = await matrix_user("alice")
    bob = await matrix_user("bob")
    room_id = await shared_room(alice, bob)
    await send_text(alice, room_id, "first")
    await send_text(alice, room_id, "second")

    # Both arrive in bob's first sync; the second must not be dropped by the first wait.
    assert (await wait_for_message(bob, room_id, lambda m: m.body == "first")).body == "first"
    assert (await wait_for_message(bob, room_id, timeout=2)).body == "second"


async def test_encrypted_room_message_is_decrypted(matrix_user) -> None:
    alice = await matrix_user("alice")
    bob = await matrix_user("bob")
    encryption = {"type": "m.room.encryption", "state_key": "", "content": ENCRYPTION}
    room_id = await shared_room(alice, bob, initial_state=[encryption])
    assert alice.rooms[room_id].encrypted

    await send_text(alice, room_id, "secret hello")

    message = await wait_for_message(bob, room_id)
    assert message.body == "secret hello"
    assert message.decrypted


@pytest.mark.parametrize(
    "timeline_limit",
    [
        pytest.param(100, id="one-sync"),
        pytest.param(5, id="gap-filled-by-messages"),
    ],
)
async def test_burst_of_30_messages_all_arrive(matrix_user, timeline_limit: int) -> None:
    alice = await matrix_user("alice")
    bob = await matrix_user("bob")
    room_id = await shared_room(alice, bob)
    bodies = [f"burst {i}" for i in range(30)]

    # Rate limits are raised: 30 concurrent sends succeed without nio's silent 429 retries.
    async with asyncio.timeout(10):
        await asyncio.gather(*(send_text(alice, room_id, body) for body in bodies))

    received = await wait_for_messages(
        bob,
        room_id,
        30,
        lambda m: m.body.startswith("burst "),
        timeline_limit=timeline_limit,
    )
    assert sorted(m.body for m in received) == sorted(bodies)
    assert len({m.event_id for m in received}) == 30


@pytest.fixture(scope="module")
def generated_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir with a generated config, shared by the start/stop tests below.

    Generating costs ~1.3 s (mostly importing Synapse); each test still starts its own server.
    """
    data_dir = tmp_path_factory.mktemp("hs")
    generate_config(data_dir, "localhost")
    return data_dir


async def test_start_twice_on_same_data_dir_reuses_config(generated_dir: Path) -> None:
    generated = (generated_dir / GENERATED_CONFIG).read_text()
    async with asyncio.timeout(120):
        first = await Synapse.astart(generated_dir)
        try:
            user_id, _ = await first.register("carol", "secret-pw")
        finally:
            await first.astop()

        second = await Synapse.astart(generated_dir)
        try:
            assert second.shared_secret == first.shared_secret
            # The user survived the restart: registering again logs in instead.
            again, token = await second.register("carol", "secret-pw")
        finally:
            await second.astop()

    assert (generated_dir / GENERATED_CONFIG).read_text() == generated
    assert again == user_id == "@carol:localhost"
    assert token
    assert first.process.returncode is not None
    assert second.process.returncode is not None


async def test_startup_failure_reports_log_tail(generated_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SynapseError, match="Address already in use"):
            await Synapse.astart(generated_dir, port=port)


async def test_other_server_name_on_same_data_dir_is_refused(generated_dir: Path) -> None:
    with pytest.raises(SynapseError, match="server name"):
        await Synapse.astart(generated_dir, server_name="example.org")
