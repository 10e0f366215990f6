"""`support-bot demo`: the whole service on this machine, in one command.

It starts a throwaway Synapse on loopback (kept in `DIR/synapse`), registers three accounts
(the bot, one staff member, one client), creates the staff room and the client's direct chat
with the bot (encrypted, as Element creates direct chats), writes `DIR/bot.toml`, runs the bot
in this process and, when standard input is a terminal, lets you chat with the bot as the
client (an end-to-end encrypted nio client, its keys in `DIR/chat`). Ctrl-C stops everything
it started.

Everything lives in the data folder (default `demo-data`): running the demo again reuses the
homeserver, the accounts, the rooms (their ids are in `DIR/state.json`) and the bot's database.
`--reset` deletes the folder first.

The e-mail channel is on when the demo is given a mailbox and a server to send through:
`--imap imaps://USER@HOST/INBOX --smtp smtp://USER@HOST:587` (or the variables
`SUPPORT_BOT_DEMO_IMAP` and `SUPPORT_BOT_DEMO_SMTP`, which may hold the passwords; a URL
without one has it asked for at the terminal, so that it stays out of the shell's history).
They go into `DIR/bot.toml` (`[mail]`, `[mail.inbound]`), written readable by its owner only.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import sys
import threading
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from email.utils import formataddr
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

if TYPE_CHECKING:
    import aiohttp
    from nio import AsyncClient

    from bot.config import Config, MailConfig
    from bot.testing.synapse import Synapse

log = logging.getLogger(__name__)

SERVER_NAME = "localhost"
STATE_VERSION = 1
READY_BANNER = "support-bot demo is ready"
# Fixed and simple on purpose: the homeserver listens on 127.0.0.1 only, and a newcomer types
# them into Element. Never reuse them anywhere else.
ACCOUNTS = {
    "bot": ("support-bot", "support-bot-demo"),
    "staff": ("staff", "staff-demo"),
    "client": ("client", "client-demo"),
}
BOT_READY_TIMEOUT = 90.0
BOT_STOP_TIMEOUT = 15.0
PREFERRED_WEB_PORT = 8080
# What a demo folder may contain; --reset refuses to delete a folder holding anything else.
DEMO_ENTRIES = frozenset(
    {
        "synapse",
        "state.json",
        "bot.toml",
        "bot.toml.old",
        "bot.toml.tmp",
        "bot.sqlite3",
        "bot.sqlite3-wal",
        "bot.sqlite3-shm",
        "bot.sqlite3-journal",
        "store",
        "chat",
        "bot.log",
    }
)
# The e-mail channel's servers, when not given on the command line (a password in them stays
# out of the shell's history).
IMAP_ENV = "SUPPORT_BOT_DEMO_IMAP"
SMTP_ENV = "SUPPORT_BOT_DEMO_SMTP"
# scheme → (protocol, default port, tls): the `s` schemes speak TLS from the first byte; the
# others leave `tls` out (STARTTLS whenever offered, required when the server is elsewhere).
MAIL_SCHEMES: dict[str, tuple[str, int, str | None]] = {
    "imap": ("imap", 143, None),
    "imaps": ("imap", 993, "implicit"),
    "smtp": ("smtp", 587, None),
    "smtps": ("smtp", 465, "implicit"),
}
KEYCAPS = {str(n): f"{n}\ufe0f\u20e3" for n in range(10)} | {"10": "\U0001f51f"}
# The state event that makes a room end-to-end encrypted (Megolm, as every client does).
ENCRYPTION_STATE: dict[str, Any] = {
    "type": "m.room.encryption",
    "state_key": "",
    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
}


class DemoError(Exception):
    """Something the person running the demo must fix; the message says what."""


@dataclass(frozen=True, slots=True)
class DemoOptions:
    data_dir: str | Path = "demo-data"
    port: int = 8008  # 0: any free port
    chat: bool = False
    reset: bool = False
    start_bot: bool = True
    log_level: str = "INFO"
    # The e-mail channel (`demo_mail`): URLs as given on the command line, else from IMAP_ENV
    # and SMTP_ENV; the support address, else the IMAP login.
    imap: str | None = None
    smtp: str | None = None
    mail_address: str | None = None


@dataclass(frozen=True, slots=True)
class MailServer:
    """An IMAP or SMTP server given to the demo as a URL (`mail_server`)."""

    host: str
    port: int
    tls: str | None  # None: the bot's default for this port
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    folder: str = "INBOX"  # IMAP only

    def shown(self, *, folder: bool = False) -> str:
        """Where it is, without the login."""
        where = f"{self.host}:{self.port}"
        return f"{where}/{self.folder}" if folder else where


@dataclass(frozen=True, slots=True)
class DemoMail:
    """The e-mail channel of the demo: the support address (clients write to it, the bot
    answers from it), the mailbox read (None: the channel is off, mail is only sent) and the
    server mail is sent through."""

    address: str
    smtp: MailServer
    imap: MailServer | None = None


@dataclass(frozen=True, slots=True)
class Login:
    user_id: str
    password: str


@dataclass(frozen=True, slots=True)
class DemoWorld:
    """What the demo prepared: enough to print the banner and to run the chat."""

    base_url: str
    bot: Login
    staff: Login
    client: Login
    staff_room: str
    client_dm: str
    config_path: Path
    config: Config


def run_demo(options: DemoOptions) -> int:
    try:
        data_dir = Path(options.data_dir).resolve()
        try:
            toml_string(str(data_dir))  # bot.toml names files inside it
        except ValueError:
            raise DemoError(
                f"{str(data_dir)!r}: a path that is not UTF-8 cannot go into bot.toml;"
                " choose another --data-dir"
            ) from None
        mail = demo_mail(options, os.environ, ask=_password_prompt())
        run_bot = _bot_runner() if options.start_bot else None
        _check_synapse_installed()
        return asyncio.run(_demo(options, data_dir, run_bot, mail))
    except DemoError as error:
        _say(f"demo: {error}", err=True)
        return 1


# -- the whole run ----------------------------------------------------------------------------


async def _demo(
    options: DemoOptions,
    data_dir: Path,
    run_bot: Callable[..., Any] | None,
    mail: DemoMail | None = None,
) -> int:
    from bot.process import stop_on_signals

    stop = asyncio.Event()
    with stop_on_signals(stop, lambda name: _say(f"\n{name}: stopping the demo…")):
        await asyncio.to_thread(_prepare_folder, data_dir, reset=options.reset)
        _log_to_file(data_dir / "bot.log", options.log_level, quiet_console=options.chat)

        started = time.monotonic()
        synapse = await _start_synapse(data_dir / "synapse", options.port)
        try:
            synapse_seconds = time.monotonic() - started
            if stop.is_set():
                return 0
            world = await _prepare(synapse, data_dir, mail)
            prepared_seconds = time.monotonic() - started - synapse_seconds
            if stop.is_set():
                return 0
            if run_bot is None:
                timing = (
                    f"homeserver {synapse_seconds:.1f} s, accounts and rooms"
                    f" {prepared_seconds:.1f} s"
                )
                _print_banner(world, data_dir, chat=False, bot_running=False, timing=timing)
                await stop.wait()
                return 0
            return await _serve(
                run_bot,
                world,
                data_dir,
                options,
                stop,
                started,
                timings=(synapse_seconds, prepared_seconds),
            )
        finally:
            _say("stopping the homeserver…")
            await synapse.astop()
            _say("demo stopped")


async def _serve(
    run_bot: Callable[..., Any],
    world: DemoWorld,
    data_dir: Path,
    options: DemoOptions,
    stop: asyncio.Event,
    started: float,
    *,
    timings: tuple[float, float],
) -> int:
    """Run the bot (and the chat) until `stop` is set or the bot ends on its own."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    bot_started = time.monotonic()
    bot = asyncio.create_task(
        run_bot(world.config, stop=stop, ready=lambda: loop.call_soon_threadsafe(ready.set)),
        name="support-bot",
    )
    try:
        if not await _first_of(ready.wait(), bot, stop.wait(), timeout=BOT_READY_TIMEOUT):
            raise DemoError(f"the bot did not start within {BOT_READY_TIMEOUT:.0f} s")
        if bot.done():
            bot.result()  # raises what stopped it
            _say("the bot stopped before it was ready: see " + str(data_dir / "bot.log"), err=True)
            return 1
        if stop.is_set():
            return 0
        async with _maybe_chat(world, data_dir, stop, enabled=options.chat):
            now = time.monotonic()
            timing = (
                f"in {now - started:.1f} s: homeserver {timings[0]:.1f} s, accounts and rooms"
                f" {timings[1]:.1f} s, bot {now - bot_started:.1f} s"
            )
            _print_banner(world, data_dir, chat=options.chat, bot_running=True, timing=timing)
            await _first_of(bot, stop.wait())
        if bot.done() and not stop.is_set():
            bot.result()
            _say("the bot stopped on its own: see " + str(data_dir / "bot.log"), err=True)
            return 1
        return 0
    finally:
        stop.set()
        if not bot.done():
            _say("stopping the bot…")
            await asyncio.wait({bot}, timeout=BOT_STOP_TIMEOUT)
            if not bot.done():
                _say(f"the bot did not stop within {BOT_STOP_TIMEOUT:.0f} s", err=True)
                bot.cancel()
                await asyncio.wait({bot})
            if not bot.cancelled() and bot.exception() is not None:
                log.error("the bot failed while stopping", exc_info=bot.exception())


async def _first_of(*waitables: Any, timeout: float | None = None) -> bool:  # noqa: ASYNC109
    """Wait until the first of these awaitables is done; False on timeout. Tasks given are left
    running; coroutines given are wrapped and cancelled afterwards."""
    owned = [asyncio.ensure_future(w) for w in waitables if not isinstance(w, asyncio.Task)]
    tasks = {w for w in waitables if isinstance(w, asyncio.Task)} | set(owned)
    try:
        done, _ = await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        return bool(done)
    finally:
        for task in owned:
            task.cancel()
        await asyncio.gather(*owned, return_exceptions=True)


# -- the e-mail channel's servers ----------------------------------------------------------------


def mail_server(url: str, protocol: str) -> MailServer:
    """An `imap://`, `imaps://`, `smtp://` or `smtps://` URL: `USER[:PASSWORD]@HOST[:PORT]`,
    and for IMAP the folder as its path (default INBOX). The login and password are
    percent-decoded (`%40` is `@`)."""
    option = f"--{protocol}"
    example = (
        "imaps://USER@HOST/INBOX (or imap://USER@HOST:143/INBOX)"
        if protocol == "imap"
        else "smtp://USER@HOST:587 (or smtps://USER@HOST:465)"
    )
    parts = urlsplit(url.strip())
    scheme = MAIL_SCHEMES.get(parts.scheme.lower())
    if scheme is None or scheme[0] != protocol:
        raise DemoError(f"{option}: expected a URL such as {example}")
    try:
        port = parts.port
    except ValueError:
        raise DemoError(f"{option}: the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise DemoError(f"{option}: no server in the URL; expected {example}")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if protocol == "imap" and username is None:
        raise DemoError(f"{option}: the mailbox's login is missing; expected {example}")
    folder = unquote(parts.path.strip("/")) or "INBOX"
    if protocol == "smtp" and parts.path.strip("/"):
        raise DemoError(f"{option}: an SMTP server has no folder; expected {example}")
    _, default_port, tls = scheme
    return MailServer(parts.hostname, port or default_port, tls, username, password, folder)


def demo_mail(
    options: DemoOptions, environ: Mapping[str, str], *, ask: Callable[[str], str] | None
) -> DemoMail | None:
    """The e-mail channel the demo was given (None: no mail server). A login without its
    password is asked for with `ask` (None: not at a terminal, an error)."""
    imap_url = options.imap or environ.get(IMAP_ENV) or None
    smtp_url = options.smtp or environ.get(SMTP_ENV) or None
    if imap_url is None and smtp_url is None:
        if options.mail_address:
            raise DemoError("--mail-address goes with --imap and --smtp")
        return None
    if smtp_url is None:
        raise DemoError(
            "--imap needs --smtp too, the server the bot sends its answers through:"
            f" smtp://USER@HOST:587 (or {SMTP_ENV})"
        )
    for given, option in ((options.imap, "--imap"), (options.smtp, "--smtp")):
        if given and urlsplit(given.strip()).password:
            _say(
                f"note: the password in {option} stays in your shell's history; leave it out"
                " to be asked for it, or give the URL in "
                f"{IMAP_ENV if option == '--imap' else SMTP_ENV}"
            )
    imap = None
    if imap_url is not None:
        imap = _with_password(mail_server(imap_url, "imap"), "--imap", IMAP_ENV, ask)
    smtp = _with_password(mail_server(smtp_url, "smtp"), "--smtp", SMTP_ENV, ask)
    address = options.mail_address
    if not address:
        logins = [server.username for server in (imap, smtp) if server and server.username]
        address = next((login for login in logins if "@" in login), None)
    if not address:
        raise DemoError(
            "--mail-address: the support address clients write to is needed (the mailbox's"
            " login is not an e-mail address)"
        )
    return DemoMail(address=address.strip(), smtp=smtp, imap=imap)


def _with_password(
    server: MailServer, option: str, variable: str, ask: Callable[[str], str] | None
) -> MailServer:
    if server.username is None or server.password is not None:
        return server
    if ask is None:
        raise DemoError(
            f"{option}: no password for {server.username} on {server.host}: run the demo at a"
            f" terminal to be asked for it, or give the URL with it in {variable}"
        )
    password = ask(f"password of {server.username} on {server.host} ({option}): ")
    if not password:
        raise DemoError(f"{option}: no password given")
    return MailServer(
        server.host, server.port, server.tls, server.username, password, server.folder
    )


def _password_prompt() -> Callable[[str], str] | None:
    """`getpass` when standard input is a terminal, else None (nobody to ask)."""
    return getpass.getpass if sys.stdin.isatty() else None


def _bot_runner() -> Callable[..., Any]:
    try:
        from bot.app import run_bot
    except ImportError as error:
        raise DemoError(
            f"the bot cannot start ({error}); --no-bot prepares everything else"
        ) from error
    return run_bot


def _check_synapse_installed() -> None:
    from bot.testing.synapse import synapse_available

    if not synapse_available():
        raise DemoError(
            "the demo needs Synapse in this Python environment: pip install -e '.[demo]' "
            "(or run ./scripts/demo, which does it)"
        )


# -- homeserver -------------------------------------------------------------------------------


async def _start_synapse(synapse_dir: Path, port: int) -> Synapse:
    from bot.testing.synapse import Synapse, SynapseError

    if port and not _port_free(port):
        raise DemoError(
            f"port {port} on 127.0.0.1 is in use (another demo still running?): stop it, or "
            "pass --port N (--port 0 picks a free one)"
        )
    _say(f"starting the homeserver ({synapse_dir})…")
    try:
        return await Synapse.astart(synapse_dir, port=port or None, server_name=SERVER_NAME)
    except SynapseError as error:
        raise DemoError(f"the homeserver did not start:\n{error}") from None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do: a port whose old connections linger in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def synapse_pids(synapse_dir: Path) -> list[int]:
    """Processes running a Synapse on this data folder (Linux /proc; elsewhere none found)."""
    from bot.testing.synapse import GENERATED_CONFIG

    marker = str(synapse_dir.resolve() / GENERATED_CONFIG).encode()
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"synapse.app.homeserver" in args and marker in args:
            pids.append(int(entry.name))
    return pids


def _stop_leftover_synapse(synapse_dir: Path) -> None:
    """A demo killed with SIGKILL leaves its homeserver running (in its own session): stop it,
    or the port and the database stay taken."""
    for pid in synapse_pids(synapse_dir):
        _say(f"stopping a homeserver left running by an earlier demo (pid {pid})…")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and pid in synapse_pids(synapse_dir):
            time.sleep(0.1)
        if pid in synapse_pids(synapse_dir):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def _prepare_folder(data_dir: Path, *, reset: bool) -> None:
    _stop_leftover_synapse(data_dir / "synapse")
    if reset:
        _reset(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)


def _reset(data_dir: Path) -> None:
    if not data_dir.exists():
        return
    unknown = sorted(p.name for p in data_dir.iterdir() if p.name not in DEMO_ENTRIES)
    if unknown:
        raise DemoError(
            f"--reset: {data_dir} holds files the demo did not make ({', '.join(unknown[:5])}):"
            " not deleting it"
        )
    _say(f"deleting {data_dir}…")
    shutil.rmtree(data_dir)


# -- accounts, rooms, config ------------------------------------------------------------------


async def _prepare(synapse: Synapse, data_dir: Path, mail: DemoMail | None = None) -> DemoWorld:
    """Register the accounts, create or reuse the rooms, write the config."""
    import aiohttp

    from bot.testing.synapse import RegistrationError, register_many

    _say("registering the accounts and preparing the rooms…")
    try:
        sessions = await register_many(
            synapse.base_url, synapse.shared_secret, list(ACCOUNTS.values())
        )
    except RegistrationError as error:
        raise DemoError(
            f"{error}\n(a demo password was changed? run the demo with --reset)"
        ) from None
    logins: dict[str, Login] = {}
    tokens: dict[str, str] = {}
    for (role, (_, password)), (user_id, token) in zip(ACCOUNTS.items(), sessions, strict=True):
        logins[role] = Login(user_id, password)
        tokens[role] = token
    state_path = data_dir / "state.json"
    state = _read_state(state_path)

    async with aiohttp.ClientSession() as http:
        api = {
            role: _Api(http, synapse.base_url, logins[role].user_id, tokens[role])
            for role in ACCOUNTS
        }
        try:
            staff_room, client_dm = await _rooms(api, logins, state)
        finally:
            # These sessions were only for the set-up: leave no extra devices behind.
            for one in api.values():
                with contextlib.suppress(DemoError, aiohttp.ClientError):
                    await one.call("POST", "/logout", {})

    web_port = state.get("web_port")
    if not isinstance(web_port, int) or not _port_free(web_port):
        web_port = PREFERRED_WEB_PORT if _port_free(PREFERRED_WEB_PORT) else _free_port()
    metrics_port = state.get("metrics_port")
    if not isinstance(metrics_port, int) or not _port_free(metrics_port):
        metrics_port = _free_port()
    state.update(
        version=STATE_VERSION,
        staff_room=staff_room,
        client_dm=client_dm,
        web_port=web_port,
        metrics_port=metrics_port,
        web_secret=state.get("web_secret") or secrets.token_urlsafe(32),
        pickle_key=state.get("pickle_key") or secrets.token_urlsafe(32),
    )
    _write_json(state_path, state)

    config_path = data_dir / "bot.toml"
    config = _ensure_config(
        config_path,
        render_config(
            data_dir,
            homeserver=synapse.base_url,
            bot=logins["bot"],
            staff=logins["staff"],
            staff_room=staff_room,
            web_port=web_port,
            metrics_port=metrics_port,
            web_secret=state["web_secret"],
            pickle_key=state["pickle_key"],
            mail=mail,
        ),
        mail_given=mail is not None,
        expect={
            "homeserver": synapse.base_url,
            "user_id": logins["bot"].user_id,
            "staff_room": staff_room,
            "listen": f"127.0.0.1:{web_port}",
        },
    )
    return DemoWorld(
        base_url=synapse.base_url,
        bot=logins["bot"],
        staff=logins["staff"],
        client=logins["client"],
        staff_room=staff_room,
        client_dm=client_dm,
        config_path=config_path,
        config=config,
    )


async def _rooms(
    api: dict[str, _Api], logins: dict[str, Login], state: dict[str, Any]
) -> tuple[str, str]:
    """The staff room and the client's direct chat: reused from `state` when everyone is
    still in them, else created."""
    bot, staff, client = api["bot"], api["staff"], api["client"]
    bot_rooms = await bot.joined_rooms()
    staff_room = state.get("staff_room")
    if not (staff_room in bot_rooms and staff_room in await staff.joined_rooms()):
        # As on a real server: the team owns its room (the creator, staff has the top power
        # level, ≥ 50 makes a member staff) and invites the bot.
        staff_room = await staff.create_room(
            {
                "preset": "private_chat",
                "name": "Support staff (demo)",
                "topic": "Ticket cards from support-bot; react to confirm interventions.",
                "invite": [bot.user_id],
            }
        )
        await bot.join(staff_room)
        _say(f"  created the staff room {staff_room}")
    client_dm = state.get("client_dm")
    if not (client_dm in bot_rooms and client_dm in await client.joined_rooms()):
        # What Element does when a client starts a chat with the bot: encrypted from the start.
        client_dm = await client.create_room(
            {
                "preset": "trusted_private_chat",
                "is_direct": True,
                "invite": [bot.user_id],
                "initial_state": [ENCRYPTION_STATE],
            }
        )
        await bot.join(client_dm)
        await client.set_direct(logins["bot"].user_id, client_dm)
        await bot.set_direct(logins["client"].user_id, client_dm)
        _say(f"  created the client's direct chat {client_dm} (encrypted)")
    elif not await client.is_encrypted(client_dm):
        # A demo folder from before the direct chat was encrypted: as Element would offer.
        await client.encrypt(client_dm)
        _say(f"  the client's direct chat {client_dm} is now encrypted")
    return staff_room, client_dm


class _Api:
    """The few client-server API calls the set-up needs, as one user."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, user_id: str, token: str):
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.user_id = user_id
        self.token = token

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = f"{self.base_url}/_matrix/client/v3{path}"
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.http.request(method, url, json=body, headers=headers) as response:
            data = await response.json(content_type=None)
            if response.status != 200:
                raise DemoError(f"{method} {path} as {self.user_id}: {response.status} {data}")
            return data

    async def joined_rooms(self) -> set[str]:
        return set((await self.call("GET", "/joined_rooms"))["joined_rooms"])

    async def create_room(self, body: dict[str, Any]) -> str:
        return (await self.call("POST", "/createRoom", body))["room_id"]

    async def join(self, room_id: str) -> None:
        await self.call("POST", f"/join/{quote(room_id, safe='')}", {})

    async def is_encrypted(self, room_id: str) -> bool:
        path = f"/rooms/{quote(room_id, safe='')}/state/m.room.encryption/"
        try:
            await self.call("GET", path)
        except DemoError:  # 404 M_NOT_FOUND: never encrypted
            return False
        return True

    async def encrypt(self, room_id: str) -> None:
        path = f"/rooms/{quote(room_id, safe='')}/state/m.room.encryption/"
        await self.call("PUT", path, ENCRYPTION_STATE["content"])

    async def set_direct(self, other: str, room_id: str) -> None:
        """`m.direct` account data, so clients show the room as a direct chat."""
        await self.call(
            "PUT",
            f"/user/{quote(self.user_id, safe='')}/account_data/m.direct",
            {other: [room_id]},
        )


def render_config(
    data_dir: Path,
    *,
    homeserver: str,
    bot: Login,
    staff: Login,
    staff_room: str,
    web_port: int,
    web_secret: str,
    pickle_key: str,
    metrics_port: int = 9464,
    mail: DemoMail | None = None,
) -> str:
    """The demo's bot.toml: every key the demo needs, with why it has that value."""
    q = toml_string
    confirmation = (
        "# The demo has no mail server: clients confirm large interventions in the chat."
        if mail is None
        else "# Clients confirm large interventions in the chat (the demo client's address is"
        "\n# made up)."
    )
    return f"""\
# Written by `support-bot demo` for its throwaway homeserver. The demo keeps your edits when it
# starts again, unless the homeserver, the rooms or the web port changed (the old file is then
# kept as bot.toml.old). Every key is explained in bot.toml.example.
#
# While the demo runs with --no-bot, the bot can also be started from this file:
#   support-bot --config {_command_word(data_dir / "bot.toml")} run

[matrix]
homeserver = {q(homeserver)}
user_id = {q(bot.user_id)}
password = {q(bot.password)}
device_name = "support-bot demo"
store_path = {q(str(data_dir / "store"))}
pickle_key = {q(pickle_key)}
staff_room = {q(staff_room)}
staff = [{q(staff.user_id)}]

[database]
url = {q("sqlite://" + str(data_dir / "bot.sqlite3"))}

[service]
timezone = "Europe/Paris"
country = "FR"
# French first, as the service; each client can switch with !lang en.
default_locale = "fr"
{confirmation}
confirmation = "chat"
{_mail_sections(mail)}
[web]
listen = "127.0.0.1:{web_port}"
public_url = "http://127.0.0.1:{web_port}"
secret = {q(web_secret)}

[metrics]
# Prometheus metrics, on a port of their own (loopback only).
listen = "127.0.0.1:{metrics_port}"

[video]
provider = "jitsi"

[video.jitsi]
# A placeholder: meeting links in the demo point nowhere. Put your self-hosted Jitsi Meet here
# (meet.jit.si requires a logged-in moderator since 2023).
base_url = "https://meet.demo.invalid"

# The staff member's call hours, in the service time zone.
[[availability]]
staff = {q(staff.user_id)}
days = ["mon-fri"]
start = "09:00"
end = "12:00"

[[availability]]
staff = {q(staff.user_id)}
days = ["mon-fri"]
start = "14:00"
end = "17:00"
"""


def _mail_sections(mail: DemoMail | None) -> str:
    """`[mail]` and `[mail.inbound]` for the servers given to the demo (none without)."""
    if mail is None:
        return ""
    q = toml_string

    def server(found: MailServer) -> list[str]:
        lines = [f"host = {q(found.host)}", f"port = {found.port}"]
        if found.tls is not None:
            lines.append(f"tls = {q(found.tls)}")
        if found.username is not None:
            lines.append(f"username = {q(found.username)}")
            lines.append(f"password = {q(found.password or '')}")
        return lines

    lines = [
        "",
        "[mail]",
        "# Given by --smtp: the server every mail of the bot goes through.",
        *server(mail.smtp),
        "# The support address: clients write to it, the bot answers from it.",
        f"from = {q(formataddr(('Support (demo)', mail.address)))}",
    ]
    if mail.imap is not None:
        lines += [
            "",
            "[mail.inbound]",
            '# Given by --imap: the support mailbox. Its mails become requests (README, "The',
            '# e-mail channel"); handled ones are marked read and flagged $SupportBot.',
            *server(mail.imap),
            f"folder = {q(mail.imap.folder)}",
            "# A look every 10 s besides IDLE: a mail that arrives between a look and the next",
            "# IDLE is only seen at the next look (the default, 60 s, is long for trying it).",
            f"poll_interval = {DEMO_POLL_INTERVAL}",
        ]
    return "\n".join(lines) + "\n"


#: Seconds between two looks at the demo's mailbox (see `_mail_sections`).
DEMO_POLL_INTERVAL = 10


def _mail_identity(mail: MailConfig) -> tuple[Any, ...]:
    """What the demo's options decide of `[mail]` and `[mail.inbound]`."""
    inbound = mail.inbound
    return (
        (mail.host, mail.port, mail.tls, mail.username, mail.password, mail.from_),
        (inbound.host, inbound.port, inbound.tls, inbound.username, inbound.password),
        inbound.folder,
    )


def _ensure_config(
    path: Path, text: str, *, expect: dict[str, str], mail_given: bool = False
) -> Config:
    """Keep an existing demo config (and the edits made to it) while it still matches the
    homeserver, rooms and port of this run, and the mail servers when some were given; rewrite
    it otherwise. Without mail servers given, those of the file (an earlier run's) stay."""
    from bot.config import ConfigError, load_config, parse_config

    # The demo's own values only: SUPPORT_BOT_* variables of this shell are for a real bot.
    if path.exists():
        try:
            config = load_config(path, env={})
        except ConfigError as error:
            problems = "\n".join(f"  {key}: {message}" for key, message in error.problems)
            raise DemoError(
                f"{path} has errors:\n{problems}\nfix them, or run with --reset"
            ) from None
        current = {
            "homeserver": config.matrix.homeserver,
            "user_id": config.matrix.user_id,
            "staff_room": config.matrix.staff_room,
            "listen": config.web.listen,
        }
        same_mail = not mail_given or _mail_identity(config.mail) == _mail_identity(
            parse_config(tomllib.loads(text), {}).mail
        )
        if current == expect and same_mail:
            return config
        if path.read_text(encoding="utf-8") != text:
            path.replace(path.with_name(path.name + ".old"))
            _say(f"  {path.name} rewritten for this run; the old one is {path.name}.old")
    _write_private(path, text)
    try:
        return load_config(path, env={})
    except ConfigError as error:  # what --imap, --smtp or --mail-address gave
        problems = "\n".join(f"  {key}: {message}" for key, message in error.problems)
        raise DemoError(f"the mail settings given are refused:\n{problems}") from None


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by its owner only (it may hold mail passwords)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)
    tmp.replace(path)


# TOML basic strings must escape `"`, `\` and the control characters (tab may stay, but an
# escape is easier to read); everything else, outside the BMP too, is written as itself. Not
# json.dumps: it writes "😀" as the surrogate pair "\ud83d\ude00", which TOML refuses.
_TOML_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def toml_string(value: str) -> str:
    """`value` as a TOML basic string (`"..."`) that `tomllib` reads back as `value`.

    Raises `ValueError` for a lone surrogate (a path with bytes that are not UTF-8, as Python
    decodes them): TOML is UTF-8 and has no way to write one.
    """
    out = []
    for char in value:
        code = ord(char)
        if 0xD800 <= code <= 0xDFFF:
            raise ValueError("not UTF-8: a TOML file cannot hold this text")
        if char in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[char])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _command_word(path: Path) -> str:
    """`path` quoted for a shell command shown in a TOML comment. A comment must stay on one
    line and hold no control character: those (a newline in a directory name) become `?`, and
    the command is then only a hint."""
    text = "".join("?" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in str(path))
    return shlex.quote(text)


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError:
        _say(f"  {path.name} is not valid JSON: starting with new rooms")
        return {}
    return state if isinstance(state, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _free_port() -> int:
    from bot.testing.net import free_port

    return free_port()


# -- output -----------------------------------------------------------------------------------


def _say(text: str, *, err: bool = False) -> None:
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


def _print_banner(
    world: DemoWorld, data_dir: Path, *, chat: bool, bot_running: bool, timing: str
) -> None:
    """What to do next; the last line says it is ready (the line scripts wait for)."""
    here = Path.cwd()

    def show(path: Path) -> str:
        return str(path.relative_to(here)) if path.is_relative_to(here) else str(path)

    width = max(len(login.user_id) for login in (world.bot, world.staff, world.client))
    lines = [
        "",
        "── support-bot demo " + "─" * 50,
        f"  homeserver   {world.base_url}   (server name {SERVER_NAME}, this machine only)",
        "  logins",
        *(
            f"    {role:<6} {login.user_id:<{width}}  password: {login.password}"
            for role, login in (
                ("bot", world.bot),
                ("staff", world.staff),
                ("client", world.client),
            )
        ),
        "  rooms",
        f"    staff room: {world.staff_room}",
        f"    client DM: {world.client_dm}",
        f"  config       {show(world.config_path)}   (logs: {show(data_dir / 'bot.log')})",
        "",
        "Connect with Element (app.element.io, or Element Desktop) or any Matrix client:",
        f"  at sign-in, edit the homeserver to {world.base_url} and log in as"
        f' "client" / "{world.client.password}";',
        "  write !help in the direct chat with support-bot. Log in as"
        f' "staff" / "{world.staff.password}" (another browser profile) to see the staff room.',
        "",
    ]
    lines += [*_mail_banner(world.config), ""]
    if not bot_running:
        lines.append(f"Start the bot: support-bot --config {show(world.config_path)} run")
    if chat:
        lines += [
            "Chat here as the client: type a line and press Enter (try !help).",
            "  /react N reacts to the bot's last message with keycap N (or /react EMOJI);"
            " /quit stops.",
        ]
    lines += [
        "Stop: Ctrl-C (stops the bot and the homeserver). Running the demo again continues with"
        " the same data; --reset starts afresh.",
        "",
        (READY_BANNER if bot_running else "demo homeserver is ready, the bot is NOT running")
        + f" ({timing})",
    ]
    _say("\n".join(lines))


def _mail_banner(config: Config) -> list[str]:
    """What the banner says of the e-mail channel: where to write, or how to turn it on."""
    from email.utils import parseaddr

    inbound = config.mail.inbound
    if not inbound.host:
        return [
            "E-mail channel: off. To try it, give the demo a mailbox for tests and a server to"
            " send through: --imap imaps://USER@HOST/INBOX --smtp smtp://USER@HOST:587"
            ' (README, "Try it").'
        ]
    _, address = parseaddr(config.mail.from_)
    return [
        f"E-mail channel: write to {address} (from another address).",
        f"  The bot reads {inbound.host}:{inbound.port}/{inbound.folder} and answers through"
        f" {config.mail.host}:{config.mail.port}:",
        "  its questions, then a receipt. Each request gets a card in the staff room: the"
        " client's mails",
        "  go in the card's thread, and what staff write there (or !reply REF text) is mailed"
        " back.",
        f"  Careful: at its first start the bot handles every mail in {inbound.folder} it has"
        " not flagged yet.",
    ]


def _log_to_file(path: Path, level: str, *, quiet_console: bool) -> None:
    """The bot's log goes to DIR/bot.log; while chatting, the terminal shows warnings only."""
    from bot.process import LOG_FORMAT

    root = logging.getLogger()
    if quiet_console:
        for handler in root.handlers:
            if type(handler) is logging.StreamHandler:
                handler.setLevel(logging.WARNING)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(level)
    root.addHandler(handler)


# -- the terminal chat ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _maybe_chat(
    world: DemoWorld, data_dir: Path, stop: asyncio.Event, *, enabled: bool
) -> AsyncIterator[None]:
    if not enabled:
        yield
        return
    from bot.testing.matrix import login_client

    # The direct chat is encrypted: the terminal is a device with its own keys, in `chat/`.
    store = data_dir / "chat"
    client = await login_client(
        world.base_url,
        world.client.user_id,
        world.client.password,
        store_path=store,
        device_name="support-bot demo terminal",
        encryption=True,
    )
    chat = _TerminalChat(client, world, stop)
    tasks = [
        asyncio.create_task(chat.receive(), name="demo-chat-receive"),
        asyncio.create_task(chat.send(), name="demo-chat-send"),
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        device_id = client.device_id
        with contextlib.suppress(Exception):
            await client.logout()  # its device is not needed after the demo
        await client.close()
        # Nor are its keys: the next run is a new device, with keys of its own.
        with contextlib.suppress(OSError):
            (store / f"{world.client.user_id}_{device_id}.db").unlink(missing_ok=True)


class _TerminalChat:
    """Lines typed here are sent as the client; what others write to the client is printed."""

    def __init__(self, client: AsyncClient, world: DemoWorld, stop: asyncio.Event):
        self.client = client
        self.world = world
        self.stop = stop
        self.last_from_bot: str | None = None

    async def receive(self) -> None:
        from bot.testing.matrix import SyncFailed, discard_messages, sync_once

        while True:
            try:
                messages = await sync_once(self.client, timeout=25)
            except SyncFailed:
                await asyncio.sleep(1)
                continue
            discard_messages(self.client)  # printed here; nobody waits for them
            for room_id, event in messages:
                where = "" if room_id == self.world.client_dm else f" (in {room_id})"
                name = event.sender.split(":", 1)[0].lstrip("@")
                body = event.body.replace("\n", "\n    ")
                _say(f"{name}{where}: {body}")
                if event.sender == self.world.bot.user_id and room_id == self.world.client_dm:
                    self.last_from_bot = event.event_id
            for room_id in list(self.client.invited_rooms):
                # The bot may open a private room with the client: follow it.
                await self.client.join(room_id)
                _say(f"(joined {room_id}, where the client was invited)")

    async def send(self) -> None:
        from bot.testing.matrix import send_text

        async for line in _stdin_lines():
            text = line.strip()
            if not text:
                continue
            if text in ("/quit", "/exit"):
                break
            try:
                if text.startswith("/react"):
                    await self._react(text.removeprefix("/react").strip())
                else:
                    await send_text(self.client, self.world.client_dm, text)
            except Exception as error:  # refused, or keys not shared (nio): say so, go on
                _say(f"(not sent: {error or type(error).__name__})", err=True)
        else:  # end of input
            if not sys.stdin.isatty():
                _say("(end of input: the demo keeps running, Ctrl-C stops it)")
                return
        self.stop.set()

    async def _react(self, key: str) -> None:
        if not key or self.last_from_bot is None:
            _say("(usage: /react N or /react EMOJI, after a message from the bot)")
            return
        await self.client.room_send(
            self.world.client_dm,
            "m.reaction",
            {
                "m.relates_to": {
                    "rel_type": "m.annotation",
                    "event_id": self.last_from_bot,
                    "key": KEYCAPS.get(key, key),
                }
            },
            ignore_unverified_devices=True,  # as `send_text`: nobody verifies in the demo
        )


async def _stdin_lines() -> AsyncIterator[str]:
    """Lines of standard input, read by a daemon thread: a blocked read never holds up the
    exit, and the terminal is left in blocking mode (unlike `connect_read_pipe`)."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed while we were reading
            for line in _each_line():
                loop.call_soon_threadsafe(lines.put_nowait, line)
            loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, name="demo-stdin", daemon=True).start()
    while (line := await lines.get()) is not None:
        yield line


def _each_line() -> Iterator[str]:
    with contextlib.suppress(OSError, ValueError):  # standard input closed or unusable
        yield from sys.stdin
