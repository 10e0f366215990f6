"""`!dashboard`: a staff member's one-time login link to the staff dashboard (SPEC §10).

Decisions worth knowing:

* Asked in the staff room only (elsewhere a polite refusal): that is where staff work, and the
  command needs nobody else's room.
* The link goes to the bot's direct room with the staff member who asked, never to the staff
  room, where every staff member (and whoever else is in it) would read it. It logs in as that
  staff member only, works once, for `web.dashboard_link_minutes`, and asking again cancels
  their links not used yet. The staff room is told where the link went.
* Opening the link shows a button; only the button (a POST) uses it, so the homeserver's or
  Element's link previews cannot (see `bot.web.dashboard`).
"""

from __future__ import annotations

from bot.i18n import N_, Msg
from bot.routing import Context, DomainError, Router
from bot.web.dashboard import issue_dashboard_link
from handlers.common import staff_direct_room

router = Router("dashboard")

DASHBOARD_DM = N_(
    "Your login link to the staff dashboard (queue, calls, consumption, deadlines kept, "
    "satisfaction). It works once, within {minutes} minutes, and logs in as you only: do not "
    "share it. {url}"
)
DASHBOARD_SENT = N_("I sent you a login link to the dashboard in a direct message.")
DASHBOARD_NOT_HERE = N_(
    "Please ask for the dashboard in the staff room: I will send you the link in a direct message."
)
DASHBOARD_NO_SECRET = N_("The dashboard needs [web] secret in the configuration.")
DM_NAME = N_("Support bot")


@router.command(
    "dashboard",
    "tableau",
    help=N_("Get a one-time login link to the staff dashboard, in a direct message."),
    staff=True,
)
async def dashboard(ctx: Context) -> None:
    if not ctx.in_staff_room:
        raise DomainError(Msg(DASHBOARD_NOT_HERE))
    config = ctx.services.config
    if not config.web.secret:
        raise DomainError(Msg(DASHBOARD_NO_SECRET))
    staff = ctx.sender.user_id
    url = await issue_dashboard_link(staff, config, ctx.now)
    room = await staff_direct_room(ctx, staff, ctx.tr.gettext(DM_NAME))
    ctx.send(room, Msg(DASHBOARD_DM, {"url": url, "minutes": config.web.dashboard_link_minutes}))
    ctx.reply(Msg(DASHBOARD_SENT))
