"""Where the mailbox reader hands each mail: `MailSink`, the e-mail channel's entry point.

The IMAP reader fetches mails in UID order and awaits `sink(mail)` for each, one at a time.
The sink parses the raw bytes (`bot.domain.mail_in`, in a worker thread: parsing and language
detection are CPU work) into an `IncomingMail` and hands it to the dispatcher like any Matrix
event: its transaction, its error boundary, the lock of its sender, the `mail` handlers of the
router (`handlers.mail`). The dispatcher advances the mailbox position
(`bot.storage.mailbox.advance`) in that same transaction, so that a crash between the fetch
and the commit replays the mail, handled once.

The sink (as `bot.mailbox.raw.MailSink` promises) returns True when the mail is dealt with
(handled now, or before: the reader may flag or move it), False when it could not be
handled for now (the database is away: the reader keeps it and tries again, before any later
mail). A mail that fails inside a handler is dealt with too (the error boundary apologised
and counted it): it is never retried for ever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from email.utils import parseaddr

from bot.dispatch import Dispatcher, is_database_outage
from bot.domain.mail_in import mail_event_id, parse_mail
from bot.events import EMAIL_ROOM, MAILTO, IncomingMail
from bot.mailbox.raw import RawMail
from bot.storage import mailbox

log = logging.getLogger(__name__)


class ChannelSink:
    """`await sink(mail)` for each mail of the support mailbox, in UID order (a
    `bot.mailbox.raw.MailSink`)."""

    def __init__(
        self, dispatcher: Dispatcher, *, own_address: str, clock: Callable[[], datetime]
    ) -> None:
        self.dispatcher = dispatcher
        self.own_address = parseaddr(own_address)[1].lower() or own_address.lower()
        self.clock = clock

    async def __call__(self, mail: RawMail) -> bool:
        try:
            position = await mailbox.position(mail.folder)
            if (
                position is not None
                and position.uidvalidity == mail.uidvalidity
                and mail.uid <= position.last_uid
            ):
                return True  # handled before a crash or a restart: nothing to do
            event = await self._read(mail)
            await self.dispatcher.handle(event)
        except Exception as error:
            if is_database_outage(error):
                log.warning("mail %s of %s: database unavailable, kept", mail.uid, mail.folder)
                return False
            raise
        return True

    async def _read(self, mail: RawMail) -> IncomingMail:
        now = self.clock()
        try:
            return await asyncio.to_thread(
                parse_mail,
                mail.raw,
                folder=mail.folder,
                uidvalidity=mail.uidvalidity,
                uid=mail.uid,
                now=now,
                own_address=self.own_address,
                internal_date=mail.internal_date,
                too_big=mail.too_big,
                size=mail.size,
            )
        except Exception as error:
            # Nothing of it could be read: staff are told it is in the mailbox (the handler
            # answers nobody: there is no one known to answer). The error's class only: its
            # text may quote the mail.
            log.error(
                "mail %s of %s could not be parsed (%s)",
                mail.uid,
                mail.folder,
                type(error).__name__,
            )
            return IncomingMail(
                event_id=mail_event_id(mail.folder, mail.uidvalidity, mail.uid),
                room_id=EMAIL_ROOM,
                sender=MAILTO,
                ts=now,
                folder=mail.folder,
                uidvalidity=mail.uidvalidity,
                uid=mail.uid,
                auto="unreadable",
                size=mail.size,
            )
