# ruff: noqa: ASYNC109 - deadlines across many syncs, as in bot/testing
"""Shared pieces of the benchmarks: process statistics, measured chat participants, statistics,
PostgreSQL databases and Markdown tables.

The homeserver is the test fixture's (`bot.testing.synapse.Synapse`), the support-bot process
is started as the end-to-end tests start it (`tests.e2e.conftest.make_running_bot`), and the
clients are the test helpers' nio clients (`bot.testing.matrix`). Nothing here is imported by
the bot or the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import secrets
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/x.py` puts bench/ first, not the repository
    sys.path.insert(0, str(REPO))

from nio import AsyncClient, RoomCreateResponse  # noqa: E402

from bot.testing.matrix import (  # noqa: E402
    Message,
    SyncFailed,
    discard_messages,
    login_client,
    send_text,
    sync_once,
)
from bot.testing.synapse import Synapse, register_many  # noqa: E402

try:  # optional: the numbers are the same, read from /proc otherwise
    import psutil
except ImportError:  # pragma: no cover - depends on the environment
    psutil = None

CLK_TCK = os.sysconf("SC_CLK_TCK")
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


# -- the machine and processes --------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f", {int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
    return f"{os.cpu_count()} CPU(s) ({model}){mem}, Python {sys.version.split()[0]}"


class Proc:
    """CPU time and memory of one process (psutil when installed, else /proc)."""

    def __init__(self, pid: int):
        self.pid = pid
        self._ps = psutil.Process(pid) if psutil is not None else None

    def cpu(self) -> float:
        """User + system CPU seconds so far (0.0 once the process is gone)."""
        try:
            if self._ps is not None:
                times = self._ps.cpu_times()
                return times.user + times.system
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()  # the name may contain spaces
            return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime
        except Exception:  # gone: OSError from /proc, psutil.NoSuchProcess
            return 0.0

    def _status_kb(self, key: str) -> float:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return float(line.split()[1])
        except OSError:
            pass
        return 0.0

    def rss_mb(self) -> float:
        if self._ps is not None:
            with contextlib.suppress(Exception):
                return self._ps.memory_info().rss / 1024 / 1024
            return 0.0
        return self._status_kb("VmRSS") / 1024

    def peak_mb(self) -> float:
        """VmHWM: the largest resident set since the process started (Linux)."""
        return self._status_kb("VmHWM") / 1024


def system_busy() -> float:
    """CPU seconds spent busy by the whole machine so far (all cores, from /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    except (OSError, ValueError, IndexError):
        return math.nan
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class Watch:
    """Samples a process's RSS during a phase and its CPU time across it."""

    def __init__(self, proc: Proc | None, every: float = 0.2):
        self.proc = proc
        self.every = every
        self.cpu0 = 0.0
        self.cpu = 0.0
        self.rss_max = 0.0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watch:
        if self.proc is not None:
            self.cpu0 = self.proc.cpu()
            self.rss_max = self.proc.rss_mb()
            self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.proc is not None:
            self.rss_max = max(self.rss_max, self.proc.rss_mb())
            self.cpu = self.proc.cpu() - self.cpu0

    async def _sample(self) -> None:
        assert self.proc is not None
        while True:
            self.rss_max = max(self.rss_max, self.proc.rss_mb())
            await asyncio.sleep(self.every)


def raise_priority(increment: int) -> str:
    """`os.nice(increment)` for this process and so for everything it starts afterwards
    (Synapse, the bots, export runs): on a machine shared with other work, a negative value
    (root only) keeps that work from being what is measured. Returns a line for the report."""
    if not increment:
        return f"scheduling priority: normal (nice {os.nice(0)})"
    try:
        now = os.nice(increment)
    except PermissionError:
        return f"scheduling priority: nice {increment} refused (not root), left at {os.nice(0)}"
    return f"scheduling priority: nice {now} for Synapse, the bots and the load generator"


def cancel_on_signals() -> None:
    """SIGTERM or SIGINT cancel the calling task, so that its `finally` blocks stop the bots,
    close the clients and stop Synapse instead of leaving them running."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)


# -- statistics -----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of `values`; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ratio_interval(
    before: Sequence[float], after: Sequence[float], q: float, *, draws: int = 2000, seed: int = 1
) -> tuple[float, float]:
    """A 95 % bootstrap interval of percentile(after, q) / percentile(before, q).

    A p99 of a few hundred answers rests on its few slowest ones: the interval says how far the
    ratio could move by chance alone (a regression is real when the interval stays above 1).
    """
    if not before or not after:
        return math.nan, math.nan
    rng = random.Random(seed)
    ratios = []
    for _ in range(draws):
        b = percentile(rng.choices(before, k=len(before)), q)
        a = percentile(rng.choices(after, k=len(after)), q)
        ratios.append(a / b if b else math.nan)
    ratios.sort()
    return ratios[int(0.025 * draws)], ratios[int(0.975 * draws) - 1]


@dataclass
class Result:
    """One phase for one bot."""

    phase: str
    bot: str
    latencies: list[float] = field(default_factory=list)  # seconds
    errors: int = 0
    wall: float = 0.0  # first send to last answer (closed loop) or to the end (open loop)
    bot_rss: float = 0.0
    bot_cpu: float = 0.0
    hs_cpu: float = 0.0
    gen_cpu: float = 0.0
    other_cpu: float = 0.0  # CPU used meanwhile by processes outside the benchmark
    notes: list[str] = field(default_factory=list)
    totals: list[float] = field(default_factory=list)  # intakes: time per whole intake
    steps: dict[int, list[float]] = field(default_factory=dict)  # intakes: latency per step
    steps_first: dict[int, list[float]] = field(default_factory=dict)  # first bot message
    # Local-time spans of the phase's rounds (to read Synapse's access log for them).
    windows: list[tuple[datetime, datetime]] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.answered / self.wall if self.wall > 0 else math.nan

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# -- participants: a client in a direct chat with the bot, with timed arrivals -------------


class Participant:
    """A nio client in its own direct chat with a bot.

    A background task syncs the client (with the tests' `sync_once`, which fills gaps of
    limited timelines) and timestamps every message the bot sends to the room as it arrives in
    the client's own sync. `next()` hands them out in arrival order.
    """

    def __init__(self, client: AsyncClient, room_id: str, bot_user_id: str):
        self.client = client
        self.room_id = room_id
        self.bot_user_id = bot_user_id
        self.inbox: deque[tuple[float, Message]] = deque()
        self.sync_errors = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._receive())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.client.close()

    async def _receive(self) -> None:
        while True:
            try:
                messages = await sync_once(self.client, timeout=30)
            except SyncFailed:
                self.sync_errors += 1
                await asyncio.sleep(0.2)
                continue
            except (TimeoutError, OSError):
                self.sync_errors += 1
                await asyncio.sleep(0.2)
                continue
            arrived = time.perf_counter()
            discard_messages(self.client)  # we keep our own list
            mine = [
                (arrived, event)
                for room_id, event in messages
                if room_id == self.room_id and event.sender == self.bot_user_id
            ]
            if mine:
                self.inbox.extend(mine)
                self._wake.set()

    def joined(self) -> bool:
        # nio lists invited members in `users` too: the bot has joined once it is not only
        # invited any more.
        room = self.client.rooms.get(self.room_id)
        return (
            room is not None
            and self.bot_user_id in room.users
            and self.bot_user_id not in room.invited_users
        )

    async def next(
        self, predicate: Callable[[Message], bool] | None = None, timeout: float = 30.0
    ) -> tuple[float, Message]:
        """The next bot message (matching `predicate`; earlier ones that do not match are
        dropped) and its arrival time. Raises TimeoutError."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            while self.inbox:
                arrived, event = self.inbox.popleft()
                if predicate is None or predicate(event):
                    return arrived, event
            self._wake.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no answer in {self.room_id} within {timeout} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    def flush(self) -> int:
        """Forget unconsumed messages; returns how many there were."""
        count = len(self.inbox)
        self.inbox.clear()
        return count

    async def send(self, body: str) -> str:
        return await send_text(self.client, self.room_id, body)


async def _limited(limit: asyncio.Semaphore, coro: Any) -> Any:
    async with limit:
        return await coro


async def make_participants(
    synapse: Synapse,
    bot_user_id: str,
    workdir: Path,
    count: int,
    *,
    prefix: str,
    join_timeout: float = 90.0,
    concurrency: int = 8,
) -> list[Participant]:
    """`count` new users, each in a new direct chat with `bot_user_id`, the bot joined."""
    suffix = secrets.token_hex(3)
    accounts = [(f"{prefix}{suffix}n{i}", "pw-" + secrets.token_hex(8)) for i in range(count)]
    registered = await register_many(synapse.base_url, synapse.shared_secret, accounts)
    limit = asyncio.Semaphore(concurrency)

    async def one(index: int) -> Participant:
        user_id = registered[index][0]
        client = await login_client(
            synapse.base_url,
            user_id,
            accounts[index][1],
            store_path=workdir / "clients" / accounts[index][0],
            encryption=False,
        )
        try:
            created = await client.room_create(is_direct=True, invite=[bot_user_id])
            if not isinstance(created, RoomCreateResponse):
                raise RuntimeError(f"room_create failed: {created}")
        except BaseException:
            await client.close()
            raise
        return Participant(client, created.room_id, bot_user_id)

    participants = list(await asyncio.gather(*(_limited(limit, one(i)) for i in range(count))))
    for participant in participants:
        participant.start()
    deadline = time.monotonic() + join_timeout
    while not all(p.joined() for p in participants):
        if time.monotonic() > deadline:
            missing = sum(not p.joined() for p in participants)
            raise TimeoutError(f"the bot did not join {missing} of {count} direct chats")
        await asyncio.sleep(0.2)
    return participants


async def close_all(participants: Iterable[Participant]) -> None:
    await asyncio.gather(*(p.close() for p in participants), return_exceptions=True)


# -- PostgreSQL -----------------------------------------------------------------------------


async def create_pg_database(admin_dsn: str = PG_ADMIN_DSN) -> tuple[str, str]:
    """A fresh database; returns (its name, a Tortoise URL to it)."""
    import asyncpg

    name = f"support_bot_bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await conn.close()
    base = admin_dsn.split("://", 1)[1].rsplit("/", 1)[0]
    return name, f"postgres://{base}/{name}"


async def drop_pg_database(name: str, admin_dsn: str = PG_ADMIN_DSN) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def pg_backends(name: str, admin_dsn: str = PG_ADMIN_DSN) -> list[Proc]:
    """The PostgreSQL server processes serving database `name` (their CPU is the bot's too)."""
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    try:
        rows = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", name)
    finally:
        await conn.close()
    return [Proc(row["pid"]) for row in rows]


def use_database(config_path: Path, url: str) -> None:
    """Point a bench bot config (written by make_running_bot, SQLite) at another database."""
    lines = config_path.read_text().splitlines()
    for index, line in enumerate(lines):
        if line.startswith("url = ") and lines[index - 1].strip() == "[database]":
            lines[index] = f'url = "{url}"'
            break
    else:  # pragma: no cover - the fixture's format changed
        raise RuntimeError(f"no [database] url in {config_path}")
    config_path.write_text("\n".join(lines) + "\n")


# Settings layered on the e2e fixture's config for benchmarks: the per-client flood limit
# (20 messages a minute by default) would otherwise be what a closed loop measures.
BENCH_EXTRA_TOML = """
[service]
flood_messages_per_minute = 100000
"""
