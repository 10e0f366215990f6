"""Reading the support mailbox (`[mail.inbound]`): `MailboxReader.run` hands every new mail
to the sink, in UID order, and never stops before it is told to.

One loop: connect, log in, SELECT the folder, look (hand each new mail to the sink, mark the
handled ones: `bot.mailbox.imap`), wait, look again; after any failure (the network, TLS, the
login, the server, the sink raising) start again after a pause of 1 s, doubling up to 5 min,
back to 1 s after a complete look.

Where to start. The database is the truth (`bot.storage.mailbox`): the sink advances the
folder's position (UIDVALIDITY, last UID) in the transaction that handles a mail, and each
look reads it and asks the server for the UIDs after it. A crash between fetch and commit
leaves the position where it was: the mail comes again and is handled once. A crash between
the commit and the marking leaves a handled mail unmarked; it is not handled again. A new
UIDVALIDITY (the server renumbered the folder: seen at each look's SELECT) starts from the
folder's first mail. At its first start the bot reads every mail of the folder that is not
deleted or marked handled.

Waiting. A look every `poll_interval` seconds, and with IDLE, when the server has it, at once
when a mail arrives. The looks go on under IDLE (re-issued at least every 25 minutes: servers
may drop an idle client after 30) because a mail that arrives between a look's last search
and the next IDLE is announced in an answer to another command, which aioimaplib drops; each
look searches again until nothing is new, which keeps that moment short. A mail the sink did
not take now (False) is offered again at the next look, before any later one.

Logs carry the host, the folder, UIDs and the kind of failure: never a mail's content, a
sender, the login or the password.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bot.config import InboundMailConfig
from bot.mailbox.imap import (
    Folder,
    ImapConnection,
    ImapError,
    config_warnings,
    tls_mode,
    until,
)
from bot.mailbox.raw import MailSink
from bot.storage import mailbox as positions

__all__ = ["IDLE_RENEW_SECONDS", "MailboxReader", "MailboxStats"]

log = logging.getLogger(__name__)

#: IDLE is re-issued this often: RFC 2177 lets a server end an idle client after 30 minutes.
IDLE_RENEW_SECONDS = 25 * 60

PositionOf = Callable[[str], Awaitable[positions.Position | None]]


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
                await until(stop, self._delay)
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
        connection = ImapConnection(config, self._context, self._timeout)
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
        self, connection: ImapConnection, folder: Folder, done: int, stop: asyncio.Event
    ) -> int:
        """Hand every new mail to the sink in UID order, until one is not handled now: the
        last UID handled. Searches again until nothing is new, so that mails arriving during
        a batch do not wait for the next look."""
        config = self._config
        seen = done  # the last UID looked at in this look
        while not stop.is_set():
            position = await self._position(config.folder)
            last = (
                position.last_uid if position and position.uidvalidity == folder.uidvalidity else 0
            )
            last = max(last, seen)
            uids = sorted(uid for uid in await connection.search(last + 1, folder) if uid > last)
            if not uids:
                break
            for uid in uids:
                if stop.is_set():
                    break
                seen = uid
                mail = await connection.fetch(
                    config.folder, folder.uidvalidity, uid, config.max_size
                )
                if mail is None:  # expunged by someone else meanwhile
                    continue
                try:
                    handled = await self._sink(mail)
                except Exception as error:
                    raise ImapError(
                        f"handling mail {uid} failed ({type(error).__name__})"
                    ) from error
                if not handled:
                    log.info(
                        "mailbox: mail %d of %s not handled now: offered again later",
                        uid,
                        config.folder,
                    )
                    return done
                self.stats.read += 1
                done = uid
                log.debug("mailbox: mail %d of %s handled", uid, config.folder)
                await connection.mark(uid, folder, config.after, config.move_to)
        return done


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
