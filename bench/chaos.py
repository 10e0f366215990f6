# ruff: noqa: ASYNC109, ASYNC240 - a chaos script: deadlines across many calls, small file reads
"""Chaos: support-bot under SIGKILLs, a homeserver outage and a database outage.

    python bench/chaos.py [--conversations 100] [--kills 10] [--wave 20] [--outage 60]
                          [--db-outage 20] [--outage-clients 20] [--db-clients 20]
                          [--db sqlite|postgres] [--pg-dsn DSN] [--catch-up SECONDS]
                          [--scenarios kills,outage,db,blip] [--seed N] [--workdir DIR]
                          [--keep]

Exit status 0 when every scenario passed. The small version runs in the test suite
(`tests/e2e/test_chaos.py`, marked `slow`). PostgreSQL (`--pg-dsn`, default
`$SUPPORT_BOT_TEST_POSTGRES` or postgresql://postgres@127.0.0.1:5432/postgres) is needed by
`db` and `blip` (skipped, with a line saying so, when it does not answer).

Everything real: a dedicated Synapse (`bot.testing.synapse`), the bot as a subprocess
(`tests.e2e.conftest.make_running_bot`: `python -m bot run`), nio clients
(`bot.testing.matrix`), each client in its own direct chat with the bot, typing the six intake
answers (description, category `1`, instance, channel `1`, `clientN@example.org`, `oui`) one
after the other and waiting for the bot's answer to each.

Scenarios (each with a bot, a database and accounts of its own; one final line each):

- **kills** — N conversations in waves of `--wave` concurrent clients while the bot is
  SIGKILLed (`--kills` times, at random moments: after a random number of client messages
  plus a random 0-0.5 s) and restarted right after each kill.
- **outage** — the homeserver is stopped for `--outage` seconds and started again on the same
  data and port. The bot reaches it through a counting TCP proxy on loopback (the clients do
  not), so every HTTP request the bot makes while the server is down is counted and compared
  with what its backoff allows. Half of the clients send an answer just before the stop (the
  proxy cuts the bot off at once, Synapse is then stopped), the other half right after the
  restart; all must be answered, then all intakes are finished.
- **db** — the bot runs on a fresh PostgreSQL database, which is made unreachable for
  `--db-outage` seconds (`ALTER DATABASE … ALLOW_CONNECTIONS false` and its backends
  terminated). Half of the clients send an answer right before the cut, the other half during
  it. The bot must stay up, say nothing it had not stored before the cut (no apology; an
  answer committed before the cut may still go out), keep its sync position on events it
  could not store, and answer every message correctly afterwards.
- **blip** — the database connections are dropped while the bot is in the middle of handling
  messages (`pg_terminate_backend` of sessions inside a transaction or writing), the database
  itself staying reachable: a PostgreSQL restart, a fail-over, a proxy dropping connections.
  Several rounds; every message must still get its real answer.

How replies are counted ("answer groups"): after a run, each client's room is read from the
homeserver (`/messages`, from the beginning). The bot's messages between the client's message i
and message i+1 answer message i; the expected number is 1 for every step (the bot answers
each step with one message: welcome and first question, or thank-you and the ticket, are
paragraphs of the same message).
Fewer = lost, more = duplicated. The bot's database is checked too: the `handled_event` row
of every client message, its `outbox_item` rows (txn ids `sb<sha256(event id)[:24]>-n`) —
exactly the expected rows in the client's room (plus the staff card for the confirmation), all
sent, none failed, whose event ids are exactly the messages in the room's answer group — and
one ticket per client with the client's e-mail, category `configuration`, channel `messaging`
and the instance typed, its card posted once in the staff room.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import os
import random
import re
import secrets
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/chaos.py` puts bench/ first, not the repository
    sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
from nio import AsyncClient, RoomCreateResponse  # noqa: E402

from bot.matrix.client import Backoff  # noqa: E402
from bot.outbox import MAX_ATTEMPTS  # noqa: E402
from bot.testing.matrix import (  # noqa: E402
    Message,
    SyncFailed,
    discard_messages,
    login_client,
    send_text,
    sync_once,
    wait_for_message,
)
from bot.testing.synapse import Synapse, register_many  # noqa: E402
from tests.e2e.conftest import RunningBot, make_running_bot  # noqa: E402

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

# -- the conversation -------------------------------------------------------------------------

DESCRIPTION = "Mon questionnaire n'envoie plus les invitations par e-mail depuis lundi."
INSTANCE = "https://survey.example.org 6.4.1 123456"
Q_CATEGORY = "Quelle catégorie correspond à votre demande"
Q_INSTANCE = "adresse de votre LimeSurvey"
Q_CHANNEL = "mode d’assistance"
Q_EMAIL = "À quelle adresse e-mail"
STEPS = 6
# The bot's messages in the client's room answering each step: one each.
EXPECTED_REPLIES = (1, 1, 1, 1, 1, 1)
# The confirmation also posts the ticket's card in the staff room.
EXPECTED_STAFF = (0, 0, 0, 0, 0, 1)
APOLOGY_MARKERS = ("Sorry, something went wrong", "Désolé, une erreur s’est produite")
REF = re.compile(r"\bSP-\d{4}-\d{4}\b")

ANSWER_TIMEOUT = 60.0  # one answer, bot restarts included


def email_of(index: int) -> str:
    return f"client{index}@example.org"


def step_text(step: int, index: int) -> str:
    return (DESCRIPTION, "1", INSTANCE, "1", email_of(index), "oui")[step]


def step_needle(step: int, index: int) -> str:
    # The summary (answer to the e-mail) quotes the address; the last answer gives the ref.
    return (Q_CATEGORY, Q_INSTANCE, Q_CHANNEL, Q_EMAIL, email_of(index), "SP-")[step]


def txn_base(event_id: str) -> str:
    """The bot's transaction-id prefix for the answers to `event_id` (bot/dispatch.py)."""
    return "sb" + hashlib.sha256(event_id.encode()).hexdigest()[:24]


@dataclass
class Chat:
    """One client in its own direct chat with the bot."""

    index: int  # N in clientN@example.org
    client: AsyncClient
    room_id: str
    sent: list[str] = field(default_factory=list)  # event ids of the client's answers
    sent_at: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)  # body of the awaited reply per step
    timed_out: int | None = None  # the step whose answer did not come in time
    error: str | None = None  # the conversation could not go on (a send kept failing)
    send_retries: int = 0

    @property
    def user_id(self) -> str:
        return self.client.user_id

    @property
    def email(self) -> str:
        return email_of(self.index)

    @property
    def step(self) -> int:
        """The next step to send."""
        return len(self.sent)

    @property
    def done(self) -> bool:
        return len(self.answers) == STEPS


class Progress:
    """Client messages sent so far, with a way to wait for a count."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Condition()

    async def bump(self) -> None:
        async with self._changed:
            self.count += 1
            self._changed.notify_all()

    async def reached(self, value: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.count >= value)


async def send_step(chat: Chat, progress: Progress | None = None) -> None:
    step = chat.step
    discard_messages(chat.client)  # what came before belongs to earlier steps
    sent = time.perf_counter()
    for attempt in range(3):
        try:
            event_id = await send_text(chat.client, chat.room_id, step_text(step, chat.index))
            break
        except (RuntimeError, OSError, aiohttp.ClientError):
            # A refusal (RuntimeError) created nothing, and nio retries network errors itself
            # with the same transaction id: retrying cannot duplicate the client's message.
            if attempt == 2:
                raise
            chat.send_retries += 1
            await asyncio.sleep(1 + attempt)
    chat.sent.append(event_id)
    chat.sent_at.append(sent)
    if progress is not None:
        await progress.bump()


async def await_step(chat: Chat, bot_user_id: str, timeout: float = ANSWER_TIMEOUT) -> bool:
    """Wait for the bot's answer to the last step sent; False (and noted) on a time-out."""
    step = chat.step - 1
    needle = step_needle(step, chat.index)

    def answers(event: Message) -> bool:
        return event.sender == bot_user_id and needle in event.body

    try:
        reply = await wait_for_message(chat.client, chat.room_id, answers, timeout=timeout)
    except TimeoutError:
        chat.timed_out = step
        return False
    chat.latencies.append(time.perf_counter() - chat.sent_at[step])
    chat.answers.append(reply.body)
    return True


async def converse(
    chat: Chat,
    bot_user_id: str,
    *,
    until: int = STEPS,
    progress: Progress | None = None,
    timeout: float = ANSWER_TIMEOUT,
) -> bool:
    """Send the next answers up to step `until` (excluded), each after the previous reply."""
    while chat.step < until:
        try:
            await send_step(chat, progress)
        except Exception as error:
            chat.error = f"{type(error).__name__}: {error}"[:200]
            return False
        if not await await_step(chat, bot_user_id, timeout):
            return False
    return True


async def make_chats(
    hs: Synapse,
    bot: RunningBot,
    workdir: Path,
    indexes: Sequence[int],
    *,
    concurrency: int = 8,
    join_timeout: float = 120.0,
) -> list[Chat]:
    """Register one user per index, each in a new direct chat with the bot (joined)."""
    suffix = secrets.token_hex(3)
    accounts = [(f"chaos{suffix}n{i}", "pw-" + secrets.token_hex(8)) for i in indexes]
    registered = await register_many(hs.base_url, hs.shared_secret, accounts)
    limit = asyncio.Semaphore(concurrency)

    async def one(position: int) -> Chat:
        async with limit:
            user_id = registered[position][0]
            name, password = accounts[position]
            client = await login_client(
                hs.base_url,
                user_id,
                password,
                store_path=workdir / "clients" / name,
                encryption=False,
            )
            try:
                created = await client.room_create(is_direct=True, invite=[bot.bot_user_id])
                if not isinstance(created, RoomCreateResponse):
                    raise RuntimeError(f"room_create failed: {created}")
                await bot.wait_joined(client, created.room_id, timeout=join_timeout)
            except BaseException:
                await client.close()
                raise
            discard_messages(client)
            return Chat(indexes[position], client, created.room_id)

    results = await asyncio.gather(
        *(one(position) for position in range(len(indexes))), return_exceptions=True
    )
    chats = [r for r in results if isinstance(r, Chat)]
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        await asyncio.gather(*(c.client.close() for c in chats), return_exceptions=True)
        raise RuntimeError(f"{len(failures)} client(s) could not be set up: {failures[0]!r}")
    return chats


async def close_chats(chats: Iterable[Chat]) -> None:
    await asyncio.gather(*(chat.client.close() for chat in chats), return_exceptions=True)


# -- the bot's database -----------------------------------------------------------------------


class BotDb:
    """Read-only look at the bot's tables (SQLite file or PostgreSQL DSN)."""

    def __init__(self, url: str):
        self.url = url

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith(("postgres://", "postgresql://"))

    async def rows(self, sql: str) -> list[dict[str, Any]]:
        if self.is_postgres:
            import asyncpg

            dsn = "postgresql://" + self.url.split("://", 1)[1]
            conn = await asyncpg.connect(dsn)
            try:
                return [dict(record) for record in await conn.fetch(sql)]
            finally:
                await conn.close()
        path = self.url.split("://", 1)[1]

        def read() -> list[dict[str, Any]]:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
            try:
                conn.row_factory = sqlite3.Row
                return [dict(row) for row in conn.execute(sql).fetchall()]
            finally:
                conn.close()

        return await asyncio.to_thread(read)

    async def pending_outbox(self) -> int:
        rows = await self.rows(
            "SELECT COUNT(*) AS n FROM outbox_item "
            "WHERE sent_at IS NULL AND NOT failed AND kind <> 'mail'"
        )
        return int(rows[0]["n"])

    async def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        return {
            "handled": await self.rows("SELECT event_id, room_id FROM handled_event"),
            "outbox": await self.rows(
                "SELECT id, txn_id, room_id, kind, sent_at, event_id, attempts, failed "
                "FROM outbox_item ORDER BY id"
            ),
            "tickets": await self.rows(
                "SELECT t.ref, t.kind, t.category, t.channel, t.room_id, t.email, "
                "t.instance_url, t.instance_version, t.survey_id, t.card_event_id, "
                "c.key AS client_key FROM ticket t JOIN client c ON c.id = t.client_id"
            ),
        }


async def create_pg_database(admin_dsn: str) -> tuple[str, str]:
    """A fresh database; returns (its name, a URL to it)."""
    import asyncpg

    name = f"support_bot_chaos_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await conn.close()
    base = admin_dsn.split("://", 1)[1].rsplit("/", 1)[0]
    return name, f"postgres://{base}/{name}"


async def drop_pg_database(admin_dsn: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def set_pg_reachable(admin_dsn: str, name: str, reachable: bool) -> int:
    """Allow or refuse connections to `name`; refusing also ends its sessions (returned)."""
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    try:
        flag = "true" if reachable else "false"
        await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {flag}')
        if reachable:
            return 0
        ended = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        return len(ended)
    finally:
        await conn.close()


async def postgres_available(admin_dsn: str) -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        import asyncpg

        conn = await asyncio.wait_for(asyncpg.connect(admin_dsn), 5)
        await conn.close()
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


# -- a counting TCP proxy ---------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    at: float  # time.monotonic()
    method: str
    path: str  # without the query string
    refused: bool  # arrived while the "server" was down: counted, then the connection closed
    conn: int  # which accepted connection carried it


class CountingProxy:
    """Loopback TCP proxy in front of Synapse that counts the HTTP requests going through.

    `cut()` makes the homeserver unreachable at once: open connections are aborted, new ones
    are read up to the end of their request head (counted), then closed. `restore()` forwards
    again. Request bodies are skipped by Content-Length (the bot's client sends no chunked
    bodies; a connection that does is copied without further counting).
    """

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.port = 0
        self.requests: list[Request] = []
        self.down = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, limit=1 << 20)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        self.down = True
        for writer in list(self._writers):
            writer.transport.abort()

    def restore(self) -> None:
        self.down = False

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    def between(self, start: float, end: float) -> list[Request]:
        return [r for r in self.requests if start <= r.at < end]

    @staticmethod
    def attempts(requests: Sequence[Request]) -> list[Request]:
        """`requests` without aiohttp's own retries: aiohttp repeats an idempotent request
        (GET, PUT) once, at once, on a new connection when the server closes the connection
        without answering, which is what a cut connection looks like. A stopped server
        refusing connections gets one request per attempt."""
        kept: list[Request] = []
        last_by_key: dict[tuple[str, str], Request] = {}
        for request in requests:
            key = (request.method, request.path)
            previous = last_by_key.get(key)
            if (
                request.refused
                and previous is not None
                and previous.refused
                and previous.conn != request.conn
                and request.method in ("GET", "PUT")
                and request.at - previous.at < 0.5
            ):
                last_by_key.pop(key)  # at most one automatic retry per attempt
                continue
            last_by_key[key] = request
            kept.append(request)
        return kept

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self._connections += 1
        conn = self._connections
        upstream: asyncio.StreamWriter | None = None
        try:
            if self.down:
                await self._refuse(reader, conn)
                return
            try:
                up_reader, upstream = await asyncio.open_connection(
                    "127.0.0.1", self.upstream_port, limit=1 << 20
                )
            except OSError:
                await self._refuse(reader, conn)
                return
            self._writers.add(upstream)
            pumps = {
                asyncio.create_task(self._requests(reader, upstream, conn)),
                asyncio.create_task(self._copy(up_reader, writer)),
            }
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                for pump in pumps:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await pump
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            for w in (writer, upstream):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()
            self._tasks.discard(task)

    async def _refuse(self, reader: asyncio.StreamReader, conn: int) -> None:
        with contextlib.suppress(Exception):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            self._record(head, conn, refused=True)

    def _record(self, head: bytes, conn: int, *, refused: bool) -> dict[str, str]:
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        path = rest.rsplit(" ", 1)[0].split("?", 1)[0]
        self.requests.append(Request(time.monotonic(), method, path, refused, conn))
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return headers

    async def _requests(
        self, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter, conn: int
    ) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            headers = self._record(head, conn, refused=self.down)
            if self.down:
                return
            upstream.write(head)
            if "chunked" in headers.get("transfer-encoding", "").lower():
                await self._copy(reader, upstream)
                return
            length = int(headers.get("content-length", "0") or 0)
            if length:
                upstream.write(await reader.readexactly(length))
            await upstream.drain()

    @staticmethod
    async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            writer.write(data)
            await writer.drain()


def sync_attempts_allowed(seconds: float, backoff: Backoff | None = None) -> int:
    """Most /sync attempts the bot's backoff allows in `seconds` of failures (shortest waits):
    the first failing one, then one after each wait of at least d/2, d = base·2ⁿ⁻¹ ≤ cap."""
    backoff = backoff or Backoff()
    attempts, elapsed, failures = 1, 0.0, 1
    while True:
        elapsed += min(backoff.cap, backoff.base * 2 ** (failures - 1)) / 2
        if elapsed > seconds:
            return attempts
        attempts += 1
        failures += 1


def send_attempts_allowed(seconds: float) -> int:
    """Most sends of one outbox row in `seconds` (bot/outbox.py: waits ≥ 0.5 s doubling to 30 s,
    at most MAX_ATTEMPTS per pass, a new pass on the next wake-up or every 30 s)."""
    attempts, elapsed, delay = 1, 0.0, 0.5
    while attempts < MAX_ATTEMPTS:
        elapsed += delay
        if elapsed > seconds:
            break
        attempts += 1
        delay = min(delay * 2, 30)
    return attempts + max(0, math.floor(seconds / 30))


# -- checking a run ---------------------------------------------------------------------------


@dataclass
class Check:
    lost: int = 0
    duplicated: int = 0
    wrong_tickets: int = 0
    late: int = 0  # answered, but after the per-answer time-out
    apologies: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(text)


async def room_messages(base_url: str, token: str, room_id: str) -> list[dict[str, Any]]:
    """Every m.room.message of a room, oldest first (read with the member's token)."""
    events: list[dict[str, Any]] = []
    url = f"{base_url}/_matrix/client/v3/rooms/{quote(room_id, safe='')}/messages"
    params: dict[str, str] = {"dir": "f", "limit": "500"}
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            async with session.get(url, params=params, headers=headers) as response:
                body = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"/messages of {room_id}: {response.status} {body}")
            chunk = body.get("chunk", [])
            events.extend(e for e in chunk if e.get("type") == "m.room.message")
            end = body.get("end")
            if not chunk or not end:
                break
            params["from"] = end
    return events


def _is_edit(event: dict[str, Any]) -> bool:
    relates = event.get("content", {}).get("m.relates_to") or {}
    return relates.get("rel_type") == "m.replace"


async def check_run(hs: Synapse, bot: RunningBot, chats: Sequence[Chat], db: BotDb) -> Check:
    """Count lost and duplicated answers and wrong tickets (see the module docstring)."""
    check = Check()
    data = await db.snapshot()
    handled = {row["event_id"] for row in data["handled"]}
    outbox_by_txn: dict[str, list[dict[str, Any]]] = {}
    for row in data["outbox"]:
        outbox_by_txn.setdefault(row["txn_id"].rsplit("-", 1)[0], []).append(row)
        if row["kind"] == "mail":
            # A chat client's receipt by mail: these runs have no mail server, so it is given
            # up by design; what is checked here is what reaches Matrix.
            continue
        if row["failed"]:
            check.problem(
                f"outbox row {row['id']} ({row['txn_id']}) failed after "
                f"{row['attempts']} attempt(s)"
            )
        elif row["sent_at"] is None:
            check.problem(f"outbox row {row['id']} ({row['txn_id']}) never sent")
    sent_ids = [row["event_id"] for row in data["outbox"] if row["event_id"]]
    if len(sent_ids) != len(set(sent_ids)):
        check.problem(f"{len(sent_ids) - len(set(sent_ids))} outbox rows share an event id")
    tickets_of: dict[str, list[dict[str, Any]]] = {}
    for ticket in data["tickets"]:
        tickets_of.setdefault(ticket["client_key"], []).append(ticket)

    staff_events = await room_messages(hs.base_url, bot.staff.access_token, bot.staff_room_id)
    staff_cards = [
        e for e in staff_events if e.get("sender") == bot.bot_user_id and not _is_edit(e)
    ]
    check.apologies += sum(
        any(m in e.get("content", {}).get("body", "") for m in APOLOGY_MARKERS)
        for e in staff_events
        if e.get("sender") == bot.bot_user_id
    )

    for chat in chats:
        who = f"client{chat.index}"
        events = await room_messages(hs.base_url, chat.client.access_token, chat.room_id)
        position = {e["event_id"]: n for n, e in enumerate(events)}
        bot_events = [(n, e) for n, e in enumerate(events) if e["sender"] == bot.bot_user_id]
        for _, event in bot_events:
            body = event.get("content", {}).get("body", "")
            if any(marker in body for marker in APOLOGY_MARKERS):
                check.apologies += 1
                check.problem(f"{who}: apology {body[:90]!r}")
            if _is_edit(event):
                check.problem(f"{who}: unexpected edit {event['event_id']}")
        missing = [eid for eid in chat.sent if eid not in position]
        if missing:
            check.problem(f"{who}: own message(s) missing from the timeline: {missing}")
            continue
        first = position[chat.sent[0]] if chat.sent else len(events)
        early = [e for n, e in bot_events if n < first]
        if early:
            check.duplicated += len(early)
            check.problem(f"{who}: {len(early)} bot message(s) before the first answer")
        for step, event_id in enumerate(chat.sent):
            start = position[event_id]
            end = position[chat.sent[step + 1]] if step + 1 < len(chat.sent) else len(events)
            group = [e for n, e in bot_events if start < n < end]
            expected = EXPECTED_REPLIES[step]
            if len(group) < expected:
                check.lost += expected - len(group)
                check.problem(
                    f"{who} step {step + 1} ({event_id}): {len(group)} of {expected} "
                    "answer(s) arrived"
                )
            elif len(group) > expected:
                check.duplicated += len(group) - expected
                bodies = [e.get("content", {}).get("body", "")[:60] for e in group]
                check.problem(
                    f"{who} step {step + 1} ({event_id}): {len(group)} answers for "
                    f"{expected}: {bodies}"
                )
            # The database's view of the same answer group.
            if event_id not in handled:
                check.problem(f"{who} step {step + 1}: {event_id} not in handled_event")
            rows = outbox_by_txn.get(txn_base(event_id), [])
            here = [r for r in rows if r["room_id"] == chat.room_id]
            staff = [r for r in rows if r["room_id"] == bot.staff_room_id]
            if len(here) != expected or len(staff) != EXPECTED_STAFF[step]:
                check.problem(
                    f"{who} step {step + 1}: outbox has {len(here)} row(s) for the client "
                    f"room (expected {expected}) and {len(staff)} for the staff room "
                    f"(expected {EXPECTED_STAFF[step]})"
                )
            in_room = {e["event_id"] for e in group}
            from_outbox = {r["event_id"] for r in here if r["event_id"]}
            strays = in_room - from_outbox
            if strays:
                check.problem(f"{who} step {step + 1}: messages not from the outbox: {strays}")
        if chat.timed_out is not None:
            step = chat.timed_out
            start = position[chat.sent[step]]
            if any(n > start for n, _ in bot_events):
                check.late += 1
                check.problem(f"{who} step {step + 1}: answered after the time-out")
        # The ticket.
        mine = tickets_of.get(chat.user_id, [])
        if chat.step == STEPS and chat.done:
            wrong = []
            if len(mine) != 1:
                wrong.append(f"{len(mine)} tickets")
            for ticket in mine:
                expect = {
                    "kind": "ticket",
                    "category": "configuration",
                    "channel": "messaging",
                    "email": chat.email,
                    "room_id": chat.room_id,
                    "instance_url": "https://survey.example.org",
                    "instance_version": "6.4.1",
                    "survey_id": "123456",
                }
                for key, value in expect.items():
                    if ticket[key] != value:
                        wrong.append(f"{key}={ticket[key]!r} (expected {value!r})")
                if ticket["ref"] not in chat.answers[-1]:
                    wrong.append(f"ref {ticket['ref']} not in the confirmation")
                cards = [
                    e for e in staff_cards if ticket["ref"] in e.get("content", {}).get("body", "")
                ]
                if len(cards) != 1:
                    wrong.append(f"{len(cards)} cards in the staff room")
            if wrong:
                check.wrong_tickets += 1
                check.problem(f"{who}: wrong ticket: {', '.join(wrong)}")
        else:
            check.wrong_tickets += 1
            if mine:
                check.problem(f"{who}: unfinished conversation has {len(mine)} ticket(s)")
            else:
                check.problem(f"{who}: no ticket (conversation stopped at step {chat.step})")
    return check


# -- results ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    scenario: str
    conversations: int = 0
    completed: int = 0
    kills: int = 0
    check: Check = field(default_factory=Check)
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # scenario-specific failed conditions
    notes: list[str] = field(default_factory=list)  # printed under the summary
    log_lines: list[str] = field(default_factory=list)  # bot log lines worth a look

    @property
    def ok(self) -> bool:
        c = self.check
        return (
            not self.failures
            and c.lost == 0
            and c.duplicated == 0
            and c.wrong_tickets == 0
            and c.apologies == 0
            and not c.problems
            and self.completed == self.conversations
        )

    def line(self) -> str:
        c = self.check
        extra = "".join(f", {k} {v}" for k, v in self.details.items() if not isinstance(v, list))
        return (
            f"SUMMARY {self.scenario}: conversations {self.completed}/{self.conversations}, "
            f"kills {self.kills}, lost replies {c.lost}, duplicated replies {c.duplicated}, "
            f"wrong tickets {c.wrong_tickets}, apologies {c.apologies}{extra}, "
            f"time {self.seconds:.1f} s — {'PASS' if self.ok else 'FAIL'}"
        )

    def report(self, limit: int = 40) -> str:
        parts = [self.line()]
        parts += [f"  failed: {f}" for f in self.failures]
        parts += [f"  note: {n}" for n in self.notes]
        parts += [f"  problem: {p}" for p in self.check.problems[:limit]]
        if len(self.check.problems) > limit:
            parts.append(f"  … {len(self.check.problems) - limit} more problem(s)")
        if self.log_lines:
            parts.append("  bot log:")
            parts += [f"    {line}" for line in self.log_lines[:limit]]
        return "\n".join(parts)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


LOG_PATTERNS = (
    "failed after",
    "handler failed",
    "handling a batch",
    "outbox delivery pass failed",
    "Traceback",
    "ERROR",
)


async def healthz(bot: RunningBot) -> str:
    """The bot's /healthz answer ("200 {...}"), its address read from the bot's config."""
    match = re.search(r'^listen = "([^"]+)"', bot.config_path.read_text(), re.MULTILINE)
    if match is None:
        return "no [web] listen"
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://{match.group(1)}/healthz", timeout=aiohttp.ClientTimeout(10)
            ) as response,
        ):
            return f"{response.status} {(await response.text()).strip()}"
    except Exception as error:
        return f"{type(error).__name__}"


def log_lines_after(logs: str, needle: str, after: float) -> list[str]:
    """Lines of the bot's log containing `needle` stamped after `after` (a time.time())."""
    found = []
    for line in logs.splitlines():
        if needle not in line:
            continue
        try:
            stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S"))
        except ValueError:
            continue
        if stamp >= after:
            found.append(line)
    return found


def interesting_log_lines(bot: RunningBot, limit: int = 60) -> list[str]:
    found: list[str] = []
    for n in range(1, bot.starts + 1):
        path = bot.workdir / f"bot-{n}.log"
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                if any(p in line for p in LOG_PATTERNS):
                    found.append(f"[bot-{n}.log] {line[:300]}")
    return found[:limit]


# -- setting up a bot -------------------------------------------------------------------------


def _rewrite_config(config_path: Path, *, homeserver: str | None, db_url: str | None) -> None:
    lines = config_path.read_text().splitlines()
    section = ""
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped
        elif homeserver and section == "[matrix]" and stripped.startswith("homeserver ="):
            lines[index] = f'homeserver = "{homeserver}"'
        elif db_url and section == "[database]" and stripped.startswith("url ="):
            lines[index] = f'url = "{db_url}"'
    config_path.write_text("\n".join(lines) + "\n")


@dataclass
class BotSetup:
    bot: RunningBot
    db: BotDb
    pg_name: str | None = None


async def start_bot(
    hs: Synapse,
    workdir: Path,
    *,
    database: str,
    pg_dsn: str,
    homeserver: str | None = None,
) -> BotSetup:
    workdir.mkdir(parents=True, exist_ok=True)
    bot = await make_running_bot(hs, workdir)
    pg_name = None
    if database == "postgres":
        pg_name, db_url = await create_pg_database(pg_dsn)
    else:
        db_url = f"sqlite://{workdir / 'bot.sqlite3'}"
    _rewrite_config(bot.config_path, homeserver=homeserver, db_url=db_url)
    try:
        await bot.start(timeout=120)
    except BaseException:
        await bot.staff.close()
        if pg_name:
            await drop_pg_database(pg_dsn, pg_name)
        raise
    return BotSetup(bot, BotDb(db_url), pg_name)


async def stop_bot(setup: BotSetup, pg_dsn: str, *, keep: bool) -> None:
    with contextlib.suppress(Exception):
        await setup.bot.stop()
    await setup.bot.staff.close()
    if setup.pg_name and not keep:
        with contextlib.suppress(Exception):
            await drop_pg_database(pg_dsn, setup.pg_name)


def chunks(items: Sequence[Chat], size: int) -> Iterable[Sequence[Chat]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- scenario 1: SIGKILLs ---------------------------------------------------------------------


async def scenario_kills(
    hs: Synapse,
    workdir: Path,
    *,
    conversations: int,
    kills: int,
    wave: int,
    rng: random.Random,
    database: str = "sqlite",
    pg_dsn: str = PG_ADMIN_DSN,
    keep: bool = False,
    log: Callable[[str], None] = print,
) -> Outcome:
    outcome = Outcome("kills", conversations=conversations)
    began = time.perf_counter()
    setup = await start_bot(hs, workdir, database=database, pg_dsn=pg_dsn)
    bot = setup.bot
    chats: list[Chat] = []
    try:
        chats = await make_chats(hs, bot, workdir, range(1, conversations + 1))
        took = time.perf_counter() - began
        log(f"kills: {len(chats)} clients in their direct chats ({took:.1f} s)")
        total = conversations * STEPS
        thresholds = sorted(rng.sample(range(1, total), min(kills, total - 1)))
        progress = Progress()
        finished = asyncio.Event()
        restarts: list[float] = []
        kill_log: list[str] = []

        async def killer() -> None:
            for threshold in thresholds:
                waiter = asyncio.create_task(progress.reached(threshold))
                stopper = asyncio.create_task(finished.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                if finished.is_set():
                    return
                await asyncio.sleep(rng.uniform(0.0, 0.5))
                bot.kill()
                outcome.kills += 1
                kill_log.append(f"kill {outcome.kills} after {progress.count} messages")
                started = time.perf_counter()
                await bot.start(timeout=120)
                restarts.append(time.perf_counter() - started)

        killing = asyncio.create_task(killer())
        for number, group in enumerate(chunks(chats, wave), 1):
            await asyncio.gather(
                *(converse(chat, bot.bot_user_id, progress=progress) for chat in group)
            )
            log(
                f"kills: wave {number} done ({sum(c.done for c in group)}/{len(group)} "
                f"complete, {outcome.kills} kill(s) so far, "
                f"{time.perf_counter() - began:.1f} s)"
            )
        finished.set()
        await killing
        await asyncio.sleep(3)  # late duplicates would arrive now
        outcome.completed = sum(chat.done for chat in chats)
        latencies = [x for chat in chats for x in chat.latencies]
        outcome.details["p50 answer"] = f"{percentile(latencies, 50) * 1000:.0f} ms"
        outcome.details["max answer"] = f"{max(latencies, default=math.nan):.1f} s"
        if restarts:
            outcome.details["restart"] = f"{sum(restarts) / len(restarts):.1f} s avg"
        if outcome.kills < kills:
            outcome.failures.append(f"only {outcome.kills} of {kills} kills happened")
        for chat in chats:
            if chat.error:
                outcome.failures.append(f"client{chat.index}: {chat.error}")
        await bot.stop()
        outcome.check = await check_run(hs, bot, chats, setup.db)
        outcome.log_lines = interesting_log_lines(bot)
    finally:
        await close_chats(chats)
        await stop_bot(setup, pg_dsn, keep=keep)
    outcome.seconds = time.perf_counter() - began
    return outcome


# -- scenario 2: the homeserver stopped -------------------------------------------------------


async def scenario_outage(
    hs: Synapse,
    workdir: Path,
    *,
    clients: int,
    outage: float,
    rng: random.Random,
    database: str = "sqlite",
    pg_dsn: str = PG_ADMIN_DSN,
    keep: bool = False,
    catch_up: float | None = None,
    log: Callable[[str], None] = print,
) -> tuple[Outcome, Synapse]:
    """Returns the outcome and the (restarted) homeserver. `catch_up`: how long each answer
    may take once the server is back (default: the backoff's cap + 60 s)."""
    outcome = Outcome("outage", conversations=clients)
    began = time.perf_counter()
    proxy = CountingProxy(hs.port)
    await proxy.start()
    setup = await start_bot(hs, workdir, database=database, pg_dsn=pg_dsn, homeserver=proxy.url)
    bot = setup.bot
    chats: list[Chat] = []
    try:
        chats = await make_chats(hs, bot, workdir, range(1, clients + 1))
        before, after = chats[: (clients + 1) // 2], chats[(clients + 1) // 2 :]
        ok = await asyncio.gather(*(converse(c, bot.bot_user_id, until=2) for c in chats))
        if not all(ok):
            outcome.failures.append("warm-up answers missing before the outage")
        # Just before the stop: half of the clients send; the bot is cut off a moment later.
        await asyncio.gather(*(send_step(chat) for chat in before))
        await asyncio.sleep(rng.uniform(0.02, 0.15))
        down_at = time.monotonic()
        proxy.cut()
        pending = await setup.db.pending_outbox()
        await hs.astop()
        log(f"outage: homeserver down ({pending} outbox row(s) pending at the cut)")
        await asyncio.sleep(max(0.0, down_at + outage - time.monotonic()))
        hs = await Synapse.astart(hs.data_dir, port=hs.port)
        proxy.restore()
        up_at = time.monotonic()
        log(f"outage: homeserver back after {up_at - down_at:.1f} s")
        # Right after it is back: the other half sends.
        await asyncio.gather(*(send_step(chat) for chat in after))
        wait = catch_up if catch_up is not None else Backoff().cap + 60.0
        answered = await asyncio.gather(
            *(await_step(chat, bot.bot_user_id, timeout=wait) for chat in chats)
        )
        back_at = time.monotonic()
        outcome.details["answered after restart"] = (
            f"{sum(answered)}/{len(chats)} in {back_at - up_at:.1f} s"
        )
        await asyncio.gather(
            *(converse(c, bot.bot_user_id) for c, ok in zip(chats, answered, strict=True) if ok)
        )
        await asyncio.sleep(3)
        outcome.completed = sum(chat.done for chat in chats)

        down_for = up_at - down_at
        during = proxy.between(down_at, up_at)
        attempts = CountingProxy.attempts(during)
        syncs = [r for r in attempts if r.path.endswith("/sync")]
        sends = [r for r in attempts if "/send/" in r.path]
        others = [r for r in attempts if r not in syncs and r not in sends]
        txns = {r.path.rsplit("/", 1)[-1] for r in sends}
        sync_bound = sync_attempts_allowed(down_for) + 1  # +1: the long-poll that was cut
        send_bound = len(txns) * send_attempts_allowed(down_for)
        busiest = max(
            (sum(1 for r in during if t <= r.at < t + 1.0) for t in (r.at for r in during)),
            default=0,
        )
        outcome.details["down"] = f"{down_for:.1f} s"
        outcome.details["requests while down"] = f"{len(during)} ({len(attempts)} attempts)"
        outcome.details["sync attempts"] = f"{len(syncs)} (backoff allows {sync_bound})"
        outcome.details["send attempts"] = (
            f"{len(sends)} for {len(txns)} txn(s) (allows {send_bound})"
        )
        outcome.details["other"] = len(others)
        outcome.details["outbox rows given up"] = bot.logs().count("failed after")
        outcome.details["busiest second"] = busiest

        def label(r: Request) -> str:
            kind = "sync" if r in syncs else "send" if r in sends else r.path
            return f"{kind}@{r.at - down_at:.1f}"

        outcome.notes.append(
            "attempts while down (s after the cut): " + " ".join(map(label, attempts))
        )
        if len(syncs) > sync_bound:
            outcome.failures.append(f"{len(syncs)} syncs while down, backoff allows {sync_bound}")
        if len(sends) > send_bound:
            outcome.failures.append(f"{len(sends)} sends while down, allowed {send_bound}")
        if len(others) > 5:
            paths = sorted({r.path for r in others})[:5]
            outcome.failures.append(f"{len(others)} other requests while down: {paths}")
        for chat in chats:
            if chat.error:
                outcome.failures.append(f"client{chat.index}: {chat.error}")
        await bot.stop()
        outcome.check = await check_run(hs, bot, chats, setup.db)
        outcome.log_lines = interesting_log_lines(bot)
    finally:
        await close_chats(chats)
        await stop_bot(setup, pg_dsn, keep=keep)
        await proxy.close()
    outcome.seconds = time.perf_counter() - began
    return outcome, hs


# -- scenario 3: the database unreachable -----------------------------------------------------


async def scenario_db(
    hs: Synapse,
    workdir: Path,
    *,
    clients: int,
    outage: float,
    rng: random.Random,
    pg_dsn: str = PG_ADMIN_DSN,
    keep: bool = False,
    catch_up: float | None = None,
    log: Callable[[str], None] = print,
) -> Outcome:
    """`catch_up`: how long each answer may take once the database is back (default: the
    backoff's cap + 60 s)."""
    outcome = Outcome("db", conversations=clients)
    began = time.perf_counter()
    setup = await start_bot(hs, workdir, database="postgres", pg_dsn=pg_dsn)
    bot = setup.bot
    assert setup.pg_name is not None
    chats: list[Chat] = []
    blocked = False
    try:
        chats = await make_chats(hs, bot, workdir, range(1, clients + 1))
        before, during = chats[: (clients + 1) // 2], chats[(clients + 1) // 2 :]
        ok = await asyncio.gather(*(converse(c, bot.bot_user_id, until=2) for c in chats))
        if not all(ok):
            outcome.failures.append("warm-up answers missing before the database outage")
        await sync_once(bot.staff)
        discard_messages(bot.staff)
        # Right before the cut: half of the clients send (the bot may be handling them).
        await asyncio.gather(*(send_step(chat) for chat in before))
        await asyncio.sleep(rng.uniform(0.0, 0.1))
        cut_at = time.monotonic()
        ended = await set_pg_reachable(pg_dsn, setup.pg_name, False)
        blocked = True
        log(f"db: database unreachable ({ended} session(s) ended)")
        await asyncio.sleep(min(2.0, outage / 3))
        await asyncio.gather(*(send_step(chat) for chat in during))
        await asyncio.sleep(max(0.0, cut_at + outage - time.monotonic()))
        # What did the bot say while it could store nothing? (Nothing is the right answer.)
        # Only what it had stored before the cut may go out meanwhile (checked below).
        said: dict[str, str] = {}
        for chat in chats:
            with contextlib.suppress(SyncFailed):
                for room_id, event in await sync_once(chat.client):
                    if room_id == chat.room_id and event.sender == bot.bot_user_id:
                        said[event.event_id] = f"client{chat.index}: {event.body[:60]!r}"
        with contextlib.suppress(SyncFailed):
            for _room, event in await sync_once(bot.staff):
                if event.sender == bot.bot_user_id:
                    said[event.event_id] = f"staff room: {event.body[:60]!r}"
        discard_messages(bot.staff)
        alive = bot.process is not None and bot.process.poll() is None
        await set_pg_reachable(pg_dsn, setup.pg_name, True)
        blocked = False
        back_at = time.monotonic()
        back_wall = time.time()
        wait = catch_up if catch_up is not None else Backoff().cap + 60.0
        log(f"db: database reachable again after {back_at - cut_at:.1f} s")
        outcome.details["said while down"] = len(said)
        if said:
            outcome.notes.append(f"sent while the database was down: {list(said.values())}")
        if not alive:
            outcome.failures.append("the bot process died during the database outage")
        answered = await asyncio.gather(
            *(await_step(chat, bot.bot_user_id, timeout=wait) for chat in chats)
        )
        outcome.details["answered after"] = (
            f"{sum(answered)}/{len(chats)} in {time.monotonic() - back_at:.1f} s"
        )
        if not all(answered):
            # Would a supervisor watching /healthz notice that the bot answers nobody?
            outcome.details["healthz meanwhile"] = await healthz(bot)
        await asyncio.gather(
            *(converse(c, bot.bot_user_id) for c, ok in zip(chats, answered, strict=True) if ok)
        )
        await asyncio.sleep(3)
        outcome.completed = sum(chat.done for chat in chats)
        logs = bot.logs()
        outcome.details["batch retries"] = logs.count("handling a batch of")
        stuck = log_lines_after(logs, "handling a batch of", back_wall + 1.0)
        outcome.details["batch failures once back"] = len(stuck)
        if stuck:
            outcome.failures.append(
                f"{len(stuck)} batch(es) still failed after the database was back, "
                f"last: {stuck[-1][:160]}"
            )
        outcome.details["handler failures"] = logs.count("handler failed")
        for chat in chats:
            if chat.error:
                outcome.failures.append(f"client{chat.index}: {chat.error}")
        await bot.stop()
        outcome.check = await check_run(hs, bot, chats, setup.db)
        outcome.log_lines = interesting_log_lines(bot)
        stored = {
            row["event_id"]
            for row in await setup.db.rows("SELECT event_id FROM outbox_item")
            if row["event_id"]
        }
        unbacked = [text for event_id, text in said.items() if event_id not in stored]
        if unbacked:
            outcome.failures.append(
                f"said while the database was down, not from a stored outbox row: {unbacked}"
            )
    finally:
        if blocked:
            with contextlib.suppress(Exception):
                await set_pg_reachable(pg_dsn, setup.pg_name, True)
        await close_chats(chats)
        await stop_bot(setup, pg_dsn, keep=keep)
    outcome.seconds = time.perf_counter() - began
    return outcome


async def terminate_busy_backends(admin_dsn: str, name: str, within: float) -> int:
    """End the sessions of `name` as soon as one is inside a transaction or writing (polling
    for `within` seconds): a handler's transaction is cut half-way. Connections stay allowed.
    Returns how many sessions ended."""
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    try:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            ended = await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 "
                "AND pid <> pg_backend_pid() AND (state = 'idle in transaction' "
                "OR (state = 'active' AND query NOT ILIKE 'select%'))",
                name,
            )
            if ended:
                return len(ended)
            await asyncio.sleep(0.002)
        return 0
    finally:
        await conn.close()


async def scenario_blip(
    hs: Synapse,
    workdir: Path,
    *,
    clients: int,
    rounds: int = 4,
    pg_dsn: str = PG_ADMIN_DSN,
    keep: bool = False,
    log: Callable[[str], None] = print,
) -> Outcome:
    """The database connections dropped while the bot handles messages, the database itself
    staying reachable (a PostgreSQL restart, a failover, a proxy dropping connections)."""
    outcome = Outcome("blip", conversations=clients)
    began = time.perf_counter()
    setup = await start_bot(hs, workdir, database="postgres", pg_dsn=pg_dsn)
    bot = setup.bot
    assert setup.pg_name is not None
    chats: list[Chat] = []
    try:
        chats = await make_chats(hs, bot, workdir, range(1, clients + 1))
        ok = await asyncio.gather(*(converse(c, bot.bot_user_id, until=1) for c in chats))
        if not all(ok):
            outcome.failures.append("first answers missing before the blips")
        terminated = 0
        for number in range(rounds):
            active = [c for c in chats if c.timed_out is None and c.step < STEPS]
            killer = asyncio.create_task(terminate_busy_backends(pg_dsn, setup.pg_name, 3.0))
            await asyncio.gather(*(send_step(chat) for chat in active))
            ended = await killer
            terminated += ended
            log(f"blip {number + 1}: {ended} database session(s) ended mid-statement")
            await asyncio.gather(*(await_step(c, bot.bot_user_id, timeout=30) for c in active))
        outcome.details["sessions ended"] = terminated
        await asyncio.gather(*(converse(c, bot.bot_user_id) for c in chats if c.timed_out is None))
        await asyncio.sleep(3)
        outcome.completed = sum(chat.done for chat in chats)
        outcome.details["handler failures"] = bot.logs().count("handler failed")
        for chat in chats:
            if chat.error:
                outcome.failures.append(f"client{chat.index}: {chat.error}")
        await bot.stop()
        outcome.check = await check_run(hs, bot, chats, setup.db)
        outcome.log_lines = interesting_log_lines(bot)
    finally:
        await close_chats(chats)
        await stop_bot(setup, pg_dsn, keep=keep)
    outcome.seconds = time.perf_counter() - began
    return outcome


# -- the whole run ----------------------------------------------------------------------------


@dataclass
class Options:
    conversations: int = 100
    kills: int = 10
    wave: int = 20
    outage: float = 60.0
    outage_clients: int = 20
    db_outage: float = 20.0
    db_clients: int = 20
    database: str = "sqlite"
    pg_dsn: str = PG_ADMIN_DSN
    scenarios: tuple[str, ...] = ("kills", "outage", "db")
    seed: int | None = None
    keep: bool = False
    catch_up: float | None = None  # per answer once the server or database is back


async def run(
    options: Options, workdir: Path, log: Callable[[str], None] = print
) -> list[Outcome]:
    seed = options.seed if options.seed is not None else secrets.randbelow(2**31)
    log(f"chaos: seed {seed}, work dir {workdir}")
    rng = random.Random(seed)
    outcomes: list[Outcome] = []
    hs = await Synapse.astart(workdir / "synapse")
    try:
        pg_problem = None
        if {"db", "blip"} & set(options.scenarios) or options.database == "postgres":
            pg_problem = await postgres_available(options.pg_dsn)
        if pg_problem and options.database == "postgres":
            raise SystemExit(f"PostgreSQL unavailable at {options.pg_dsn}: {pg_problem}")
        if "kills" in options.scenarios:
            outcome = await scenario_kills(
                hs,
                workdir / "kills",
                conversations=options.conversations,
                kills=options.kills,
                wave=options.wave,
                rng=rng,
                database=options.database,
                pg_dsn=options.pg_dsn,
                keep=options.keep,
                log=log,
            )
            outcomes.append(outcome)
            log(outcome.report())
        if "outage" in options.scenarios:
            outcome, hs = await scenario_outage(
                hs,
                workdir / "outage",
                clients=options.outage_clients,
                outage=options.outage,
                rng=rng,
                database=options.database,
                pg_dsn=options.pg_dsn,
                keep=options.keep,
                catch_up=options.catch_up,
                log=log,
            )
            outcomes.append(outcome)
            log(outcome.report())
        if "db" in options.scenarios:
            if pg_problem:
                log(f"SUMMARY db: skipped, PostgreSQL unavailable ({pg_problem})")
            else:
                outcome = await scenario_db(
                    hs,
                    workdir / "db",
                    clients=options.db_clients,
                    outage=options.db_outage,
                    rng=rng,
                    pg_dsn=options.pg_dsn,
                    keep=options.keep,
                    catch_up=options.catch_up,
                    log=log,
                )
                outcomes.append(outcome)
                log(outcome.report())
        if "blip" in options.scenarios:
            if pg_problem:
                log(f"SUMMARY blip: skipped, PostgreSQL unavailable ({pg_problem})")
            else:
                outcome = await scenario_blip(
                    hs,
                    workdir / "blip",
                    clients=options.db_clients,
                    pg_dsn=options.pg_dsn,
                    keep=options.keep,
                    log=log,
                )
                outcomes.append(outcome)
                log(outcome.report())
    finally:
        await hs.astop()
    return outcomes


def parse_args(argv: Sequence[str] | None = None) -> tuple[Options, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--wave", type=int, default=20, help="concurrent conversations")
    parser.add_argument("--outage", type=float, default=60.0, help="homeserver down (s)")
    parser.add_argument("--outage-clients", type=int, default=20)
    parser.add_argument("--db-outage", type=float, default=20.0, help="database down (s)")
    parser.add_argument("--db-clients", type=int, default=20)
    parser.add_argument(
        "--db",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="the bot's database in the kills and outage scenarios",
    )
    parser.add_argument(
        "--pg-dsn",
        default=os.environ.get("SUPPORT_BOT_TEST_POSTGRES") or PG_ADMIN_DSN,
        help="PostgreSQL server (a fresh database is made)",
    )
    parser.add_argument("--scenarios", default="kills,outage,db,blip")
    parser.add_argument(
        "--catch-up",
        type=float,
        help="seconds each answer may take once the server or database is back "
        "(default: the backoff cap + 60)",
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument("--workdir", type=Path, help="kept; default: a temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep work dir and databases")
    args = parser.parse_args(argv)
    scenarios = tuple(s.strip() for s in args.scenarios.split(",") if s.strip())
    unknown = set(scenarios) - {"kills", "outage", "db", "blip"}
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if args.conversations < 1 or args.kills < 0 or args.wave < 1:
        parser.error("--conversations and --wave must be ≥ 1, --kills ≥ 0")
    options = Options(
        conversations=args.conversations,
        kills=args.kills,
        wave=args.wave,
        outage=args.outage,
        outage_clients=max(2, args.outage_clients),
        db_outage=args.db_outage,
        db_clients=max(2, args.db_clients),
        database=args.db,
        pg_dsn=args.pg_dsn,
        scenarios=scenarios,
        seed=args.seed,
        keep=args.keep,
        catch_up=args.catch_up,
    )
    return options, args


def main(argv: Sequence[str] | None = None) -> int:
    options, args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="support-bot-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    outcomes = asyncio.run(run(options, workdir))
    print()
    for outcome in outcomes:
        print(outcome.line())
    print(f"total time {time.perf_counter() - began:.1f} s; details and bot logs in {workdir}")
    if args.workdir is None and not options.keep and all(o.ok for o in outcomes):
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if outcomes and all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
