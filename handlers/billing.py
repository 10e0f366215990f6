"""Time spent and what it bills (SPEC §2 R2, R5; §4): `!log` and the monthly `!report`.

Staff only. `!log` records a `TimeLog` row and moves the ticket's logged minutes through
`handlers.common.change` (audit entry + card refresh); time logged on a reopened ticket under
its warranty bills nothing. When logged time starts a new ticket, the staff room is warned and
the client is told, with the rule of their channel (each started hour, or 45 minutes for
calls). `!report` shows, in the staff room only, a month's requests per client with what they
bill as of today, their ratings (count and average) and missed calls, then the prepaid
tickets per organisation (`bot.storage.balances.monthly_report`: bought in the month, billed,
balance at its end), as aligned plain text and HTML tables. What a change of billing does to a
prepaid balance (cards redrawn, warnings) is `handlers.common.change`'s. `LogTime` is `!log`'s
work for other modules (a billed no-show).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Any

from babel.numbers import format_decimal

from bot import rules
from bot.cards import defuse
from bot.domain import tickets as lifecycle
from bot.domain.balance import signed
from bot.domain.tickets import Channel, Refusal
from bot.i18n import N_, NP_, Msg, Translator
from bot.routing import Context, DomainError, Router
from bot.storage import balances, repo
from bot.storage.models import Ticket, TimeLog
from bot.storage.satisfaction import average
from handlers.common import (
    bad_duration,
    change,
    locked,
    locked_staff_ticket,
    rest_of_args,
    tell_client,
)
from handlers.common import tickets_msg as _tickets
from handlers.effects import LogTime

__all__ = ["router"]

router = Router("billing")

# -- messages -----------------------------------------------------------------------------------

# !log
_LOGGED_STAFF = N_("Logged {duration} on {ref}: {total} in total, {tickets} billed.")
_LOGGED_WARRANTY_STAFF = N_(
    "Logged {duration} on {ref} as warranty rework: not billed ({tickets} billed)."
)
_CROSSED_STAFF = N_("⚠️ {ref} now bills {tickets}: logged time ({total}) started a new ticket.")
_CROSSED_CLIENT = N_("The time spent on your request {ref} now counts as {tickets}. {rule}")
_RULE_HOUR = N_("As a reminder, each started hour is one more ticket.")
_RULE_CALL = N_("As a reminder, for calls each started 45 minutes is one more ticket.")

# !report
_REPORT_STAFF_ROOM_ONLY = N_("Reports are shown in the staff room only.")
_REPORT_BAD_MONTH = N_("Please give a month as YYYY-MM, for example: !report {example}")
_REPORT_EMPTY = N_("Nothing was opened in {month}.")
_REPORT_TITLE = NP_(
    "Report {month}: {n} client (requests opened in the month, billed as of today)",
    "Report {month}: {n} clients (requests opened in the month, billed as of today)",
)
_COL_CLIENT = N_("Client")
_COL_TICKETS = N_("Tickets")
_COL_BILLED = N_("Billed")
_COL_MESSAGING = N_("Messaging")
_COL_VIDEO = N_("Video")
_COL_PHONE = N_("Phone")
_COL_INTERVENTION = N_("Intervention")
_COL_QUESTIONS = N_("Questions")
_COL_QUOTES = N_("Quotes")
_COL_RATINGS = N_("Ratings")
_COL_RATING_AVERAGE = N_("Avg. rating")
_COL_NO_SHOWS = N_("No-shows")
_TOTAL = N_("Total")
_BALANCES_TITLE = N_(
    "Prepaid tickets per organisation, {month} (bought in the month, billed by the requests "
    "opened in it, balance at the end of the month)"
)
_COL_ORGANISATION = N_("Organisation")
_COL_PURCHASED = N_("Purchased")
_COL_BALANCE = N_("Balance")


# -- !log ---------------------------------------------------------------------------------------

#: How many words a duration may take ("1 h 30 min").
_DURATION_WORDS = 4


def _split_duration(text: str) -> tuple[int, str | None]:
    """(minutes, note) from "1h20 fixed the theme": the longest leading words that parse."""
    words = text.split()
    for count in range(min(_DURATION_WORDS, len(words)), 1, -1):
        try:
            minutes = rules.parse_duration(" ".join(words[:count]))
        except rules.DurationError:
            continue
        return minutes, " ".join(words[count:]) or None
    # One word, or nothing: its own error tells the accepted forms.
    minutes = rules.parse_duration(words[0] if words else "")
    return minutes, " ".join(words[1:]) or None


@router.command(
    "log",
    "temps",
    help=N_("Log time spent on a ticket, with an optional note."),
    usage="SP-… 1h20 [note]",
    staff=True,
)
async def log_time(ctx: Context) -> None:
    ticket = await locked_staff_ticket(ctx)
    try:
        minutes, note = _split_duration(rest_of_args(ctx.args))
    except rules.DurationError as error:
        raise bad_duration(ctx, ticket.ref, error.msg, "1h20") from None
    await _log(ctx, ticket, minutes, note, ctx.sender.user_id, ctx.reply)


@router.effect(LogTime)
async def on_log_time(ctx: Context, effect: LogTime) -> None:
    """Time logged for another module (a billed no-show): told in the staff room."""
    ticket = await locked(effect.ticket_id)
    await _log(ctx, ticket, effect.minutes, effect.note, effect.staff, ctx.send_staff)


async def _log(
    ctx: Context,
    ticket: Ticket,
    minutes: int,
    note: str | None,
    staff: str,
    tell_staff: Callable[[Msg], None],
) -> None:
    result = lifecycle.log_time(repo.ticket_state(ticket), minutes, ctx.now)
    if isinstance(result, Refusal):
        raise DomainError(result.msg)
    await TimeLog.create(ticket_id=ticket.id, staff=staff, minutes=minutes, note=note, at=ctx.now)
    detail = f"minutes={minutes}" + (" warranty" if result.under_warranty else "")
    state = await change(ctx, ticket, result.state, action="log", detail=detail, actor=staff)
    params = {
        "ref": ticket.ref,
        "duration": rules.format_duration(minutes),
        "total": rules.format_duration(state.minutes_logged),
        "tickets": _tickets(result.tickets_after),
    }
    if result.under_warranty:
        tell_staff(Msg(_LOGGED_WARRANTY_STAFF, params))
        return
    tell_staff(Msg(_LOGGED_STAFF, params))
    if result.crossed_ticket:
        ctx.send_staff(Msg(_CROSSED_STAFF, params))
        unit = lifecycle.billing_unit_minutes(state.channel)
        rule = Msg(_RULE_CALL if unit == rules.CALL_UNIT_MINUTES else _RULE_HOUR)
        await tell_client(
            ctx,
            ticket,
            Msg(_CROSSED_CLIENT, {"ref": ticket.ref, "tickets": params["tickets"], "rule": rule}),
        )


# -- the monthly report -------------------------------------------------------------------------

_MONTH_RE = re.compile(r"^\s*(\d{4})-(\d{1,2})\s*$")
_REPORT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("tickets", _COL_TICKETS),
    ("billed_tickets", _COL_BILLED),
    (f"minutes_{Channel.MESSAGING}", _COL_MESSAGING),
    (f"minutes_{Channel.VIDEO}", _COL_VIDEO),
    (f"minutes_{Channel.PHONE}", _COL_PHONE),
    (f"minutes_{Channel.INTERVENTION}", _COL_INTERVENTION),
    ("questions", _COL_QUESTIONS),
    ("quotes", _COL_QUOTES),
    ("ratings", _COL_RATINGS),
    ("rating_average", _COL_RATING_AVERAGE),
    ("no_shows", _COL_NO_SHOWS),
)
_BALANCE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("purchased", _COL_PURCHASED),
    ("billed_tickets", _COL_BILLED),
    ("balance", _COL_BALANCE),
)


@router.command(
    "report",
    "rapport",
    help=N_(
        "Monthly report: requests, billed tickets, time, ratings and no-shows per client; "
        "prepaid tickets per organisation."
    ),
    usage="2026-11",
    staff=True,
)
async def report(ctx: Context) -> None:
    if not ctx.in_staff_room:
        raise DomainError(Msg(_REPORT_STAFF_ROOM_ONLY))
    local_now = ctx.now.astimezone(ctx.tz)
    if ctx.args.strip():
        match = _MONTH_RE.match(ctx.args)
        if (
            match is None
            or not 1 <= int(match.group(2)) <= 12
            or not 1970 <= int(match.group(1)) <= 9998
        ):
            example = f"{local_now.year:04d}-{local_now.month:02d}"
            raise DomainError(Msg(_REPORT_BAD_MONTH, {"example": example}))
        year, month = int(match.group(1)), int(match.group(2))
    else:
        year, month = local_now.year, local_now.month
    label = f"{year:04d}-{month:02d}"
    rows = await balances.monthly_report(year, month, ctx.tz)
    if not rows:
        ctx.reply(Msg(_REPORT_EMPTY, {"month": label}))
        return
    plain, body_html = render_report(ctx, label, rows)
    ctx.reply(plain, html_body=body_html)


def _cell(column: str, value: Any, tr: Translator) -> str:
    if value is None:
        return "–"  # an average of nothing
    if column.startswith("minutes_"):
        return rules.format_duration(value) if value else "0"
    if column == "balance":
        return signed(value)
    if isinstance(value, float):
        return format_decimal(value, "0.0#", locale=tr.babel_locale)
    return str(value)


def _width(text: str) -> int:
    return len(text.replace("\u2060", ""))  # the invisible joiner `defuse` adds


def render_report(ctx: Context, label: str, rows: list[dict[str, Any]]) -> tuple[str, str]:
    """Two small tables, as aligned plain text and as HTML: the requests per client, then the
    prepaid tickets per organisation (a client in none is an organisation of one)."""
    clients = [row for row in rows if row["row"] == "client"]
    accounts = [row for row in rows if row["row"] == "organisation"]
    plain: list[str] = []
    markup: list[str] = []
    if clients:
        title = ctx.render(Msg(_REPORT_TITLE[0], {"month": label}, _REPORT_TITLE[1], len(clients)))
        names = [str(row.get("client_name") or row["client"]) for row in clients]
        _table(ctx, title, _COL_CLIENT, _REPORT_COLUMNS, clients, names, plain, markup)
    if accounts:
        title = ctx.render(Msg(_BALANCES_TITLE, {"month": label}))
        names = [str(row["organisation"]) for row in accounts]
        _table(ctx, title, _COL_ORGANISATION, _BALANCE_COLUMNS, accounts, names, plain, markup)
    return "\n\n".join(plain), "".join(markup)


def _table(
    ctx: Context,
    title: str,
    first: str,
    columns: tuple[tuple[str, str], ...],
    rows: list[dict[str, Any]],
    names: list[str],
    plain: list[str],
    markup: list[str],
) -> None:
    """One titled table with a total line, added to `plain` and `markup`."""
    tr = ctx.tr
    header = [tr.gettext(first), *(tr.gettext(title) for _, title in columns)]
    body: list[list[str]] = []
    shown = [column for column, _ in columns]
    summed = [column for column in shown if column != "rating_average"]
    if "rating_average" in shown:  # an average of the month: from the sums, not of averages
        summed += [column for column in ("ratings", "rating_sum") if column not in summed]
    totals: dict[str, Any] = dict.fromkeys(summed, 0)
    for name, row in zip(names, rows, strict=True):
        body.append([defuse(name), *(_cell(column, row[column], tr) for column in shown)])
        for column in totals:
            totals[column] += int(row[column] or 0)
    if "rating_average" in shown:
        totals["rating_average"] = average(totals["rating_sum"], totals["ratings"])
    total = [tr.gettext(_TOTAL), *(_cell(column, totals[column], tr) for column in shown)]
    table = [header, *body, total]
    widths = [max(_width(line[i]) for line in table) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        padded = [cells[0] + " " * (widths[0] - _width(cells[0]))]
        padded += [
            " " * (width - _width(cell)) + cell
            for cell, width in zip(cells[1:], widths[1:], strict=True)
        ]
        return " | ".join(padded).rstrip()

    plain.append("\n".join([title, *(line(cells) for cells in table)]))

    def html_row(cells: list[str], tag: str) -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>"

    markup.append(
        f"<p><b>{html.escape(title)}</b></p><table><thead>{html_row(header, 'th')}</thead>"
        "<tbody>"
        + "".join(html_row(cells, "td") for cells in body)
        + f"</tbody><tfoot>{html_row(total, 'th')}</tfoot></table>"
    )
