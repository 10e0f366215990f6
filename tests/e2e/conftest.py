"""End-to-end fixtures: the real bot process (`python -m bot run`) on the session's Synapse.

`running_bot` gives a `RunningBot`: a bot account of its own, a staff user and a staff room,
its own SQLite database and key store, and methods to add clients (each in a direct chat with
the bot), to SIGKILL and restart the process.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nio import AsyncClient, RoomCreateResponse

from bot.storage.db import close_db, open_db
from bot.testing.matrix import login_client, sync_once
from bot.testing.net import free_port

READY_LINE = "support-bot ready"


@dataclass
class RunningBot:
    synapse: object
    workdir: Path
    bot_user_id: str
    staff: AsyncClient
    staff_room_id: str
    config_path: Path
    extra_toml: str = ""
    process: subprocess.Popen | None = None
    clients: list[AsyncClient] = field(default_factory=list)
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"bot-{self.starts}.log"

    async def start(self, timeout: float = 60) -> None:
        self.starts += 1
        with self.log_path.open("w") as log:
            self.process = self._spawn(log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("bot exited at start:\n" + self.log_path.read_text()[-4000:])
            if READY_LINE in self.log_path.read_text():
                return
            await asyncio.sleep(0.1)
        raise TimeoutError("bot not ready:\n" + self.log_path.read_text()[-4000:])

    def _spawn(self, log) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "bot", "--config", str(self.config_path), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as in a crash."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    async def stop(self) -> int | None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            for _ in range(200):
                if self.process.poll() is not None:
                    break
                await asyncio.sleep(0.05)
            else:
                self.kill()
        return self.process.returncode if self.process else None

    async def restart(self, *, kill: bool = True) -> None:
        if kill:
            self.kill()
        else:
            await self.stop()
        await self.start()

    def logs(self) -> str:
        return "\n".join(
            (self.workdir / f"bot-{n}.log").read_text() for n in range(1, self.starts + 1)
        )

    async def new_client(
        self, localpart: str, *, encrypted: bool = False
    ) -> tuple[AsyncClient, str]:
        """A registered user in a new direct chat with the bot (the bot has joined)."""
        user = f"{localpart}{secrets.token_hex(3)}"
        password = "pw-" + secrets.token_hex(8)
        user_id, _ = await self.synapse.register(user, password)
        client = await login_client(
            self.synapse.base_url,
            user_id,
            password,
            store_path=self.workdir / "clients" / user,
            encryption=encrypted,
        )
        self.clients.append(client)
        initial_state = []
        if encrypted:
            initial_state.append(
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                }
            )
        response = await client.room_create(
            is_direct=True, invite=[self.bot_user_id], initial_state=initial_state
        )
        assert isinstance(response, RoomCreateResponse), response
        room_id = response.room_id
        await self.wait_joined(client, room_id)
        return client, room_id

    async def wait_joined(self, client: AsyncClient, room_id: str, timeout: float = 30) -> None:
        """Sync `client` until the bot is a *joined* member of `room_id`.

        nio's `room.users` also holds invited members: an invited bot is not joined yet (it
        cannot read the room, and an encrypted room's keys shared then may miss its device).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await sync_once(client, timeout=0.5)
            room = client.rooms.get(room_id)
            if (
                room is not None
                and self.bot_user_id in room.users
                and self.bot_user_id not in room.invited_users
            ):
                return
        raise TimeoutError(f"the bot did not join {room_id}")


async def intervention_ticket(ref: str, client_id: str, room_id: str, locale: str = "fr"):
    """An intervention ticket row as the intake opens it (written into the bot's database by
    the test process), for a Matrix client in `room_id`."""
    from datetime import UTC, datetime

    from bot.domain.tickets import Channel, Kind, initial_state
    from bot.storage.models import Client, Ticket

    owner, _ = await Client.get_or_create(
        key=client_id, defaults={"created_at": datetime.now(UTC)}
    )
    return await Ticket.create(
        ref=ref,
        kind=str(Kind.TICKET),
        status=str(initial_state(Kind.TICKET, Channel.INTERVENTION).status),
        category="theme",
        channel=str(Channel.INTERVENTION),
        client=owner,
        room_id=room_id,
        locale=locale,
        description="Adapt the theme so that the submit button shows on phones.",
        created_at=datetime.now(UTC),
        minutes_logged=0,
        version=0,
    )


def _config_toml(
    synapse: object,
    workdir: Path,
    bot_user_id: str,
    password: str,
    staff_id: str,
    room: str,
    extra: str,
    allowed_servers: list[str] | None = None,
) -> str:
    allowed = ""
    if allowed_servers is not None:
        allowed = "allowed_servers = [" + ", ".join(f'"{s}"' for s in allowed_servers) + "]"
    return f"""
[matrix]
homeserver = "{synapse.base_url}"
user_id = "{bot_user_id}"
password = "{password}"
pickle_key = "{secrets.token_hex(16)}"
store_path = "{workdir / "store"}"
staff_room = "{room}"
staff = ["{staff_id}"]
{allowed}

[database]
url = "sqlite://{workdir / "bot.sqlite3"}"

[web]
listen = "127.0.0.1:{free_port()}"
public_url = "http://127.0.0.1:9"
secret = "{secrets.token_hex(20)}"

[metrics]
listen = "127.0.0.1:{free_port()}"

[video]
provider = "jitsi"

[video.jitsi]
base_url = "https://jitsi.test.invalid"

[[availability]]
staff = "{staff_id}"
days = ["mon", "tue", "wed", "thu", "fri"]
start = "09:00"
end = "17:00"
{extra}
"""


async def make_running_bot(
    synapse, tmp_path: Path, extra_toml: str = "", allowed_servers: list[str] | None = None
) -> RunningBot:
    suffix = secrets.token_hex(3)
    bot_password = "bot-" + secrets.token_hex(8)
    bot_user_id, _ = await synapse.register(f"supportbot{suffix}", bot_password)
    staff_password = "staff-" + secrets.token_hex(8)
    staff_id, _ = await synapse.register(f"staff{suffix}", staff_password)
    staff = await login_client(
        synapse.base_url, staff_id, staff_password, store_path=tmp_path / "staff", encryption=False
    )
    response = await staff.room_create(
        name="Support staff",
        invite=[bot_user_id],
        # Room version 12: the creator has unlimited power and must not be listed.
        power_level_override={"users": {bot_user_id: 50}},
    )
    assert isinstance(response, RoomCreateResponse), response
    config_path = tmp_path / "bot.toml"
    config_path.write_text(
        _config_toml(
            synapse,
            tmp_path,
            bot_user_id,
            bot_password,
            staff_id,
            response.room_id,
            extra_toml,
            allowed_servers,
        )
    )
    return RunningBot(
        synapse=synapse,
        workdir=tmp_path,
        bot_user_id=bot_user_id,
        staff=staff,
        staff_room_id=response.room_id,
        config_path=config_path,
        extra_toml=extra_toml,
    )


@pytest.fixture
async def running_bot(synapse, tmp_path):
    bot = await make_running_bot(synapse, tmp_path)
    await bot.start()
    try:
        yield bot
    finally:
        await bot.stop()
        for client in [*bot.clients, bot.staff]:
            await client.close()


@pytest.fixture
async def bot_db(running_bot) -> AsyncIterator[None]:
    """The running bot's database, open in the test process too."""
    # The bot process migrated it at start; this process only reads and writes rows.
    await open_db(f"sqlite://{running_bot.workdir / 'bot.sqlite3'}", run_migrations=False)
    try:
        yield
    finally:
        await close_db()
