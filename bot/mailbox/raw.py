"""A mail as read from the support mailbox, and the sink that handles it. Pure values.

`bot.mailbox.imap` reads; whatever a mail becomes (a request, a note on a ticket, nothing)
is the sink's business. The sink is the one place that decides that a mail was handled, and
it decides it in the database: it calls `bot.storage.mailbox.advance(mail.folder,
mail.uidvalidity, mail.uid, now=…)` inside the transaction that records what the mail
changed, and returns True only once that transaction is committed. A mail whose `advance`
says False was handled before (a replay after a crash between commit and marking): the sink
changes nothing and returns True, so that the reader marks it now.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["MailSink", "RawMail"]


@dataclass(frozen=True, slots=True)
class RawMail:
    """One message of the support mailbox, as the IMAP server holds it.

    `raw` is the whole message (RFC 5322 bytes), or only its header when the message is
    larger than `[mail.inbound] max_size` (`too_big`: the body was never downloaded; `size`
    still says how large the message is). `internal_date` is when the server received it,
    aware: the arrival that deadlines count from. Neither the bytes nor anything of the
    sender shows in the `repr`.
    """

    folder: str
    uidvalidity: int
    uid: int
    raw: bytes = field(repr=False)
    size: int
    internal_date: datetime
    too_big: bool = False

    def __post_init__(self) -> None:
        if self.internal_date.tzinfo is None:
            raise ValueError("internal_date must be an aware datetime")


#: Handles one mail: True once it is handled and committed (or was already, before), and the
#: reader may then mark it (flag or move); False when it is not handled now, and the reader
#: stops there and offers it again later (mails are handled in UID order, none skipped). An
#: exception counts as an error: the reader reconnects after a pause and offers it again.
MailSink = Callable[[RawMail], Awaitable[bool]]
