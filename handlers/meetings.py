"""What follows a booked call (part of SPEC R4–R6, §5): its meeting link from the video
provider, its `.ics` invitation, its persisted reminders and the retry of a missing link, and
the end of its meeting once it is cancelled, replaced or over; and the pieces of a call the
booking side shares with them (which tickets have a call, writing to the ticket's client, the
staff's clock). A support module without a router: imported by `handlers.booking`, which lists
`send_reminders` and `end_meetings` in its `SWEEPERS`; it imports no router module.

Decisions worth knowing:

* **Meeting link.** Created with the booking (title "Support SP-…", neutral names). If the
  provider fails (or none is configured) the booking stays, staff get the error key, the client
  is told the link will follow; the reminder sweeper retries every few minutes and sends the
  link and an updated invitation when it works.
* **Invitation.** One UID per ticket's call (`support-call-<ref>@<host>`), its SEQUENCE raised
  on every change, so calendars move the event instead of adding one.
* **Reminders** are `Reminder` rows (one per `service.reminder_offsets_minutes` still in the
  future), each sent through `run_job("reminder:<id>")`: exactly once across sweeps and restarts.
  When several are due at once (the bot was down), only the nearest is sent; none once the call
  has started. Reminders within an hour of the call also `prepare()` the meeting (BigBlueButton
  forgets idle meetings) and give staff their link again.
* **Ending meetings, after the commit.** A cancelled or replaced booking, or an active one whose
  call ended `END_AFTER` ago, keeps its meeting until `end_meetings` (a sweeper, so never inside
  a handler's transaction) calls `end_meeting()` (Talk deletes the conversation, BigBlueButton
  ends the meeting, Jitsi has nothing to end) and then sets `Booking.meeting_ended_at`. A crash
  in between ends it again, which providers take as success. A meeting that an active booking
  still uses (the same ticket and slot booked again: the same meeting id) is not ended: that
  booking ends it in its turn; one booked again while the sweeper was ending it loses its link,
  and the link retry sends a new one. A failure is retried at the next sweep; after
  `END_MAX_FAILURES` failures, or `END_GIVE_UP_AFTER` after the first, the meeting is left to
  the provider with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email.utils import parseaddr
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from tortoise.expressions import Q
from tortoise.queryset import QuerySet

from bot.calendar_ics import invitation_ics
from bot.cards import CHANNEL_LABELS
from bot.domain.bridge import bridged_nick
from bot.domain.tickets import ACTIVE_STATUSES, Channel, Kind, Status
from bot.i18n import N_, Msg, Translator
from bot.routing import Context
from bot.services import Services
from bot.storage import repo
from bot.storage.models import Booking, Client, Notice, Reminder, Ticket
from bot.video import Meeting, VideoError
from handlers.common import ACTIVE_BOOKING, client_room, client_translator

log = logging.getLogger(__name__)

CALL_CHANNELS = frozenset({Channel.VIDEO, Channel.PHONE})
#: Reminders this close to the call also prepare the meeting and remind staff.
PREPARE_WITHIN_MINUTES = 60
#: How often a missing meeting link is asked for again.
LINK_RETRY = timedelta(minutes=5)
ALARM_MINUTES = 15
#: An active booking's meeting is ended this long after its slot: calls overrun, and ending
#: one sends everybody in it away.
END_AFTER = timedelta(hours=3)
#: Bookings looked at per sweep: the first sweep after an upgrade finds every past one.
END_BATCH = 50
#: Failed attempts (one per sweep), or time since the first, after which the meeting is left
#: to the provider (BigBlueButton forgets meetings on its own; a Talk conversation stays).
END_MAX_FAILURES = 20
END_GIVE_UP_AFTER = timedelta(days=1)

# --- messages (English msgids) ---------------------------------------------------------------

ICS_BODY = N_("Invitation for your calendar: {ref}")
SUMMARY = N_("Support call {ref}")
ICS_DESCRIPTION = N_("Support call {ref} ({minutes} minutes). Join: {link}")
LINK_FOLLOWS_CLIENT = N_("Here is the link for your {kind} of {when} ({ref}): {link}")
LINK_FOLLOWS_STAFF = N_("🔗 {ref}: the meeting of {when} now exists. Moderator link: {link}")
REMIND_DAY = N_("Reminder: your {kind} for {ref} is on {when}. Join with this link: {link}")
REMIND_SOON = N_(
    "Your {kind} for {ref} starts at {time}, in {minutes} minutes. Join with this link: {link}"
)
REMIND_NO_LINK = N_(
    "Reminder: your {kind} for {ref} is on {when}. The support team will send you the link."
)
REMIND_STAFF = N_("⏰ {ref}: call at {time} with {staff}. Moderator link: {link}")
REMIND_STAFF_NO_LINK = N_("⏰ {ref}: call at {time} with {staff}, but it has no meeting link.")
PREPARE_FAILED = N_(
    "⚠️ {ref}: the meeting of {when} could not be prepared ({error}). Check the video service."
)
NO_SHOW_HINT = N_("If the client does not join: react 🚫 to this message, or !noshow {ref}.")

#: The tag of a call's staff-room messages: the latest one's event id is
#: `Booking.staff_event_id`, and a 🚫 on any of them marks a no-show (`handlers.noshow`).
CALL_TAG = "call:"


# --- a ticket's call, shared with the booking side -------------------------------------------


def call_kind(ticket: Ticket) -> Msg:
    """The call's kind ("video call", "phone call"), in the reader's language."""
    return Msg(CHANNEL_LABELS[Channel(ticket.channel)])


def is_bookable(ticket: Ticket) -> bool:
    """An open video or phone ticket: the only ones with a call."""
    return (
        ticket.kind == Kind.TICKET
        and ticket.channel in CALL_CHANNELS
        and Status(ticket.status) in ACTIVE_STATUSES
    )


def staff_time(ctx: Context, moment: datetime) -> str:
    return ctx.services.staff_tr().format_time(moment, ctx.tz)


def tell_staff_about_call(ctx: Context, msg: Msg, ticket: Ticket, booking: Booking) -> None:
    """A staff-room message about a booked call, with how to mark a no-show, tagged so that
    a 🚫 on it finds the call."""
    tr = ctx.services.staff_tr()
    hint = Msg(NO_SHOW_HINT, {"ref": ticket.ref})
    text = f"{ctx.render(msg, tr)} {ctx.render(hint, tr)}"
    ctx.send_staff(text, on_sent=f"{CALL_TAG}{booking.id}")


class ClientOut:
    """Writing to a ticket's client: their room, language, and nickname behind a bridge.

    The room is decided once, by `load` (`common.client_room`: the ticket's room while it is
    private, else the client's private room); None holds back everything sent through it."""

    def __init__(
        self, ctx: Context, ticket: Ticket, client: Client, tr: Translator, room_id: str | None
    ):
        self.ctx = ctx
        self.ticket = ticket
        self.client = client
        self.tr = tr
        self.room_id = room_id
        self.nick = bridged_nick(client.key, ticket.room_id)  # behind a bridge: plain text

    @classmethod
    async def load(cls, ctx: Context, ticket: Ticket) -> ClientOut:
        client = await Client.get(id=ticket.client_id)  # type: ignore[attr-defined]
        tr = await client_translator(ctx, ticket)
        return cls(ctx, ticket, client, tr, await client_room(ctx, ticket, client, tr))

    @property
    def bridged(self) -> bool:
        return self.nick is not None

    def render(self, msg: Msg) -> str:
        return self.tr.render(msg, self.ctx.tz)

    def when(self, moment: datetime) -> str:
        return self.tr.format_datetime_long(moment, self.ctx.tz)

    def send(self, text: str | Msg, *, on_sent: str | None = None) -> None:
        if self.room_id is None:
            return  # held back (the client and staff were told)
        self.ctx.to_client(self.room_id, self.client.key, text, tr=self.tr, on_sent=on_sent)

    def send_file(self, data: bytes, filename: str, body: str) -> None:
        if self.room_id is None:
            return
        self.ctx.send_file(self.room_id, data, filename, "text/calendar", body)


# --- the meeting -----------------------------------------------------------------------------


def _host(services: Services) -> str:
    return urlsplit(services.config.web.public_url).hostname or "support-bot"


def _video_booking_id(ticket: Ticket, booking: Booking) -> str:
    """The meeting's id at the provider: from the ticket and the slot, never from the row's
    id, so that a replay after a crash (whose booking row was rolled back and may come back
    with another id) asks for the same meeting, which providers then re-use."""
    return f"{ticket.ref}-{booking.start.astimezone(UTC):%Y%m%dT%H%MZ}"


def _title(ticket: Ticket) -> str:
    return f"Support {ticket.ref}"


async def attach_meeting(services: Services, ticket: Ticket, booking: Booking) -> str | None:
    """Create and store the meeting of a new booking; the provider's error key if it failed
    (the booking stays, `send_reminders` tries again)."""
    meeting, error = await _create_meeting(services, ticket, booking)
    if meeting is not None:
        await booking.save(update_fields=_store_meeting(booking, meeting))
    return error


async def _create_meeting(
    services: Services, ticket: Ticket, booking: Booking
) -> tuple[Meeting | None, str | None]:
    """The meeting of a booking, or (None, error key) — never raises for the provider."""
    video = services.video
    if video is None:
        return None, "notConfigured"
    try:
        meeting = await video.create_meeting(
            booking_id=_video_booking_id(ticket, booking),
            title=_title(ticket),
            start=booking.start,
            minutes=services.config.service.slot_minutes,
            staff_name="Support",
            client_name="Client",
        )
    except VideoError as error:
        log.warning("meeting for booking %s not created: %s", booking.id, error.key)
        return None, error.key
    return meeting, None


def _store_meeting(booking: Booking, meeting: Meeting) -> list[str]:
    booking.provider = meeting.provider
    booking.meeting_id = meeting.meeting_id
    booking.client_url = meeting.client_url
    booking.staff_url = meeting.staff_url
    return ["provider", "meeting_id", "client_url", "staff_url"]


def meeting_of(booking: Booking, ticket: Ticket, minutes: int) -> Meeting | None:
    """The stored meeting of a booking, as `VideoProvider.prepare` wants it."""
    if not booking.meeting_id or not booking.provider:
        return None
    return Meeting(
        provider=booking.provider,
        meeting_id=booking.meeting_id,
        client_url=booking.client_url or "",
        staff_url=booking.staff_url or "",
        extra=MappingProxyType(
            {
                "name": _title(ticket),
                "booking_id": _video_booking_id(ticket, booking),
                "start": booking.start.isoformat(),
                "minutes": minutes,
            }
        ),
    )


# --- the invitation --------------------------------------------------------------------------

# SEQUENCE of the call's invitation (one UID per ticket): three steps per booking, so every
# later change of the same call carries a higher number than every earlier one.
SEQ_BOOKED, SEQ_LINK, SEQ_CANCELLED = 0, 1, 2


async def _sequence(ticket: Ticket, step: int) -> int:
    return 3 * (await Booking.filter(ticket_id=ticket.id).count() - 1) + step


async def send_invitation(
    ctx: Context, out: ClientOut, booking: Booking, step: int, *, cancelled: bool = False
) -> None:
    """Upload the `.ics` of the ticket's call to the client's room; `step` is one of the
    `SEQ_*` (what changed)."""
    services = ctx.services
    ticket = out.ticket
    sequence = await _sequence(ticket, step)
    name, address = parseaddr(services.config.mail.from_)
    # Behind a bridge the file is read by the whole conversation: no address in it.
    attendee = None if out.bridged else ticket.email or out.client.email
    minutes = services.config.service.slot_minutes
    link = booking.client_url or ""
    description = out.render(
        Msg(ICS_DESCRIPTION, {"ref": ticket.ref, "minutes": minutes, "link": link or "—"})
    )
    try:
        data = invitation_ics(
            uid=f"support-call-{ticket.ref.lower()}@{_host(services)}",
            start=booking.start,
            end=booking.end,
            tz_name=services.config.service.timezone,
            summary=out.render(Msg(SUMMARY, {"ref": ticket.ref})),
            description=description,
            location_url=link,
            organizer_email=address or "support@localhost",
            organizer_name=name or "Support",
            attendee_email=attendee or None,
            alarm_minutes=ALARM_MINUTES,
            now=ctx.now,
            sequence=sequence,
            cancelled=cancelled,
        )
    except ValueError:
        # An address or link a calendar cannot carry: no file rather than a broken one.
        log.warning("no invitation for booking %s: unusable address or link", booking.id)
        return
    out.send_file(
        data, f"support-{ticket.ref}.ics", out.render(Msg(ICS_BODY, {"ref": ticket.ref}))
    )


# --- reminders and late links (the sweeper) --------------------------------------------------

Job = Callable[[Context], Awaitable[None]]


async def schedule_reminders(ctx: Context, booking: Booking) -> None:
    """One `Reminder` per configured offset that is still in the future."""
    for offset in ctx.services.config.service.reminder_offsets_minutes:
        due = booking.start - timedelta(minutes=offset)
        if due > ctx.now:
            await Reminder.create(booking=booking, offset_minutes=offset, due_at=due)


async def send_reminders(services: Services, now: datetime) -> None:
    """Send due reminders (each once: `run_job("reminder:<id>")`) and retry missing links."""
    dispatcher = services.jobs
    if dispatcher is None:
        return
    await _retry_links(services, now)
    due = (
        await Reminder.filter(sent_at=None, due_at__lte=now, booking__status=ACTIVE_BOOKING)
        .select_related("booking__ticket")
        .order_by("due_at", "id")
    )
    for reminder in due:
        ticket: Ticket = reminder.booking.ticket
        await dispatcher.run_job(
            f"reminder:{reminder.id}",
            _remind(reminder.id),
            room_id=ticket.room_id,
            locale=ticket.locale,
        )


def _remind(reminder_id: int) -> Job:
    async def job(ctx: Context) -> None:
        reminder = await Reminder.get_or_none(id=reminder_id, sent_at=None)
        if reminder is None:
            return
        reminder.sent_at = ctx.now
        await reminder.save(update_fields=["sent_at"])
        booking = await Booking.get(id=reminder.booking_id)  # type: ignore[attr-defined]
        if booking.status != ACTIVE_BOOKING or ctx.now >= booking.start:
            return  # cancelled, or the bot was down until the call: nothing useful to say
        nearer = await Reminder.filter(
            booking_id=booking.id,
            sent_at=None,
            due_at__lte=ctx.now,
            offset_minutes__lt=reminder.offset_minutes,
        ).exists()
        if nearer:
            return  # several due at once (downtime): only the nearest is sent
        ticket = await Ticket.get(id=booking.ticket_id)  # type: ignore[attr-defined]
        if not is_bookable(ticket):
            return  # the ticket ended without its call being cancelled: no reminder
        await _send_reminder(ctx, ticket, booking, reminder)

    return job


async def _send_reminder(
    ctx: Context, ticket: Ticket, booking: Booking, reminder: Reminder
) -> None:
    services = ctx.services
    out = await ClientOut.load(ctx, ticket)
    soon = reminder.offset_minutes <= PREPARE_WITHIN_MINUTES
    minutes_left = max(1, round((booking.start - ctx.now).total_seconds() / 60))
    params: dict[str, Any] = {"kind": call_kind(ticket), "ref": ticket.ref, "when": booking.start}
    if booking.client_url is None:
        out.send(Msg(REMIND_NO_LINK, params))
    elif soon:
        params.update(
            time=out.tr.format_time(booking.start, ctx.tz),
            minutes=minutes_left,
            link=booking.client_url,
        )
        out.send(Msg(REMIND_SOON, params))
    else:
        out.send(Msg(REMIND_DAY, {**params, "link": booking.client_url}))
    if not soon:
        return
    staff_params = {
        "ref": ticket.ref,
        "time": staff_time(ctx, booking.start),
        "staff": booking.staff,
    }
    if booking.staff_url:
        reminder = Msg(REMIND_STAFF, {**staff_params, "link": booking.staff_url})
    else:
        reminder = Msg(REMIND_STAFF_NO_LINK, staff_params)
    tell_staff_about_call(ctx, reminder, ticket, booking)
    meeting = meeting_of(booking, ticket, services.config.service.slot_minutes)
    video = services.video
    if meeting is None or video is None or video.name != meeting.provider:
        return
    try:
        await video.prepare(meeting)
    except VideoError as error:
        log.warning("meeting of booking %s not prepared: %s", booking.id, error.key)
        ctx.send_staff(
            Msg(PREPARE_FAILED, {"ref": ticket.ref, "when": booking.start, "error": error.key})
        )


async def _retry_links(services: Services, now: datetime) -> None:
    """Bookings still without a meeting link: ask the provider again (every LINK_RETRY; the
    next try is a column, so a restart neither forgets nor hurries it)."""
    if services.video is None or services.jobs is None:
        return
    bookings = await (
        Booking.filter(status=ACTIVE_BOOKING, client_url=None, start__gt=now)
        .filter(Q(link_retry_at__isnull=True) | Q(link_retry_at__lte=now))
        .select_related("ticket")
    )
    for booking in bookings:
        await Booking.filter(id=booking.id).update(link_retry_at=now + LINK_RETRY)
        meeting, _ = await _create_meeting(services, booking.ticket, booking)
        if meeting is None:
            continue
        await services.jobs.run_job(
            f"meeting-link:{booking.id}",
            _link_follows(booking.id, meeting),
            room_id=booking.ticket.room_id,
            locale=booking.ticket.locale,
        )


def _link_follows(booking_id: int, meeting: Meeting) -> Job:
    async def job(ctx: Context) -> None:
        booking = await Booking.get_or_none(id=booking_id, status=ACTIVE_BOOKING, client_url=None)
        if booking is None:
            return
        booking.link_retry_at = None
        await booking.save(update_fields=[*_store_meeting(booking, meeting), "link_retry_at"])
        ticket = await Ticket.get(id=booking.ticket_id)  # type: ignore[attr-defined]
        out = await ClientOut.load(ctx, ticket)
        out.send(
            Msg(
                LINK_FOLLOWS_CLIENT,
                {
                    "kind": call_kind(ticket),
                    "when": booking.start,
                    "ref": ticket.ref,
                    "link": meeting.client_url,
                },
            )
        )
        await send_invitation(ctx, out, booking, SEQ_LINK)
        ctx.send_staff(
            Msg(
                LINK_FOLLOWS_STAFF,
                {"ref": ticket.ref, "when": booking.start, "link": meeting.staff_url},
            )
        )
        await repo.audit(
            ticket, "system", "meeting_created", ticket.status, ticket.status, at=ctx.now
        )

    return job


# --- ending meetings (the sweeper) -----------------------------------------------------------


async def end_meetings(services: Services, now: datetime) -> None:
    """End the meetings of cancelled bookings and of calls over for `END_AFTER`, outside any
    transaction (after the commits that cancelled them); see the module doc."""
    video = services.video
    if video is None:
        return  # nothing can be ended now; the rows wait for a configured provider
    bookings = await (
        Booking.filter(meeting_ended_at=None)
        .filter(
            Q(status=repo.CANCELLED_BOOKING) | Q(status=ACTIVE_BOOKING, end__lte=now - END_AFTER)
        )
        .select_related("ticket")
        .order_by("id")
        .limit(END_BATCH)
    )
    for booking in bookings:
        await _end_meeting(services, booking, now)


async def _end_meeting(services: Services, booking: Booking, now: datetime) -> None:
    video = services.video
    assert video is not None  # checked by the caller
    meeting = meeting_of(booking, booking.ticket, services.config.service.slot_minutes)
    if meeting is None:
        await _meeting_done(booking, now)  # never had one (the provider failed, or none was set)
        return
    if await _meeting_users(booking, now):
        # The same ticket and slot booked again: the same meeting id, now that booking's, which
        # ends it when its own turn comes. Done here, so this row does not wait for it.
        await _meeting_done(booking, now)
        return
    if video.name != meeting.provider:
        log.warning(
            "meeting of booking %s is on %s, not on the configured video service: not ended",
            booking.id,
            meeting.provider,
        )
        await _meeting_done(booking, now)
        return
    try:
        await video.end_meeting(meeting)
    except VideoError as error:
        await _meeting_failed(booking, error, now)
        return
    await _meeting_done(booking, now)
    await _reissue_if_taken(booking, now)


def _active_with_meeting(booking: Booking, now: datetime) -> QuerySet[Booking]:
    """Active bookings whose call is not over for `END_AFTER` that share `booking`'s meeting."""
    return Booking.filter(
        status=ACTIVE_BOOKING,
        provider=booking.provider,
        meeting_id=booking.meeting_id,
        end__gt=now - END_AFTER,
    ).exclude(id=booking.id)


async def _meeting_users(booking: Booking, now: datetime) -> bool:
    return await _active_with_meeting(booking, now).exists()


async def _reissue_if_taken(booking: Booking, now: datetime) -> None:
    """A booking of the same ticket and slot committed while the meeting was being ended holds
    a link to a meeting that is gone: its link is dropped, so the link retry of
    `send_reminders` asks for a new meeting and sends it to the client and staff."""
    taken = await _active_with_meeting(booking, now).values_list("id", flat=True)
    if not taken:
        return
    log.warning(
        "meeting of booking %s was ended while booked again: a new link follows", booking.id
    )
    await Booking.filter(id__in=list(taken), status=ACTIVE_BOOKING).update(
        meeting_id=None, client_url=None, staff_url=None, link_retry_at=None
    )


def _failure_prefix(booking_id: int) -> str:
    # One `Notice` row per failed attempt: the count and the first failure's time survive a
    # restart, as every time-out of the bot does, without a column of their own.
    return f"meeting-end-failed:{booking_id}:"


async def _meeting_done(booking: Booking, now: datetime) -> None:
    await Booking.filter(id=booking.id, meeting_ended_at=None).update(meeting_ended_at=now)
    await Notice.filter(key__startswith=_failure_prefix(booking.id)).delete()


async def _meeting_failed(booking: Booking, error: VideoError, now: datetime) -> None:
    """Count a failure (retried at the next sweep), or give up after too many or too long."""
    prefix = _failure_prefix(booking.id)
    earlier = await Notice.filter(key__startswith=prefix).order_by("at")
    failures = len(earlier) + 1
    first = earlier[0].at if earlier else now
    if failures < END_MAX_FAILURES and now - first < END_GIVE_UP_AFTER:
        log.info("meeting of booking %s not ended (%s): tried again later", booking.id, error.key)
        await Notice.create(key=f"{prefix}{failures}", at=now)
        return
    # The error key only: its detail names the server, and the meeting id or token (a Talk
    # token is the link itself) stays out of logs.
    log.warning(
        "meeting of booking %s not ended after %d attempts (%s): left to the video service",
        booking.id,
        failures,
        error.key,
    )
    await _meeting_done(booking, now)
