"""The consent request as production makes it, for tests that start from a ticket rather than
from a staff `!estimate`: the same issuing (`bot.consent.prepare_consent`) and the same
delivery (an outbox mail row sent by `bot.outbox.Deliverer`)."""

from __future__ import annotations

import secrets
from datetime import datetime

from bot.config import Config
from bot.consent import NoAddress, client_contact, prepare_consent
from bot.i18n import Catalogs
from bot.mail import Mailer, MailError
from bot.outbox import Deliverer
from bot.routing import MAIL_QUEUE
from bot.storage.models import OutboxItem, Ticket


async def request_consent(
    ticket: Ticket, *, config: Config, catalogs: Catalogs, mailer: Mailer, now: datetime
) -> datetime:
    """Issue a link for the ticket's estimate and mail it through the outbox; returns when
    the link expires. Raises `MailError` when there is no address or the mail failed."""
    contact = await client_contact(ticket)
    request = await prepare_consent(
        ticket,
        client_email=contact.email,
        locale=contact.locale,
        config=config,
        catalogs=catalogs,
        now=now,
    )
    if isinstance(request, NoAddress):
        raise MailError("neither the ticket nor its client has an e-mail address")
    row = await OutboxItem.create(
        txn_id="test-consent-" + secrets.token_hex(6),
        room_id=MAIL_QUEUE,
        kind="mail",
        content={"mail": request.mail.to_content(), "if_sent": [], "if_failed": []},
        created_at=now,
    )
    deliverer = Deliverer(None, lambda: now, mailer=lambda: mailer, backoff=0.01)  # type: ignore[arg-type]
    await deliverer.deliver_pending()
    await row.refresh_from_db()
    if row.sent_at is None:
        raise MailError("the consent mail could not be sent")
    return request.expires_at
