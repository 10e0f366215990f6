# ruff: noqa: ASYNC109, ASYNC240 - a benchmark script: small blocking file reads and process starts during setup are fine
"""support-bot with a large database and many rooms: memory, restart time, `!queue`, export.

    python bench/scale.py [--tickets 10000] [--rooms 500] [--db sqlite|postgres] [--markdown FILE]

On a throwaway Synapse (the test fixture's): `--rooms` rooms, each made by one of a pool of users
with a few other users in it and the bot invited; a database holding `--tickets` tickets with
their clients, audit rows, time logs and bookings (written before the bot's first start); then
support-bot as in production (`python -m bot --config … run`) joins the rooms at its first
start. Measured: the first start, then `--restarts` restarts (SIGTERM, a client writes `!aide`
while the bot is down, start): time from process start to ready and to the answer arriving in
the client's sync; the bot's RSS after start; `!aide` latency at K=1; `!queue` in the staff room;
`support-bot tickets export --json` (a separate process, as an operator runs it).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from _common import (
    BENCH_EXTRA_TOML,
    PG_ADMIN_DSN,
    Participant,
    Proc,
    cancel_on_signals,
    close_all,
    create_pg_database,
    drop_pg_database,
    machine,
    make_participants,
    markdown_table,
    ms,
    percentile,
    raise_priority,
    use_database,
    verdict,
)

from bot.storage.db import close_db, open_db
from bot.storage.models import (
    AuditEntry,
    Booking,
    Client,
    HandledEvent,
    OutboxItem,
    RefCounter,
    Ticket,
    TimeLog,
)
from bot.testing.synapse import Synapse, register_many
from tests.e2e.conftest import RunningBot, make_running_bot

HELP_MARKERS = ("Voici ce que je comprends", "Here is what I understand")
QUEUE_TIMEOUT = 120.0
RSS_TARGET_MB = 150.0
RESTART_TARGET_S = 3.0

# Status mix of a service that has been running for years: most work is finished.
ACTIVE_SHARE = {
    "open": 0.004,
    "in_progress": 0.004,
    "awaiting_estimate": 0.0005,
    "awaiting_staff_confirmation": 0.0005,
    "confirmed": 0.001,
}
ENDED_SHARE = {"resolved": 0.02, "cancelled": 0.05, "declined": 0.01, "unsolvable": 0.01}
CATEGORIES = ("configuration", "expressions", "javascript", "theme", "data", "usage")
CHANNELS = ("messaging", "messaging", "messaging", "video", "phone", "intervention")
WORDS = (
    "questionnaire invitations relances quotas expression conditions thème export réponses "
    "participants jeton serveur version mise à jour erreur page affichage mobile calcul"
).split()


def log(text: str, began: float = time.perf_counter()) -> None:
    print(f"[{time.perf_counter() - began:6.1f} s] {text}", file=sys.stderr, flush=True)


# -- rooms ----------------------------------------------------------------------------------


async def make_rooms(
    synapse: Synapse, bot_user_id: str, rooms: int, humans: int, pool: int
) -> list[str]:
    """`rooms` rooms, each created by a user of a pool with `humans - 1` others joined and the
    bot invited (not joined: it joins them itself). Plain client-server API calls."""
    accounts = [
        (f"scale{secrets.token_hex(3)}u{i}", "pw-" + secrets.token_hex(8)) for i in range(pool)
    ]
    users = await register_many(synapse.base_url, synapse.shared_secret, accounts)
    limit = asyncio.Semaphore(8)
    base = f"{synapse.base_url}/_matrix/client/v3"

    async def call(session, method, url, token, body):
        headers = {"Authorization": f"Bearer {token}"}
        for attempt in range(5):
            async with session.request(method, url, json=body, headers=headers) as response:
                data = await response.json(content_type=None)
                if response.status == 200:
                    return data
                if response.status < 500 and response.status != 429:
                    raise RuntimeError(f"{method} {url}: {response.status} {data}")
            await asyncio.sleep(0.5 * (attempt + 1))
        raise RuntimeError(f"{method} {url}: still failing")

    async with aiohttp.ClientSession() as session:

        async def one(index: int) -> str:
            members = [users[(index + k) % pool] for k in range(humans)]
            creator, others = members[0], members[1:]
            async with limit:
                created = await call(
                    session,
                    "POST",
                    f"{base}/createRoom",
                    creator[1],
                    {
                        "preset": "private_chat",
                        "name": f"Scale room {index}",
                        "invite": [user_id for user_id, _ in others] + [bot_user_id],
                    },
                )
                room_id = created["room_id"]
                for _user_id, token in others:
                    await call(session, "POST", f"{base}/join/{room_id}", token, {})
                return room_id

        return list(await asyncio.gather(*(one(i) for i in range(rooms))))


async def bot_rooms(synapse: Synapse, admin_token: str, bot_user_id: str) -> int:
    url = f"{synapse.base_url}/_synapse/admin/v1/users/{bot_user_id}/joined_rooms"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Authorization": f"Bearer {admin_token}"}) as response,
    ):
        data = await response.json(content_type=None)
        return int(data.get("total", len(data.get("joined_rooms", []))))


# -- the database ---------------------------------------------------------------------------


async def populate(url: str, tickets: int, room_ids: list[str], history: int, staff: str) -> dict:
    """Write `tickets` tickets (clients, audit rows, time logs, bookings) through the bot's
    models, in bulk. Returns row counts."""
    rng = random.Random(42)
    await open_db(url)
    now = datetime.now(UTC)
    counts: dict[str, int] = {}
    try:
        n_clients = max(1, tickets // 5)
        clients = [
            Client(
                key=f"@scaleclient{i}:localhost",
                display_name=f"Client {i}",
                email=f"client{i}@example.org",
                locale=rng.choice(("fr", "fr", "en")),
                terms_shown_at=now - timedelta(days=1500),
                terms_url="https://support.example.org/terms",
                created_at=now - timedelta(days=1500),
            )
            for i in range(n_clients)
        ]
        await Client.bulk_create(clients, batch_size=1000)
        client_ids = [c.id for c in await Client.all().only("id").order_by("id")]
        counts["client"] = len(client_ids)

        statuses: list[str] = []
        for status, share in {**ACTIVE_SHARE, **ENDED_SHARE}.items():
            statuses += [status] * max(1, round(share * tickets))
        statuses += ["closed"] * max(0, tickets - len(statuses))
        statuses = statuses[:tickets]
        rng.shuffle(statuses)
        years = 5
        span = timedelta(days=365 * years)
        created = sorted(now - span * rng.random() for _ in range(tickets))
        # Active work is recent.
        for index, status in enumerate(statuses):
            if status in ACTIVE_SHARE or status == "resolved":
                created[index] = now - timedelta(days=20 * rng.random())
        per_year: dict[int, int] = {}
        rows = []
        for index in range(tickets):
            at = created[index]
            per_year[at.year] = per_year.get(at.year, 0) + 1
            status = statuses[index]
            active = status in ACTIVE_SHARE
            channel = rng.choice(CHANNELS)
            description = " ".join(rng.choice(WORDS) for _ in range(rng.randint(15, 80)))
            rows.append(
                Ticket(
                    ref=f"SP-{at.year}-{per_year[at.year]:04d}",
                    kind="ticket",
                    status=status,
                    category=rng.choice(CATEGORIES),
                    channel=channel,
                    client_id=client_ids[index % len(client_ids)],
                    room_id=room_ids[index % len(room_ids)] if room_ids else "!none:localhost",
                    locale="fr",
                    description=description,
                    instance_url="https://survey.example.org",
                    instance_version="6.4.1",
                    survey_id=str(100000 + index),
                    email=f"client{index % len(client_ids)}@example.org",
                    created_at=at,
                    sla_due=at + timedelta(days=2 + rng.random() * 2),
                    first_response_at=None if status == "open" else at + timedelta(hours=5),
                    assigned_to=None if status == "open" else staff,
                    minutes_logged=0 if active else rng.choice((30, 45, 60, 90)),
                    resolved_at=None if active else at + timedelta(days=1),
                    accepted_at=at + timedelta(days=2) if status == "closed" else None,
                    warranty_until=at + timedelta(days=9) if status == "closed" else None,
                )
            )
        await Ticket.bulk_create(rows, batch_size=1000)
        for year, last in per_year.items():
            await RefCounter.create(prefix="SP", year=year, last_value=last)
        saved = await Ticket.all().only("id", "status", "channel", "created_at").order_by("id")
        counts["ticket"] = len(saved)

        audit, logs, bookings = [], [], []
        for ticket in saved:
            at = ticket.created_at
            audit.append(
                AuditEntry(
                    ticket_id=ticket.id,
                    actor="@client:localhost",
                    at=at,
                    action="opened",
                    from_status=None,
                    to_status="open",
                )
            )
            if ticket.status != "open":
                audit.append(
                    AuditEntry(
                        ticket_id=ticket.id,
                        actor=staff,
                        at=at + timedelta(hours=5),
                        action="taken",
                        from_status="open",
                        to_status="in_progress",
                    )
                )
            if ticket.status not in ACTIVE_SHARE:
                audit.append(
                    AuditEntry(
                        ticket_id=ticket.id,
                        actor=staff,
                        at=at + timedelta(days=1),
                        action="status",
                        from_status="in_progress",
                        to_status=ticket.status,
                        detail="bench",
                    )
                )
                logs.append(
                    TimeLog(
                        ticket_id=ticket.id, staff=staff, minutes=45, at=at + timedelta(days=1)
                    )
                )
            if ticket.channel in ("video", "phone"):
                start = at + timedelta(days=2, minutes=15 * (ticket.id % 4))
                upcoming = ticket.status in ACTIVE_SHARE
                if upcoming:
                    start = now + timedelta(days=1 + ticket.id % 10, minutes=45 * (ticket.id % 8))
                bookings.append(
                    Booking(
                        ticket_id=ticket.id,
                        staff=staff,
                        start=start,
                        end=start + timedelta(minutes=45),
                        slot_lock=f"{staff}|{start.isoformat()}|{ticket.id}",
                        status="active",
                        provider="jitsi",
                        meeting_id=f"bench-{ticket.id}",
                        client_url=f"https://jitsi.test.invalid/bench-{ticket.id}",
                        staff_url=f"https://jitsi.test.invalid/bench-{ticket.id}",
                        created_at=at,
                    )
                )
        await AuditEntry.bulk_create(audit, batch_size=2000)
        await TimeLog.bulk_create(logs, batch_size=2000)
        await Booking.bulk_create(bookings, batch_size=1000)
        counts.update(audit_entry=len(audit), time_log=len(logs), booking=len(bookings))

        if history:
            handled = [
                HandledEvent(
                    event_id=f"$bench{i}", room_id=room_ids[i % len(room_ids)], handled_at=now
                )
                for i in range(history)
            ]
            await HandledEvent.bulk_create(handled, batch_size=2000)
            sent = [
                OutboxItem(
                    txn_id=f"bench-{i}",
                    room_id=room_ids[i % len(room_ids)],
                    kind="message",
                    content={"msgtype": "m.notice", "body": "…"},
                    created_at=now,
                    sent_at=now,
                    event_id=f"$benchsent{i}",
                    attempts=1,
                )
                for i in range(history)
            ]
            await OutboxItem.bulk_create(sent, batch_size=2000)
            counts.update(handled_event=history, outbox_item=history)
    finally:
        await close_db()
    return counts


# -- measurements ---------------------------------------------------------------------------


async def restart_once(bot: RunningBot, part: Participant) -> dict[str, float]:
    """Stop the bot, write `!aide` while it is down, start it: time to ready and to the answer."""
    await bot.stop()
    part.flush()
    await part.send("!aide")
    started = time.perf_counter()
    answer = asyncio.create_task(part.next(timeout=120))
    await bot.start(timeout=120)
    ready = time.perf_counter() - started
    arrived, event = await answer
    proc = Proc(bot.process.pid)
    rss_answer = proc.rss_mb()
    await asyncio.sleep(5)
    return {
        "ready": ready,
        "answer": arrived - started,
        "ok": float(any(m in event.body for m in HELP_MARKERS)),
        "rss_answer": rss_answer,
        "rss_5s": proc.rss_mb(),
        "hwm": proc.peak_mb(),
    }


async def timed_command(
    part: Participant, body: str, timeout: float, needle: str | None = None
) -> tuple[float, str]:
    """Send `body`; the time until the bot's answer (its first message containing `needle`:
    other notices, such as SLA warnings in the staff room, may come in between)."""
    part.flush()
    sent = time.perf_counter()
    await part.send(body)
    arrived, event = await part.next(
        (lambda e: needle in e.body) if needle else None, timeout=timeout
    )
    return arrived - sent, event.body


def run_export(config: Path, out: Path) -> dict[str, float]:
    """`support-bot tickets export --json` as an operator runs it; wall time and peak RSS."""
    started = time.perf_counter()
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "bot", "--config", str(config), "tickets", "export", "--json"],
            stdout=sink,
            stderr=subprocess.PIPE,
        )
        _pid, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    exported = -1
    if process.returncode == 0:
        exported = len(json.loads(out.read_text()))
    return {
        "wall": wall,
        "cpu": usage.ru_utime + usage.ru_stime,
        "peak_mb": usage.ru_maxrss / 1024,
        "rc": process.returncode,
        "tickets": exported,
        "bytes": out.stat().st_size,
    }


# -- main -----------------------------------------------------------------------------------


async def amain(args: argparse.Namespace) -> int:
    cancel_on_signals()
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="support-bot-scale-"))
    load_before = os.getloadavg()[0]
    log(f"work dir {workdir}; starting Synapse…")
    synapse = await Synapse.astart(workdir / "synapse")
    lines: list[str] = []
    pg_name = None
    bot: RunningBot | None = None
    parts: list[Participant] = []
    staff_part: Participant | None = None
    try:
        (workdir / "bot").mkdir()
        bot = await make_running_bot(synapse, workdir / "bot", extra_toml=BENCH_EXTRA_TOML)
        url = f"sqlite://{workdir / 'bot' / 'bot.sqlite3'}"
        if args.db == "postgres":
            pg_name, url = await create_pg_database(args.pg_dsn)
            use_database(bot.config_path, url)
        _admin, admin_token = await synapse.register(
            f"scaleadmin{secrets.token_hex(3)}", "pw-" + secrets.token_hex(8), admin=True
        )

        t0 = time.perf_counter()
        room_ids = await make_rooms(synapse, bot.bot_user_id, args.rooms, args.humans, args.pool)
        rooms_time = time.perf_counter() - t0
        log(f"{len(room_ids)} rooms created in {rooms_time:.1f} s")

        t0 = time.perf_counter()
        counts = await populate(url, args.tickets, room_ids, args.history, bot.staff.user_id)
        db_time = time.perf_counter() - t0
        log(f"database written in {db_time:.1f} s: {counts}")

        t0 = time.perf_counter()
        await bot.start(timeout=600)
        first_ready = time.perf_counter() - t0
        expected = args.rooms + 1  # and the staff room
        while (joined := await bot_rooms(synapse, admin_token, bot.bot_user_id)) < expected:
            if time.perf_counter() - t0 > 600:
                raise TimeoutError(f"the bot joined {joined} of {expected} rooms in 600 s")
            await asyncio.sleep(1)
        first_joined = time.perf_counter() - t0
        log(
            f"first start: ready in {first_ready:.1f} s, "
            f"in all {joined} rooms after {first_joined:.1f} s"
        )

        parts = await make_participants(synapse, bot.bot_user_id, workdir, 1, prefix="sc")
        part = parts[0]
        # The staff user, in the staff room, as a participant too.
        staff_part = Participant(bot.staff, bot.staff_room_id, bot.bot_user_id)
        staff_part.start()
        # The first start posts what the sweepers find in the database (missed SLAs of the
        # open tickets, card updates): let that be delivered, so that the restarts measure
        # a bot in its steady state.
        await asyncio.sleep(args.settle)

        restarts = []
        for number in range(args.restarts):
            result = await restart_once(bot, part)
            restarts.append(result)
            log(
                f"restart {number + 1}: ready {result['ready']:.2f} s, "
                f"answer {result['answer']:.2f} s, RSS {result['rss_5s']:.0f} MB"
            )

        latencies = []
        for _ in range(args.messages):
            latency, body = await timed_command(part, "!aide", 30)
            latencies.append(latency)
        log(f"!aide K=1: p50 {ms(percentile(latencies, 50))} ms")

        queue_times, queue_size = [], 0
        for _ in range(3):
            latency, body = await timed_command(staff_part, "!queue", QUEUE_TIMEOUT, "• ")
            queue_times.append(latency)
            queue_size = len(body.encode())
        log(f"!queue: {[round(q * 1000) for q in queue_times]} ms, {queue_size} bytes")

        proc = Proc(bot.process.pid)
        rss_after_queue = proc.rss_mb()
        export = await asyncio.to_thread(run_export, bot.config_path, workdir / "export.json")
        log(f"export: {export}")
        rss_end, hwm_end = proc.rss_mb(), proc.peak_mb()
        warnings = [
            line for line in bot.logs().splitlines() if " WARNING " in line or " ERROR " in line
        ]

        last = restarts[-1]
        worst_answer = max(r["answer"] for r in restarts)
        lines = [
            "# support-bot at scale",
            "",
            f"- machine: {machine()}; load average before {load_before:.2f}, after "
            f"{os.getloadavg()[0]:.2f}",
            f"- Synapse {importlib.metadata.version('matrix-synapse')} (the test fixture); "
            f"support-bot database: {args.db}",
            f"- {len(room_ids)} rooms of {args.humans} users each (pool of {args.pool}), the bot "
            f"invited, created in {rooms_time:.0f} s; database rows: "
            + ", ".join(f"{k} {v}" for k, v in counts.items())
            + f" (written in {db_time:.0f} s)",
            f"- bot member of {joined} rooms (+ the measuring client's direct chat)",
            f"- total run time {time.perf_counter() - began:.0f} s; {args.priority}",
            "",
            markdown_table(
                ("measure", "value"),
                [
                    ("first start (pending invites to join): ready", f"{first_ready:.2f} s"),
                    ("first start: in every room", f"{first_joined:.1f} s"),
                    *(
                        (
                            f"restart {i + 1}: process start → ready / → first answer",
                            f"{r['ready']:.2f} s / {r['answer']:.2f} s",
                        )
                        for i, r in enumerate(restarts)
                    ),
                    (
                        "RSS at the first answer after the last restart",
                        f"{last['rss_answer']:.0f} MB",
                    ),
                    ("RSS 5 s after it (settled)", f"{last['rss_5s']:.0f} MB"),
                    ("RSS after `!queue` ×3", f"{rss_after_queue:.0f} MB"),
                    (
                        "RSS at the end / peak since the restart (VmHWM)",
                        f"{rss_end:.0f} / {hwm_end:.0f} MB",
                    ),
                    (
                        f"`!aide` K=1 ×{len(latencies)}: p50 / p99",
                        f"{ms(percentile(latencies, 50))} / {ms(percentile(latencies, 99))} ms",
                    ),
                    (
                        "`!queue` (staff room), 3 times",
                        ", ".join(f"{q * 1000:.0f}" for q in queue_times)
                        + f" ms; answer {queue_size} bytes",
                    ),
                    (
                        "`support-bot tickets export --json`",
                        f"{export['wall']:.2f} s wall, {export['cpu']:.2f} s CPU, peak RSS "
                        f"{export['peak_mb']:.0f} MB, exit {export['rc']}, {export['tickets']} "
                        f"tickets, {export['bytes'] / 1e6:.1f} MB",
                    ),
                    ("bot log warnings/errors", str(len(warnings))),
                ],
            ),
            "",
            "## Targets",
            "",
            markdown_table(
                ("target", "result", "measured"),
                [
                    (
                        f"RSS ≤ {RSS_TARGET_MB:.0f} MB with {counts['ticket']} tickets and "
                        f"{args.rooms} rooms",
                        verdict(max(last["rss_5s"], rss_end) <= RSS_TARGET_MB),
                        f"{last['rss_5s']:.0f} MB after start, {rss_end:.0f} MB at the end "
                        f"(peak {hwm_end:.0f} MB)",
                    ),
                    (
                        f"restart to first answer ≤ {RESTART_TARGET_S:g} s",
                        verdict(
                            worst_answer <= RESTART_TARGET_S and all(r["ok"] for r in restarts)
                        ),
                        ", ".join(f"{r['answer']:.2f}" for r in restarts) + " s",
                    ),
                ],
            ),
        ]
        if warnings:
            lines += ["", "## Bot log warnings (first 5)", "", *(f"    {w}" for w in warnings[:5])]
    finally:
        await close_all(parts)
        if staff_part is not None:
            await staff_part.close()  # closes bot.staff too
        if bot is not None:
            await bot.stop()
            if staff_part is None:
                await bot.staff.close()
        await synapse.astop()
        if pg_name is not None:
            await drop_pg_database(pg_name, args.pg_dsn)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.keep:
        log(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tickets", type=int, default=10_000)
    parser.add_argument("--rooms", type=int, default=500)
    parser.add_argument("--humans", type=int, default=3, help="users in each room (default 3)")
    parser.add_argument("--pool", type=int, default=30, help="users the rooms are made from")
    parser.add_argument(
        "--history",
        type=int,
        default=0,
        metavar="N",
        help="also N handled events and N sent outbox rows (a database that has run for long)",
    )
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument(
        "--settle", type=float, default=15.0, help="seconds between first start and restarts"
    )
    parser.add_argument("--messages", type=int, default=30, help="`!aide` round trips at K=1")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--pg-dsn", default=PG_ADMIN_DSN)
    parser.add_argument("--markdown", metavar="FILE")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument(
        "--nice", type=int, default=0, metavar="N", help="nice increment, e.g. -10 (root)"
    )
    args = parser.parse_args()
    args.priority = raise_priority(args.nice)
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
