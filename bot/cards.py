"""The staff card of a ticket and the `!queue` listing (SPEC §4): pure rendering.

`card_view` copies what a card shows from the rows into a frozen `CardView`; `render_card`
turns it into a Matrix message body (plain text) and formatted body (HTML) in a staff member's
locale and time zone. The actions a card offers are asked of the lifecycle decisions in
`bot.domain.tickets`, so a card never offers what the bot would then refuse.

Everything a client typed (description, display name, instance URL…) is hostile until proven
otherwise:

* HTML is built only from `html.escape`d parts, then passed through `nh3.clean` with a small
  allow-list (b, i, br, code, p, ul, li, and a with an http(s) href), so neither a `<script>`
  nor an `<a href="javascript:…">` can survive even if a part were forgotten.
* Text that would notify or render as a Matrix pill is defused in both bodies with an
  invisible U+2060 WORD JOINER: `@room`, user ids such as `@alice:example.org`, and
  `matrix.to` / `matrix:` links. The text reads the same, but no push rule or linkifier
  matches it.
* Bidirectional-override characters are removed from client text (they can make a name or
  URL read differently from what it is).

The outbox should also send `"m.mentions": {}` with cards: clients that implement intentional
mentions then ignore keyword matches in the body altogether.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import nh3

from bot import rules
from bot.domain import balance as prepaid
from bot.domain import tickets as lifecycle
from bot.domain.intake import CATEGORIES
from bot.domain.tickets import Channel, Kind, Refusal, Status, TicketState
from bot.i18n import N_, NP_, Msg, Translator

if TYPE_CHECKING:
    from bot.storage.models import Booking, Client, Ticket

__all__ = [
    "ALLOWED_TAGS",
    "DESCRIPTION_PREVIEW_CHARS",
    "BalanceView",
    "BookingView",
    "CardView",
    "available_actions",
    "card_view",
    "defuse",
    "render_card",
    "render_queue",
]

#: How much of a description a card shows (`!ticket` shows it all).
DESCRIPTION_PREVIEW_CHARS = 600
BRIDGE_KEY_PREFIX = "bridge:"

ALLOWED_TAGS = frozenset({"b", "i", "br", "code", "p", "ul", "li", "a"})
ALLOWED_ATTRIBUTES: Mapping[str, set[str]] = {"a": {"href"}}
LINK_SCHEMES = frozenset({"http", "https"})
# Hosts whose links clients turn into pills (or that address Matrix entities).
_PILL_HOSTS = frozenset({"matrix.to"})


@dataclass(frozen=True, slots=True)
class BookingView:
    start: datetime
    end: datetime
    staff: str
    provider: str | None = None
    no_show: bool = False  # the client did not join (`handlers.noshow`)


@dataclass(frozen=True, slots=True)
class BalanceView:
    """The prepaid balance of the ticket's account, as the card was drawn. `account` is the
    organisation's name, None for a client in none (the card names them already);
    `prepaid` is whether tickets were ever bought for it (only then is a low balance
    flagged)."""

    purchased: int
    billed: int
    account: str | None = None
    prepaid: bool = True

    @property
    def remaining(self) -> int:
        return self.purchased - self.billed


@dataclass(frozen=True, slots=True)
class CardView:
    """What a staff card shows about one ticket, question or quote request."""

    ref: str
    state: TicketState
    category: str
    client_name: str  # display name, else the client key
    description: str
    created_at: datetime
    bridged: bool = False
    instance_url: str | None = None
    instance_version: str | None = None
    survey_id: str | None = None
    sla_due: datetime | None = None
    booking: BookingView | None = None
    converted_from: str | None = None
    # The SLA watcher found the deadline missed with nobody having answered (R3).
    sla_missed: bool = False
    balance: BalanceView | None = None
    rating: int | None = None  # the client's satisfaction, 1–5

    @property
    def kind(self) -> Kind:
        return self.state.kind

    @property
    def status(self) -> Status:
        return self.state.status

    @property
    def channel(self) -> Channel:
        return self.state.channel

    @property
    def billed_tickets(self) -> int:
        return lifecycle.billed_tickets(self.state)

    def overdue(self, now: datetime) -> bool:
        """The SLA deadline passed and nobody has answered yet (R3)."""
        return (
            self.sla_due is not None
            and self.state.first_response_at is None
            and self.status in lifecycle.ACTIVE_STATUSES
            and self.sla_due < now
        )


def card_view(
    ticket: Ticket,
    client: Client,
    booking: Booking | None = None,
    balance: BalanceView | None = None,
) -> CardView:
    """The card of a ticket row, its client row, its current booking (if any) and the
    balance of its account (if known)."""
    from bot.storage.repo import ticket_state  # the row <-> state mapping lives with the rows

    booking_view = None
    if booking is not None:
        booking_view = BookingView(
            booking.start,
            booking.end,
            booking.staff,
            booking.provider,
            no_show=booking.no_show_at is not None,
        )
    return CardView(
        ref=ticket.ref,
        state=ticket_state(ticket),
        category=ticket.category,
        client_name=client.display_name or client.key,
        bridged=client.key.startswith(BRIDGE_KEY_PREFIX),
        description=ticket.description,
        created_at=ticket.created_at,
        instance_url=ticket.instance_url,
        instance_version=ticket.instance_version,
        survey_id=ticket.survey_id,
        sla_due=ticket.sla_due,
        booking=booking_view,
        converted_from=ticket.converted_from,
        sla_missed=ticket.sla_missed_at is not None and ticket.first_response_at is None,
        balance=balance,
        rating=ticket.rating,
    )


# --- Labels --------------------------------------------------------------------------------

KIND_LABELS: Mapping[Kind, str] = {
    Kind.TICKET: N_("Ticket"),
    Kind.QUESTION: N_("Feasibility question"),
    Kind.QUOTE: N_("Quote request"),
}
KIND_ICONS: Mapping[Kind, str] = {Kind.TICKET: "🎫", Kind.QUESTION: "❓", Kind.QUOTE: "💼"}
STATUS_LABELS: Mapping[Status, str] = {
    Status.OPEN: N_("open"),
    Status.IN_PROGRESS: N_("in progress"),
    Status.AWAITING_ESTIMATE: N_("awaiting an estimate"),
    Status.AWAITING_CLIENT_CONFIRMATION: N_("awaiting the client's confirmation"),
    Status.AWAITING_STAFF_CONFIRMATION: N_("awaiting staff confirmation"),
    Status.CONFIRMED: N_("confirmed"),
    Status.RESOLVED: N_("resolved"),
    Status.CLOSED: N_("closed"),
    Status.CANCELLED: N_("cancelled"),
    Status.DECLINED: N_("declined"),
    Status.UNSOLVABLE: N_("unsolvable"),
}
CHANNEL_LABELS: Mapping[Channel, str] = {
    Channel.MESSAGING: N_("messaging"),
    Channel.VIDEO: N_("video call"),
    Channel.PHONE: N_("phone call"),
    Channel.INTERVENTION: N_("intervention"),
}
_CATEGORY_LABELS: Mapping[str, str] = {choice.key: choice.label for choice in CATEGORIES}
_TICKETS = NP_("{n} ticket", "{n} tickets")
_QUEUE_TITLE = NP_("Queue: {n} open item", "Queue: {n} open items")

# Translators: the first line of a staff card: icon, reference, kind, status.
_TITLE = N_("{icon} {ref} · {kind} · {status}")
_CLIENT = N_("Client: {client}")
_BRIDGED = N_("{name} (via Nextcloud Talk)")
_CATEGORY = N_("Category: {category}")
_CHANNEL = N_("Channel: {channel}")
_INSTANCE = N_("Instance: {instance}")
_VERSION = N_("LimeSurvey {version}")
_SURVEY = N_("survey {survey_id}")
_NO_INSTANCE = N_("not given")
_SLA_DUE = N_("Answer due by: {due}")
_SLA_MET = N_("Answered: {when} (due {due})")
_ASSIGNED = N_("Assigned to: {staff}")
_UNASSIGNED = N_("Assigned to: nobody yet")
_ESTIMATE = N_("Estimate: {duration} ({tickets})")
_CONFIRMED = N_("Confirmed for {tickets} by {staff}")
_CLIENT_CONFIRMED = N_("Client confirmed on {when}")
_LOGGED = N_("Logged: {duration} · billed: {tickets}")
_WARRANTY = N_("Warranty until {when}")
_CALL = N_("Call: {start} – {end} with {staff}")
_CALL_PROVIDER = N_("Call: {start} – {end} with {staff} ({provider})")
_CALL_NO_SHOW = N_("The client did not join this call (no-show).")
_RATING = N_("Client's rating: {stars}/5")
_CONVERTED = N_("Converted from {ref}")
_BALANCE_SUBJECT = N_("Prepaid balance")
_BALANCE_SUBJECT_OF = N_("Prepaid balance of {account}")
_BALANCE = N_("{subject}: {remaining} (purchased: {purchased}, billed: {billed})")
_BALANCE_NOTHING_BOUGHT = N_("{subject}: nothing purchased (billed: {billed})")
_DESCRIPTION = N_("Description:")
_TRUNCATED = N_("(shortened: !ticket {ref} shows the full text)")
_REACTIONS = N_("React: {actions}")
_COMMANDS = N_("Commands: {commands}")
_TAKE = N_("👀 take")
_CONFIRM = N_("✅ confirm")
_DECLINE = N_("❌ decline")
_WAITING_CLIENT_CONFIRMATION = N_("Waiting for the client's confirmation by e-mail.")
_WAITING_ACCEPTANCE = N_("Waiting for the client's acceptance.")
_NOTHING_LEFT = N_("Nothing left to do on this request.")
_CMD_TAKE = N_("!take {ref}")
_CMD_ESTIMATE = N_("!estimate {ref} <duration>")
_CMD_LOG = N_("!log {ref} <duration> [note]")
_CMD_RESOLVE = N_("!resolve {ref}")
_CMD_UNSOLVABLE = N_("!unsolvable {ref} <reason>")
_CMD_CONVERT = N_("!convert {ref}")
_CMD_SHOW = N_("!ticket {ref}")
_QUEUE_EMPTY = N_("The queue is empty: no open work.")
_QUEUE_ITEM = N_("{flag} {ref} · {kind} · {status} · {client} · {due} · {staff}")
_QUEUE_DUE = N_("due {due}")
_QUEUE_OVERDUE = N_("OVERDUE since {due}")
_QUEUE_NO_DUE = N_("no deadline")
_QUEUE_UNASSIGNED = N_("unassigned")


# --- Safe text -----------------------------------------------------------------------------

_WJ = "\u2060"
_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")
_ROOM_MENTION = re.compile(r"@(?=room\b)", re.IGNORECASE)
# "@localpart:server": a user id that a client would linkify or turn into a pill.
_USER_ID = re.compile(r"(?<![\w.+-])@(?=[\w.=/+-]+:[\w.\[\]-])")
_MATRIX_TO = re.compile(r"(matrix)(\.to\b)", re.IGNORECASE)
_MATRIX_URI = re.compile(r"\b(matrix)(:)(?=[a-z]/|//)", re.IGNORECASE)


def defuse(text: str) -> str:
    """Client text made unable to notify, render as a pill, or reorder itself."""
    text = _BIDI_CONTROLS.sub("", text)
    text = _ROOM_MENTION.sub("@" + _WJ, text)
    text = _USER_ID.sub("@" + _WJ, text)
    text = _MATRIX_TO.sub(r"\1" + _WJ + r"\2", text)
    return _MATRIX_URI.sub(r"\1" + _WJ + r"\2", text)


def _one_line(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True, slots=True)
class _Part:
    """A piece of a card in both bodies: the plain text and its (already safe) HTML."""

    plain: str
    html: str


def _untrusted(text: str) -> _Part:
    safe = defuse(_one_line(text))
    return _Part(safe, html.escape(safe))


def _trusted(text: str) -> _Part:
    return _Part(text, html.escape(text))


def _link(url: str) -> _Part:
    """An instance URL: a link only when it is plain http(s) and not a Matrix permalink."""
    shown = _untrusted(url)
    try:
        parts = urlsplit(url.strip())
        host = (parts.hostname or "").lower()
    except ValueError:
        return shown
    if parts.scheme.lower() not in LINK_SCHEMES or not host or host in _PILL_HOSTS:
        return shown
    href = html.escape(url.strip(), quote=True)
    return _Part(shown.plain, f'<a href="{href}">{shown.html}</a>')


_MARKER = re.compile("\ue000([0-9]+)\ue001")


class _Renderer:
    """Renders msgids with `_Part` parameters into both bodies at once."""

    def __init__(self, tr: Translator, tz: ZoneInfo) -> None:
        self.tr = tr
        self.tz = tz

    def msg(
        self,
        text: str,
        params: Mapping[str, _Part | str] | None = None,
        *,
        plural: str | None = None,
        n: int | None = None,
    ) -> _Part:
        parts = {
            key: value if isinstance(value, _Part) else _trusted(value)
            for key, value in (params or {}).items()
        }
        plain = self.tr.render(
            Msg(text, {k: p.plain for k, p in parts.items()}, plural, n), self.tz
        )
        # The translated template is escaped on its own, then the parts (each already safe)
        # go where their markers are, in one pass so no part can stand for another.
        names = list(parts)
        markers = {name: f"\ue000{index}\ue001" for index, name in enumerate(names)}
        skeleton = self.tr.render(Msg(text, markers, plural, n), self.tz)
        escaped = html.escape(skeleton, quote=False)
        html_text = _MARKER.sub(lambda m: parts[names[int(m.group(1))]].html, escaped)
        return _Part(plain, html_text)

    def tickets(self, n: int) -> _Part:
        # The count is shown signed (a balance may be below zero); the form follows its size.
        return self.msg(_TICKETS[0], {"n": prepaid.signed(n)}, plural=_TICKETS[1], n=abs(n))

    def when(self, moment: datetime) -> _Part:
        return _trusted(self.tr.format_datetime_long(moment, self.tz))

    def time(self, moment: datetime) -> _Part:
        return _trusted(self.tr.format_time(moment, self.tz))

    def join(self, parts: Iterable[_Part], sep: str = " · ") -> _Part:
        items = list(parts)
        return _Part(
            sep.join(p.plain for p in items), html.escape(sep).join(p.html for p in items)
        )


def _clean(markup: str) -> str:
    return nh3.clean(
        markup,
        tags=set(ALLOWED_TAGS),
        attributes={tag: set(attrs) for tag, attrs in ALLOWED_ATTRIBUTES.items()},
        url_schemes=set(LINK_SCHEMES),
        link_rel=None,
    )


# --- The card ------------------------------------------------------------------------------


_OVERDUE = N_("⚠️ Overdue: the answer was due {due}.")


def render_card(view: CardView, tr: Translator, tz: ZoneInfo) -> tuple[str, str]:
    """The card as (plain body, HTML formatted body) in the staff member's locale and zone."""
    r = _Renderer(tr, tz)
    title = r.msg(
        _TITLE,
        {
            "icon": KIND_ICONS[view.kind],
            "ref": view.ref,
            "kind": r.msg(KIND_LABELS[view.kind]),
            "status": r.msg(STATUS_LABELS[view.status]),
        },
    )
    lines = _facts(view, r)
    if view.sla_missed and view.sla_due is not None and view.status in lifecycle.ACTIVE_STATUSES:
        lines.insert(0, r.msg(_OVERDUE, {"due": r.when(view.sla_due)}))
    description, truncated = _description(view.description)
    actions = _actions(view, r)

    plain = [title.plain, *(line.plain for line in lines), "", r.msg(_DESCRIPTION).plain]
    plain += [f"> {line}" if line else ">" for line in description.split("\n")]
    body_html = [
        f"<p><b>{title.html}</b></p>",
        "<ul>" + "".join(f"<li>{line.html}</li>" for line in lines) + "</ul>",
        f"<p><b>{r.msg(_DESCRIPTION).html}</b><br>"
        + "<br>".join(html.escape(line) for line in description.split("\n"))
        + "</p>",
    ]
    if truncated:
        note = r.msg(_TRUNCATED, {"ref": view.ref})
        plain.append(note.plain)
        body_html.append(f"<p><i>{note.html}</i></p>")
    plain.append("")
    plain += [line.plain for line in actions]
    body_html.append("<p>" + "<br>".join(line.html for line in actions) + "</p>")
    return "\n".join(plain), _clean("".join(body_html))


def _facts(view: CardView, r: _Renderer) -> list[_Part]:
    state = view.state
    client = _untrusted(view.client_name)
    if view.bridged:
        client = r.msg(_BRIDGED, {"name": client})
    lines = [
        r.msg(_CLIENT, {"client": client}),
        r.msg(_CATEGORY, {"category": _category(view.category, r)}),
        r.msg(_CHANNEL, {"channel": r.msg(CHANNEL_LABELS[view.channel])}),
        r.msg(_INSTANCE, {"instance": _instance(view, r)}),
    ]
    if view.sla_due is not None:
        if state.first_response_at is not None:
            lines.append(
                r.msg(
                    _SLA_MET,
                    {"when": r.when(state.first_response_at), "due": r.when(view.sla_due)},
                )
            )
        else:
            lines.append(r.msg(_SLA_DUE, {"due": r.when(view.sla_due)}))
    if state.assigned_to:
        lines.append(r.msg(_ASSIGNED, {"staff": state.assigned_to}))
    else:
        lines.append(r.msg(_UNASSIGNED))
    if state.estimate_minutes is not None:
        lines.append(
            r.msg(
                _ESTIMATE,
                {
                    "duration": rules.format_duration(state.estimate_minutes),
                    "tickets": r.tickets(rules.tickets_for(state.estimate_minutes)),
                },
            )
        )
    if state.client_confirmed_at is not None:
        lines.append(r.msg(_CLIENT_CONFIRMED, {"when": r.when(state.client_confirmed_at)}))
    if state.confirmed_tickets is not None:
        lines.append(
            r.msg(
                _CONFIRMED,
                {
                    "tickets": r.tickets(state.confirmed_tickets),
                    "staff": state.staff_confirmed_by or "?",
                },
            )
        )
    if view.kind is Kind.TICKET:
        lines.append(
            r.msg(
                _LOGGED,
                {
                    "duration": rules.format_duration(state.minutes_logged),
                    "tickets": r.tickets(view.billed_tickets),
                },
            )
        )
    if view.booking is not None:
        booking = view.booking
        params: dict[str, _Part | str] = {
            "start": r.when(booking.start),
            "end": r.time(booking.end),
            "staff": booking.staff,
        }
        if booking.provider:
            params["provider"] = booking.provider
        lines.append(r.msg(_CALL_PROVIDER if booking.provider else _CALL, params))
        if booking.no_show:
            lines.append(r.msg(_CALL_NO_SHOW))
    if state.warranty_until is not None and view.status is Status.CLOSED:
        lines.append(r.msg(_WARRANTY, {"when": r.when(state.warranty_until)}))
    if view.rating is not None:
        lines.append(r.msg(_RATING, {"stars": str(view.rating)}))
    if view.converted_from:
        lines.append(r.msg(_CONVERTED, {"ref": view.converted_from}))
    if view.balance is not None:
        lines.append(_balance(view.balance, r))
    return lines


def _balance(balance: BalanceView, r: _Renderer) -> _Part:
    """The account's prepaid balance; flagged ⚠️ when a prepaid one is down to one ticket."""
    if balance.account is None:
        subject = r.msg(_BALANCE_SUBJECT)
    else:
        subject = r.msg(_BALANCE_SUBJECT_OF, {"account": _untrusted(balance.account)})
    if not balance.prepaid:
        return r.msg(
            _BALANCE_NOTHING_BOUGHT, {"subject": subject, "billed": r.tickets(balance.billed)}
        )
    line = r.msg(
        _BALANCE,
        {
            "subject": subject,
            "remaining": r.tickets(balance.remaining),
            "purchased": r.tickets(balance.purchased),
            "billed": r.tickets(balance.billed),
        },
    )
    if prepaid.level(balance.remaining) is prepaid.Level.OK:
        return line
    return _Part(f"⚠️ {line.plain}", f"⚠️ <b>{line.html}</b>")


def _category(key: str, r: _Renderer) -> _Part:
    label = _CATEGORY_LABELS.get(key)
    return r.msg(label) if label is not None else _untrusted(key)


def _instance(view: CardView, r: _Renderer) -> _Part:
    parts: list[_Part] = []
    if view.instance_url:
        parts.append(_link(view.instance_url))
    if view.instance_version:
        parts.append(r.msg(_VERSION, {"version": _untrusted(view.instance_version)}))
    if view.survey_id:
        parts.append(r.msg(_SURVEY, {"survey_id": _untrusted(view.survey_id)}))
    return r.join(parts) if parts else r.msg(_NO_INSTANCE)


def _description(text: str) -> tuple[str, bool]:
    """The description preview (defused, at most DESCRIPTION_PREVIEW_CHARS) and whether cut."""
    text = _BIDI_CONTROLS.sub("", text).replace("\r\n", "\n").replace("\r", "\n").strip()
    truncated = len(text) > DESCRIPTION_PREVIEW_CHARS
    if truncated:
        text = text[:DESCRIPTION_PREVIEW_CHARS].rstrip() + "…"
    return defuse(text), truncated


# Decisions only stamp the time they are given on the new state; any aware instant will do
# to ask whether they are allowed.
_ANY_TIME = datetime(2000, 1, 1, tzinfo=UTC)


def _allowed(result: object) -> bool:
    return not isinstance(result, Refusal)


def available_actions(state: TicketState) -> tuple[list[str], list[str]]:
    """(reaction msgids, command msgids) the lifecycle accepts from staff in this state."""
    reactions: list[str] = []
    commands: list[str] = []
    intervention = state.kind is Kind.TICKET and state.channel is Channel.INTERVENTION
    if _allowed(lifecycle.take(state, "", _ANY_TIME)):
        reactions.append(_TAKE)
        commands.append(_CMD_TAKE)
    if intervention and _allowed(lifecycle.staff_confirm(state, "", _ANY_TIME)):
        reactions.append(_CONFIRM)
    if _allowed(lifecycle.decline(state)):
        reactions.append(_DECLINE)
    if _allowed(lifecycle.set_estimate(state, rules.TICKET_UNIT_MINUTES)):
        commands.append(_CMD_ESTIMATE)
    if _allowed(lifecycle.log_time(state, 1, _ANY_TIME)):
        commands.append(_CMD_LOG)
    if _allowed(lifecycle.resolve(state)):
        commands.append(_CMD_RESOLVE)
    if _allowed(lifecycle.mark_unsolvable(state)):
        commands.append(_CMD_UNSOLVABLE)
    if _allowed(lifecycle.convert_to_ticket(state)):
        commands.append(_CMD_CONVERT)
    commands.append(_CMD_SHOW)
    return reactions, commands


def _actions(view: CardView, r: _Renderer) -> list[_Part]:
    lines: list[_Part] = []
    status = view.status
    if status is Status.AWAITING_CLIENT_CONFIRMATION:
        lines.append(r.msg(_WAITING_CLIENT_CONFIRMATION))
    elif status is Status.RESOLVED:
        lines.append(r.msg(_WAITING_ACCEPTANCE))
    elif status in lifecycle.ENDED_STATUSES or (
        status is Status.CLOSED and not lifecycle.is_warranty_rework(view.state)
    ):
        lines.append(r.msg(_NOTHING_LEFT))
    reactions, commands = available_actions(view.state)
    if reactions:
        lines.append(r.msg(_REACTIONS, {"actions": r.join(r.msg(a) for a in reactions)}))
    rendered = [r.msg(c, {"ref": view.ref}) for c in commands]
    lines.append(
        r.msg(
            _COMMANDS,
            {"commands": r.join(_Part(c.plain, f"<code>{c.html}</code>") for c in rendered)},
        )
    )
    return lines


# --- The queue -----------------------------------------------------------------------------


def render_queue(
    tickets: Sequence[CardView | Ticket], tr: Translator, tz: ZoneInfo, now: datetime
) -> tuple[str, str]:
    """`!queue`: one line per item, in the order given (see `repo.queue`), overdue flagged."""
    r = _Renderer(tr, tz)
    views = [
        item if isinstance(item, CardView) else card_view(item, item.client) for item in tickets
    ]
    if not views:
        empty = r.msg(_QUEUE_EMPTY)
        return empty.plain, _clean(f"<p>{empty.html}</p>")
    title = r.msg(_QUEUE_TITLE[0], plural=_QUEUE_TITLE[1], n=len(views))
    items = [_queue_item(view, r, now) for view in views]
    plain = "\n".join([title.plain, *(f"• {item.plain}" for item in items)])
    markup = f"<p><b>{title.html}</b></p><ul>" + "".join(f"<li>{i.html}</li>" for i in items)
    return plain, _clean(markup + "</ul>")


def _queue_item(view: CardView, r: _Renderer, now: datetime) -> _Part:
    overdue = view.overdue(now)
    if view.sla_due is None:
        due = r.msg(_QUEUE_NO_DUE)
    elif overdue:
        due = r.msg(_QUEUE_OVERDUE, {"due": r.when(view.sla_due)})
        due = _Part(due.plain, f"<b>{due.html}</b>")
    else:
        due = r.msg(_QUEUE_DUE, {"due": r.when(view.sla_due)})
    client = _untrusted(view.client_name)
    if view.bridged:
        client = r.msg(_BRIDGED, {"name": client})
    staff = view.state.assigned_to
    params: dict[str, Any] = {
        "flag": "⚠️" if overdue else KIND_ICONS[view.kind],
        "ref": _Part(view.ref, f"<b>{html.escape(view.ref)}</b>"),
        "kind": r.msg(KIND_LABELS[view.kind]),
        "status": r.msg(STATUS_LABELS[view.status]),
        "client": client,
        "due": due,
        "staff": staff if staff else r.msg(_QUEUE_UNASSIGNED),
    }
    return r.msg(_QUEUE_ITEM, params)
