"""A client's right to be forgotten (SPEC §7): `!forget-me` explains, `!forget-me confirm`
erases their personal data (texts, e-mail, Matrix id → an anonymous id) and keeps the
anonymous billing figures. Stateless on purpose: the confirmation is the explicit word.

Decisions worth knowing:

* **What "no personal data" means.** The bot keeps someone's data as soon as any row names
  them: a request, an intake (even a dropped one, whose row keeps its step), a language
  preference. Only then does `!forget-me` say there is nothing to delete.
* **After the commit, on Matrix.** The staff cards of their requests are edited to a
  placeholder, and the bot redacts its own messages that held their data (every message in
  their own rooms, and elsewhere those that quote or name them), as outbox rows: sent after
  the erasure commits, and retried. Only messages whose record is still kept can be redacted:
  see `prune_outbox`.
* **Staff are not erased this way.** Their id is in the history of every request they
  worked on; an operator erases a person with `support-bot client erase`.
* **The outbox is a record, kept `service.outbox_retention_days`.** Sent rows hold what the
  bot said, client texts included; `prune_outbox` forgets them after the retention (failed
  ones counted from when they were written), and keeps what is still to send.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from bot.i18n import N_, Msg
from bot.routing import Context, Outgoing, Router
from bot.storage import personal_data
from handlers.common import refuse_if_bridged

if TYPE_CHECKING:
    from bot.services import Services

log = logging.getLogger(__name__)

router = Router("privacy")

CONFIRM_WORDS = frozenset({"confirm", "confirmer", "oui", "yes"})

EXPLAIN = N_(
    "This deletes the personal data the support service keeps about you: the texts of your "
    "requests, your e-mail address and your Matrix id (replaced by an anonymous id). The "
    "billing figures stay, anonymously. To go ahead, type: {command}"
)
DONE = N_(
    "Done: your personal data has been deleted. If you write again, you will be treated as "
    "a new client."
)
NOTHING = N_("I keep no personal data about you: there is nothing to delete.")
STAFF_NOTICE = N_("A client used their right to be forgotten; their requests are now anonymous.")
NOT_FOR_STAFF = N_(
    "Staff accounts are part of the history of the requests they worked on: an administrator "
    "can erase a person with the command support-bot client erase."
)
#: What a staff card shows once its client's data is erased (in the staff language).
ERASED_CARD = N_("{ref}: the client's personal data has been erased.")


@router.command("forget-me", "oubliez-moi", help=N_("Delete the personal data I keep about you."))
async def forget_me(ctx: Context) -> None:
    # Behind a bridge anyone can take a nickname: erasing on its word would let Bob erase
    # Alice. Refused there, with a pointer to a private channel.
    refuse_if_bridged(ctx)
    if ctx.is_staff:
        ctx.reply(Msg(NOT_FOR_STAFF))
        return
    if not await personal_data.holds_data(ctx.sender.key):
        ctx.reply(Msg(NOTHING))
        return
    if ctx.args.strip().lower() not in CONFIRM_WORDS:
        confirm_word = "confirmer" if ctx.tr.locale == "fr" else "confirm"
        ctx.reply(Msg(EXPLAIN, {"command": f"!{ctx.command} {confirm_word}"}))
        return
    erasure = await personal_data.erase_data(ctx.sender.key, now=ctx.now, actor="client")
    ctx.reply(Msg(DONE))
    if erasure is not None:
        staff_tr = ctx.services.staff_tr()
        rows = personal_data.erasure_outbox(
            erasure,
            staff_room=ctx.services.staff_room_id(),
            card_text=lambda ref: ctx.render(Msg(ERASED_CARD, {"ref": ref}), staff_tr),
        )
        ctx.outgoing.extend(Outgoing(**row) for row in rows)
    ctx.send_staff(Msg(STAFF_NOTICE))


async def prune_outbox(services: Services, now: datetime) -> None:
    """Forget the messages sent longer ago than the retention (see the module doc)."""
    days = services.config.service.outbox_retention_days
    pruned = await personal_data.prune_outbox(now - timedelta(days=days))
    if pruned:
        log.info("outbox: %d row(s) older than %d day(s) pruned", pruned, days)


SWEEPERS = [prune_outbox]
