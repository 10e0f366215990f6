"""A client's right to be forgotten (SPEC §7): `!forget-me` explains, `!forget-me confirm`
erases their personal data (texts, e-mail, Matrix id → an anonymous id) and keeps the
anonymous billing figures. Stateless on purpose: the confirmation is the explicit word."""

from __future__ import annotations

from bot.i18n import N_, Msg
from bot.routing import Context, Router
from bot.storage import repo
from bot.storage.models import Client

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


@router.command("forget-me", "oubliez-moi", help=N_("Delete the personal data I keep about you."))
async def forget_me(ctx: Context) -> None:
    client = await Client.get_or_none(key=ctx.sender.key)
    if client is None:
        ctx.reply(Msg(NOTHING))
        return
    if ctx.args.strip().lower() not in CONFIRM_WORDS:
        confirm_word = "confirmer" if ctx.tr.locale == "fr" else "confirm"
        ctx.reply(Msg(EXPLAIN, {"command": f"!{ctx.command} {confirm_word}"}))
        return
    await repo.erase_client(ctx.sender.key, now=ctx.now, actor="client")
    ctx.reply(Msg(DONE))
    ctx.send_staff(Msg(STAFF_NOTICE))
