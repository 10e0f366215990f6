"""The bot's Prometheus metrics, in a registry of its own (nothing process-wide).

Three sources, so that a figure is never kept twice:

* counted where it happens: events handled, handler errors by handler, requests opened, mails
  sent or failed, the answer latency (`Metrics`' methods, called by the dispatcher and the
  outbox), and the web side's own counters (`bot.web.app`);
* the Matrix shell's in-memory counters, read at scrape (`watch_sync`): syncs, sync failures,
  seconds since the last successful sync; and the mailbox reader's (`watch_mailbox`): mails
  read, failures, connected, seconds since the last look at the folder;
* the database, read at scrape (`refresh`, awaited by the metrics listener before it
  encodes): outbox rows pending and failed, undecryptable events waiting for their keys, the
  staff queue, the tickets at risk of missing their deadline, the clients' ratings (count and
  sum, so an average; never a comment) and the calls marked as no-shows. The database is the
  truth for these whoever wrote the rows (handlers, background jobs, a process that crashed,
  a rating changed or withdrawn), and each is one `COUNT … GROUP BY` or a read of the few
  unanswered tickets.

Process and platform collectors (`process_*`, `python_info`) and `support_bot_build_info`
come with every `Metrics`. No `_created` series: see `Metrics.__post_init__`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector
from tortoise.functions import Count

from bot.domain.dashboard import DeadlineState, deadline_state
from bot.domain.rating import RATING_MAX, RATING_MIN
from bot.domain.tickets import ACTIVE_STATUSES, Kind
from bot.rules import BusinessCalendar
from bot.storage import satisfaction
from bot.storage.models import OutboxItem, Ticket, UndecryptedEvent
from bot.version import version

__all__ = ["ANSWER_BUCKETS", "MailboxCounters", "Metrics", "SyncStats"]

log = logging.getLogger(__name__)

#: Seconds from a client's message to the bot's answer being accepted by the homeserver: a
#: healthy bot answers within a second or two; the long buckets show outages and backlogs.
ANSWER_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
#: A scrape never waits longer than this for the database (Prometheus' default timeout is 10 s).
DATABASE_TIMEOUT_SECONDS = 5.0
# Outbox kinds shown at 0 when there are none, so that graphs and alerts have a series.
_OUTBOX_KINDS = (
    "message",
    "message_in_clear",
    "edit",
    "reaction",
    "file",
    "mail",
    "redaction",
)
_ACTIVE = [str(status) for status in ACTIVE_STATUSES]


class SyncStats(Protocol):
    """What the metrics read of the Matrix shell's counters (`bot.matrix.runtime.ShellStats`)."""

    @property
    def syncs(self) -> int: ...

    @property
    def sync_failures(self) -> int: ...

    @property
    def batch_failures(self) -> int: ...

    @property
    def last_sync(self) -> float | None: ...

    @property
    def started(self) -> float: ...


class MailboxCounters(Protocol):
    """What the metrics read of the mailbox reader (`bot.mailbox.reader.MailboxStats`)."""

    @property
    def read(self) -> int: ...

    @property
    def errors(self) -> int: ...

    @property
    def connected(self) -> bool: ...

    @property
    def last_check(self) -> float | None: ...

    @property
    def started(self) -> float: ...


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        # The text format would publish every counter and histogram twice (`x_total` and a
        # `x_created` gauge). prometheus_client 0.26 turns these off for the whole process
        # only (no per-registry switch); the bot's registry is the only one its process
        # serves, and the switch is read at each scrape, so this covers every collector.
        disable_created_metrics()
        registry = self.registry
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        Gauge(
            "support_bot_build_info",
            "The running version of support-bot (always 1).",
            ["version"],
            registry=registry,
        ).labels(version=version()).set(1)  # the one `--version` and the log print
        self.events = Counter(
            "support_bot_events", "Matrix events handled", ["kind"], registry=registry
        )
        self.errors = Counter(
            "support_bot_handler_errors",
            "Handler errors (apologised for), by the handler's function name",
            ["handler"],
            registry=registry,
        )
        self.tickets = Counter(
            "support_bot_requests_opened",
            "Tickets, questions and quotes opened",
            ["kind"],
            registry=registry,
        )
        for kind in Kind:
            self.tickets.labels(kind=str(kind))
        self.mails = Counter(
            "support_bot_mails",
            "E-mails delivered by the outbox: sent, or failed after every attempt",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("sent", "failed"):
            self.mails.labels(outcome=outcome)
        self.answer_latency = Histogram(
            "support_bot_answer_latency_seconds",
            "From a message's origin_server_ts to the homeserver accepting the bot's answer",
            buckets=ANSWER_BUCKETS,
            registry=registry,
        )
        self.database_ok = Gauge(
            "support_bot_metrics_database_ok",
            "1 when this scrape could read the database figures (outbox, queue, at risk), else 0",
            registry=registry,
        )
        self._database = _DatabaseFigures()
        registry.register(self._database)

    # -- counted where it happens --------------------------------------------------------

    def expect_handlers(self, names: Iterable[str]) -> None:
        """Show these handlers' error counters at 0 until they fail."""
        for name in names:
            self.errors.labels(handler=name)

    def count_error(self, handler: str) -> None:
        self.errors.labels(handler=handler).inc()

    def errors_total(self) -> float:
        """Handler errors of every handler together (for tests and tools)."""
        return sum(
            sample.value
            for family in self.errors.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        )

    def count_mail(self, sent: bool) -> None:
        self.mails.labels(outcome="sent" if sent else "failed").inc()

    def observe_answer(self, seconds: float) -> None:
        # A homeserver's clock a little ahead of ours would give a negative latency.
        self.answer_latency.observe(max(seconds, 0.0))

    # -- read at scrape --------------------------------------------------------------------

    def watch_sync(self, stats: SyncStats) -> None:
        """Export the Matrix shell's counters, read at each scrape."""
        self.registry.register(_SyncCollector(stats))

    def watch_mailbox(self, stats: MailboxCounters) -> None:
        """Export the mailbox reader's counters, read at each scrape."""
        self.registry.register(_MailboxCollector(stats))

    async def refresh(self, now: datetime, calendar: BusinessCalendar, warn_hours: float) -> None:
        """Read the database figures for the scrape about to be encoded. When the database
        does not answer, they are left out (not stale) and `database_ok` says 0."""
        try:
            async with asyncio.timeout(DATABASE_TIMEOUT_SECONDS):
                families = await _read_database(now, calendar, warn_hours)
        except Exception as error:  # the rest of the scrape is still worth serving
            log.warning("metrics: database figures not read (%s)", type(error).__name__)
            self._database.families = []
            self.database_ok.set(0)
            return
        self._database.families = families
        self.database_ok.set(1)


class _DatabaseFigures(Collector):
    """Serves the families of the last `Metrics.refresh`."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return list(self.families)

    def describe(self) -> Iterable[Metric]:
        # Names only: the registry refuses a second collector publishing the same ones.
        return _database_families({}, 0, {}, {}, {}, 0)


class _SyncCollector(Collector):
    def __init__(self, stats: SyncStats) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        stats = self._stats
        # Before the first successful sync, the age counts from the shell's start: a bot that
        # never manages to sync shows a growing age, as one that stopped syncing does.
        since = stats.last_sync if stats.last_sync is not None else stats.started
        return [
            CounterMetricFamily(
                "support_bot_syncs", "Successful /sync answers", value=stats.syncs
            ),
            CounterMetricFamily(
                "support_bot_sync_failures",
                "Failed /sync requests (network, homeserver errors), each retried with backoff",
                value=stats.sync_failures,
            ),
            CounterMetricFamily(
                "support_bot_batch_failures",
                "Sync batches whose handling failed and was retried (e.g. a database outage)",
                value=stats.batch_failures,
            ),
            GaugeMetricFamily(
                "support_bot_seconds_since_last_sync",
                "Seconds since the last successful /sync answer (since start before the first)",
                value=max(time.monotonic() - since, 0.0),
            ),
        ]

    def describe(self) -> Iterable[Metric]:
        return [
            CounterMetricFamily("support_bot_syncs", ""),
            CounterMetricFamily("support_bot_sync_failures", ""),
            CounterMetricFamily("support_bot_batch_failures", ""),
            GaugeMetricFamily("support_bot_seconds_since_last_sync", ""),
        ]


class _MailboxCollector(Collector):
    def __init__(self, stats: MailboxCounters) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        stats = self._stats
        # Before the first complete look, the age counts from the reader's start, as the
        # sync's does: a reader that never gets in shows a growing age.
        since = stats.last_check if stats.last_check is not None else stats.started
        return [
            CounterMetricFamily(
                "support_bot_mailbox_mails_read",
                "Mails of the support mailbox handled (handed over and committed)",
                value=stats.read,
            ),
            CounterMetricFamily(
                "support_bot_mailbox_errors",
                "Mailbox sessions ended by a failure (network, TLS, login, server, handling),"
                " each retried with backoff",
                value=stats.errors,
            ),
            GaugeMetricFamily(
                "support_bot_mailbox_connected",
                "1 while the reader is logged in and has the folder selected, else 0",
                value=1 if stats.connected else 0,
            ),
            GaugeMetricFamily(
                "support_bot_mailbox_seconds_since_last_check",
                "Seconds since the reader last looked at the folder (since start before)",
                value=max(time.monotonic() - since, 0.0),
            ),
        ]

    def describe(self) -> Iterable[Metric]:
        return [
            CounterMetricFamily("support_bot_mailbox_mails_read", ""),
            CounterMetricFamily("support_bot_mailbox_errors", ""),
            GaugeMetricFamily("support_bot_mailbox_connected", ""),
            GaugeMetricFamily("support_bot_mailbox_seconds_since_last_check", ""),
        ]


async def _read_database(
    now: datetime, calendar: BusinessCalendar, warn_hours: float
) -> list[Metric]:
    outbox: dict[tuple[str, str], int] = {}
    rows = (
        await OutboxItem.filter(sent_at=None)
        .annotate(n=Count("id"))
        .group_by("kind", "failed")
        .values_list("kind", "failed", "n")
    )
    for kind, failed, n in rows:
        key = (kind, "failed" if failed else "pending")
        outbox[key] = outbox.get(key, 0) + n
    queue = dict(
        await Ticket.filter(status__in=_ACTIVE)
        .annotate(n=Count("id"))
        .group_by("kind")
        .values_list("kind", "n")
    )
    # Staff owe these a first answer; they are few (the staff queue), so the business-hours
    # arithmetic runs here rather than in SQL.
    dues = await Ticket.filter(
        status__in=_ACTIVE, sla_due__not_isnull=True, first_response_at=None
    ).values_list("sla_due", flat=True)
    at_risk = {"due_soon": 0, "overdue": 0}
    for due in dues:
        state = deadline_state(due, None, now, calendar, warn_hours)
        if state in (DeadlineState.OVERDUE, DeadlineState.DUE_SOON):
            at_risk[state.value] += 1
    undecryptable = await UndecryptedEvent.all().count()
    ratings = await satisfaction.rating_counts()
    no_shows = await satisfaction.no_show_count()
    return _database_families(outbox, undecryptable, queue, at_risk, ratings, no_shows)


def _database_families(
    outbox: dict[tuple[str, str], int],
    undecryptable: int,
    queue: dict[str, int],
    at_risk: dict[str, int],
    ratings: dict[int, int],
    no_shows: int,
) -> list[Metric]:
    items = GaugeMetricFamily(
        "support_bot_outbox_items",
        "Outbox rows not sent: pending (to send or retry) and failed (given up), by kind",
        labels=["kind", "state"],
    )
    kinds = sorted({*_OUTBOX_KINDS, *(kind for kind, _ in outbox)})
    for kind in kinds:
        for state in ("pending", "failed"):
            items.add_metric([kind, state], outbox.get((kind, state), 0))
    waiting = GaugeMetricFamily(
        "support_bot_undecryptable_events",
        "Encrypted events kept until their room keys arrive (given up after a day)",
        value=undecryptable,
    )
    tickets = GaugeMetricFamily(
        "support_bot_queue_tickets",
        "Tickets, questions and quotes in which staff owe something (the !queue), by kind",
        labels=["kind"],
    )
    for kind in sorted({*(str(k) for k in Kind), *queue}):
        tickets.add_metric([kind], queue.get(kind, 0))
    risk = GaugeMetricFamily(
        "support_bot_tickets_at_risk",
        "Active requests not answered yet whose deadline is within service.sla_warning_hours "
        "business hours (due_soon) or past (overdue)",
        labels=["state"],
    )
    for state in ("due_soon", "overdue"):
        risk.add_metric([state], at_risk.get(state, 0))
    rated = SummaryMetricFamily(
        "support_bot_rating",
        "Clients' ratings of their closed tickets (1 to 5): count and sum; the average is "
        "sum / count",
        count_value=sum(ratings.values()),
        sum_value=float(sum(stars * n for stars, n in ratings.items())),
    )
    by_stars = GaugeMetricFamily(
        "support_bot_ratings",
        "Tickets rated, by the rating given (1 to 5)",
        labels=["stars"],
    )
    for stars in range(RATING_MIN, RATING_MAX + 1):
        by_stars.add_metric([str(stars)], ratings.get(stars, 0))
    missed = GaugeMetricFamily(
        "support_bot_no_shows",
        "Booked calls the client did not join, as marked by staff (a reaction or !noshow)",
        value=no_shows,
    )
    return [items, waiting, tickets, risk, rated, by_stars, missed]
