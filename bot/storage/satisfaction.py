"""The figures of ratings and no-shows (issue #16 §2–3) for the monthly report and the
metrics. Reading only.

The report follows its own rule (`repo.report_month`): a ticket's figures land in the month it
was *opened*, so its rating and its missed calls count with its bill. Comments are never read
here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tortoise.functions import Count

from bot.storage.models import Booking, Ticket

__all__ = ["SATISFACTION_COLUMNS", "add_report_columns", "no_show_count", "rating_counts"]

#: The report's columns of this module: tickets rated, their ratings' sum and average (empty
#: when none was rated), and booked calls the client did not join.
SATISFACTION_COLUMNS: tuple[str, ...] = ("ratings", "rating_sum", "rating_average", "no_shows")


async def add_report_columns(
    rows: Mapping[Any, dict[str, Any]], tickets: Iterable[tuple[Any, Ticket]]
) -> None:
    """Fill `SATISFACTION_COLUMNS` of each report row from `tickets`, given as (row key,
    ticket) pairs."""
    pairs = list(tickets)
    missed = dict(
        await Booking.filter(
            ticket_id__in=[ticket.pk for _, ticket in pairs], no_show_at__not_isnull=True
        )
        .annotate(n=Count("id"))
        .group_by("ticket_id")
        .values_list("ticket_id", "n")
    )
    for row in rows.values():
        row.update(ratings=0, rating_sum=0, rating_average=None, no_shows=0)
    for key, ticket in pairs:
        row = rows[key]
        row["no_shows"] += missed.get(ticket.pk, 0)
        if ticket.rating is not None:
            row["ratings"] += 1
            row["rating_sum"] += ticket.rating
    for row in rows.values():
        if row["ratings"]:
            row["rating_average"] = average(row["rating_sum"], row["ratings"])


def average(total: int, count: int) -> float | None:
    """An average rating as reports show it (two decimals); None when nothing was rated."""
    return round(total / count, 2) if count else None


async def rating_counts() -> dict[int, int]:
    """How many tickets got each rating (1–5), over all time."""
    return dict(
        await Ticket.filter(rating__not_isnull=True)
        .annotate(n=Count("id"))
        .group_by("rating")
        .values_list("rating", "n")
    )


async def no_show_count() -> int:
    """Booked calls marked as missed by the client, over all time."""
    return await Booking.filter(no_show_at__not_isnull=True).count()
