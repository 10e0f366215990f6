# ruff: noqa: ASYNC240 - a benchmark script: small blocking file reads and process starts during setup are fine
"""A flooder and a normal client together: does the normal client wait for the flooder?

    python bench/flood.py [--messages 15] [--interval 4] [--burst 26] [--bursts 3]
                          [--source DIR] [--markdown FILE] [--keep]

On a throwaway Synapse (the test fixture's), support-bot as in production (`python -m bot
--config … run`, SQLite) with the default flood limit (20 messages a minute) and a bridge
account configured. A normal client sends `!aide` every `--interval` seconds (under the
limit) and times each answer, in three phases:

- alone;
- beside a Matrix flooder: `--bursts` bursts of `--burst` messages, `--burst-every` s apart;
- beside one Talk user cycling through `--nicks` nicknames on the bridge account: each burst
  is `--burst` messages per nickname.

`--source DIR` also runs, first, the bot of another source tree (`bot/`, `handlers/`,
`locales/` under DIR, e.g. `git archive HEAD bot handlers locales | tar -x -C DIR`) as a second
bot on the same Synapse, with the same load, for a before / after table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _common import (
    Participant,
    cancel_on_signals,
    close_all,
    machine,
    make_participants,
    markdown_table,
    ms,
    percentile,
)
from nio import RoomCreateResponse

from bot.testing.matrix import login_client
from bot.testing.synapse import Synapse
from tests.e2e.conftest import RunningBot, make_running_bot

HELP_MARKERS = ("Voici ce que je comprends", "Here is what I understand")
FLOOD_MARKERS = ("très rapidement", "very quickly")
ANSWER_TIMEOUT = 120.0


def log(text: str, began: float = time.perf_counter()) -> None:
    print(f"[{time.perf_counter() - began:6.1f} s] {text}", file=sys.stderr, flush=True)


def is_help(event: object) -> bool:
    body = getattr(event, "body", "")
    return any(marker in body for marker in HELP_MARKERS)


@dataclass
class Phase:
    code: str  # which bot: "this tree" or the --source tree
    name: str
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    flood_sent: int = 0
    flood_answered: int = 0  # help answers the flooder got by the end of the phase
    flood_told: int = 0  # flooding notices
    wall: float = 0.0


@dataclass
class Setup:
    bot: RunningBot
    normal: Participant
    flooder: Participant
    bridge: Participant


async def bridged_participant(
    synapse: Synapse, bot_user_id: str, user_id: str, password: str, workdir: Path
) -> Participant:
    """The bridge account in a room of its own with the bot, as a Talk conversation is."""
    client = await login_client(
        synapse.base_url,
        user_id,
        password,
        store_path=workdir / "clients" / user_id.strip("@").split(":")[0],
        encryption=False,
    )
    created = await client.room_create(name="Talk conversation", invite=[bot_user_id])
    if not isinstance(created, RoomCreateResponse):
        await client.close()
        raise RuntimeError(f"room_create failed: {created}")
    part = Participant(client, created.room_id, bot_user_id)
    part.start()
    deadline = time.monotonic() + 60
    while not part.joined():
        if time.monotonic() > deadline:
            await part.close()
            raise TimeoutError("the bot did not join the bridged room")
        await asyncio.sleep(0.2)
    return part


async def start_bot(
    synapse: Synapse, workdir: Path, name: str, source: Path | None
) -> tuple[RunningBot, tuple[str, str]]:
    """A support-bot with a bridge account configured; from `source` when given (first on
    its import path, ahead of the venv's editable install)."""
    password = "pw-" + secrets.token_hex(8)
    bridge_id, _ = await synapse.register(f"talkbridge{secrets.token_hex(3)}", password)
    (workdir / name).mkdir()
    extra = f'\n[[bridges]]\nuser_id = "{bridge_id}"\n'
    bot = await make_running_bot(synapse, workdir / name, extra_toml=extra)
    before = os.environ.get("PYTHONPATH")
    if source is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(source), before) if p)
    try:
        await bot.start()
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before
    return bot, (bridge_id, password)


async def normal_client(part: Participant, phase: Phase, count: int, interval: float) -> None:
    """`count` round trips, one every `interval` s: under the flood limit."""
    for _ in range(count):
        started = time.perf_counter()
        part.flush()
        await part.send("!aide")
        try:
            arrived, _event = await part.next(is_help, timeout=ANSWER_TIMEOUT)
            phase.latencies.append(arrived - started)
        except TimeoutError:
            phase.errors += 1
        await asyncio.sleep(max(0.0, started + interval - time.perf_counter()))


async def flood(part: Participant, bodies: list[str], bursts: int, every: float) -> int:
    """`bursts` bursts of `bodies`, sent as fast as the homeserver takes them."""
    limit = asyncio.Semaphore(8)

    async def one(body: str) -> None:
        async with limit:
            await part.send(body)

    for number in range(bursts):
        started = time.perf_counter()
        await asyncio.gather(*(one(body) for body in bodies))
        if number < bursts - 1:
            await asyncio.sleep(max(0.0, started + every - time.perf_counter()))
    return bursts * len(bodies)


def count_answers(part: Participant, phase: Phase) -> None:
    for _arrived, event in list(part.inbox):
        body = getattr(event, "body", "")
        phase.flood_answered += any(marker in body for marker in HELP_MARKERS)
        phase.flood_told += any(marker in body for marker in FLOOD_MARKERS)
    part.flush()


async def run_phases(setup: Setup, code: str, args: argparse.Namespace) -> list[Phase]:
    phases = []
    # Warm-up: accounts, rows, connections; not measured.
    await normal_client(setup.normal, Phase(code, "warm-up"), 1, args.interval)
    for name in ("alone", "Matrix flooder", f"Talk flooder, {args.nicks} nicknames"):
        phase = Phase(code, name)
        log(f"{code}: {name}…")
        flooder = None
        if name.startswith("Matrix"):
            bodies = [f"!aide {n}" for n in range(args.burst)]
            flooder = setup.flooder
        elif name.startswith("Talk"):
            bodies = [
                f"[nctalk] <Nick{n % args.nicks}> !aide {n}"
                for n in range(args.burst * args.nicks)
            ]
            flooder = setup.bridge
        started = time.perf_counter()
        tasks = [
            asyncio.create_task(normal_client(setup.normal, phase, args.messages, args.interval))
        ]
        if flooder is not None:
            flooder.flush()
            await asyncio.sleep(0.5)  # the flood lands among the normal client's messages
            phase.flood_sent = await flood(flooder, bodies, args.bursts, args.burst_every)
        await asyncio.gather(*tasks)
        phase.wall = time.perf_counter() - started
        if flooder is not None:
            count_answers(flooder, phase)
        phases.append(phase)
        log(
            f"{code}: {name}: p50 {ms(percentile(phase.latencies, 50))} ms, "
            f"p99 {ms(percentile(phase.latencies, 99))} ms, {phase.errors} errors"
        )
        # Whatever the flood left on the sync path is done before the next phase starts.
        await normal_client(setup.normal, Phase(code, "settle"), 1, args.interval)
    return phases


async def one_bot(
    synapse: Synapse, workdir: Path, name: str, source: Path | None, args: argparse.Namespace
) -> list[Phase]:
    bot, (bridge_id, bridge_password) = await start_bot(synapse, workdir, name, source)
    parts: list[Participant] = []
    try:
        parts = await make_participants(synapse, bot.bot_user_id, workdir, 2, prefix=name[:4])
        parts.append(
            await bridged_participant(
                synapse, bot.bot_user_id, bridge_id, bridge_password, workdir
            )
        )
        setup = Setup(bot, normal=parts[0], flooder=parts[1], bridge=parts[2])
        return await run_phases(setup, name, args)
    finally:
        await close_all(parts)
        await bot.stop()
        await bot.staff.close()


def report(phases: list[Phase], args: argparse.Namespace, took: float) -> str:
    rows = [
        (
            p.code,
            p.name,
            len(p.latencies),
            ms(percentile(p.latencies, 50)),
            ms(percentile(p.latencies, 99)),
            ms(max(p.latencies, default=float("nan"))),
            p.errors,
            p.flood_sent or "",
            f"{p.flood_answered} / {p.flood_told}" if p.flood_sent else "",
        )
        for p in phases
    ]
    lines = [
        "# support-bot under a flood",
        "",
        f"- machine: {machine()}",
        f"- Synapse {importlib.metadata.version('matrix-synapse')} (the test fixture); SQLite; "
        f"flood limit 20 messages a minute (the default)",
        f"- normal client: {args.messages} `!aide` round trips, one every {args.interval:g} s; "
        f"flooders: {args.bursts} bursts {args.burst_every:g} s apart of {args.burst} "
        f"messages (Talk: {args.burst} per nickname, {args.nicks} nicknames)",
        f"- total run time {took:.0f} s",
        "",
        markdown_table(
            (
                "bot",
                "phase",
                "answers",
                "p50 ms",
                "p99 ms",
                "max ms",
                "errors",
                "flood sent",
                "flooder: answered / told (in the phase)",
            ),
            rows,
        ),
    ]
    return "\n".join(lines) + "\n"


async def amain(args: argparse.Namespace) -> int:
    cancel_on_signals()
    began = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="support-bot-flood-"))
    log(f"work dir {workdir}; starting Synapse…")
    synapse = await Synapse.astart(workdir / "synapse")
    phases: list[Phase] = []
    try:
        if args.source is not None:
            phases += await one_bot(synapse, workdir, "source", args.source.resolve(), args)
        phases += await one_bot(synapse, workdir, "this-tree", None, args)
    finally:
        with contextlib.suppress(Exception):
            await synapse.astop()
    text = report(phases, args, time.perf_counter() - began)
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
    parser.add_argument("--messages", type=int, default=15, help="normal round trips a phase")
    parser.add_argument("--interval", type=float, default=4.0, help="s between them")
    parser.add_argument("--burst", type=int, default=26, help="messages a burst (per nickname)")
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--burst-every", type=float, default=20.0, help="s between bursts")
    parser.add_argument("--nicks", type=int, default=4, help="nicknames of the Talk flooder")
    parser.add_argument("--source", type=Path, help="also run the bot of this source tree")
    parser.add_argument("--markdown", metavar="FILE")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    return asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
