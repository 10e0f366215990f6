"""The Matrix shell against a real Synapse: sync loop, restarts, bursts, E2EE, invites, outages.

Each test has its own bot account, database and E2EE store; the bot runs as in production
(`start()` then `run()` in a task) with a tiny echo `on_batch` that answers every text with an
`m.notice` through `transport.send_event`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from nio import AsyncClient, RoomGetStateEventResponse

from bot.config import Config, MatrixConfig
from bot.matrix.client import STALL_SECONDS, MatrixShell
from bot.matrix.inbound import Incoming, IncomingText, IncomingUnreadable
from bot.storage.db import close_db, open_db
from bot.storage.models import BotState, UndecryptedEvent
from bot.testing.matrix import (
    discard_messages,
    login_client,
    send_text,
    shared_room,
    sync_once,
    wait_for_message,
    wait_for_messages,
)
from bot.testing.synapse import Synapse, synapse_available

pytestmark = pytest.mark.skipif(not synapse_available(), reason="matrix-synapse not installed")

ENCRYPTION = {
    "type": "m.room.encryption",
    "state_key": "",
    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
}


@pytest_asyncio.fixture
async def db(tmp_path: Path) -> AsyncIterator[None]:
    await open_db(f"sqlite://{tmp_path}/db.sqlite3")
    try:
        yield
    finally:
        await close_db()


@dataclass
class Echo:
    """`on_batch` that records every event and answers texts with `echo: <body>`."""

    shell: MatrixShell | None = None
    received: list[Incoming] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    failures_left: int = 0

    def __post_init__(self) -> None:
        self.gate.set()

    async def __call__(self, events: list[Incoming]) -> None:
        await self.gate.wait()
        if self.failures_left:
            self.failures_left -= 1
            raise RuntimeError("handler failure (test)")
        self.batches.append(len(events))
        self.received.extend(events)
        assert self.shell is not None
        for event in events:
            if isinstance(event, IncomingText):
                await self.shell.transport.send_event(
                    event.room_id,
                    "m.room.message",
                    {"msgtype": "m.notice", "body": f"echo: {event.body}"},
                    f"echo-{event.event_id}",
                )

    def texts(self, room_id: str | None = None) -> list[str]:
        return [
            event.body
            for event in self.received
            if isinstance(event, IncomingText) and room_id in (None, event.room_id)
        ]


@dataclass
class Bot:
    """One bot account with its database, store and staff room; `start()` makes a new shell."""

    synapse: Synapse
    config: Config
    staff: AsyncClient
    echo: Echo = field(default_factory=Echo)
    shell: MatrixShell | None = None
    task: asyncio.Task[None] | None = None

    @property
    def user_id(self) -> str:
        return self.config.matrix.user_id

    @property
    def staff_room(self) -> str:
        return self.config.matrix.staff_room

    async def start(self) -> MatrixShell:
        self.shell = MatrixShell(
            self.config,
            on_batch=self.echo,
            is_staff_inviter=lambda user_id: user_id == self.staff.user_id,
            clock=lambda: datetime.now(UTC),
        )
        self.echo.shell = self.shell
        await self.shell.start()
        self.task = asyncio.create_task(self.shell.run())
        return self.shell

    async def stop(self) -> None:
        if self.shell is not None:
            await self.shell.stop()
        if self.task is not None:
            await self.task
        self.shell = self.task = None


BotFactory = Callable[..., Awaitable[Bot]]


async def make_bot(synapse: Synapse, staff: AsyncClient, tmp_path: Path, **matrix: Any) -> Bot:
    """Register a bot, make `staff` create the staff room and invite it (pending invite)."""
    localpart = f"bot-{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(16)
    user_id, _ = await synapse.register(localpart, password)
    created = await staff.room_create(name="staff")
    room_id = created.room_id
    await staff.room_invite(room_id, user_id)
    await sync_once(staff)
    config = Config(
        matrix=MatrixConfig(
            homeserver=synapse.base_url,
            user_id=user_id,
            staff_room=room_id,
            password=password,
            store_path=str(tmp_path / f"store-{localpart}"),
            staff=(staff.user_id,),
            **matrix,
        )
    )
    return Bot(synapse, config, staff)


@pytest_asyncio.fixture
async def bots(
    synapse: Synapse, matrix_user: Any, tmp_path: Path, db: None
) -> AsyncIterator[BotFactory]:
    made: list[Bot] = []

    async def make(**matrix: Any) -> Bot:
        staff = await matrix_user("staff")
        bot = await make_bot(synapse, staff, tmp_path, **matrix)
        made.append(bot)
        return bot

    yield make
    for bot in made:
        await bot.stop()


async def dm_with(client: AsyncClient, bot: Bot, **room_create: Any) -> str:
    """`client` creates a room and invites the bot; returns once the bot has joined."""
    created = await client.room_create(is_direct=True, invite=[bot.user_id], **room_create)
    room_id = created.room_id
    await wait_for_join(client, room_id, bot.user_id)
    await sync_once(client)
    return room_id


async def membership(client: AsyncClient, room_id: str, user_id: str) -> str | None:
    state = await client.room_get_state_event(room_id, "m.room.member", user_id)
    if isinstance(state, RoomGetStateEventResponse):
        return state.content.get("membership")
    return None


async def wait_for_join(client: AsyncClient, room_id: str, user_id: str) -> None:
    async with asyncio.timeout(15):
        while await membership(client, room_id, user_id) != "join":  # noqa: ASYNC110
            await asyncio.sleep(0.1)


# -- tests ---------------------------------------------------------------------------------


async def test_history_ignored_then_answers_and_restart_resumes_on_same_device(
    bots: BotFactory, matrix_user: Any
) -> None:
    bot = await bots()
    await send_text(bot.staff, bot.staff_room, "history, before the bot ever ran")

    shell = await bot.start()
    assert shell.staff_room_id == bot.staff_room
    device = shell.device_id
    await send_text(bot.staff, bot.staff_room, "now")
    await wait_for_message(bot.staff, bot.staff_room, lambda m: m.body == "echo: now")
    assert bot.echo.texts() == ["now"]

    # A client invites the bot and writes at once, before the bot has joined.
    alice = await matrix_user("alice")
    created = await alice.room_create(is_direct=True, invite=[bot.user_id])
    await sync_once(alice)  # nio sends only to rooms it has synced
    await send_text(alice, created.room_id, "hello, right after the invite")
    reply = await wait_for_message(alice, created.room_id)
    assert reply.body == "echo: hello, right after the invite"
    assert reply.sender == bot.user_id

    await bot.stop()
    token = await BotState.get(key="sync_token")
    await send_text(alice, created.room_id, "while the bot was stopped")

    shell = await bot.start()
    assert shell.device_id == device
    await wait_for_message(
        alice, created.room_id, lambda m: m.body == "echo: while the bot was stopped"
    )
    async with asyncio.timeout(5):  # stored once `on_batch` has returned (after the echo)
        while (await BotState.get(key="sync_token")).value == token.value:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    texts = bot.echo.texts()
    assert texts.count("while the bot was stopped") == 1
    assert texts.count("hello, right after the invite") == 1
    assert "history, before the bot ever ran" not in texts


async def test_burst_of_30_is_delivered_whole_in_order_once(
    bots: BotFactory, matrix_user: Any
) -> None:
    # A timeline limit far below the burst: most of it must come from /messages.
    bot = await bots(sync_timeline_limit=5)
    await bot.start()
    alice = await matrix_user("alice")
    room_id = await dm_with(alice, bot)

    bot.echo.gate.clear()  # hold the handler so that the burst piles up on the server
    bodies = [f"burst {i:02d}" for i in range(30)]
    for body in bodies:
        await send_text(alice, room_id, body)
    bot.echo.gate.set()

    replies = await wait_for_messages(
        alice, room_id, 30, lambda m: m.body.startswith("echo: burst")
    )
    assert [reply.body for reply in replies] == [f"echo: {body}" for body in bodies]
    assert bot.echo.texts(room_id) == bodies
    assert max(bot.echo.batches) > 5  # at least one batch went beyond the timeline limit


async def test_handler_failure_is_retried_with_the_same_batch(
    bots: BotFactory, matrix_user: Any
) -> None:
    bot = await bots()
    shell = await bot.start()
    alice = await matrix_user("alice")
    room_id = await dm_with(alice, bot)
    token = (await BotState.get(key="sync_token")).value

    bot.echo.failures_left = 2
    await send_text(alice, room_id, "despite two failures")

    await wait_for_message(alice, room_id, lambda m: m.body == "echo: despite two failures")
    assert shell.stats.batch_failures == 2
    assert bot.echo.texts(room_id) == ["despite two failures"]
    async with asyncio.timeout(5):  # stored once `on_batch` has returned
        while (await BotState.get(key="sync_token")).value == token:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_encrypted_dm(bots: BotFactory, matrix_user: Any) -> None:
    bot = await bots()
    await bot.start()
    alice = await matrix_user("alice")
    room_id = await dm_with(alice, bot, initial_state=[ENCRYPTION])
    assert alice.rooms[room_id].encrypted

    await send_text(alice, room_id, "a secret question")

    reply = await wait_for_message(alice, room_id, lambda m: m.sender == bot.user_id)
    assert reply.body == "echo: a secret question"
    assert reply.decrypted
    received = [e for e in bot.echo.received if isinstance(e, IncomingText)]
    assert [(e.body, e.encrypted) for e in received] == [("a secret question", True)]
    assert await UndecryptedEvent.all().count() == 0


async def test_room_history_before_the_invite_is_not_answered(
    bots: BotFactory, matrix_user: Any
) -> None:
    bot = await bots()
    await bot.start()
    alice = await matrix_user("alice")
    created = await alice.room_create(is_direct=True)
    await sync_once(alice)
    await send_text(alice, created.room_id, "said before inviting the bot")
    await alice.room_invite(created.room_id, bot.user_id)
    await send_text(alice, created.room_id, "said after inviting it")

    reply = await wait_for_message(alice, created.room_id)

    assert reply.body == "echo: said after inviting it"
    assert bot.echo.texts(created.room_id) == ["said after inviting it"]


async def test_undecryptable_event_is_kept_and_delivered_once_keys_arrive(
    bots: BotFactory, matrix_user: Any, tmp_path: Path
) -> None:
    bot = await bots()
    shell = await bot.start()
    alice = await matrix_user("alice")
    created = await alice.room_create(is_direct=True, initial_state=[ENCRYPTION])
    room_id = created.room_id
    await sync_once(alice)
    await alice.room_invite(room_id, bot.user_id)
    # Alice's client has not seen the invite yet: the room key goes to nobody but her.
    await send_text(alice, room_id, "sealed")
    await wait_for_join(alice, room_id, bot.user_id)
    await sync_once(alice)
    await send_text(alice, room_id, "open")
    await wait_for_message(alice, room_id, lambda m: m.body == "echo: open")
    kept = await UndecryptedEvent.get(room_id=room_id)
    assert kept.sender == alice.user_id
    assert shell.stats.undecryptable == 1

    # An expired one next to it: given up after 24 h, never delivered.
    await UndecryptedEvent.create(
        event_id="$expired",
        room_id=room_id,
        sender=alice.user_id,
        session_id=kept.session_id,
        source={**kept.source, "event_id": "$expired"},
        received_at=datetime.now(UTC) - timedelta(hours=25),
    )
    # The key arrives (here: imported from Alice's export); the next sync retries.
    keys = tmp_path / "alice-keys.txt"
    await alice.export_keys(str(keys), "passphrase")
    await shell.import_keys(keys, "passphrase")
    await send_text(alice, room_id, "ping")

    await wait_for_message(alice, room_id, lambda m: m.body == "echo: ping")
    assert bot.echo.texts(room_id) == ["open", "sealed", "ping"]
    # The expired one is dropped by the shell's next pass, which may come just after the
    # answer: wait for it (bounded) rather than race it.
    for _ in range(100):
        if await UndecryptedEvent.all().count() == 0:
            break
        await asyncio.sleep(0.1)
    assert await UndecryptedEvent.all().count() == 0
    assert shell.stats.late_decrypted == 1
    # The given-up one reaches the handlers once, as "could not be read", with its send time.
    (unreadable,) = [e for e in bot.echo.received if isinstance(e, IncomingUnreadable)]
    assert (unreadable.event_id, unreadable.room_id, unreadable.sender) == (
        "$expired",
        room_id,
        alice.user_id,
    )
    assert unreadable.ts == datetime.fromtimestamp(kept.source["origin_server_ts"] / 1000, UTC)


async def test_room_created_by_the_bot_is_usable_at_once(
    bots: BotFactory, matrix_user: Any
) -> None:
    bot = await bots()
    shell = await bot.start()
    alice = await matrix_user("alice")
    transport = shell.transport

    room_id = await transport.create_room(
        name="Support", invite=[alice.user_id], is_direct=True, encrypted=True
    )
    # Before any sync has brought the room: nio must still know it to encrypt.
    event_id = await transport.send_event(
        room_id, "m.room.message", {"msgtype": "m.notice", "body": "welcome"}, "welcome-1"
    )
    again = await transport.send_event(
        room_id, "m.room.message", {"msgtype": "m.notice", "body": "welcome"}, "welcome-1"
    )

    assert again == event_id  # same transaction id: the homeserver did not post it twice
    assert transport.is_encrypted(room_id)
    assert transport.is_direct(room_id)
    assert transport.joined_members(room_id) == {bot.user_id}
    assert transport.power_level(room_id, bot.user_id) >= 100
    assert transport.power_level(room_id, alice.user_id) == 0
    await alice.join(room_id)
    welcome = await wait_for_message(alice, room_id)
    assert (welcome.body, welcome.decrypted) == ("welcome", True)

    await transport.invite(room_id, bot.staff.user_id)
    assert await membership(alice, room_id, bot.staff.user_id) == "invite"
    uri = await transport.upload(b"ticket export", "text/plain", "export.txt")
    assert uri.startswith("mxc://")


async def test_invites_from_foreign_users_are_declined_staff_accepted(
    bots: BotFactory, matrix_user: Any
) -> None:
    # Only example.org users may invite: every localhost user but staff is "foreign" here.
    bot = await bots(allowed_servers=("example.org",))
    shell = await bot.start()
    stranger = await matrix_user("stranger")

    declined = await stranger.room_create(invite=[bot.user_id])
    accepted = await bot.staff.room_create(invite=[bot.user_id])

    await wait_for_join(bot.staff, accepted.room_id, bot.user_id)
    async with asyncio.timeout(15):
        while await membership(stranger, declined.room_id, bot.user_id) != "leave":  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    assert shell.stats.invites_declined == 1
    assert shell.stats.invites_accepted == 1


async def test_outage_is_bounded_by_backoff_and_the_bot_resumes(tmp_path: Path, db: None) -> None:
    synapse = await Synapse.astart(tmp_path / "hs")
    clients: list[AsyncClient] = []
    bot: Bot | None = None
    try:

        async def user(name: str) -> AsyncClient:
            password = secrets.token_urlsafe(16)
            user_id, _ = await synapse.register(name, password)
            client = await login_client(
                synapse.base_url, user_id, password, store_path=tmp_path / "nio" / name
            )
            clients.append(client)
            return client

        staff, alice = await user("staff"), await user("alice")
        bot = await make_bot(synapse, staff, tmp_path)
        shell = await bot.start()
        room_id = await shared_room(alice, staff)
        await staff.room_invite(room_id, bot.user_id)
        await wait_for_join(alice, room_id, bot.user_id)
        await send_text(alice, room_id, "before the outage")
        await wait_for_message(alice, room_id, lambda m: m.body == "echo: before the outage")

        await synapse.astop()
        outage = time.monotonic()
        before = shell.requests
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(8)
        during = shell.requests - before
        elapsed = loop.time() - started
        print(f"requests during a {elapsed:.1f} s outage: {during}")
        # Backoff waits at least 0.5, 1, 2, 4 s: at most 5 attempts fit in 8 s.
        assert 1 <= during <= 5
        # The long poll in flight when the server went away failed too (sent before `before`).
        assert during <= shell.stats.sync_failures <= during + 1
        # /healthz: a few seconds down is not a stall; minutes without a sync answer are.
        assert shell.sync_state() == "ok"
        assert shell.sync_state(now=outage + STALL_SECONDS + 1) == "stalled"

        synapse = await Synapse.astart(tmp_path / "hs", port=synapse.port)
        discard_messages(alice)
        await send_text(alice, room_id, "after the outage")
        await wait_for_message(
            alice, room_id, lambda m: m.body == "echo: after the outage", timeout=30
        )
        assert bot.echo.texts() == ["before the outage", "after the outage"]
        assert shell.sync_state(now=outage + STALL_SECONDS + 1) == "ok"  # moving again
    finally:
        if bot is not None:
            await bot.stop()
        for client in clients:
            await client.close()
        await synapse.astop()
