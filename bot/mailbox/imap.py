"""The IMAP side of the support mailbox (aioimaplib): one connection, its commands, and the
answers it reads. `bot.mailbox.reader` drives it.

Searching. `UID SEARCH UID n:* UNDELETED NOT KEYWORD $SupportBot`: mails flagged \\Deleted are
never read, nor, where the server keeps keywords (PERMANENTFLAGS holds \\*), those the bot
marked handled, so a first start or a renumbered folder does not handle anything twice.

Fetching. RFC822.SIZE and INTERNALDATE first; then the whole mail (BODY.PEEK[]: nothing is
marked read by the fetch), or, over `max_size`, its header only (at most 64 KiB): the body of
a too-big mail is never downloaded.

Marking a handled mail: \\Seen and `$SupportBot` (\\Seen only where keywords are refused);
with `after = "move"`, then UID MOVE (RFC 6851) to `move_to`, created if missing. Nothing is
ever deleted: a server without MOVE gets a COPY, and the original stays, flagged, where it was
(no \\Deleted, no EXPUNGE).

Waiting. IDLE (RFC 2177) when the server has it: a new mail (EXISTS) ends it; else a plain
wait. Every command is bounded in time and given up as soon as the connection is lost.

Transport security, as `[mail] tls` (`bot.mail`): not set is TLS from the first byte on port
993, else STARTTLS whenever offered and required when the server is not on this machine;
"starttls", "implicit" and "none" say so explicitly. Certificates are always verified
(`ca_file` instead of the system's CAs). The login happens only once the connection is in
its final state. aioimaplib has no STARTTLS of its own: the command is sent, then asyncio's
`loop.start_tls` upgrades the connection under the same protocol object, and the
capabilities are asked again (RFC 3501: what was learnt before TLS is forgotten).
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar, cast

import aioimaplib

from bot.config import InboundMailConfig
from bot.mail import TlsMode, is_local_host
from bot.mailbox.raw import RawMail

__all__ = [
    "IMAPS_PORT",
    "KEYWORD",
    "Folder",
    "ImapConnection",
    "ImapError",
    "config_warnings",
    "tls_mode",
    "until",
]

log = logging.getLogger(__name__)

#: IMAP over TLS from the first byte ("IMAPS"): the default port, and the default there.
IMAPS_PORT = 993
#: The keyword that marks a mail the bot handled (where the server keeps keywords).
KEYWORD = "$SupportBot"
#: At most this much of a too-big mail's header is read.
HEADER_CAP = 64 * 1024

T = TypeVar("T")


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


@dataclass(frozen=True, slots=True)
class Folder:
    """The selected folder as the server numbers it."""

    uidvalidity: int
    keywords: bool  # the server keeps keywords of our own (PERMANENTFLAGS holds \*)


class ImapConnection:
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

    async def select(self, name: str) -> Folder:
        assert self._client is not None
        response = _ok(await self._call(self._client.select(aioimaplib.quoted(name))), "SELECT")
        text = b"\n".join(line for line in response.lines if isinstance(line, bytes))
        validity = re.search(rb"\[UIDVALIDITY (\d+)\]", text)
        if validity is None:
            raise ImapError("SELECT gave no UIDVALIDITY")
        flags = re.search(rb"\[PERMANENTFLAGS \(([^)]*)\)\]", text)
        return Folder(int(validity[1]), flags is not None and b"\\*" in flags[1].split())

    async def search(self, first_uid: int, folder: Folder) -> list[int]:
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

    async def mark(self, uid: int, folder: Folder, after: str, move_to: str) -> None:
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
            await until(stop, seconds, self.lost)
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


async def until(stop: asyncio.Event, seconds: float, *others: asyncio.Event) -> None:
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
