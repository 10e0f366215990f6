"""The staff calendar feed carries moderator links: its token works only while its holder is
staff, asked again at each fetch (`build_web_app(is_staff=…)`, the bot's identity)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest_asyncio
from prometheus_client import CollectorRegistry
from tortoise.backends.base.executor import EXECUTOR_CACHE

from bot.config import Config, MatrixConfig, WebConfig
from bot.i18n import Catalogs
from bot.storage.db import close_db, open_db
from bot.storage.models import Booking, Client, StaffFeed, Ticket
from bot.web.app import build_web_app, feed_link, issue_staff_feed_token, start_web, stop_web

SECRET = "test-secret-0123456789abcdef"
NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
STAFF = "@bob:test.example"
MODERATOR_LINK = "https://meet.test.example/sp-2026-0001?moderator=1"


def web_config() -> Config:
    """What the public web application needs of a config (tests/web/test_slow_clients too)."""
    return Config(
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


async def never_confirmed(ticket_id: int) -> None:
    raise AssertionError("nothing is confirmed here")


@pytest_asyncio.fixture
async def served(db_url: str) -> AsyncIterator[tuple[str, set[str], list[str]]]:
    """The server's base URL, the set of who is staff now, and who was asked about."""
    EXECUTOR_CACHE.clear()
    await open_db(db_url)
    config = web_config()
    staff = {STAFF}
    asked: list[str] = []

    def is_staff(user_id: str) -> bool:
        asked.append(user_id)
        return user_id in staff

    app = build_web_app(
        config=config,
        catalogs=Catalogs.load(),
        registry=CollectorRegistry(),
        on_confirmed=never_confirmed,
        clock=lambda: NOW,
        is_staff=is_staff,
    )
    runner = await start_web(app, config.web.listen)
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", staff, asked
    finally:
        await stop_web(runner)
        await close_db()
        EXECUTOR_CACHE.clear()


async def _booking() -> None:
    client = await Client.create(key="@client:test.example", created_at=NOW)
    ticket = await Ticket.create(
        ref="SP-2026-0001",
        kind="ticket",
        status="open",
        category="theme",
        channel="video",
        client=client,
        room_id="!room:test.example",
        locale="fr",
        description="Private.",
        created_at=NOW,
    )
    start = NOW + timedelta(days=1)
    await Booking.create(
        ticket=ticket,
        staff=STAFF,
        start=start,
        end=start + timedelta(minutes=45),
        status="active",
        slot_lock=None,
        created_at=NOW,
        staff_url=MODERATOR_LINK,
    )


async def fetch(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.read()


async def test_the_feed_stops_when_its_holder_is_no_longer_staff(
    served: tuple[str, set[str], list[str]],
) -> None:
    base, staff, asked = served
    await _booking()
    url = feed_link(base, await issue_staff_feed_token(STAFF, SECRET, NOW))

    status, body = await fetch(url)
    assert status == 200 and MODERATOR_LINK.encode() in body
    assert asked == [STAFF]

    staff.discard(STAFF)  # left the staff room, or lost its power level
    status, body = await fetch(url)
    assert status == 404  # as for a token that never existed
    assert b"VCALENDAR" not in body and b"moderator" not in body
    assert asked == [STAFF, STAFF]  # asked at each fetch, not remembered

    # The token is kept: staff again (a restart before the staff room is synced looks like
    # "not staff" for a moment), the same feed works again.
    assert await StaffFeed.filter(staff=STAFF).count() == 1
    staff.add(STAFF)
    assert (await fetch(url))[0] == 200


async def test_an_unknown_token_does_not_ask(served: tuple[str, set[str], list[str]]) -> None:
    base, _, asked = served
    await issue_staff_feed_token(STAFF, SECRET, NOW)
    status, _ = await fetch(feed_link(base, "x" * 43))
    assert status == 404
    assert asked == []
