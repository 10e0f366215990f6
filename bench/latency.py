# ruff: noqa: ASYNC109, ASYNC220, ASYNC240 - a benchmark script: small blocking file reads and process starts during setup are fine
"""Answer latency of support-bot against a bare nio echo bot, on the same throwaway Synapse.

    python bench/latency.py [--quick] [--db sqlite|postgres] [--markdown FILE] [--nice -10]
                            [--baseline REV]

One run starts a Synapse (the test fixture's) and, on it, two bots: (a) `bench/echo_bot.py`, the
floor set by the homeserver and nio, and (b) support-bot as in production (`python -m bot
--config … run`, its own config and database). Each bot gets its own clients, every client in
its own direct chat with it. Both bots stay up, but only one is under load at a time: each phase
runs for one bot, then for the other, with the same load, in rounds (closed K=1 in 4, K=10,
K=50 and the open loop in 2, the K=1 intakes one per round: echo / support-bot / support-bot /
echo…, so that drift and other load on the machine hit both alike). On a machine busy with
other work, `--nice -10` (root) keeps that work from being what is measured; the report shows
how much CPU other processes used during each phase.

Load:
- closed loop: K clients (1, 10, 50) at once, each sending M `!aide` one after the other and
  waiting for the answer;
- open loop: 20 clients sending 200 messages in all at a fixed 10 messages/s, not waiting;
- full intakes (6 steps, to a confirmed ticket) with K = 1 (a few in a row) and K = 20.
Latency = from just before the client's send to the answer arriving in that client's own sync.
Every client first sends one unmeasured `!aide` (warm-up: accounts, rows, connections).

`--baseline REV` (a git revision, e.g. the tag `bench-before`) adds a third bot: support-bot as
it was at REV, checked out with `git worktree add --detach` in a temporary directory (removed
at the end) and run with this venv's Python, the worktree first on its import path. It runs in
the same rounds with the same load, and the report compares it with the working tree's bot.

See bench/README.md for what the numbers mean and the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.metadata
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import (
    BENCH_EXTRA_TOML,
    PG_ADMIN_DSN,
    REPO,
    Participant,
    Proc,
    Result,
    Watch,
    cancel_on_signals,
    close_all,
    create_pg_database,
    drop_pg_database,
    machine,
    make_participants,
    markdown_table,
    ms,
    percentile,
    pg_backends,
    raise_priority,
    ratio_interval,
    system_busy,
    use_database,
    verdict,
)
from _timeline import PARTS, Breakdown, breakdown, read_access_log

from bot.testing.matrix import Message
from bot.testing.synapse import Synapse
from tests.e2e.conftest import RunningBot, make_running_bot

BENCH = Path(__file__).resolve().parent
ECHO = "echo"
SUPPORT = "support-bot"
ANSWER_TIMEOUT = 30.0
COMMAND = "!aide"
HELP_MARKERS = ("Voici ce que je comprends", "Here is what I understand")

# The intake as a French client types it (the bot's default language), with a part of the
# question each answer must contain; None = any answer (the echo bot).
INSTANCE = "https://survey.example.org 6.4.1 123456"
INTAKE_NEEDLES = (
    "Quelle catégorie correspond à votre demande",
    "adresse de votre LimeSurvey",
    "mode d’assistance",
    "À quelle adresse e-mail",
    None,  # the summary: checked to contain the e-mail address (set per client)
    "SP-",
)


@dataclass(frozen=True)
class Plan:
    closed: tuple[tuple[int, int], ...]  # (K clients, M messages each)
    open_clients: int
    open_total: int
    open_rate: float
    intake_single: int  # intakes with K = 1, one after the other
    intake_k: int  # concurrent intakes
    k1_rounds: int = 4  # rounds of the closed K=1 phase (A B B A…)

    @property
    def clients(self) -> int:
        return max(
            max(k for k, _ in self.closed), self.open_clients, self.intake_single + self.intake_k
        )


FULL = Plan(
    closed=((1, 200), (10, 40), (50, 20)),
    open_clients=20,
    open_total=200,
    open_rate=10.0,
    intake_single=10,
    intake_k=20,
)
QUICK = Plan(
    closed=((1, 50), (10, 10), (50, 4)),
    open_clients=20,
    open_total=100,
    open_rate=10.0,
    intake_single=2,
    intake_k=20,
)


@dataclass
class Target:
    """A bot under test: its account, its process and what a right answer looks like."""

    name: str
    user_id: str
    proc: Proc
    is_help: Callable[[Message], bool]
    intake_needles: Sequence[str | None]
    startup: float = 0.0
    # PostgreSQL: the database's name and the server to ask for its backends' pids.
    pg: tuple[str, str] | None = None
    support: bool = False  # support-bot (any version): its intakes must end with a ticket
    origin: str = ""  # its process's `bot.__file__` (--baseline runs)


# -- the load -------------------------------------------------------------------------------


async def closed_loop(
    target: Target, parts: Sequence[Participant], messages: int, result: Result
) -> None:
    async def worker(part: Participant) -> None:
        for _ in range(messages):
            sent = time.perf_counter()
            try:
                await part.send(COMMAND)
                arrived, event = await part.next(timeout=ANSWER_TIMEOUT)
            except Exception as error:  # a refused send or no answer
                result.errors += 1
                result.notes.append(f"{type(error).__name__}: {error}"[:200])
                continue
            result.latencies.append(arrived - sent)
            if not target.is_help(event):
                result.errors += 1
                result.notes.append(f"unexpected answer: {event.body[:80]!r}")

    start = time.perf_counter()
    await asyncio.gather(*(worker(part) for part in parts))
    result.wall += time.perf_counter() - start


async def open_loop(
    target: Target, parts: Sequence[Participant], total: int, rate: float, result: Result
) -> None:
    sends: dict[Participant, deque[float]] = {part: deque() for part in parts}
    expected: Counter[Participant] = Counter(parts[i % len(parts)] for i in range(total))
    lateness: list[float] = []
    start = time.perf_counter() + 0.2
    deadline = start + total / rate + ANSWER_TIMEOUT
    last_arrival = start

    async def send_one(part: Participant, scheduled: float) -> None:
        sent = time.perf_counter()
        lateness.append(sent - scheduled)
        sends[part].append(sent)
        try:
            await part.send(COMMAND)
        except Exception as error:
            result.errors += 1
            result.notes.append(f"send failed: {error}"[:200])
            sends[part].remove(sent)
            expected[part] -= 1

    async def collect(part: Participant) -> None:
        nonlocal last_arrival
        got = 0
        while got < expected[part]:
            remaining = deadline - time.perf_counter()
            try:
                arrived, event = await part.next(timeout=max(remaining, 0.01))
            except TimeoutError:
                break
            got += 1
            if not sends[part]:  # an answer to nothing we sent
                result.errors += 1
                result.notes.append("answer without a pending message")
                continue
            result.latencies.append(arrived - sends[part].popleft())
            last_arrival = max(last_arrival, arrived)
            if not target.is_help(event):
                result.errors += 1
                result.notes.append(f"unexpected answer: {event.body[:80]!r}")
        if got < expected[part]:
            result.errors += expected[part] - got
            result.notes.append(f"{expected[part] - got} message(s) never answered")

    collectors = [asyncio.create_task(collect(part)) for part in parts]
    senders = []
    for index in range(total):
        scheduled = start + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        senders.append(asyncio.create_task(send_one(parts[index % len(parts)], scheduled)))
    await asyncio.gather(*senders)
    await asyncio.gather(*collectors)
    result.wall += last_arrival - start
    late = percentile(lateness, 99)
    if late > 0.05:
        result.notes.append(f"load generator behind schedule: p99 lateness {ms(late)} ms")


async def intakes(
    target: Target, parts: Sequence[Participant], result: Result, *, first: int
) -> None:
    """The clients' intakes, all at once (`first`: the index of the first client)."""

    async def one(part: Participant, index: int) -> None:
        email = f"client{index}.{secrets.token_hex(2)}@example.org"
        texts = (
            f"Mon questionnaire n'envoie plus les invitations par e-mail depuis lundi ({index}).",
            "1",
            INSTANCE,
            "1",
            email,
            "oui",
        )
        begin = time.perf_counter()
        for step, (text, needle) in enumerate(zip(texts, target.intake_needles, strict=True)):
            if step == 4 and target.support:
                needle = email
            sent = time.perf_counter()
            try:
                await part.send(text)
                # The first message of the bot, then (if that is not it) the one that asks the
                # next question: the client can only go on once that one is there.
                arrived, event = await part.next(timeout=ANSWER_TIMEOUT)
                result.steps_first.setdefault(step + 1, []).append(arrived - sent)
                if needle is not None and needle not in event.body:
                    arrived, event = await part.next(
                        lambda e, n=needle: n in e.body, timeout=ANSWER_TIMEOUT
                    )
            except Exception as error:
                result.errors += 1
                result.notes.append(f"intake step {step + 1}: {type(error).__name__}: {error}")
                return
            result.latencies.append(arrived - sent)
            result.steps.setdefault(step + 1, []).append(arrived - sent)
        if target.support and "ouvert" not in event.body and "open" not in event.body:
            result.errors += 1
            result.notes.append(f"intake did not end with an open ticket: {event.body[:80]!r}")
            return
        result.totals.append(arrived - begin)

    start = time.perf_counter()
    await asyncio.gather(*(one(part, first + index) for index, part in enumerate(parts)))
    result.wall += time.perf_counter() - start


# -- both bots, every phase ----------------------------------------------------------------


@dataclass
class Bench:
    """A bot under test with its clients (in direct chats with it)."""

    target: Target
    parts: list[Participant]


@dataclass(frozen=True)
class Phase:
    name: str
    # run(target, parts, result, round index): one round of the phase for one bot
    run: Callable[..., Awaitable[None]]
    clients: Callable[[list[Participant]], list[Participant]]
    rounds: int = 1
    commands: bool = True  # an extra message after a command phase is an error


def phases(plan: Plan) -> list[Phase]:
    # Every phase but the K=20 intakes is split in rounds, A B B A…: drift and other load on
    # the machine hit both bots alike.
    k1_rounds, other_rounds, open_rounds = plan.k1_rounds, 2, 2
    out = []
    for k, m in plan.closed:
        rounds = k1_rounds if k == 1 else other_rounds
        out.append(
            Phase(
                f"closed K={k}",
                lambda t, parts, r, _i, k=k, m=m, rounds=rounds: closed_loop(
                    t, parts[:k], m // rounds, r
                ),
                lambda parts, k=k: parts[:k],
                rounds,
            )
        )
    n = plan.open_clients
    out.append(
        Phase(
            f"open {plan.open_rate:g} msg/s",
            lambda t, parts, r, _i: open_loop(
                t, parts[:n], plan.open_total // open_rounds, plan.open_rate, r
            ),
            lambda parts: parts[:n],
            open_rounds,
        )
    )
    single, group = plan.intake_single, plan.intake_k
    out.append(
        Phase(
            "intake K=1",
            # One intake per round, each by a client of its own: one client at a time, and
            # the bot has finished with the previous one (its card to the staff room goes
            # after the answer) before the next starts.
            lambda t, parts, r, i: intakes(t, parts[i : i + 1], r, first=i),
            lambda parts: parts[:single],
            single,
            commands=False,
        )
    )
    out.append(
        Phase(
            f"intake K={group}",
            lambda t, parts, r, _i: intakes(t, parts[single : single + group], r, first=single),
            lambda parts: parts[single : single + group],
            commands=False,
        )
    )
    return out


async def settle(parts: Sequence[Participant], result: Result | None, count_extra: bool) -> None:
    """Let late messages arrive, then drop them (an extra answer to a command is an error)."""
    await asyncio.sleep(1.0)
    extra = sum(part.flush() for part in parts)
    if extra and result is not None and count_extra:
        result.errors += extra
        result.notes.append(f"{extra} unexpected extra message(s) after the phase")


async def run_round(
    phase: Phase, bench: Bench, everyone: list[Bench], hs: Proc, result: Result, index: int
) -> None:
    """One round of `phase` for one bot; CPU and memory are added to `result`."""
    others = [b.target.proc for b in everyone if b is not bench]
    database = await pg_backends(*bench.target.pg) if bench.target.pg else []
    busy0 = system_busy()
    others0 = sum(proc.cpu() for proc in others)
    db0 = sum(proc.cpu() for proc in database)
    gen0 = time.process_time()
    began = datetime.now().astimezone()
    async with Watch(bench.target.proc) as bot_watch, Watch(hs, every=1.0) as hs_watch:
        await phase.run(bench.target, bench.parts, result, index)
    result.windows.append((began, datetime.now().astimezone()))
    gen = time.process_time() - gen0
    db = sum(proc.cpu() for proc in database) - db0
    ours = bot_watch.cpu + db + hs_watch.cpu + gen + sum(p.cpu() for p in others) - others0
    result.bot_rss = max(result.bot_rss, bot_watch.rss_max)
    result.bot_cpu += bot_watch.cpu + db
    result.hs_cpu += hs_watch.cpu
    result.gen_cpu += gen
    result.other_cpu += max(0.0, system_busy() - busy0 - ours)
    await settle(phase.clients(bench.parts), result, phase.commands)


async def measure(
    benches: list[Bench], synapse: Synapse, plan: Plan, log: Callable, only: Sequence[str] = ()
) -> list[Result]:
    hs = Proc(synapse.process.pid)
    # Warm-up, not measured: every client of each bot once (accounts, rows, connections).
    for bench in benches:
        warm = Result("warm-up", bench.target.name)
        await closed_loop(bench.target, bench.parts, 1, warm)
        await settle(bench.parts, warm, True)
        if warm.errors:
            log(f"  {bench.target.name} warm-up errors: {warm.errors} {warm.notes[:3]}")
    results: list[Result] = []
    width = max(11, *(len(bench.target.name) for bench in benches))
    chosen = [p for p in phases(plan) if not only or any(p.name.startswith(o) for o in only)]
    for number, phase in enumerate(chosen):
        by_bot = {bench.target.name: Result(phase.name, bench.target.name) for bench in benches}
        for index in range(phase.rounds):
            order = benches if (number + index) % 2 == 0 else benches[::-1]
            for bench in order:
                await run_round(phase, bench, benches, hs, by_bot[bench.target.name], index)
        for bench in benches:
            result = by_bot[bench.target.name]
            results.append(result)
            log(
                f"  {result.bot:{width}} {phase.name:16} n={result.answered:4} "
                f"p50={ms(result.p(50))} ms p99={ms(result.p(99))} ms {result.rate:.1f}/s "
                f"errors={result.errors} other CPU={result.other_cpu:.1f} s"
            )
    return results


async def wait_for_line(path: Path, line: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{path.name}: exited at start:\n{path.read_text()[-3000:]}")
        if line in path.read_text():
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{path.name}: not ready within {timeout} s")


@contextlib.asynccontextmanager
async def echo_bot(synapse: Synapse, workdir: Path, clients: int, log: Callable):
    workdir.mkdir(parents=True)
    password = "echo-" + secrets.token_hex(8)
    user_id, _ = await synapse.register(f"echobot{secrets.token_hex(3)}", password)
    log_path = workdir / "echo.log"
    started = time.perf_counter()
    with log_path.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, str(BENCH / "echo_bot.py"), synapse.base_url, user_id, password],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
    parts: list[Participant] = []
    try:
        await wait_for_line(log_path, "echo-bot ready", process, 60)
        target = Target(
            ECHO,
            user_id,
            Proc(process.pid),
            is_help=lambda e: e.source.get("content", {}).get("msgtype") == "m.notice",
            intake_needles=(None,) * 6,
            startup=time.perf_counter() - started,
        )
        log(f"echo bot ready in {target.startup:.2f} s; {clients} clients joining…")
        parts = await make_participants(synapse, user_id, workdir, clients, prefix="ec")
        yield Bench(target, parts)
    finally:
        await close_all(parts)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def drop_unknown_tables(config_path: Path, source: Path) -> None:
    """The tests write today's config; an older revision refuses the tables it does not know
    (e.g. `[metrics]`): leave out those its `bot.toml.example` (which has every table) lacks."""
    example = (source / "bot.toml.example").read_text(encoding="utf-8")
    known = {m.group(1).split(".")[0] for m in re.finditer(r"^\[\[?([\w.]+)\]", example, re.M)}
    kept: list[str] = []
    skipping = False
    for line in config_path.read_text(encoding="utf-8").splitlines():
        header = re.fullmatch(r"\[\[?([A-Za-z0-9_.]+)\]\]?", line.strip())
        if header:
            top = header.group(1).split(".")[0]
            skipping = top not in known
        if not skipping:
            kept.append(line)
    config_path.write_text("\n".join(kept) + "\n", encoding="utf-8")


# --baseline: every support-bot process is started through this instead of `-m bot`. It does
# what `python -m bot` does (the current directory first on sys.path, then bot/__main__.py run as
# __main__), after printing where `bot` and `handlers` were imported from, which the script
# then checks against the source tree that bot must run.
ORIGIN_MARK = "bench: imported from"
LAUNCHER = (
    "import importlib.util, os, runpy, sys\n"
    "sys.path[0] = os.getcwd()\n"
    "import bot\n"  # as `-m bot` does first; `handlers` only found, imported in its turn
    f"print({ORIGIN_MARK!r}, bot.__file__, importlib.util.find_spec('handlers').origin, "
    "sep='\\t', flush=True)\n"
    "runpy.run_module('bot', run_name='__main__', alter_sys=True)\n"
)


@dataclass
class SourceBot(RunningBot):
    """The e2e fixture's bot, run from the source tree `source` (this checkout, or a worktree
    of another revision) with this venv's Python."""

    source: Path = REPO

    def _spawn(self, log) -> subprocess.Popen:
        # `source` first on PYTHONPATH: before site-packages and the venv's editable install
        # (its finder comes after every sys.path entry). The cwd (sys.path[0]) is the bot's
        # work dir, where there is no `bot` package.
        path = os.pathsep.join(filter(None, (str(self.source), os.environ.get("PYTHONPATH"))))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
        return subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, "--config", str(self.config_path), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=env,
            start_new_session=True,
        )

    def origin(self) -> str:
        """The running process's `bot.__file__`; raises unless `bot` and `handlers` come
        from `source`."""
        for line in self.log_path.read_text().splitlines():
            if line.startswith(ORIGIN_MARK):
                _, bot_file, handlers_file = line.split("\t")
                break
        else:
            raise RuntimeError(f"no {ORIGIN_MARK!r} line in {self.log_path}")
        want = self.source.resolve()
        for found, package in ((bot_file, "bot"), (handlers_file, "handlers")):
            if Path(found).resolve().parent != want / package:
                raise RuntimeError(f"{package} imported from {found}, not from {want}")
        return bot_file


def git_run(*argv: str) -> subprocess.CompletedProcess[str]:
    # --no-optional-locks: `status` must not refresh the index of a checkout others work in.
    return subprocess.run(
        ["git", "--no-optional-locks", "-C", str(REPO), *argv],
        capture_output=True,
        text=True,
        check=False,
    )


def git(*argv: str) -> str:
    done = git_run(*argv)
    if done.returncode:
        raise RuntimeError(f"git {' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout.strip()


def describe_checkout() -> str:
    """The code the working tree's bot runs: HEAD, and whether it has uncommitted changes."""
    head = git("log", "-1", "--format=%h %cs %s", "HEAD")
    changed = git("status", "--porcelain", "--", "bot", "handlers", "locales").splitlines()
    where = "bot/, handlers/, locales/"
    if changed:
        return f"HEAD {head} + uncommitted changes to {len(changed)} file(s) in {where}"
    return f"HEAD {head}, no uncommitted changes in {where}"


@contextlib.contextmanager
def git_worktree(rev: str, log: Callable) -> Iterator[tuple[Path, str, str]]:
    """A detached `git worktree` of `rev` in a new temporary directory, removed on the way
    out (also on errors and Ctrl-C); yields (path, short commit, one-line description)."""
    commit = git("rev-parse", "--verify", "--end-of-options", f"{rev}^{{commit}}")
    short = git("rev-parse", "--short", commit)
    described = git("log", "-1", "--format=%h %cs %s", commit)
    path = Path(tempfile.mkdtemp(prefix="support-bot-baseline-")).resolve()
    try:
        log(f"baseline {rev} = {described}: git worktree in {path}")
        git("worktree", "add", "--detach", str(path), commit)
        yield path, short, described
    finally:
        if git_run(
            "worktree", "remove", "--force", str(path)
        ).returncode:  # never registered, or half made: remove what is there
            shutil.rmtree(path, ignore_errors=True)
            # Only this worktree's entry (`git worktree prune` would touch every stale one).
            common = Path(git("rev-parse", "--path-format=absolute", "--git-common-dir"))
            for entry in (common / "worktrees").glob("*/gitdir"):
                if Path(entry.read_text().strip()).parent == path:
                    shutil.rmtree(entry.parent, ignore_errors=True)
        log(f"git worktree {path} removed")


@contextlib.asynccontextmanager
async def support_bot(
    synapse: Synapse,
    workdir: Path,
    clients: int,
    db: str,
    pg_dsn: str,
    log: Callable,
    *,
    name: str = SUPPORT,
    source: Path | None = None,
):
    """support-bot on `synapse`. `source`: run it from that source tree (this checkout or a
    worktree) through LAUNCHER and check where it imported `bot` from; None: as the tests do."""
    workdir.mkdir(parents=True)
    bot: RunningBot = await make_running_bot(synapse, workdir, extra_toml=BENCH_EXTRA_TOML)
    if source is not None:
        if source != REPO:
            drop_unknown_tables(bot.config_path, source)
        fields = {f.name: getattr(bot, f.name) for f in dataclasses.fields(RunningBot)}
        bot = SourceBot(**fields, source=source)
    pg_name = None
    parts: list[Participant] = []
    try:
        if db == "postgres":
            pg_name, url = await create_pg_database(pg_dsn)
            use_database(bot.config_path, url)
        started = time.perf_counter()
        await bot.start()
        target = Target(
            name,
            bot.bot_user_id,
            Proc(bot.process.pid),
            is_help=lambda e: any(marker in e.body for marker in HELP_MARKERS),
            intake_needles=INTAKE_NEEDLES,
            startup=time.perf_counter() - started,
            pg=(pg_name, pg_dsn) if pg_name else None,
            support=True,
        )
        if isinstance(bot, SourceBot):
            target.origin = bot.origin()
            log(f"{name} (pid {bot.process.pid}): bot.__file__ = {target.origin}")
        log(f"{name} ready in {target.startup:.2f} s ({db}); {clients} clients joining…")
        parts = await make_participants(synapse, bot.bot_user_id, workdir, clients, prefix="sb")
        yield Bench(target, parts)
    finally:
        await close_all(parts)
        await bot.stop()
        await bot.staff.close()
        if pg_name is not None:
            await drop_pg_database(pg_name, pg_dsn)


# -- the report -----------------------------------------------------------------------------


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def times(value: float) -> str:
    return "n/a" if math.isnan(value) else f"×{value:.2f}"


def per_answer_ms(r: Result) -> float:
    """The bot's CPU per answer, in ms (with --db postgres, its PostgreSQL backends' too)."""
    return 1000 * ratio(r.bot_cpu, r.answered)


def targets(
    by: dict[tuple[str, str], Result], plan: Plan, bot: str, budget: float
) -> list[tuple[str, bool, str]]:
    """The targets, checked for one support-bot against the echo bot of the same run."""
    k1 = f"closed K={plan.closed[0][0]}"
    open_name = f"open {plan.open_rate:g} msg/s"

    def pair(name: str) -> tuple[Result, Result] | None:
        e, s = by.get((name, ECHO)), by.get((name, bot))
        return (e, s) if e is not None and s is not None else None

    checks: list[tuple[str, bool, str]] = []
    for name in (k1, open_name):
        both = pair(name)
        if both is None:
            continue
        e, s = both
        r50, r99 = ratio(s.p(50), e.p(50)), ratio(s.p(99), e.p(99))
        checks.append(
            (
                f"{name}: p50 ≤ 1.15 × echo",
                r50 <= 1.15,
                f"{ms(s.p(50))} vs {ms(e.p(50))} ms (×{r50:.2f})",
            )
        )
        checks.append(
            (
                f"{name}: p99 ≤ 1.3 × echo",
                r99 <= 1.3,
                f"{ms(s.p(99))} vs {ms(e.p(99))} ms (×{r99:.2f})",
            )
        )
    k_max = max(k for k, _ in plan.closed)
    both = pair(f"closed K={k_max}")
    if both is not None:
        e, s = both
        r = ratio(s.rate, e.rate)
        checks.append(
            (
                f"closed K={k_max}: answers/s ≥ 0.9 × echo",
                r >= 0.9,
                f"{s.rate:.1f} vs {e.rate:.1f}/s (×{r:.2f})",
            )
        )
    errors = sum(r.errors for (_, name), r in by.items() if name == bot)
    checks.append((f"{SUPPORT}: 0 errors", errors == 0, f"{errors} error(s)"))
    single = by.get(("intake K=1", bot))
    if single is not None and not math.isnan(budget):
        # The median intake: one slow homeserver moment should not decide it (the slowest
        # is shown beside it).
        median = percentile(single.totals, 50)
        checks.append(
            (
                "full intake at K=1 ≤ 6.5 × echo round trip",
                not math.isnan(median) and median <= budget and not single.errors,
                f"median of {len(single.totals)}: {ms(median)} ms vs {ms(budget)} ms "
                f"(slowest {ms(max(single.totals, default=math.nan))} ms)",
            )
        )
    return checks


def before_after(
    by: dict[tuple[str, str], Result], names: Sequence[str], before: str, after: str
) -> list[str]:
    """--baseline: the working tree's support-bot against the baseline's, phase by phase."""
    rows = []
    for name in names:
        b, a = by.get((name, before)), by.get((name, after))
        if b is None or a is None:
            continue
        rows.append(
            (
                name,
                f"{b.answered} / {a.answered}",
                ms(b.p(50)),
                ms(a.p(50)),
                times(ratio(a.p(50), b.p(50))),
                ms(b.p(99)),
                ms(a.p(99)),
                times(ratio(a.p(99), b.p(99))),
                "{:.2f}–{:.2f}".format(*ratio_interval(b.latencies, a.latencies, 99)),
                f"{per_answer_ms(b):.1f}",
                f"{per_answer_ms(a):.1f}",
                times(ratio(per_answer_ms(a), per_answer_ms(b))),
                times(ratio(a.rate, b.rate)),
                f"{b.errors} / {a.errors}",
                f"{b.other_cpu:.1f} / {a.other_cpu:.1f}",
            )
        )
    return [
        f"## Before / after: {before} → {after}",
        "",
        f"Before = {before} (the baseline revision), after = {after} (this working tree); "
        "× = after / before (for latency and CPU below 1 is better, for answers/s above 1). "
        "CPU per answer = the bot's CPU seconds during the phase divided by "
        "its answers. Both ran in the same rounds, one after the other, with the same load. "
        "The p99 × interval is a bootstrap 95 % interval of the ratio: when it includes 1, the "
        "difference is within what chance alone gives with this many answers.",
        "",
        markdown_table(
            (
                "phase",
                "answers before / after",
                "p50 before",
                "p50 after",
                "p50 ×",
                "p99 before",
                "p99 after",
                "p99 ×",
                "p99 × 95 % interval",
                "CPU ms/answer before",
                "CPU ms/answer after",
                "CPU ×",
                "answers/s ×",
                "errors before / after",
                "other CPU s before / after",
            ),
            rows,
        ),
        "",
    ]


def report(
    results: list[Result],
    info: dict[str, dict[str, Any]],
    plan: Plan,
    args: argparse.Namespace,
    wall: float,
    load: tuple[float, float],
    parts: dict[tuple[str, str], Breakdown],
) -> str:
    by = {(r.phase, r.bot): r for r in results}
    names = list(dict.fromkeys(r.phase for r in results))
    # echo, support-bot (this working tree), then with --baseline support-bot@<rev>.
    bots = list(info)
    before = bots[2] if len(bots) > 2 else None
    rows = []
    for name in names:
        for bot in bots:
            r = by.get((name, bot))
            if r is None:
                continue
            rows.append(
                (
                    name,
                    bot,
                    r.answered,
                    ms(r.p(50)),
                    ms(r.p(90)),
                    ms(r.p(99)),
                    ms(max(r.latencies, default=math.nan)),
                    f"{r.rate:.1f}",
                    r.errors,
                    f"{r.bot_rss:.0f}",
                    f"{r.bot_cpu:.2f}",
                    f"{r.hs_cpu:.2f}",
                    f"{r.gen_cpu:.2f}",
                    f"{r.other_cpu:.2f}",
                )
            )
    k1 = f"closed K={plan.closed[0][0]}"
    out = [
        "# support-bot latency benchmark",
        "",
        f"- machine: {machine()}; load average before the run {load[0]:.2f}, after {load[1]:.2f}",
        f"- Synapse {importlib.metadata.version('matrix-synapse')} (the test fixture: SQLite, "
        f"rate limits off), matrix-nio {importlib.metadata.version('matrix-nio')}; "
        f"support-bot database: {args.db}"
        + (
            " (support-bot's CPU includes its PostgreSQL server processes)"
            if args.db == "postgres"
            else ""
        ),
        f"- plan: {'quick' if args.quick else 'full'}: closed loop "
        + ", ".join(f"K={k}×M={m}" for k, m in plan.closed)
        + f"; open loop {plan.open_clients} clients, {plan.open_total} messages at "
        f"{plan.open_rate:g}/s; intakes K=1 ×{plan.intake_single} one after the other, "
        f"K={plan.intake_k} at once. {k1} runs in 4 rounds, the other closed loops and the "
        "open loop in 2, the K=1 intakes in one round per intake, "
        + " / ".join(bots + bots[::-1])
        + f"…; the K={plan.intake_k} intakes alternate which bot goes first.",
    ]
    if before is not None:
        described, checkout = args.baseline_info
        out.append(
            f"- before / after: {before} is `{args.baseline}` ({described}), run from a git "
            f"worktree of it with this venv's Python (bot imported from "
            f"{info[before]['origin']}); {SUPPORT} is this checkout's working tree, {checkout} "
            f"(bot imported from {info[SUPPORT]['origin']})"
        )
    out += [
        "- start to ready: "
        + ", ".join(f"{bot} {info[bot]['startup']:.2f} s" for bot in bots)
        + "; peak RSS over the run (VmHWM): "
        + ", ".join(f"{bot} {info[bot]['peak']:.0f} MB" for bot in bots),
        f"- total run time {wall:.0f} s; {args.priority}",
        "",
        "Latency in ms from just before the client's send to the answer in the client's own "
        "sync; intake rows count each of the 6 steps. RSS = largest sampled RSS of the bot "
        "during the phase. CPU = CPU seconds used during the phase by the bot, Synapse (HS), "
        "the load generator (gen) and by every other process of the machine (other: load "
        "that is not part of the benchmark; when it is large, the phase measured a shared "
        "machine).",
        "",
        markdown_table(
            (
                "phase",
                "bot",
                "answers",
                "p50",
                "p90",
                "p99",
                "max",
                "answers/s",
                "errors",
                "bot RSS MB",
                "bot CPU s",
                "HS CPU s",
                "gen CPU s",
                "other CPU s",
            ),
            rows,
        ),
        "",
    ]
    if before is not None:
        out += before_after(by, names, before, SUPPORT)
    out += ["## support-bot / echo", ""]
    for name in names:
        for bot in bots[1:]:
            e, s = by.get((name, ECHO)), by.get((name, bot))
            if e is None or s is None:
                continue
            label = name if before is None else f"{name}, {bot}"
            out.append(
                f"- {label}: p50 ×{ratio(s.p(50), e.p(50)):.2f}, "
                f"p99 ×{ratio(s.p(99), e.p(99)):.2f}, "
                f"answers/s ×{ratio(s.rate, e.rate):.2f}; CPU per answer: bot "
                f"{per_answer_ms(s):.1f} ms vs {per_answer_ms(e):.1f} ms, Synapse "
                f"{1000 * ratio(s.hs_cpu, s.answered):.1f} ms vs "
                f"{1000 * ratio(e.hs_cpu, e.answered):.1f} ms"
            )

    out += [
        "",
        "## Where the time goes (p50 in ms, from Synapse's access log)",
        "",
        "Each answer split in four (bench/_timeline.py): the client's send as long as Synapse "
        "took; from there to the start of the bot's send (Synapse waking the bot's sync, the "
        "bot reading and handling the message); the bot's send; from there to the client's "
        "sync bringing the answer. The rest of the latency is the client's own time.",
        "",
    ]
    split_rows = []
    for name in names:
        for bot in bots:
            found, r = parts.get((name, bot)), by.get((name, bot))
            if found is None or r is None or not found.matched:
                continue
            spans = [found.p(part, 50) for part in PARTS]
            split_rows.append(
                (name, bot, found.matched, *map(ms, spans), ms(sum(spans)), ms(r.p(50)))
            )
    out.append(
        markdown_table(
            ("phase", "bot", "answers", *PARTS, "sum", "client-measured p50"), split_rows
        )
    )
    # The tail, part by part: which part makes a p99 (each part's own p99, so they do not add
    # up). "to the bot's send" is the one that holds the bot's own work.
    tail_rows = []
    for name in names:
        for bot in bots:
            found, r = parts.get((name, bot)), by.get((name, bot))
            if found is None or r is None or not found.matched:
                continue
            tail_rows.append(
                (name, bot, found.matched, *(ms(found.p(part, 99)) for part in PARTS), ms(r.p(99)))
            )
    out += [
        "",
        "Each part's own p99 (ms; they do not add up to the answers' p99):",
        "",
        markdown_table(("phase", "bot", "answers", *PARTS, "client-measured p99"), tail_rows),
    ]

    echo_k1 = by.get((k1, ECHO))
    echo_rtt = echo_k1.p(50) if echo_k1 is not None else math.nan
    budget = 6.5 * echo_rtt
    out += ["", "## Full intakes (6 steps, to a confirmed ticket)", ""]
    for name in ("intake K=1", f"intake K={plan.intake_k}"):
        for bot in bots:
            r = by.get((name, bot))
            if r is None:
                continue
            totals = ", ".join(f"{t * 1000:.0f}" for t in r.totals)
            if len(r.totals) > 6:
                totals = (
                    f"p50 {ms(percentile(r.totals, 50))}, p90 {ms(percentile(r.totals, 90))}, "
                    f"max {ms(max(r.totals))}"
                )
            steps = " / ".join(ms(percentile(r.steps.get(i, []), 50)) for i in range(1, 7))
            first = " / ".join(ms(percentile(r.steps_first.get(i, []), 50)) for i in range(1, 7))
            out.append(
                f"- {name}, {bot}: per-intake total ms: {totals or 'none completed'}; "
                f"p50 per step 1-6 (the next question): {steps}; (the bot's first message): "
                f"{first}"
            )
    out.append(
        f"- budget 6.5 × one echo round trip at K=1 (p50 {ms(echo_rtt)} ms) = {ms(budget)} ms"
    )
    for bot in bots:
        r = by.get(("intake K=1", bot))
        if r is not None and r.totals and not math.isnan(echo_rtt):
            median = percentile(r.totals, 50)
            out.append(
                f"- {bot}'s median intake at K=1 = {median / echo_rtt:.1f} echo round trips "
                "(the intake's messages are longer than a command's)"
            )

    checks = targets(by, plan, SUPPORT, budget)
    out += ["", "## Targets", ""]
    if before is None:
        table = markdown_table(
            ("target", "result", "measured"), [(n, verdict(ok), v) for n, ok, v in checks]
        )
    else:  # the same targets for the baseline, beside
        old = {n: (ok, v) for n, ok, v in targets(by, plan, before, budget)}
        table = markdown_table(
            ("target", "result", "measured", f"{before}: result", f"{before}: measured"),
            [
                (n, verdict(ok), v, *((verdict(old[n][0]), old[n][1]) if n in old else ("", "")))
                for n, ok, v in checks
            ],
        )
    out.append(table)
    notes = [
        f"- {r.bot}, {r.phase}: " + "; ".join(sorted(set(r.notes))[:5]) for r in results if r.notes
    ]
    if notes:
        out += ["", "## Notes", "", *notes]
    return "\n".join(out) + "\n"


# -- main -----------------------------------------------------------------------------------


async def amain(args: argparse.Namespace) -> int:
    cancel_on_signals()
    plan = QUICK if args.quick else FULL
    if args.k1_messages:
        closed = ((1, args.k1_messages), *plan.closed[1:])
        plan = dataclasses.replace(plan, closed=closed)
    if args.k1_rounds:
        plan = dataclasses.replace(plan, k1_rounds=args.k1_rounds)
    if args.intakes:
        plan = dataclasses.replace(plan, intake_single=args.intakes)
    workdir = Path(tempfile.mkdtemp(prefix="support-bot-bench-"))
    began = time.perf_counter()
    load_before = os.getloadavg()[0]

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - began:6.1f} s] {text}", file=sys.stderr, flush=True)

    with contextlib.ExitStack() as worktree:
        baseline = None
        if args.baseline:
            # (path, short commit, description)
            baseline = worktree.enter_context(git_worktree(args.baseline, log))
            args.baseline_info = (baseline[2], describe_checkout())
        log(f"work dir {workdir}; starting Synapse…")
        synapse = await Synapse.astart(workdir / "synapse", access_log=True)
        try:
            log(f"Synapse at {synapse.base_url}")
            async with contextlib.AsyncExitStack() as stack:

                async def start_support(name: str, where: str, source: Path | None) -> Bench:
                    return await stack.enter_async_context(
                        support_bot(
                            synapse,
                            workdir / where,
                            plan.clients,
                            args.db,
                            args.pg_dsn,
                            log,
                            name=name,
                            source=source,
                        )
                    )

                benches = [
                    await stack.enter_async_context(
                        echo_bot(synapse, workdir / "echo", plan.clients, log)
                    ),
                    # --baseline: both support-bots started the same way (LAUNCHER).
                    await start_support(SUPPORT, "support", REPO if baseline else None),
                ]
                if baseline is not None:
                    benches.append(
                        await start_support(f"{SUPPORT}@{baseline[1]}", "baseline", baseline[0])
                    )
                results = await measure(benches, synapse, plan, log, args.only)
                users = {b.target.name: b.target.user_id for b in benches}
                info = {
                    b.target.name: {
                        "startup": b.target.startup,
                        "peak": b.target.proc.peak_mb(),
                        "origin": b.target.origin,
                    }
                    for b in benches
                }
        finally:
            await synapse.astop()
    requests = read_access_log(synapse.log_path)
    parts = {}
    for result in results:
        parts[(result.phase, result.bot)] = found = Breakdown()
        for start, end in result.windows:
            breakdown(requests, users[result.bot], start, end, into=found)
    text = report(
        results,
        info,
        plan,
        args,
        time.perf_counter() - began,
        (load_before, os.getloadavg()[0]),
        parts,
    )
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
        log(f"written to {args.markdown}")
    if args.keep:
        log(f"kept {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~2-minute run (fewer messages)")
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--pg-dsn",
        default=PG_ADMIN_DSN,
        help=f"PostgreSQL server for --db postgres (a fresh database is created; default "
        f"{PG_ADMIN_DSN})",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PHASE",
        help="run only the phases whose name starts with this (repeatable), e.g. --only "
        "'closed K=1' --only 'intake K=1'; the report then leaves out the targets it cannot "
        "check",
    )
    parser.add_argument(
        "--intakes",
        type=int,
        default=0,
        metavar="N",
        help="full intakes at K=1, one per round (default 10, --quick 2)",
    )
    parser.add_argument(
        "--k1-messages",
        type=int,
        default=0,
        metavar="M",
        help="messages in the closed K=1 phase (default 200, --quick 50): a p99 needs many",
    )
    parser.add_argument(
        "--k1-rounds",
        type=int,
        default=0,
        metavar="N",
        help="rounds the closed K=1 phase is split in (default 4): more rounds spread the "
        "machine's other load more evenly over the bots",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also run support-bot as of this git revision (e.g. the tag bench-before), from a "
        "temporary git worktree with this venv's Python, in the same rounds with the same load, "
        "and compare it with the working tree's (before / after)",
    )
    parser.add_argument("--markdown", metavar="FILE", help="also write the report there")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, databases)")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        metavar="N",
        help="run the benchmark (Synapse, bots, clients) at this nice increment, e.g. -10 on a "
        "machine busy with other work (negative values need root)",
    )
    args = parser.parse_args()
    if args.baseline:
        try:  # a wrong REV fails here, before anything is started
            git("rev-parse", "--verify", "--end-of-options", f"{args.baseline}^{{commit}}")
        except RuntimeError as error:
            parser.error(f"--baseline {args.baseline}: not a commit ({error})")
    args.priority = raise_priority(args.nice)
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
