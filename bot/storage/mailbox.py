"""How far the support mailbox has been read (IMAP UIDVALIDITY and last UID, per folder).

`advance` is called inside the transaction of whatever the mail changed (a new request, a
note on a ticket), so that the mail and the position commit together: after a crash between
fetch and commit the mail is fetched again and handled once. A new UIDVALIDITY (the server
renumbered the folder) starts the count again from that mail.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bot.storage.models import MailboxPosition


@dataclass(frozen=True, slots=True)
class Position:
    uidvalidity: int
    last_uid: int


async def position(folder: str) -> Position | None:
    """Where reading `folder` stopped, or None when it was never read."""
    row = await MailboxPosition.get_or_none(folder=folder)
    return Position(row.uidvalidity, row.last_uid) if row else None


async def advance(folder: str, uidvalidity: int, uid: int, *, now: datetime) -> bool:
    """Record mail `uid` of `folder` as handled; False when it already was (handle nothing).

    Call it inside the transaction that handles the mail.
    """
    row = await MailboxPosition.select_for_update().get_or_none(folder=folder)
    if row is None:
        await MailboxPosition.create(
            folder=folder, uidvalidity=uidvalidity, last_uid=uid, updated_at=now
        )
        return True
    if row.uidvalidity == uidvalidity and uid <= row.last_uid:
        return False
    await MailboxPosition.filter(folder=folder).update(
        uidvalidity=uidvalidity, last_uid=uid, updated_at=now
    )
    return True
