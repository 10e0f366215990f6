"""`support-bot demo` as a newcomer runs it: a real subprocess, its own Synapse, run twice."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from nio import RoomMessageNotice

from bot.demo import READY_BANNER, synapse_pids
from bot.testing.matrix import login_client, send_text, wait_for_message
from bot.testing.net import free_port
from bot.testing.synapse import synapse_available

pytestmark = pytest.mark.skipif(
    not synapse_available(), reason="matrix-synapse not installed (pip install -e '.[test]')"
)

READY_TIMEOUT = 90.0
EXIT_TIMEOUT = 20.0
ANSWER_TIMEOUT = 30.0


@dataclass
class DemoRun:
    process: asyncio.subprocess.Process
    lines: list[str]
    reader: asyncio.Task[None]
    ready_seconds: float = 0.0

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def find(self, pattern: str) -> tuple[str, ...]:
        match = re.search(pattern, self.output, re.MULTILINE)
        assert match is not None, f"{pattern!r} not in the demo's output:\n{self.output}"
        return match.groups()


async def start_demo(data_dir: Path, port: int, cwd: Path) -> DemoRun:
    """Start the demo and return once it printed its ready banner."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "demo",
        "--no-chat",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if not k.startswith("SUPPORT_BOT_")},
    )
    lines: list[str] = []
    ready = asyncio.Event()

    async def read() -> None:
        # Read to the end, even after the banner: a full pipe would block the demo.
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            lines.append(line)
            if READY_BANNER in line:
                ready.set()

    started = time.monotonic()
    run = DemoRun(process, lines, asyncio.create_task(read()))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait(
        {waiter, run.reader}, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
    )
    waiter.cancel()
    if not ready.is_set():
        await stop_demo(run, force=True)
        pytest.fail(f"no ready banner within {READY_TIMEOUT:.0f} s:\n{run.output}")
    run.ready_seconds = time.monotonic() - started
    return run


async def stop_demo(run: DemoRun, *, force: bool = False) -> int | None:
    """SIGINT, as Ctrl-C does; the exit code, or None if it had to be killed."""
    code: int | None = None
    if run.process.returncode is None:
        run.process.send_signal(signal.SIGKILL if force else signal.SIGINT)
        with contextlib.suppress(TimeoutError):
            code = await asyncio.wait_for(run.process.wait(), EXIT_TIMEOUT)
        if code is None:
            run.process.kill()
            await run.process.wait()
    await run.reader
    return code


async def check_logins_and_help(run: DemoRun, store: Path) -> None:
    """The printed logins work, and the bot answers !help in the client's direct chat."""
    (homeserver,) = run.find(r"^\s+homeserver\s+(http://\S+)")
    bot_id, _ = run.find(r"^\s+bot\s+(@\S+)\s+password: (\S+)$")
    client_id, client_password = run.find(r"^\s+client\s+(@\S+)\s+password: (\S+)$")
    staff_id, staff_password = run.find(r"^\s+staff\s+(@\S+)\s+password: (\S+)$")
    (staff_room,) = run.find(r"staff room: (\S+)$")
    (dm,) = run.find(r"client DM: (\S+)$")

    staff = await login_client(
        homeserver, staff_id, staff_password, store_path=store / "staff", encryption=False
    )
    try:
        assert staff_room in staff.rooms
        assert bot_id in staff.rooms[staff_room].users
    finally:
        await staff.close()

    client = await login_client(
        homeserver, client_id, client_password, store_path=store / "client", encryption=False
    )
    try:
        assert bot_id in client.rooms[dm].users
        await send_text(client, dm, "!help")
        answer = await wait_for_message(
            client,
            dm,
            lambda m: m.sender == bot_id and isinstance(m, RoomMessageNotice),
            timeout=ANSWER_TIMEOUT,
        )
        assert "!help" in answer.body
    finally:
        await client.close()


async def test_demo_starts_answers_stops_and_starts_again(tmp_path: Path) -> None:
    if importlib.util.find_spec("bot.app") is None:
        pytest.skip("bot.app not written yet")
    data_dir = tmp_path / "demo-data"
    port = free_port()
    rooms: list[tuple[str, ...]] = []
    timings: list[str] = []
    for attempt in (1, 2):
        run = await start_demo(data_dir, port, cwd=tmp_path)
        try:
            rooms.append(run.find(r"staff room: (\S+)$") + run.find(r"client DM: (\S+)$"))
            (detail,) = run.find(READY_BANNER + r" \((.*)\)$")
            timings.append(f"{run.ready_seconds:.1f} s from launch ({detail})")
            await check_logins_and_help(run, tmp_path / f"nio-{attempt}")
        finally:
            code = await stop_demo(run)
            leftovers = synapse_pids(data_dir / "synapse")
            for pid in leftovers:  # never leave a homeserver behind, even on failure
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        assert code == 0, f"run {attempt} exited with {code}:\n{run.output}"
        assert leftovers == [], f"run {attempt} left Synapse running: {leftovers}"
        assert "demo stopped" in run.output

    assert rooms[1] == rooms[0], "the second run must reuse the rooms of the first"
    print(f"\ndemo, first run: {timings[0]}\ndemo, second run: {timings[1]}")
