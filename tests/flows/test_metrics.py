"""What an operator graphs: the metrics after real answers, errors, mails and database states,
read as Prometheus reads them (`Metrics.refresh`, then the registry's text)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

import bot.metrics
from bot.mail import Mail, MailError
from bot.matrix.runtime import ShellStats
from bot.routing import MAIL_QUEUE, CommandSpec, Context
from bot.storage.models import Client, OutboxItem, Ticket, UndecryptedEvent
from bot.testing.harness import BotHarness
from bot.version import version

DM = "!dm-alice:test"
ALICE = "@alice:test"
DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"

# Every family an operator's dashboard or alert may use (the sync ones once a shell is
# watched, see test_the_shell_s_counters_are_read_at_scrape).
NAMES = (
    "support_bot_build_info",
    "support_bot_events_total",
    "support_bot_handler_errors_total",
    "support_bot_requests_opened_total",
    "support_bot_mails_total",
    "support_bot_answer_latency_seconds_bucket",
    "support_bot_metrics_database_ok",
    "support_bot_outbox_items",
    "support_bot_undecryptable_events",
    "support_bot_queue_tickets",
    "support_bot_tickets_at_risk",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "python_info",
)


@pytest.fixture
async def harness(db_url: str) -> AsyncIterator[BotHarness]:
    async with BotHarness.open(db_url) as harness:
        # The app hands its deliverer the metrics (mails, answer latency); so does this.
        harness.deliverer.metrics = harness.services.metrics
        yield harness


async def scrape(harness: BotHarness) -> str:
    """What the metrics listener answers: the database figures read, then the text."""
    metrics = harness.services.metrics
    await metrics.refresh(
        harness.clock(), harness.services.calendar, harness.config.service.sla_warning_hours
    )
    return generate_latest(metrics.registry).decode()


def value(harness: BotHarness, name: str, **labels: str) -> float | None:
    return harness.services.metrics.registry.get_sample_value(name, labels)


async def test_an_answered_message_shows_in_every_family(harness: BotHarness) -> None:
    # Sent two seconds before the bot reads it: the answer's latency counts from then.
    event = harness.text_event(DM, ALICE, "!aide")
    event = replace(event, ts=harness.clock() - timedelta(seconds=2))
    sent = await harness.deliver(event)
    assert len(sent) == 1
    text = await scrape(harness)
    for name in NAMES:
        assert f"\n{name}" in text, name
    assert value(harness, "support_bot_events_total", kind="IncomingText") == 1
    assert value(harness, "support_bot_answer_latency_seconds_count") == 1
    assert value(harness, "support_bot_answer_latency_seconds_sum") == 2.0
    assert value(harness, "support_bot_answer_latency_seconds_bucket", le="1.0") == 0
    assert value(harness, "support_bot_answer_latency_seconds_bucket", le="2.0") == 1
    assert value(harness, "support_bot_build_info", version=version()) == 1
    assert value(harness, "support_bot_metrics_database_ok") == 1
    # Sent, so nothing is waiting; every kind has its series.
    for kind in ("message", "edit", "reaction", "file", "mail"):
        assert value(harness, "support_bot_outbox_items", kind=kind, state="pending") == 0
        assert value(harness, "support_bot_outbox_items", kind=kind, state="failed") == 0
    assert value(harness, "support_bot_mails_total", outcome="sent") == 0
    assert harness.services.metrics.errors_total() == 0


async def test_no_created_series_in_either_format(harness: BotHarness) -> None:
    await harness.say(DM, ALICE, "!aide")
    text = await scrape(harness)
    openmetrics = generate_openmetrics(harness.services.metrics.registry).decode()
    assert "_created" not in text
    assert "_created" not in openmetrics


async def test_only_the_first_answer_in_the_message_s_room_is_timed(harness: BotHarness) -> None:
    # A reaction answers nobody waiting: no latency. Two messages: two observations.
    await harness.react(DM, ALICE, "$whatever", "👍")
    await harness.say(DM, ALICE, "!aide")
    await harness.say(DM, ALICE, "!help")
    assert value(harness, "support_bot_answer_latency_seconds_count") == 2


async def test_a_handler_error_counts_under_the_handler_s_name(harness: BotHarness) -> None:
    async def explode(ctx: Context) -> None:
        raise RuntimeError("handler bug")

    harness.dispatcher.router.commands.insert(0, CommandSpec(("explode",), "x", handler=explode))
    sent = await harness.say(DM, ALICE, "!explode")
    assert "référence" in sent[0].body  # apologised for, as before
    await harness.say(DM, ALICE, "!explode")
    await scrape(harness)
    assert value(harness, "support_bot_handler_errors_total", handler="explode") == 2
    assert harness.services.metrics.errors_total() == 2
    # The apology is an answer: its latency counts.
    assert value(harness, "support_bot_answer_latency_seconds_count") == 2


@dataclass(frozen=True)
class Boom:
    """An effect whose owner fails."""


async def test_an_effect_s_failure_counts_under_the_effect_s_handler(
    harness: BotHarness,
) -> None:
    async def asks(ctx: Context) -> None:
        if not await ctx.try_emit(Boom()):  # survived: the asking handler goes on
            await ctx.emit(Boom())  # not survived: the event fails

    async def on_boom(ctx: Context, effect: Boom) -> None:
        raise RuntimeError("effect bug")

    router = harness.dispatcher.router
    router.commands.insert(0, CommandSpec(("asks",), "x", handler=asks))
    router.effects[Boom].append(on_boom)
    await harness.say(DM, ALICE, "!asks")
    assert value(harness, "support_bot_handler_errors_total", handler="on_boom") == 1
    assert value(harness, "support_bot_handler_errors_total", handler="asks") is None


async def test_a_background_job_failure_counts_under_its_key(harness: BotHarness) -> None:
    async def job(ctx: Context) -> None:
        raise RuntimeError("job bug")

    assert not await harness.dispatcher.run_job("sla-warn:12", job)
    assert value(harness, "support_bot_handler_errors_total", handler="job:sla-warn") == 1


class FakeMailer:
    def __init__(self, works: bool) -> None:
        self.works = works

    async def send_mail(self, mail: Mail, *, message_key: str | None = None) -> None:
        if not self.works:
            raise MailError("simulated: server unreachable")


async def _mail_row(txn_id: str, now: datetime) -> None:
    mail = Mail(to="alice@example.org", subject="Consent", text="Please confirm.")
    await OutboxItem.create(
        txn_id=txn_id,
        room_id=MAIL_QUEUE,
        kind="mail",
        content={"mail": mail.to_content(), "if_sent": [], "if_failed": []},
        created_at=now,
    )


async def test_mails_sent_and_failed_and_the_outbox_read_at_scrape(harness: BotHarness) -> None:
    now = harness.clock()
    harness.services.mailer = FakeMailer(works=True)  # type: ignore[assignment]
    await _mail_row("mail-1", now)
    await harness.deliverer.deliver_pending()
    harness.services.mailer = FakeMailer(works=False)  # type: ignore[assignment]
    await _mail_row("mail-2", now)
    await harness.deliverer.deliver_pending()  # tried MAIL_ATTEMPTS times, then given up
    # A message waiting (the homeserver away), written by nobody this process knows of.
    await OutboxItem.create(
        txn_id="waiting", room_id=DM, kind="message", content={"body": "hi"}, created_at=now
    )
    await scrape(harness)
    assert value(harness, "support_bot_mails_total", outcome="sent") == 1
    assert value(harness, "support_bot_mails_total", outcome="failed") == 1
    assert value(harness, "support_bot_outbox_items", kind="mail", state="failed") == 1
    assert value(harness, "support_bot_outbox_items", kind="mail", state="pending") == 0
    assert value(harness, "support_bot_outbox_items", kind="message", state="pending") == 1


async def _ticket(client: Client, ref: str, now: datetime, **fields: Any) -> None:
    values: dict[str, Any] = {
        "kind": "ticket",
        "status": "open",
        "category": "theme",
        "channel": "messaging",
        "room_id": DM,
        "locale": "fr",
        "description": "…",
        "created_at": now,
        **fields,
    }
    await Ticket.create(ref=ref, client=client, **values)


async def test_queue_and_tickets_at_risk_are_read_at_scrape(harness: BotHarness) -> None:
    now = harness.clock()  # Thursday 26 November 2026, 10:00 in Paris (day 09:00-18:00)
    client = await Client.create(key=ALICE, created_at=now)
    await _ticket(client, "SP-1", now, sla_due=now - timedelta(hours=1))  # overdue
    await _ticket(client, "SP-2", now, sla_due=now + timedelta(hours=3))  # 3 working hours
    await _ticket(client, "SP-3", now, sla_due=now + timedelta(days=1))  # 9 working hours
    answered = {"sla_due": now - timedelta(hours=1), "first_response_at": now}
    await _ticket(client, "SP-4", now, **answered)  # answered in time: the SLA is kept
    await _ticket(client, "SP-5", now, status="closed", sla_due=now - timedelta(days=3))
    await _ticket(client, "Q-1", now, kind="question", status="in_progress")
    await scrape(harness)
    assert value(harness, "support_bot_tickets_at_risk", state="overdue") == 1
    assert value(harness, "support_bot_tickets_at_risk", state="due_soon") == 1
    assert value(harness, "support_bot_queue_tickets", kind="ticket") == 4
    assert value(harness, "support_bot_queue_tickets", kind="question") == 1
    assert value(harness, "support_bot_queue_tickets", kind="quote") == 0
    # 14:00: SP-2 is late; SP-3 (Friday 10:00) is 4 + 1 working hours away, not at risk yet.
    harness.clock.advance(timedelta(hours=4))
    await scrape(harness)
    assert value(harness, "support_bot_tickets_at_risk", state="overdue") == 2
    assert value(harness, "support_bot_tickets_at_risk", state="due_soon") == 0
    # 16:00: 2 + 1 working hours left, within the four of service.sla_warning_hours.
    harness.clock.advance(timedelta(hours=2))
    await scrape(harness)
    assert value(harness, "support_bot_tickets_at_risk", state="due_soon") == 1


async def test_undecryptable_events_waiting_for_their_keys(harness: BotHarness) -> None:
    await UndecryptedEvent.create(
        event_id="$secret",
        room_id=DM,
        sender=ALICE,
        session_id="s1",
        source={"type": "m.room.encrypted"},
        received_at=harness.clock(),
    )
    await scrape(harness)
    assert value(harness, "support_bot_undecryptable_events") == 1


async def test_the_shell_s_counters_are_read_at_scrape(harness: BotHarness) -> None:
    stats = ShellStats()
    harness.services.metrics.watch_sync(stats)
    stats.started -= 30  # no sync yet: the age counts from the start
    assert 30 <= (value(harness, "support_bot_seconds_since_last_sync") or 0) < 40
    stats.sync_failures += 3
    stats.syncs += 1
    assert value(harness, "support_bot_sync_failures_total") == 3
    assert value(harness, "support_bot_syncs_total") == 1
    assert (value(harness, "support_bot_seconds_since_last_sync") or 99) < 5
    assert stats.last_sync is not None
    stats.last_sync -= 42
    assert 42 <= (value(harness, "support_bot_seconds_since_last_sync") or 0) < 50
    assert "_created" not in await scrape(harness)


async def test_a_database_that_does_not_answer_leaves_its_figures_out(
    harness: BotHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    await harness.say(DM, ALICE, "!aide")

    async def down(*args: Any) -> list[Any]:
        raise ConnectionRefusedError("database down")

    monkeypatch.setattr(bot.metrics, "_read_database", down)
    text = await scrape(harness)
    assert value(harness, "support_bot_metrics_database_ok") == 0
    # Left out rather than stale; what the process counted itself is still there.
    assert "support_bot_outbox_items" not in text
    assert value(harness, "support_bot_events_total", kind="IncomingText") == 1


async def test_the_grafana_dashboard_asks_only_for_series_the_bot_exports(
    harness: BotHarness,
) -> None:
    harness.services.metrics.watch_sync(ShellStats())
    await harness.say(DM, ALICE, "!aide")
    text = await scrape(harness)
    exported = set(re.findall(r"^([a-z_]+)[{ ]", text, re.M))
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    asked = {
        name for expr in exprs for name in re.findall(r"\b((?:support_bot|process)_\w+)", expr)
    }
    assert asked, "no queries found in the dashboard"
    assert asked <= exported, sorted(asked - exported)
