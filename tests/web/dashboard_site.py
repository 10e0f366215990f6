"""The staff dashboard served for tests: a config, a clock, who is staff, and a seeded month.

`serve_dashboard(db_url, …)` starts the real public web application (the bot's own
`build_web_app` and `start_web`) on a free port of 127.0.0.1. `seed()` writes rows directly, as
the bot would have: February 2026 is the seeded, finished month; "now" is Tuesday 10 March 2026,
10:00 in Paris, with a queue and a week of calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry
from tortoise.backends.base.executor import EXECUTOR_CACHE

from bot.config import Availability, Config, MatrixConfig, WebConfig
from bot.i18n import Catalogs
from bot.storage.db import close_db, open_db
from bot.storage.models import Booking, Client, Organisation, OrgMember, Purchase, Ticket
from bot.testing.net import free_port
from bot.web.app import build_web_app, start_web, stop_web

SECRET = "test-secret-0123456789abcdef"
PARIS = ZoneInfo("Europe/Paris")
NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)  # Tuesday, 10:00 in Paris
BOB = "@bob:test.example"
CAROL = "@carol:test.example"
MALLORY = "@mallory:test.example"  # never staff


def paris(*args: int) -> datetime:
    return datetime(*args, tzinfo=PARIS)  # type: ignore[misc]


@dataclass
class Site:
    base: str
    config: Config
    staff: set[str]
    now: list[datetime] = field(default_factory=lambda: [NOW])

    def clock(self) -> datetime:
        return self.now[0]


def site_config(public_url: str, listen: str = "127.0.0.1:0") -> Config:
    return Config(
        matrix=MatrixConfig(
            homeserver="https://matrix.test.example",
            user_id="@bot:test.example",
            staff_room="!staff:test.example",
            password="unused-in-these-tests",
        ),
        web=WebConfig(listen=listen, public_url=public_url, secret=SECRET),
        availability=(
            Availability(staff=BOB, days=(0, 1, 2, 3, 4), start=time(9), end=time(17)),
            Availability(staff=CAROL, days=(0, 2, 4), start=time(9), end=time(12)),
        ),
    )


async def never_confirmed(ticket_id: int) -> None:
    raise AssertionError("nothing is confirmed here")


@asynccontextmanager
async def serve_dashboard(db_url: str, *, https: bool = True) -> AsyncIterator[Site]:
    """The public web application on a free port; `https` sets a `https://` public URL
    (cookies then `Secure`), else the server's own `http://` address."""
    EXECUTOR_CACHE.clear()
    await open_db(db_url)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    public = "https://support.test.example" if https else base
    config = site_config(public, f"127.0.0.1:{port}")
    site = Site(base=base, config=config, staff={BOB, CAROL})
    app = build_web_app(
        config=config,
        catalogs=Catalogs.load(),
        registry=CollectorRegistry(),
        on_confirmed=never_confirmed,
        clock=site.clock,
        is_staff=lambda user_id: user_id in site.staff,
    )
    runner = await start_web(app, config.web.listen)
    try:
        yield site
    finally:
        await stop_web(runner)
        await close_db()
        EXECUTOR_CACHE.clear()


# -- the seeded month -------------------------------------------------------------------------

_refs = iter(range(1, 1000))


async def _ticket(client: Client, **fields: object) -> Ticket:
    values: dict[str, object] = {
        "kind": "ticket",
        "status": "closed",
        "category": "theme",
        "channel": "messaging",
        "room_id": "!room:test.example",
        "locale": "fr",
        "description": "Seeded.",
    }
    values.update(fields)
    return await Ticket.create(ref=f"SP-2026-{next(_refs):04d}", client=client, **values)


@dataclass(frozen=True)
class Seeded:
    acme: Organisation
    alone: Client  # a client in no organisation
    overdue: Ticket
    due_soon: Ticket
    later: Ticket
    answered: Ticket


async def seed() -> Seeded:
    """February 2026 (deadlines, ratings, purchases, billing) and the state of 10 March."""
    alice = await Client.create(key="@alice:acme.example", display_name="Alice", created_at=NOW)
    ali = await Client.create(key="@ali:acme.example", created_at=NOW)
    zoe = await Client.create(key="@zoe:test.example", display_name="Zoé", created_at=NOW)
    acme = await Organisation.create(
        name="Acme <Lab>", name_key="acme <lab>", created_by=BOB, created_at=NOW
    )
    for member in (alice, ali):
        await OrgMember.create(organisation=acme, client=member, added_by=BOB, added_at=NOW)

    # Purchases: 5 for Acme in January, 10 for Acme and 3 for Zoé in February, 2 in March.
    for owner, tickets, at in (
        ({"organisation": acme}, 5, paris(2026, 1, 15, 10)),
        ({"organisation": acme}, 10, paris(2026, 2, 3, 10)),
        ({"client": zoe}, 3, paris(2026, 2, 10, 10)),
        ({"client": zoe}, 2, paris(2026, 3, 2, 10)),
    ):
        await Purchase.create(tickets=tickets, recorded_by=BOB, at=at, **owner)

    # February's deadlines: met, missed (late), missed (never answered), and one cancelled
    # by its client before any answer (left out).
    await _ticket(
        alice,
        created_at=paris(2026, 2, 2, 10),
        sla_due=paris(2026, 2, 4, 18),
        first_response_at=paris(2026, 2, 3, 9),
        minutes_logged=90,  # 2 tickets
        rating=5,
        rated_at=paris(2026, 2, 5, 12),
    )
    await _ticket(
        zoe,
        channel="video",
        created_at=paris(2026, 2, 9, 10),
        sla_due=paris(2026, 2, 12, 18),
        first_response_at=paris(2026, 2, 13, 9),
        minutes_logged=45,  # a call: 1 ticket
        rating=4,
        rated_at=paris(2026, 2, 15, 12),
    )
    overdue = await _ticket(
        ali,
        status="open",
        created_at=paris(2026, 2, 25, 10),
        sla_due=paris(2026, 2, 27, 18),
    )
    await _ticket(
        ali,
        status="cancelled",
        created_at=paris(2026, 2, 16, 10),
        sla_due=paris(2026, 2, 18, 18),
    )
    # Rated at 00:30 on 1 March in Paris (23:30 UTC the day before): a March rating.
    await _ticket(
        zoe,
        created_at=paris(2026, 2, 20, 10),
        sla_due=paris(2026, 3, 2, 18),  # a March deadline, met
        first_response_at=paris(2026, 2, 21, 10),
        minutes_logged=61,  # 2 tickets
        rating=3,
        rated_at=datetime(2026, 2, 28, 23, 30, tzinfo=UTC),
    )
    # The queue of 10 March, 10:00: at risk (due at noon), later, and answered.
    due_soon = await _ticket(
        alice, status="open", created_at=paris(2026, 3, 6, 11), sla_due=paris(2026, 3, 10, 12)
    )
    later = await _ticket(
        zoe, status="open", created_at=paris(2026, 3, 9, 11), sla_due=paris(2026, 3, 11, 18)
    )
    answered = await _ticket(
        alice,
        status="in_progress",
        created_at=paris(2026, 3, 2, 11),
        sla_due=paris(2026, 3, 4, 18),
        first_response_at=paris(2026, 3, 3, 11),
        assigned_to=BOB,
    )
    # The week of 9 March: Bob on Wednesday, Carol on Wednesday and Friday; a cancelled call
    # and a call of the next week are not in it.
    for staff, start, status, ticket in (
        (BOB, paris(2026, 3, 11, 14), "active", later),
        (CAROL, paris(2026, 3, 11, 10), "active", answered),
        (CAROL, paris(2026, 3, 13, 9), "active", overdue),
        (BOB, paris(2026, 3, 12, 9), "cancelled", due_soon),
        (BOB, paris(2026, 3, 16, 9), "active", due_soon),
    ):
        await Booking.create(
            ticket=ticket,
            staff=staff,
            start=start,
            end=start + timedelta(minutes=45),
            status=status,
            slot_lock=None,
            created_at=NOW,
        )
    return Seeded(acme, zoe, overdue, due_soon, later, answered)
