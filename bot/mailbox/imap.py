"""Reading the support mailbox over IMAP (`[mail.inbound]`), with aioimaplib.

`MailboxReader.run` is one loop that never ends before `stop` is set: connect, log in, SELECT
the folder, hand every new mail to the sink in UID order, mark the handled ones, wait for the
next, and after any failure start again after a pause (1 s, doubling up to 5 min).

Where to start. The database is the truth (`bot.storage.mailbox`): the sink advances the
folder's position (UIDVALIDITY, last UID) in the transaction that handles a mail, and each
look at the folder reads it and asks the server for the UIDs after it. A crash between fetch
and commit leaves the position where it was: the mail comes again and is handled once. A
new UIDVALIDITY (the server renumbered the folder) starts from the folder's first mail. The
search always leaves out mails flagged \\Deleted and, where the server keeps keywords, those
carrying the bot's `$SupportBot`: the first start and a renumbering do not handle again what
was handled already. At its first start the bot reads every other mail of the folder.

After a mail is handled (the sink returned True): `after = "flag"` sets \\Seen and
`$SupportBot`; `after = "move"` sets them too, then moves the mail to `move_to` (created if
missing) with UID MOVE (RFC 6851). Nothing is ever deleted: a server without MOVE gets a
COPY, and the original stays, flagged, where it was (no \\Deleted, no EXPUNGE). A crash
between the commit and the marking leaves a handled mail unmarked; it is not handled again.

Too big. A mail larger than `max_size` (RFC822.SIZE) is never downloaded: the sink gets its
header only (at most 64 KiB) with `too_big` set.

Waiting. A look every `poll_interval` seconds, and with IDLE (RFC 2177), when the server
has it, at once when a mail arrives. The looks go on under IDLE (re-issued at least every 25
minutes: servers may drop an idle client after 30) because a mail that arrives between a
look and the next IDLE is announced in an answer to another command, which aioimaplib
drops. A mail the sink did not take now (False) is offered again at the next look.

Transport security, as `[mail] tls` (`bot.mail`): not set is TLS from the first byte on port
993, else STARTTLS whenever offered and required when the server is not on this machine;
"starttls", "implicit" and "none" say so explicitly. Certificates are always verified
(`ca_file` instead of the system's CAs). The login happens only once the connection is in
its final state. aioimaplib has no STARTTLS of its own: the command is sent, then asyncio's
`loop.start_tls` upgrades the connection under the same protocol object.

Logs carry the host, the folder, UIDs and the kind of failure: never a mail's content, a
sender, the login or the password.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar, cast

import aioimaplib

from bot.config import InboundMailConfig
from bot.mail import TlsMode, is_local_host
from bot.mailbox.raw import MailSink, RawMail
from bot.storage import mailbox as positions

__all__ = [
    "IDLE_RENEW_SECONDS",
    "IMAPS_PORT",
    "KEYWORD",
    "ImapError",
    "MailboxReader",
    "MailboxStats",
    "config_warnings",
    "tls_mode",
]

log = logging.getLogger(__name__)

#: IMAP over TLS from the first byte ("IMAPS"): the default port, and the default there.
IMAPS_PORT = 993
#: The keyword that marks a mail the bot handled (where the server keeps keywords).
KEYWORD = "$SupportBot"
#: IDLE is re-issued this often: RFC 2177 lets a server end an idle client after 30 minutes.
IDLE_RENEW_SECONDS = 25 * 60
#: At most this much of a too-big mail's header is read.
HEADER_CAP = 64 * 1024

T = TypeVar("T")
PositionOf = Callable[[str], Awaitable[positions.Position | None]]


def tls_mode(config: InboundMailConfig) -> TlsMode:
    """What protects the connection: `tls` when set, else TLS from the start on port 993,
    else the default (STARTTLS when offered, required off this machine)."""
    if config.tls is not None:  # one of MAIL_TLS: the parser checked it
        return cast(TlsMode, config.tls)
    return "implicit" if config.port == IMAPS_PORT else "default"


def config_warnings(config: InboundMailConfig) -> list[tuple[str, str]]:
    """(key, message) for clear text to a server that is not on this machine."""
    if config.host and tls_mode(config) == "none" and not is_local_host(config.host):
        return [
            (
                "mail.inbound.tls",
                f'"none" sends the IMAP password and every mail read in clear to {config.host},'
                ' which is not this machine: use "starttls" or "implicit", or leave tls out',
            )
        ]
    return []


class ImapError(Exception):
    """The server refused, the connection is not what `[mail.inbound]` requires, or a mail
    could not be handled. The message never holds a mail's content, an address or a login."""


@dataclass
class MailboxStats:
    """The reader's counters, read by the metrics at each scrape (`Metrics.watch_mailbox`)."""

    read: int = 0  # mails the sink handled
    errors: int = 0  # sessions ended by a failure (network, TLS, login, server, sink)
    connected: bool = False
    last_check: float | None = None  # time.monotonic() of the last complete look
    started: float = field(default_factory=time.monotonic)


class MailboxReader:
    """Reads `config.folder` and hands each new mail to `sink` (see the module docstring)."""

    def __init__(
        self,
        config: InboundMailConfig,
        sink: MailSink,
        *,
        stats: MailboxStats | None = None,
        position: PositionOf = positions.position,
        idle_renew: float = IDLE_RENEW_SECONDS,
        timeout: float = 30.0,
        backoff: tuple[float, float] = (1.0, 300.0),
    ) -> None:
        if not config.host:
            raise ValueError("[mail.inbound] host is not set: there is no mailbox to read")
        self._config = config
        self._sink = sink
        self.stats = stats or MailboxStats()
        self._position = position
        self._idle_renew = idle_renew
        self._timeout = timeout
        self._backoff = backoff
        self._delay = backoff[0]
        self._context: ssl.SSLContext | None = None
        for key, message in config_warnings(config):
            log.warning("config: %s: %s", key, message)

    async def run(self, stop: asyncio.Event) -> None:
        """Read until `stop` is set; failures are logged and retried, never raised."""
        config = self._config
        while not stop.is_set():
            try:
                await self._session(stop)
            except Exception as error:
                self.stats.errors += 1
                log.warning(
                    "mailbox: %s on %s:%d: %s; trying again in %.1f s",
                    config.folder,
                    config.host,
                    config.port,
                    _describe(error),
                    self._delay,
                )
                log.debug("mailbox: failure", exc_info=True)
                await _until(stop, self._delay)
                self._delay = min(self._delay * 2, self._backoff[1])
            finally:
                self.stats.connected = False

    async def _session(self, stop: asyncio.Event) -> None:
        """One connection, until `stop` (returns) or a failure (raises)."""
        config = self._config
        if self._context is None and tls_mode(config) != "none":
            # Reading the CA files blocks: once, in a thread.
            self._context = await asyncio.to_thread(
                ssl.create_default_context, cafile=config.ca_file
            )
        connection = _Connection(config, self._context, self._timeout)
        try:
            await connection.open()
            if config.after == "move":
                await connection.create(config.move_to)
            folder = await connection.select(config.folder)
            self.stats.connected = True
            log.info(
                "mailbox: reading %s on %s:%d (%s, %s)",
                config.folder,
                config.host,
                config.port,
                "TLS" if connection.encrypted else "clear text",
                "IDLE" if connection.has("IDLE") else f"a look every {config.poll_interval} s",
            )
            done = 0  # the last UID handled on this connection, in this UIDVALIDITY
            while not stop.is_set():
                done = await self._look(connection, folder, done, stop)
                self.stats.last_check = time.monotonic()
                self._delay = self._backoff[0]
                await connection.wait_for_mail(stop, min(self._idle_renew, config.poll_interval))
                if stop.is_set():
                    break
                # A folder renumbered meanwhile (deleted and created again, restored) shows in
                # a new SELECT only: a server need not tell a client that has it open.
                again = await connection.select(config.folder)
                if again.uidvalidity != folder.uidvalidity:
                    log.info(
                        "mailbox: %s has a new UIDVALIDITY: read again from its first mail",
                        config.folder,
                    )
                    done = 0
                folder = again
        finally:
            await connection.close()

    async def _look(
        self, connection: _Connection, folder: _Folder, done: int, stop: asyncio.Event
    ) -> int:
        """Hand every new mail to the sink in UID order, until one is not handled now: the
        last UID handled."""
        config = self._config
        position = await self._position(config.folder)
        last = position.last_uid if position and position.uidvalidity == folder.uidvalidity else 0
        last = max(last, done)
        uids = sorted(uid for uid in await connection.search(last + 1, folder) if uid > last)
        for uid in uids:
            if stop.is_set():
                break
            mail = await connection.fetch(config.folder, folder.uidvalidity, uid, config.max_size)
            if mail is None:  # expunged by someone else meanwhile
                continue
            try:
                handled = await self._sink(mail)
            except Exception as error:
                raise ImapError(f"handling mail {uid} failed ({type(error).__name__})") from error
            if not handled:
                log.info(
                    "mailbox: mail %d of %s not handled now: offered again later",
                    uid,
                    config.folder,
                )
                break
            self.stats.read += 1
            done = uid
            log.debug("mailbox: mail %d of %s handled", uid, config.folder)
            await connection.mark(uid, folder, config.after, config.move_to)
        return done


@dataclass(frozen=True, slots=True)
class _Folder:
    uidvalidity: int
    keywords: bool  # the server keeps keywords of our own (PERMANENTFLAGS holds \*)


class _Connection:
    """One IMAP connection (an aioimaplib client), every command bounded in time and given up
    as soon as the connection is lost."""

    def __init__(
        self, config: InboundMailConfig, context: ssl.SSLContext | None, timeout: float
    ) -> None:
        self._config = config
        self._context = context
        self._timeout = timeout
        self._mode = tls_mode(config)
        self.lost = asyncio.Event()
        self._client: aioimaplib.IMAP4 | None = None

    @property
    def encrypted(self) -> bool:
        transport = self._client.protocol.transport if self._client else None
        return transport is not None and transport.get_extra_info("sslcontext") is not None

    def has(self, capability: str) -> bool:
        return self._client is not None and self._client.has_capability(capability)

    async def open(self) -> None:
        config, mode = self._config, self._mode
        assert config.host is not None
        self._client = client = aioimaplib.IMAP4(
            host=config.host,
            port=config.port,
            timeout=self._timeout,
            conn_lost_cb=lambda _error: self.lost.set(),
            ssl_context=self._context if mode == "implicit" else None,
        )
        await client.wait_hello_from_server()
        if mode in ("starttls", "default") and self.has("STARTTLS"):
            await self._starttls()
        required = mode in ("starttls", "implicit") or (
            mode == "default" and not is_local_host(config.host)
        )
        if required and not self.encrypted:
            raise ImapError("the server offered no STARTTLS: no login in clear text")
        _ok(
            await self._call(
                client.login(aioimaplib.quoted(config.username or ""), config.password or "")
            ),
            "LOGIN",
        )
        # What the server can do once logged in (MOVE, IDLE): not always in LOGIN's answer.
        await self._call(client.protocol.capability())

    async def _starttls(self) -> None:
        assert self._client is not None and self._context is not None
        protocol = self._client.protocol
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        _ok(await self._call(protocol.execute(command)), "STARTTLS")
        loop = asyncio.get_running_loop()
        protocol.transport = await self._call(
            loop.start_tls(
                protocol.transport,
                protocol,
                self._context,
                server_hostname=self._config.host,
            )
        )
        # RFC 3501: what was learnt before TLS is forgotten (a man in the middle could lie).
        await self._call(protocol.capability())

    async def create(self, name: str) -> None:
        """Create folder `name`; a folder that exists already is no failure."""
        assert self._client is not None
        response = await self._call(self._client.create(aioimaplib.quoted(name)))
        if response.result == "OK":
            log.info("mailbox: created the folder %s", name)

    async def select(self, name: str) -> _Folder:
        assert self._client is not None
        response = _ok(await self._call(self._client.select(aioimaplib.quoted(name))), "SELECT")
        text = b"\n".join(line for line in response.lines if isinstance(line, bytes))
        validity = re.search(rb"\[UIDVALIDITY (\d+)\]", text)
        if validity is None:
            raise ImapError("SELECT gave no UIDVALIDITY")
        flags = re.search(rb"\[PERMANENTFLAGS \(([^)]*)\)\]", text)
        return _Folder(int(validity[1]), flags is not None and b"\\*" in flags[1].split())

    async def search(self, first_uid: int, folder: _Folder) -> list[int]:
        """UIDs from `first_uid` on, neither deleted nor marked handled."""
        assert self._client is not None
        criteria = ["UID", f"{first_uid}:*", "UNDELETED"]
        if folder.keywords:
            criteria += ["NOT", "KEYWORD", KEYWORD]
        response = _ok(
            await self._call(self._client.uid_search(*criteria, charset=None)), "UID SEARCH"
        )
        return [
            int(word) for line in response.lines[:-1] for word in line.split() if word.isdigit()
        ]

    async def fetch(self, name: str, uidvalidity: int, uid: int, max_size: int) -> RawMail | None:
        """Mail `uid`, whole or (over `max_size`) its header only; None when it is gone."""
        assert self._client is not None
        meta = _ok(
            await self._call(
                self._client.uid("FETCH", str(uid), "(UID RFC822.SIZE INTERNALDATE)")
            ),
            "UID FETCH",
        )
        text, _ = _fetched(meta.lines, uid)
        if text is None:
            return None
        size = re.search(rb"RFC822\.SIZE (\d+)", text)
        arrived = _internal_date(text)
        if size is None or arrived is None:
            raise ImapError(f"UID FETCH {uid} gave no size or date")
        too_big = int(size[1]) > max_size
        part = f"BODY.PEEK[HEADER]<0.{HEADER_CAP}>" if too_big else "BODY.PEEK[]"
        # The client's own timeout restarts with each chunk: a large mail on a slow line
        # is not cut, a silent server is.
        body = _ok(
            await self._call(self._client.uid("FETCH", str(uid), f"(UID {part})"), bounded=False),
            "UID FETCH",
        )
        text, literal = _fetched(body.lines, uid)
        if text is None:
            return None
        return RawMail(
            folder=name,
            uidvalidity=uidvalidity,
            uid=uid,
            raw=bytes(literal or b""),
            size=int(size[1]),
            internal_date=arrived,
            too_big=too_big,
        )

    async def mark(self, uid: int, folder: _Folder, after: str, move_to: str) -> None:
        assert self._client is not None
        flags = f"(\\Seen {KEYWORD})" if folder.keywords else "(\\Seen)"
        _ok(
            await self._call(self._client.uid("STORE", str(uid), "+FLAGS.SILENT", flags)),
            "UID STORE",
        )
        if after != "move":
            return
        # No MOVE: a copy, and the original stays, flagged (nothing is ever deleted).
        command = "MOVE" if self.has("MOVE") else "COPY"
        _ok(
            await self._call(self._client.uid(command, str(uid), aioimaplib.quoted(move_to))),
            f"UID {command}",
        )

    async def wait_for_mail(self, stop: asyncio.Event, seconds: float) -> None:
        """Until `stop`, `seconds`, or (with IDLE) a new mail."""
        if not self.has("IDLE"):
            await _until(stop, seconds, self.lost)
        else:
            await self._idle(stop, seconds)
        if self.lost.is_set() and not stop.is_set():
            raise ImapError("connection lost")

    async def _idle(self, stop: asyncio.Event, seconds: float) -> None:
        assert self._client is not None
        client = self._client
        queue = client.protocol.idle_queue
        while not queue.empty():  # pushes left from an IDLE already ended
            queue.get_nowait()
        idle = await self._call(client.idle_start(timeout=seconds))
        try:
            while client.has_pending_idle():
                push = await _race(client.wait_server_push(timeout=seconds * 2), stop, self.lost)
                if push is None or push == aioimaplib.STOP_WAIT_SERVER_PUSH:
                    break
                if any(isinstance(line, bytes) and line.endswith(b" EXISTS") for line in push):
                    break
        except TimeoutError:
            pass  # the re-issue, late
        finally:
            if not self.lost.is_set() and client.has_pending_idle():
                client.idle_done()
                await _race(idle, self.lost, within=self._timeout)

    async def close(self) -> None:
        client = self._client
        if client is None:
            return
        if not self.lost.is_set() and client.protocol.transport is not None:
            try:
                await _race(client.logout(), self.lost, within=self._timeout)
            except Exception:  # the server went first; closing is what is left to do
                log.debug("mailbox: logout failed", exc_info=True)
        if client.protocol.transport is not None:
            client.protocol.transport.close()

    async def _call(self, step: Awaitable[T], *, bounded: bool = True) -> T:
        """`step`'s result; ImapError when the connection is lost or (`bounded`) no answer
        comes in time."""
        limit = self._timeout if bounded else None
        result = await _race(step, self.lost, within=limit, fail=True)
        return cast(T, result)


async def _race(
    step: Awaitable[T],
    *events: asyncio.Event,
    within: float | None = None,
    fail: bool = False,
) -> T | None:
    """`step`'s result, or None when one of `events` is set or `within` seconds pass first (the
    step is then cancelled); with `fail`, ImapError instead of None."""
    task = asyncio.ensure_future(step)
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        done, _ = await asyncio.wait(
            {task, *waiters}, timeout=within, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        pending = [future for future in (task, *waiters) if not future.done()]
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    if task in done:
        return task.result()
    if fail:
        if any(event.is_set() for event in events):
            raise ImapError("connection lost")
        raise ImapError(f"no answer within {within:.0f} s")
    return None


async def _until(stop: asyncio.Event, seconds: float, *others: asyncio.Event) -> None:
    """Sleep `seconds`, or less when `stop` (or one of `others`) is set."""
    await _race(stop.wait(), *others, within=seconds)


def _ok(response: Any, command: str) -> Any:
    if response.result != "OK":
        # The response code ([AUTHENTICATIONFAILED], [NONEXISTENT]…), never the free text.
        last = response.lines[-1] if response.lines else b""
        code = re.match(rb"\[([A-Z-]+)", last) if isinstance(last, bytes) else None
        detail = f" [{code[1].decode()}]" if code else ""
        raise ImapError(f"{command} refused: {response.result}{detail}")
    return response


def _fetched(lines: Sequence[Any], uid: int) -> tuple[bytes | None, bytes | None]:
    """The FETCH answer about `uid` among `lines` (aioimaplib: bytes for lines, a bytearray
    per literal): its text without the literals, and its first literal. Unsolicited FETCH
    answers (another client's flag change) are passed over."""
    groups: list[tuple[bytearray, list[bytes]]] = []
    for line in lines[:-1]:  # the last is the tagged status text
        if isinstance(line, bytearray):
            if groups:
                groups[-1][1].append(bytes(line))
        elif re.match(rb"\d+ FETCH \(", line):
            groups.append((bytearray(line), []))
        elif groups:
            groups[-1][0].extend(b" " + line)
    for text, literals in groups:
        found = re.search(rb"\bUID (\d+)", text)
        if found is not None and int(found[1]) == uid:
            return bytes(text), literals[0] if literals else None
    return None, None


_MONTHS = {
    name.encode(): number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_INTERNALDATE = re.compile(
    rb'INTERNALDATE "([ \d]?\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)"'
)


def _internal_date(text: bytes) -> datetime | None:
    """INTERNALDATE ("17-Jul-1996 02:44:25 -0700", RFC 3501) as an aware datetime."""
    found = _INTERNALDATE.search(text)
    if found is None or found[2].title() not in _MONTHS:
        return None
    day, _, year, hour, minute, second, sign, off_h, off_m = found.groups()
    offset = timedelta(hours=int(off_h), minutes=int(off_m)) * (-1 if sign == b"-" else 1)
    return datetime(
        int(year),
        _MONTHS[found[2].title()],
        int(day),
        int(hour),
        int(minute),
        int(second),
        tzinfo=timezone(offset),
    )


def _describe(error: BaseException) -> str:
    """A failure as an operator can act on it, without what a library may quote (a command
    line holds the login; a server's text may quote a mail)."""
    if isinstance(error, ImapError):
        return str(error)
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"{type(error).__name__}: {error.verify_message}"
    if isinstance(error, OSError) and error.strerror:
        return f"{type(error).__name__}: {error.strerror}"
    return type(error).__name__
