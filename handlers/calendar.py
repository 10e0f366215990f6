"""The staff's calendar of calls (part of SPEC R4–R6, §5): `!slots` lists the upcoming calls
and the blocked periods, `!block` / `!unblock` take time out of the availability the offers are
made from, and `!calendar` hands a staff member the private `.ics` feed of their calls.

Decisions worth knowing:

* **Blocks** cover everyone or one staff member of the availability (`@staff` first). A block
  cancels nothing: calls already booked in the period are listed with the confirmation, for
  staff to move (`!book`) or cancel (`!unbook`). New offers and bookings respect it at once.
* **`!slots`** shows other clients' requests, so it answers only in the staff room or a room
  whose members are all staff.
* **`!calendar`** issues a new feed token (the previous link stops working) and sends the link
  in the bot's direct room with that staff member, remembered in `BotState` under a hash of
  their user id (re-invited if they left).
"""

from __future__ import annotations

import re
from datetime import datetime

from tortoise.transactions import in_transaction

from bot.domain.slots import SlotInputError, parse_block
from bot.i18n import N_, Msg
from bot.routing import Context, DomainError, Router
from bot.storage.models import Block, Booking
from handlers.common import ACTIVE_BOOKING, staff_direct_room, staff_private

router = Router("calendar")

# --- messages (English msgids) ---------------------------------------------------------------

SLOTS_CALLS = N_("Upcoming calls:")
SLOTS_NO_CALLS = N_("No upcoming calls.")
SLOTS_CALL_LINE = N_("• {when}–{end} · {ref} · {staff}")
SLOTS_BLOCKS = N_("Blocked periods (!unblock <number> to remove one):")
SLOTS_NO_BLOCKS = N_("No blocked periods.")
SLOTS_BLOCK_LINE = N_("• #{id} · {start} → {end} · {who}")
EVERYONE = N_("everyone")
BLOCKED = N_("Blocked #{id}: {start} → {end} for {who}. Undo with !unblock {id}.")
BLOCK_OVERLAPS = N_(
    "These calls fall in that period and are still booked (move them with !book or cancel "
    "them with !unbook): {calls}"
)
BLOCK_UNKNOWN_STAFF = N_("{staff} has no availability in the configuration.")
BLOCK_PAST = N_("This period is already over.")
UNBLOCK_USAGE = N_("Please give the number of the blocked period, for example: !unblock 3")
UNBLOCK_UNKNOWN = N_("There is no blocked period #{id}. !slots lists them.")
UNBLOCKED = N_("Blocked period #{id} removed.")
CALENDAR_DM = N_(
    "Your calendar of support calls, to subscribe to in your calendar application (keep this "
    "link private; !calendar again gives a new one and disables this one): {url}"
)
CALENDAR_SENT = N_("I sent you the link of your calendar in a direct message.")
CALENDAR_NO_SECRET = N_("Calendar feeds need [web] secret in the configuration.")
DM_NAME = N_("Support calls")
NOT_HERE = N_("Please use this command in the staff room: it shows other clients' requests.")


@router.command(
    "slots",
    "creneaux",
    help=N_("List the upcoming calls and the blocked periods."),
    staff=True,
)
async def show_slots(ctx: Context) -> None:
    if not staff_private(ctx):
        raise DomainError(Msg(NOT_HERE))
    tr = ctx.tr
    bookings = (
        await Booking.filter(status=ACTIVE_BOOKING, end__gt=ctx.now)
        .select_related("ticket")
        .order_by("start", "id")
    )
    blocks = await Block.filter(end__gt=ctx.now).order_by("start", "id")
    lines = [tr.render(Msg(SLOTS_CALLS if bookings else SLOTS_NO_CALLS), ctx.tz)]
    for booking in bookings:
        params = {
            "when": booking.start,
            "end": tr.format_time(booking.end, ctx.tz),
            "ref": booking.ticket.ref,
            "staff": booking.staff,
        }
        lines.append(tr.render(Msg(SLOTS_CALL_LINE, params), ctx.tz))
    lines.append("")
    lines.append(tr.render(Msg(SLOTS_BLOCKS if blocks else SLOTS_NO_BLOCKS), ctx.tz))
    for block in blocks:
        who = block.staff or tr.gettext(EVERYONE)
        params = {"id": str(block.id), "start": block.start, "end": block.end, "who": who}
        lines.append(tr.render(Msg(SLOTS_BLOCK_LINE, params), ctx.tz))
    ctx.reply("\n".join(lines))


@router.command(
    "block",
    "bloquer",
    help=N_("Block a period for calls (everyone, or one staff member)."),
    usage="[@staff] 2026-12-03 14:00-16:00",
    staff=True,
)
async def block(ctx: Context) -> None:
    words = ctx.args.split()
    staff: str | None = None
    if words and words[0].startswith("@"):
        staff, words = words[0], words[1:]
        known = {window.staff for window in ctx.services.config.availability}
        if staff not in known:
            raise DomainError(Msg(BLOCK_UNKNOWN_STAFF, {"staff": staff}))
    try:
        start, end = parse_block(" ".join(words), ctx.tz)
    except SlotInputError as error:
        raise DomainError(error.msg) from None
    if end <= ctx.now:
        raise DomainError(Msg(BLOCK_PAST))
    row = await Block.create(
        staff=staff, start=start, end=end, created_by=ctx.sender.user_id, created_at=ctx.now
    )
    who = staff or ctx.tr.gettext(EVERYONE)
    lines = [
        ctx.tr.render(
            Msg(BLOCKED, {"id": str(row.id), "start": start, "end": end, "who": who}), ctx.tz
        )
    ]
    overlapping = Booking.filter(status=ACTIVE_BOOKING, start__lt=end, end__gt=start)
    if staff is not None:
        overlapping = overlapping.filter(staff=staff)
    calls = await overlapping.select_related("ticket").order_by("start")
    if calls:
        listed = ", ".join(
            f"{b.ticket.ref} ({ctx.tr.format_datetime_long(b.start, ctx.tz)})" for b in calls
        )
        lines.append(ctx.tr.render(Msg(BLOCK_OVERLAPS, {"calls": listed}), ctx.tz))
    ctx.reply("\n".join(lines))


@router.command(
    "unblock",
    "debloquer",
    help=N_("Remove a blocked period (its number is in !slots)."),
    usage="N",
    staff=True,
)
async def unblock(ctx: Context) -> None:
    value = ctx.args.strip().lstrip("#")
    if not value.isdigit():
        raise DomainError(Msg(UNBLOCK_USAGE))
    if not re.fullmatch(r"[0-9]{1,9}", value):  # "²" is a digit too; ids fit 9 digits
        raise DomainError(Msg(UNBLOCK_UNKNOWN, {"id": value}))
    deleted = await Block.filter(id=int(value)).delete()
    if not deleted:
        raise DomainError(Msg(UNBLOCK_UNKNOWN, {"id": value}))
    ctx.reply(Msg(UNBLOCKED, {"id": value}))


@router.command(
    "calendar",
    "calendrier",
    help=N_("Get the private calendar feed (.ics) of your calls, in a direct message."),
    staff=True,
)
async def calendar(ctx: Context) -> None:
    services = ctx.services
    secret = services.config.web.secret
    if not secret:
        raise DomainError(Msg(CALENDAR_NO_SECRET))
    staff = ctx.sender.user_id
    token = await _issue_feed_token(staff, secret, ctx.now)
    url = f"{services.config.web.public_url.rstrip('/')}/calendar/{token}.ics"
    room = await staff_direct_room(ctx, staff, ctx.tr.gettext(DM_NAME))
    ctx.send(room, Msg(CALENDAR_DM, {"url": url}))
    if room != ctx.room_id:
        ctx.reply(Msg(CALENDAR_SENT))


async def _issue_feed_token(staff: str, secret: str, now: datetime) -> str:
    try:
        from bot.web.app import issue_staff_feed_token
    except ImportError:  # pragma: no cover - the web module provides it
        return await _own_feed_token(staff, secret, now)
    return await issue_staff_feed_token(staff, secret, now)


async def _own_feed_token(staff: str, secret: str, now: datetime) -> str:  # pragma: no cover
    from bot.storage.models import StaffFeed
    from bot.tokens import new_token, token_hash

    token = new_token()
    async with in_transaction():
        await StaffFeed.filter(staff=staff).delete()
        await StaffFeed.create(staff=staff, token_hash=token_hash(token, secret), created_at=now)
    return token
