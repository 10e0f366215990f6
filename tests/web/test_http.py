"""The bot's HTTP endpoints besides the consent pages: health and staff calendar feeds on the
public listener, metrics on a listener of their own."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import prometheus_client
import pytest
import pytest_asyncio
from icalendar import Calendar
from prometheus_client import CollectorRegistry
from tortoise.backends.base.executor import EXECUTOR_CACHE

from bot.config import Config, MatrixConfig, WebConfig
from bot.i18n import Catalogs
from bot.storage.db import close_db, open_db
from bot.storage.models import Booking, Client, StaffFeed, Ticket, UserPref
from bot.tokens import new_token, token_hash
from bot.web.app import (
    build_metrics_app,
    build_web_app,
    feed_link,
    issue_staff_feed_token,
    start_web,
    stop_web,
)

SECRET = "test-secret-0123456789abcdef"
NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
STAFF = "@bob:test.example"


@dataclass
class Server:
    base: str
    registry: CollectorRegistry
    sync: dict[str, str]  # what the Matrix sync loop reports to /healthz
    metrics: str  # the metrics listener, apart from the public one
    refreshes: list[None]  # one per scrape: the figures read from the database at scrape


@pytest_asyncio.fixture
async def server(db_url: str) -> AsyncIterator[Server]:
    # Tortoise caches SQL by connection name, not dialect (see test_consent_page.py).
    EXECUTOR_CACHE.clear()
    await open_db(db_url)
    config = Config(
        matrix=MatrixConfig(
            homeserver="https://matrix.test.example",
            user_id="@bot:test.example",
            staff_room="!staff:test.example",
            password="unused-in-these-tests",
        ),
        web=WebConfig(
            listen="127.0.0.1:0", public_url="https://support.test.example", secret=SECRET
        ),
    )

    async def on_confirmed(ticket_id: int) -> None:
        raise AssertionError("nothing is confirmed here")

    registry = CollectorRegistry()
    sync = {"state": "ok"}
    app = build_web_app(
        config=config,
        catalogs=Catalogs.load(),
        registry=registry,
        on_confirmed=on_confirmed,
        clock=lambda: NOW,
        sync_state=lambda: sync["state"],
    )
    runner = await start_web(app, config.web.listen)
    host, port = runner.addresses[0][:2]
    refreshes: list[None] = []

    async def refresh() -> None:
        refreshes.append(None)

    metrics_runner = await start_web(
        build_metrics_app(registry, refresh), "127.0.0.1:0", name="metrics", access_log=False
    )
    metrics_host, metrics_port = metrics_runner.addresses[0][:2]
    try:
        yield Server(
            f"http://{host}:{port}",
            registry,
            sync,
            f"http://{metrics_host}:{metrics_port}",
            refreshes,
        )
    finally:
        await stop_web(metrics_runner)
        await stop_web(runner)
        await close_db()
        EXECUTOR_CACHE.clear()


async def get(url: str, **headers: str) -> tuple[int, bytes, Any]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, await response.read(), response.headers


async def test_healthz_reports_the_database(server: Server) -> None:
    status, body, headers = await get(f"{server.base}/healthz")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert body == b'{"status": "ok", "db": "ok", "matrix": "ok"}'


async def test_healthz_is_503_when_the_sync_loop_is_stalled(server: Server) -> None:
    server.sync["state"] = "starting"  # the process is up, the first sync not answered yet
    status, body, _ = await get(f"{server.base}/healthz")
    assert (status, body) == (200, b'{"status": "ok", "db": "ok", "matrix": "starting"}')
    server.sync["state"] = "stalled"
    status, body, _ = await get(f"{server.base}/healthz")
    assert (status, body) == (503, b'{"status": "error", "db": "ok", "matrix": "stalled"}')


async def test_the_public_listener_does_not_serve_metrics(server: Server) -> None:
    status, _, _ = await get(f"{server.base}/metrics")
    assert status == 404
    status, _, _ = await get(f"{server.base}/healthz")  # health stays public
    assert status == 200


async def test_metrics_are_prometheus_text_from_the_given_registry(server: Server) -> None:
    await get(f"{server.base}/healthz")
    status, body, headers = await get(f"{server.metrics}/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert len(server.refreshes) == 1  # the database figures are read for each scrape
    text = body.decode()
    assert "# TYPE support_bot_http_requests_total counter" in text
    assert (
        'support_bot_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    )
    # The metrics listener's own requests are neither counted nor served elsewhere.
    assert 'route="/metrics"' not in text
    # Nothing went to the process-wide registry.
    assert (
        prometheus_client.REGISTRY.get_sample_value(
            "support_bot_http_requests_total",
            {"method": "GET", "route": "/healthz", "status": "200"},
        )
        is None
    )


async def test_metrics_can_include_the_bot_s_own_collectors(server: Server) -> None:
    gauge = prometheus_client.Gauge(
        "support_bot_open_tickets", "Open tickets.", registry=server.registry
    )
    gauge.set(3)
    _, body, _ = await get(f"{server.metrics}/metrics")
    assert "support_bot_open_tickets 3.0" in body.decode()


async def test_metrics_speak_openmetrics_when_asked(server: Server) -> None:
    await get(f"{server.base}/healthz")
    accept = "application/openmetrics-text; version=1.0.0"
    status, body, headers = await get(f"{server.metrics}/metrics", Accept=accept)
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.decode().endswith("# EOF\n")
    assert "support_bot_http_requests_total{" in body.decode()


async def _booking(ref: str, start: datetime, *, status: str = "active", **extra: Any) -> Booking:
    client = await Client.create(key=f"@client-{ref}:test.example", created_at=NOW)
    ticket = await Ticket.create(
        ref=ref,
        kind="ticket",
        status="open",
        category="theme",
        channel="video",
        client=client,
        room_id="!room:test.example",
        locale="fr",
        description="Private description that must not leave the bot.",
        created_at=NOW,
    )
    return await Booking.create(
        ticket=ticket,
        staff=extra.pop("staff", STAFF),
        start=start,
        end=start + timedelta(minutes=45),
        status=status,
        slot_lock=None,
        created_at=NOW,
        **extra,
    )


async def test_calendar_feed_behind_a_staff_token(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    live = await _booking(
        "SP-2026-0001",
        NOW + timedelta(days=1),
        staff_url="https://meet.test.example/sp-2026-0001?moderator=1",
    )
    await _booking("SP-2026-0002", NOW + timedelta(days=2), status="cancelled")
    await _booking("SP-2026-0003", NOW + timedelta(days=3), staff="@carol:test.example")
    await _booking("SP-2026-0004", NOW - timedelta(days=200))
    await UserPref.create(user_key=STAFF, locale="en")
    token = await issue_staff_feed_token(STAFF, SECRET, NOW)
    stored = await StaffFeed.get(staff=STAFF)
    assert stored.token_hash == token_hash(token, SECRET)
    url = feed_link(server.base, token)
    assert url.endswith(f"/calendar/{token}.ics")

    status, body, headers = await get(url)
    assert status == 200
    assert headers["Content-Type"] == "text/calendar; charset=utf-8"
    calendar = Calendar.from_ical(body)
    events = calendar.events
    assert [str(event["summary"]) for event in events] == ["Support call SP-2026-0001"]
    (event,) = events
    assert str(event["uid"]) == f"booking-{live.id}@support.test.example"
    assert event.decoded("dtstart") == live.start
    assert str(event["url"]) == "https://meet.test.example/sp-2026-0001?moderator=1"
    assert b"Private description" not in body
    assert str(calendar["x-wr-calname"]) == "Support calls"
    # The access log shows the route, never the token.
    assert "/calendar/…" in caplog.text
    assert token not in caplog.text

    # A new token replaces the old one.
    newer = await issue_staff_feed_token(STAFF, SECRET, NOW + timedelta(minutes=1))
    assert (await get(url))[0] == 404
    assert (await get(feed_link(server.base, newer)))[0] == 200
    assert await StaffFeed.filter(staff=STAFF).count() == 1


@pytest.mark.parametrize(
    "token",
    [pytest.param("random", id="random"), pytest.param("x", id="short")],
)
async def test_calendar_wrong_token_is_404(server: Server, token: str) -> None:
    await issue_staff_feed_token(STAFF, SECRET, NOW)
    value = new_token() if token == "random" else token
    status, body, _ = await get(f"{server.base}/calendar/{value}.ics")
    assert status == 404
    assert b"VCALENDAR" not in body


async def test_calendar_empty_feed_is_still_a_calendar(server: Server) -> None:
    token = await issue_staff_feed_token(STAFF, SECRET, NOW)
    status, body, _ = await get(feed_link(server.base, token))
    assert status == 200
    calendar = Calendar.from_ical(body)
    assert calendar.events == []


async def test_unknown_path_is_404_with_security_headers(server: Server) -> None:
    status, _, headers = await get(f"{server.base}/nothing-here")
    assert status == 404
    assert headers["X-Frame-Options"] == "DENY"


async def test_healthz_is_503_when_the_database_does_not_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tortoise import Tortoise

    from bot.storage.db import tortoise_config
    from bot.testing.net import free_port

    EXECUTOR_CACHE.clear()
    await Tortoise.init(config=tortoise_config(f"postgres://nobody@127.0.0.1:{free_port()}/none"))
    config = Config(
        matrix=MatrixConfig(
            homeserver="https://matrix.test.example",
            user_id="@bot:test.example",
            staff_room="!staff:test.example",
            password="unused-in-these-tests",
        ),
        web=WebConfig(listen="127.0.0.1:0", secret=SECRET),
    )

    async def on_confirmed(ticket_id: int) -> None:
        raise AssertionError("unreachable")

    app = build_web_app(
        config=config,
        catalogs=Catalogs.load(),
        registry=CollectorRegistry(),
        on_confirmed=on_confirmed,
        clock=lambda: NOW,
    )
    runner = await start_web(app, config.web.listen)
    host, port = runner.addresses[0][:2]
    try:
        status, body, _ = await get(f"http://{host}:{port}/healthz")
    finally:
        await stop_web(runner)
        await Tortoise.close_connections()
        EXECUTOR_CACHE.clear()
    assert status == 503
    assert body == b'{"status": "error", "db": "error"}'
    assert "nobody" not in caplog.text
