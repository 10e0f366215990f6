"""What each page of the staff dashboard shows: its figures, its chart and the table of the
chart's numbers, ready for its template (`bot/web/templates/dashboard/`).

The figures come from `bot.storage.dashboard` (and `bot.storage.repo` for the queue) and are
computed by `bot.domain.dashboard`; this module only puts them into words (the reader's
language, the service's time zone) and into charts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from babel.dates import format_date

from bot.cards import CHANNEL_LABELS, KIND_LABELS, STATUS_LABELS, card_view
from bot.config import Config
from bot.domain import dashboard as figures
from bot.domain.dashboard import DeadlineState
from bot.domain.tickets import Channel, Kind, Status
from bot.i18n import N_, Msg, Translator
from bot.rules import BusinessCalendar
from bot.storage import balances, repo
from bot.storage import dashboard as store
from bot.storage.balances import Account, Balance
from bot.web.charts import Chart, Series, bar_chart

__all__ = ["PAGES", "Page", "View"]

#: The order of the queue: what needs an answer soonest first.
DEADLINE_ORDER = (
    DeadlineState.OVERDUE,
    DeadlineState.DUE_SOON,
    DeadlineState.LATER,
    DeadlineState.ANSWERED,
    DeadlineState.NONE,
)
DEADLINE_LABELS: Mapping[DeadlineState, str] = {
    DeadlineState.OVERDUE: N_("Overdue"),
    DeadlineState.DUE_SOON: N_("At risk"),
    DeadlineState.LATER: N_("Due later"),
    DeadlineState.ANSWERED: N_("Answered"),
    DeadlineState.NONE: N_("No deadline"),
}


@dataclass(frozen=True, slots=True)
class View:
    """One request for a page: who reads it (language), when, and its query parameters."""

    tr: Translator
    tz: ZoneInfo
    now: datetime
    config: Config
    calendar: BusinessCalendar
    query: Mapping[str, str]

    def month_label(self, month: date, *, short: bool = False) -> str:
        text = format_date(month, "MMM y" if short else "MMMM y", locale=self.tr.babel_locale)
        return text[:1].upper() + text[1:]

    def day_label(self, day: date) -> str:
        return format_date(day, "EEE d MMM", locale=self.tr.babel_locale)

    def months(self) -> list[date]:
        """The 12 months of the charts, ending with this one."""
        return figures.months_ending(figures.month_of(self.now, self.tz))

    def bounds(self, months: list[date]) -> tuple[datetime, datetime]:
        """From the first local midnight of `months` to the one after them."""
        start = figures.local_midnight(months[0], self.tz)
        end = figures.local_midnight(figures.next_month(months[-1]), self.tz)
        return start, end


@dataclass(frozen=True, slots=True)
class Page:
    template: str
    context: dict[str, Any] = field(default_factory=dict)
    charts: tuple[Chart, ...] = ()


# -- queue ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QueueItem:
    ref: str
    kind: str
    status: str
    channel: str
    client: str
    due: datetime | None
    state: DeadlineState
    state_label: str
    assigned_to: str | None


async def queue_page(view: View) -> Page:
    tr = view.tr
    items = []
    for ticket in await repo.queue(view.now):
        card = card_view(ticket, ticket.client)
        state = figures.deadline_state(
            ticket.sla_due,
            ticket.first_response_at,
            view.now,
            view.calendar,
            view.config.service.sla_warning_hours,
        )
        items.append(
            QueueItem(
                ref=ticket.ref,
                kind=tr.gettext(KIND_LABELS[Kind(ticket.kind)]),
                status=tr.gettext(STATUS_LABELS[Status(ticket.status)]),
                channel=tr.gettext(CHANNEL_LABELS[Channel(ticket.channel)]),
                client=card.client_name,
                due=ticket.sla_due,
                state=state,
                state_label=tr.gettext(DEADLINE_LABELS[state]),
                assigned_to=ticket.assigned_to,
            )
        )
    far = datetime.max.replace(tzinfo=view.tz)
    items.sort(key=lambda item: (DEADLINE_ORDER.index(item.state), item.due or far))
    counts = [(state, sum(item.state is state for item in items)) for state in DEADLINE_ORDER]
    labels = [tr.gettext(DEADLINE_LABELS[state]) for state, _ in counts]
    chart = bar_chart(
        tr.gettext(N_("Open requests by deadline")),
        labels,
        [Series(tr.gettext(N_("Requests")), [n for _, n in counts])],
    )
    rows = [(label, n, state.value) for label, (state, n) in zip(labels, counts, strict=True)]
    return Page("queue.html", {"items": items, "counts": rows, "chart": chart}, (chart,))


# -- calendar ---------------------------------------------------------------------------------


async def calendar_page(view: View) -> Page:
    tr = view.tr
    today = view.now.astimezone(view.tz).date()
    monday = figures.parse_week(view.query.get("week")) or figures.week_of(today)
    days = figures.week_days(monday)
    start = figures.local_midnight(monday, view.tz)
    calls = await store.week_calls(start, figures.local_midnight(days[-1], view.tz) + _DAY)
    staff = sorted({w.staff for w in view.config.availability} | {c.staff for c in calls})
    grid: dict[str, list[list[store.CallRow]]] = {who: [[] for _ in days] for who in staff}
    for call in calls:
        grid[call.staff][(call.start.astimezone(view.tz).date() - monday).days].append(call)
    day_labels = [view.day_label(day) for day in days]
    chart = bar_chart(
        tr.gettext(N_("Calls booked per day and staff member")),
        day_labels,
        [Series(who, [len(cell) for cell in grid[who]]) for who in staff],
        stacked=True,
    )
    context = {
        "days": list(zip(days, day_labels, strict=True)),
        "today": today,
        "grid": grid,
        "total": len(calls),
        "week": figures.week_label(monday),
        "previous": figures.week_label(monday - timedelta(days=7)),
        "next": figures.week_label(monday + timedelta(days=7)),
        "chart": chart,
        "channels": {str(c): tr.gettext(label) for c, label in CHANNEL_LABELS.items()},
    }
    return Page("calendar.html", context, (chart,))


_DAY = timedelta(days=1)


# -- consumption ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountRow:
    key: str  # the page's `account` parameter: "org-<id>" or "client-<id>"
    name: str
    organisation: bool
    purchased: int  # in the month
    billed: int  # by the tickets opened in the month
    balance: Balance  # at the end of the month


@dataclass(frozen=True, slots=True)
class MonthRow:
    month: date
    label: str
    purchased: int
    billed: int
    remaining: int  # at the end of the month


def account_key(account: Account) -> str:
    if account.organisation_id is not None:
        return f"org-{account.organisation_id}"
    return f"client-{account.client_id}"


async def consumption_page(view: View) -> Page:
    """Per account (an organisation, or a client in none) and month: tickets bought, tickets
    billed by the tickets opened that month, and the balance at the month's end
    (`bot.storage.balances.monthly_consumption`, the figures of the monthly report). The
    chart and its table are for every account together, or for the one `?account=` names;
    the accounts' table is for `?month=` (this month by default)."""
    tr = view.tr
    months = view.months()
    accounts: list[list[AccountRow]] = []
    for month in months:
        start, end = view.bounds([month])
        rows = await balances.monthly_consumption(start, end)
        accounts.append(
            [
                AccountRow(account_key(a), a.name, a.is_organisation, bought, billed, balance)
                for a, bought, billed, balance in rows
            ]
        )
    chosen = view.query.get("account", "")
    names = {row.key: row.name for month in accounts for row in month}
    if chosen not in names:
        chosen = ""
    totals = []
    for month, rows in zip(months, accounts, strict=True):
        mine = [row for row in rows if not chosen or row.key == chosen]
        totals.append(
            MonthRow(
                month,
                view.month_label(month),
                sum(row.purchased for row in mine),
                sum(row.billed for row in mine),
                sum(row.balance.remaining for row in mine),
            )
        )
    asked = view.query.get("month", "")
    index = next(
        (i for i, m in enumerate(months) if m.strftime("%Y-%m") == asked), len(months) - 1
    )
    chart = bar_chart(
        tr.gettext(N_("Tickets purchased and billed per month, and the balance")),
        [view.month_label(m.month, short=True) for m in totals],
        [
            Series(tr.gettext(N_("Purchased")), [m.purchased for m in totals]),
            Series(tr.gettext(N_("Billed")), [m.billed for m in totals]),
            Series(tr.gettext(N_("Balance at month end")), [m.remaining for m in totals]),
        ],
    )
    context = {
        "chart": chart,
        "months": list(reversed(totals)),
        "account": chosen,
        "account_name": names.get(chosen),
        "month": totals[index],
        "accounts": accounts[index],
    }
    return Page("consumption.html", context, (chart,))


# -- deadlines kept ---------------------------------------------------------------------------


async def deadlines_page(view: View) -> Page:
    tr = view.tr
    months = view.months()
    rows = await store.deadline_rows(*view.bounds(months))
    kept = figures.deadlines_kept(rows, months, view.now, view.tz)
    chart = bar_chart(
        tr.gettext(N_("Share of first-answer deadlines kept, per month")),
        [view.month_label(month.month, short=True) for month in kept],
        [
            Series(
                tr.gettext(N_("Deadlines kept")),
                [None if m.share is None else round(100 * m.share, 1) for m in kept],
            )
        ],
        percent=True,
        line=True,
    )
    table = [(view.month_label(m.month), m) for m in reversed(kept)]
    return Page("deadlines.html", {"months": table, "chart": chart}, (chart,))


# -- satisfaction -----------------------------------------------------------------------------


async def satisfaction_page(view: View) -> Page:
    tr = view.tr
    months = view.months()
    rows = await store.rating_rows(*view.bounds(months))
    rated = figures.ratings_by_month(rows, months, view.tz)
    chart = bar_chart(
        tr.gettext(N_("Ratings given per month")),
        [view.month_label(month.month, short=True) for month in rated],
        [
            Series(
                tr.render(Msg(_STARS, {"n": rating}), view.tz),
                [m.counts[rating - 1] for m in rated],
            )
            for rating in figures.RATINGS
        ],
        stacked=True,
    )
    table = [(view.month_label(m.month), m) for m in reversed(rated)]
    context = {"months": table, "ratings": figures.RATINGS, "chart": chart}
    return Page("satisfaction.html", context, (chart,))


_STARS = N_("{n}/5")


#: The pages, in the order of the menu: path, title (msgid), builder.
PAGES: tuple[tuple[str, str, Callable[[View], Awaitable[Page]]], ...] = (
    ("queue", N_("Queue"), queue_page),
    ("calendar", N_("Calendar"), calendar_page),
    ("consumption", N_("Consumption"), consumption_page),
    ("deadlines", N_("Deadlines kept"), deadlines_page),
    ("satisfaction", N_("Satisfaction"), satisfaction_page),
)
