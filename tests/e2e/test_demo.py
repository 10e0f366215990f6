"""`support-bot demo` as a newcomer runs it: a real subprocess, its own Synapse, run twice."""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import importlib.util
import os
import re
import secrets
import signal
import stat
import sys
import time
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path

import pytest
from nio import RoomMessageNotice

from bot.demo import IMAP_ENV, READY_BANNER, SMTP_ENV, synapse_pids
from bot.testing.matrix import login_client, send_text, wait_for_message
from bot.testing.net import free_port
from bot.testing.synapse import synapse_available
from tests.imap import PASSWORD as IMAP_PASSWORD
from tests.imap import USER as IMAP_USER

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


async def start_demo(
    data_dir: Path,
    port: int,
    cwd: Path,
    *,
    chat: bool = False,
    args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> DemoRun:
    """Start the demo and return once it printed its ready banner. With `chat`, its standard
    input is a pipe (`run.process.stdin`) for the terminal chat. `args` are more options,
    `env` more variables (the shell's SUPPORT_BOT_* are not passed on)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "demo",
        "--chat" if chat else "--no-chat",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        *args,
        stdin=asyncio.subprocess.PIPE if chat else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if not k.startswith("SUPPORT_BOT_")}
        | (env or {}),
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

    # The direct chat is encrypted, as Element makes it: the client needs its own keys.
    client = await login_client(
        homeserver, client_id, client_password, store_path=store / "client", encryption=True
    )
    try:
        assert bot_id in client.rooms[dm].users
        assert client.rooms[dm].encrypted
        await send_text(client, dm, "!help")
        answer = await wait_for_message(
            client,
            dm,
            lambda m: m.sender == bot_id and isinstance(m, RoomMessageNotice),
            timeout=ANSWER_TIMEOUT,
        )
        assert "!help" in answer.body
        assert answer.decrypted  # the bot answered encrypted, and the client read it
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
            # No mailbox given: one line says how to give one.
            assert "E-mail channel: off. To try it" in run.output
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


def world_bot(run: DemoRun) -> str:
    bot_id, _ = run.find(r"^\s+bot\s+(@\S+)\s+password: (\S+)$")
    return bot_id


async def test_the_terminal_chat_talks_to_the_bot_in_the_encrypted_direct_chat(
    tmp_path: Path,
) -> None:
    """`support-bot demo --chat`: lines typed are sent as the client, encrypted, and the bot's
    answers are decrypted and printed; `/quit` stops the demo."""
    if importlib.util.find_spec("bot.app") is None:
        pytest.skip("bot.app not written yet")
    data_dir = tmp_path / "demo-data"
    run = await start_demo(data_dir, free_port(), cwd=tmp_path, chat=True)
    stdin = run.process.stdin
    assert stdin is not None
    try:
        (homeserver,) = run.find(r"^\s+homeserver\s+(http://\S+)")
        client_id, client_password = run.find(r"^\s+client\s+(@\S+)\s+password: (\S+)$")
        (dm,) = run.find(r"client DM: (\S+)$")
        stdin.write(b"!aide\n")
        await stdin.drain()
        deadline = time.monotonic() + ANSWER_TIMEOUT
        # The help, printed as the client's terminal decrypted it (in French, the service's
        # language): the bot's name, then its text, which lists !aide.
        while not re.search(r"^support-bot: (.|\n)*!aide", run.output, re.MULTILINE):
            assert time.monotonic() < deadline, f"no answer printed:\n{run.output}"
            await asyncio.sleep(0.2)

        # What went over the wire: the typed line and the answer, both encrypted.
        reader = await login_client(
            homeserver,
            client_id,
            client_password,
            store_path=tmp_path / "reader",
            encryption=False,  # a device without keys sees what the homeserver holds
        )
        try:
            page = await reader.room_messages(dm, start=reader.next_batch, limit=20)
            messages = [
                e.source
                for e in page.chunk
                if e.source["type"] in ("m.room.message", "m.room.encrypted")
            ]
            assert {e["sender"] for e in messages} == {client_id, world_bot(run)}
            assert all(e["type"] == "m.room.encrypted" for e in messages), messages
            await reader.logout()
        finally:
            await reader.close()

        stdin.write(b"/quit\n")
        await stdin.drain()
        code = await asyncio.wait_for(run.process.wait(), EXIT_TIMEOUT)
    finally:
        if run.process.returncode is None:
            await stop_demo(run)
        for pid in synapse_pids(data_dir / "synapse"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    await run.reader
    assert code == 0, run.output
    # The terminal's device was signed out, and its keys deleted with it.
    assert list((data_dir / "chat").glob("*.db")) == []


async def test_an_older_demo_direct_chat_is_encrypted_when_reused(synapse) -> None:
    """A demo folder from before the direct chat was encrypted keeps its room, now encrypted;
    a folder without one gets a new, encrypted direct chat. (The set-up's own code, against
    the session's Synapse, with accounts of this test.)"""
    import aiohttp

    from bot.demo import Login, _Api, _rooms

    suffix = secrets.token_hex(3)
    logins: dict[str, Login] = {}
    tokens: dict[str, str] = {}
    for role in ("bot", "staff", "client"):
        password = secrets.token_hex(8)
        user_id, token = await synapse.register(f"demo-{role}-{suffix}", password)
        logins[role], tokens[role] = Login(user_id, password), token
    async with aiohttp.ClientSession() as http:
        api = {
            role: _Api(http, synapse.base_url, logins[role].user_id, tokens[role])
            for role in logins
        }
        fresh = await _rooms(api, logins, {})
        assert await api["client"].is_encrypted(fresh[1])

        # As an older demo made it: no encryption.
        old_dm = await api["client"].create_room(
            {
                "preset": "trusted_private_chat",
                "is_direct": True,
                "invite": [logins["bot"].user_id],
            }
        )
        await api["bot"].join(old_dm)
        assert not await api["client"].is_encrypted(old_dm)
        state = {"staff_room": fresh[0], "client_dm": old_dm}
        assert await _rooms(api, logins, state) == (fresh[0], old_dm)
        assert await api["client"].is_encrypted(old_dm)
        assert await api["bot"].is_encrypted(old_dm)


def demo_mail_from_client(body: str, subject: str, in_reply_to: str | None = None) -> bytes:
    message = EmailMessage()
    message["From"] = f"Claire Martin <{CLAIRE}>"
    message["To"] = DEMO_SUPPORT
    message["Subject"] = subject
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain="example.org")
    if in_reply_to is not None:
        message["In-Reply-To"] = in_reply_to
        message["References"] = in_reply_to
    message.set_content(body)
    return message.as_bytes(policy=email.policy.SMTP)


CLAIRE = "claire.martin@example.org"
DEMO_SUPPORT = "support@localhost"


async def test_the_demo_with_a_mailbox_answers_mails_and_threads_them_on_cards(
    tmp_path: Path, imap_server, smtp
) -> None:
    """`support-bot demo` given a mailbox (a real Dovecot) and an SMTP server (aiosmtpd): its
    bot.toml reads the mailbox, the banner says where to write, a mail there gets the intake
    questions by mail, the answers a receipt and a card; the client's next mail is posted in
    the card's thread, and what staff write in that thread is mailed to the client."""
    if importlib.util.find_spec("bot.app") is None:
        pytest.skip("bot.app not written yet")
    server = imap_server()
    inbox, smtp_port = smtp
    data_dir = tmp_path / "demo-data"
    run = await start_demo(
        data_dir,
        free_port(),
        cwd=tmp_path,
        args=("--mail-address", DEMO_SUPPORT),
        env={
            # The URLs in the environment: their passwords stay out of the command line.
            IMAP_ENV: f"imap://{IMAP_USER}:{IMAP_PASSWORD}@127.0.0.1:{server.port}/INBOX",
            SMTP_ENV: f"smtp://127.0.0.1:{smtp_port}",
        },
    )

    def to_claire() -> list[EmailMessage]:
        return [m for to, m in inbox.messages if CLAIRE in to]

    async def mails(count: int, what: str) -> list[EmailMessage]:
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while len(to_claire()) < count:
            assert time.monotonic() < deadline, f"no {what} by mail:\n{run.output}"
            await asyncio.sleep(0.2)
        return to_claire()

    try:
        assert f"E-mail channel: write to {DEMO_SUPPORT} (from another address)." in run.output
        assert f"127.0.0.1:{server.port}/INBOX" in run.output
        assert "card's thread" in run.output
        assert IMAP_PASSWORD not in run.output
        config_file = data_dir / "bot.toml"
        assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
        written = tomllib.loads(config_file.read_text(encoding="utf-8"))
        assert written["mail"]["inbound"] == {
            "host": "127.0.0.1",
            "port": server.port,
            "username": IMAP_USER,
            "password": IMAP_PASSWORD,
            "folder": "INBOX",
            "poll_interval": 10,
        }
        assert (written["mail"]["host"], written["mail"]["port"]) == ("127.0.0.1", smtp_port)

        (homeserver,) = run.find(r"^\s+homeserver\s+(http://\S+)")
        staff_id, staff_password = run.find(r"^\s+staff\s+(@\S+)\s+password: (\S+)$")
        (staff_room,) = run.find(r"staff room: (\S+)$")
        staff = await login_client(
            homeserver,
            staff_id,
            staff_password,
            store_path=tmp_path / "nio-staff",
            encryption=False,
        )
        try:
            await server.append(
                demo_mail_from_client(
                    "Bonjour, les relances d'invitations ne partent plus depuis lundi.",
                    "Relances bloquées",
                )
            )
            (questions,) = await mails(1, "intake questions")
            assert "1. Quelle catégorie" in demo_text(questions)
            await server.append(
                demo_mail_from_client(
                    "1. 5\n2. https://sondage.example.org 6.4.2\n3. 1",
                    "Re: " + questions["Subject"],
                    in_reply_to=questions["Message-ID"],
                )
            )
            receipt = (await mails(2, "receipt"))[1]
            ref = re.search(r"\[(SP-\d{4}-\d{4,})\]", receipt["Subject"])
            assert ref is not None, receipt["Subject"]
            card = await wait_for_message(
                staff,
                staff_room,
                lambda m: ref[1] in m.body and "m.relates_to" not in m.source["content"],
                timeout=ANSWER_TIMEOUT,
            )

            # The client's next mail: in the card's thread.
            await server.append(
                demo_mail_from_client(
                    "Voici le lien du questionnaire : https://sondage.example.org/123456",
                    "Re: " + receipt["Subject"],
                    in_reply_to=receipt["Message-ID"],
                )
            )

            def in_thread(message) -> bool:
                relation = message.source["content"].get("m.relates_to") or {}
                return (
                    relation.get("rel_type") == "m.thread"
                    and relation.get("event_id") == card.event_id
                )

            posted = await wait_for_message(
                staff,
                staff_room,
                lambda m: in_thread(m) and "Voici le lien" in m.body,
                timeout=ANSWER_TIMEOUT,
            )
            assert posted.sender != staff_id
            # Staff answer in the thread: mailed to the client, in the request's thread.
            await staff.room_send(
                staff_room,
                "m.room.message",
                {
                    "msgtype": "m.text",
                    "body": "Merci, je regarde les relances cet après-midi.",
                    "m.relates_to": {
                        "rel_type": "m.thread",
                        "event_id": card.event_id,
                        "is_falling_back": True,
                        "m.in_reply_to": {"event_id": card.event_id},
                    },
                },
            )
            answer = (await mails(3, "staff answer"))[2]
            assert "je regarde les relances" in demo_text(answer)
            assert f"[{ref[1]}]" in answer["Subject"]
            assert receipt["Message-ID"] in answer["References"]
        finally:
            await staff.close()
    finally:
        code = await stop_demo(run)
        for pid in synapse_pids(data_dir / "synapse"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    assert code == 0, run.output


def demo_text(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return part.get_content().replace("\r\n", "\n")
