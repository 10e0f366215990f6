"""`support-bot tickets|report|client` commands against a real database."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from tortoise.backends.base.executor import EXECUTOR_CACHE

from bot import cli_tickets
from bot.config import Config, parse_config
from bot.storage import repo
from bot.storage.db import close_db, open_db
from bot.storage.models import Booking, Client, Ticket, TimeLog

PARIS = ZoneInfo("Europe/Paris")
CREATED = datetime(2026, 11, 10, 9, 30, tzinfo=PARIS)
ALICE = "@alice:example.org"
BOB = "@bob:example.org"
STAFF = "@staff:sondages.pro"

MINIMAL: dict[str, Any] = {
    "matrix": {
        "homeserver": "https://matrix.sondages.pro",
        "user_id": "@support:sondages.pro",
        "password": "a real password",
        "staff_room": "#support-staff:sondages.pro",
        "staff": [STAFF],
    },
    "web": {"secret": "0123456789abcdef0123"},
    "video": {"jitsi": {"base_url": "https://meet.sondages.pro"}},
}


@pytest.fixture
async def config(db_url: str) -> AsyncIterator[Config]:
    # Tortoise caches statements per connection name across inits (see test_repo.py).
    EXECUTOR_CACHE.clear()
    yield parse_config({**MINIMAL, "database": {"url": db_url}})


@pytest.fixture
async def seeded(config: Config) -> AsyncIterator[Config]:
    await open_db(config.database.url)
    try:
        alice = await Client.create(
            key=ALICE, display_name="Alice", email="alice@example.org", created_at=CREATED
        )
        bob = await Client.create(key=BOB, created_at=CREATED)
        first = await _ticket(alice, "SP-2026-0001", minutes_logged=61, status="in_progress")
        await _ticket(
            alice, "SP-2026-0002", channel="video", minutes_logged=46, created_at=CREATED
        )
        await _ticket(bob, "Q-2026-0001", kind="question")
        await _ticket(
            bob, "SP-2026-0003", status="cancelled", created_at=datetime(2026, 10, 2, tzinfo=PARIS)
        )
        await TimeLog.create(ticket=first, staff=STAFF, minutes=61, note="Fixed it", at=CREATED)
        await repo.audit(first, STAFF, "take", "open", "in_progress", at=CREATED)
        await repo.audit(first, STAFF, "log", "in_progress", "in_progress", "61 min", at=CREATED)
    finally:
        await close_db()
    yield config


async def _ticket(owner: Client, ref: str, **fields: Any) -> Ticket:
    values: dict[str, Any] = {
        "kind": "ticket",
        "status": "open",
        "channel": "messaging",
        "created_at": CREATED,
        "sla_due": CREATED + timedelta(days=2),
        **fields,
    }
    return await Ticket.create(
        ref=ref,
        category="theme",
        client=owner,
        room_id="!room:example.org",
        locale="fr",
        description=f"Problem of {ref}: the theme breaks on mobile",
        **values,
    )


async def test_list(seeded: Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli_tickets.tickets_list(seeded) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ref", "kind", "status", "client", "created", "sla", "due"]
    assert lines[1].startswith("---")
    assert [line.split()[0] for line in lines[2:]] == [
        "SP-2026-0003",
        "SP-2026-0001",
        "SP-2026-0002",
        "Q-2026-0001",
    ]
    first = next(line for line in lines if line.startswith("SP-2026-0001"))
    assert first.split() == [
        "SP-2026-0001",
        "ticket",
        "in_progress",
        ALICE,
        "2026-11-10",
        "09:30",
        "2026-11-12",
        "09:30",
    ]


async def test_list_empty(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli_tickets.tickets_list(config) == 0
    assert capsys.readouterr().out == "No tickets yet.\n"


async def test_show(seeded: Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli_tickets.tickets_show(seeded, "sp-2026-0001") == 0
    out = capsys.readouterr().out
    assert "SP-2026-0001" in out
    assert "billed_tickets" in out and "2026-11-10T09:30:00+01:00" in out
    assert "Problem of SP-2026-0001" in out
    assert "61 min  Fixed it" in out
    history = out.split("History:")[1]
    assert f"{STAFF}  take  open → in_progress" in history
    assert f"{STAFF}  log  in_progress  (61 min)" in history


async def test_show_unknown(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli_tickets.tickets_show(config, "SP-2026-9999") == 1
    captured = capsys.readouterr()
    assert "No ticket 'SP-2026-9999'" in captured.err and captured.out == ""


async def test_export_json(seeded: Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli_tickets.tickets_export(seeded, as_json=True) == 0
    data = json.loads(capsys.readouterr().out)
    assert [item["ref"] for item in data] == [
        "SP-2026-0003",
        "SP-2026-0001",
        "SP-2026-0002",
        "Q-2026-0001",
    ]
    for item in data:
        assert list(item)[: len(repo.TICKET_JSON_FIELDS)] == list(repo.TICKET_JSON_FIELDS)
    by_ref = {item["ref"]: item for item in data}
    assert by_ref["SP-2026-0001"]["billed_tickets"] == 2
    assert by_ref["SP-2026-0002"]["billed_tickets"] == 2  # a 46-minute call
    assert by_ref["SP-2026-0003"]["billed_tickets"] == 0
    assert by_ref["Q-2026-0001"]["billed_tickets"] == 0
    assert by_ref["SP-2026-0001"]["created_at"] == "2026-11-10T09:30:00+01:00"
    assert by_ref["SP-2026-0001"]["client"] == ALICE


async def test_export_csv(seeded: Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli_tickets.tickets_export(seeded, as_json=False) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 4 and rows[1]["ref"] == "SP-2026-0001"
    assert rows[1]["booking_start"] == ""


@pytest.mark.parametrize("fmt", ["csv", "json"])
async def test_report(seeded: Config, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    assert await cli_tickets.report(seeded, "2026-11", fmt) == 0
    out = capsys.readouterr().out
    rows = json.loads(out) if fmt == "json" else list(csv.DictReader(io.StringIO(out)))
    by_client = {row["client"]: row for row in rows if row["row"] == "client"}
    assert set(by_client) == {ALICE, BOB}
    alice, bob = by_client[ALICE], by_client[BOB]
    # Each is an organisation of one: Alice's line of it (nothing bought, 4 billed); Bob's
    # cancelled ticket of October and his question bill nothing, so he has no account line.
    accounts = [row for row in rows if row["row"] == "organisation"]
    assert [
        (r["organisation"], str(r["billed_tickets"]), str(r["balance"])) for r in accounts
    ] == [("Alice", "4", "-4")]
    assert str(alice["tickets"]) == "2" and str(alice["billed_tickets"]) == "4"
    assert str(alice["minutes_messaging"]) == "61" and str(alice["minutes_video"]) == "46"
    assert str(bob["tickets"]) == "0" and str(bob["questions"]) == "1"


@pytest.mark.parametrize("fmt", ["csv", "json"])
async def test_report_ratings_and_no_shows(
    seeded: Config, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    await open_db(seeded.database.url)
    try:
        await Ticket.filter(ref="SP-2026-0001").update(
            rating=5, rating_comment="secret praise", rated_at=CREATED
        )
        await Ticket.filter(ref="SP-2026-0002").update(rating=2, rated_at=CREATED)
        video = await Ticket.get(ref="SP-2026-0002")
        await Booking.create(
            ticket=video,
            staff=STAFF,
            start=CREATED,
            end=CREATED + timedelta(minutes=45),
            created_at=CREATED,
            no_show_at=CREATED + timedelta(minutes=10),
            no_show_by=STAFF,
        )
    finally:
        await close_db()
    assert await cli_tickets.report(seeded, "2026-11", fmt) == 0
    out = capsys.readouterr().out
    assert "secret praise" not in out  # comments never leave in reports
    rows = json.loads(out) if fmt == "json" else list(csv.DictReader(io.StringIO(out)))
    by_client = {row["client"]: row for row in rows}
    alice, bob = by_client[ALICE], by_client[BOB]
    assert (str(alice["ratings"]), str(alice["rating_sum"])) == ("2", "7")
    assert str(alice["rating_average"]) == "3.5" and str(alice["no_shows"]) == "1"
    assert str(bob["ratings"]) == "0" and str(bob["no_shows"]) == "0"
    assert bob["rating_average"] in (None, "")  # nothing rated: no average

    # An erased client's rating stays (a figure); what they wrote with it does not.
    assert await cli_tickets.client_erase(seeded, ALICE) == 0
    await open_db(seeded.database.url)
    try:
        erased = await Ticket.get(ref="SP-2026-0001")
        assert (erased.rating, erased.rating_comment) == (5, repo.ERASED_TEXT)
    finally:
        await close_db()


@pytest.mark.parametrize("month", ["2026-13", "2026-00", "2026-1", "nov", "", "2026-11-01"])
async def test_report_bad_month(
    config: Config, capsys: pytest.CaptureFixture[str], month: str
) -> None:
    assert await cli_tickets.report(config, month, "csv") == 2
    captured = capsys.readouterr()
    assert "YYYY-MM" in captured.err and captured.out == ""


async def test_report_bad_format(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli_tickets.report(config, "2026-11", "xlsx") == 2
    assert "csv, json" in capsys.readouterr().err


async def test_client_export(seeded: Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli_tickets.client_export(seeded, ALICE) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["client"]["email"] == "alice@example.org"
    assert [t["ref"] for t in data["tickets"]] == ["SP-2026-0001", "SP-2026-0002"]
    assert data["tickets"][0]["time_logs"][0]["minutes"] == 61


async def test_client_export_unknown(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli_tickets.client_export(config, "@nobody:example.org") == 1
    assert "No client" in capsys.readouterr().err


async def test_client_erase(seeded: Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli_tickets.client_erase(seeded, ALICE) == 0
    assert "billing figures kept" in capsys.readouterr().out
    assert await cli_tickets.client_export(seeded, ALICE) == 1
    capsys.readouterr()
    assert await cli_tickets.client_erase(seeded, ALICE) == 1
    assert "No client" in capsys.readouterr().err

    assert await cli_tickets.report(seeded, "2026-11", "json") == 0
    rows = json.loads(capsys.readouterr().out)
    anon = next(row for row in rows if row["client"].startswith("anon:"))
    assert (anon["tickets"], anon["billed_tickets"], anon["client_name"]) == (2, 4, None)

    assert await cli_tickets.tickets_show(seeded, "SP-2026-0001") == 0
    out = capsys.readouterr().out
    assert "Problem of" not in out and "alice" not in out.lower()
    assert "[erased]" in out and "cli  erased" in out


# --- export with bookings: same JSON as one `active_booking` per ticket, constant queries -----


async def _book(ticket: Ticket, start: datetime, **fields: Any) -> Booking:
    return await Booking.create(
        ticket=ticket,
        staff=fields.pop("staff", STAFF),
        start=start,
        end=start + timedelta(minutes=45),
        provider=fields.pop("provider", "jitsi"),
        created_at=CREATED,
        **fields,
    )


async def _add_bookings(config: Config) -> None:
    """Bookings covering what `active_booking` decides: the latest start wins, cancelled ones
    never count, equal starts go to the highest id; tickets with none stay without."""
    await open_db(config.database.url)
    try:
        await _write_bookings()
    finally:
        await close_db()


async def _write_bookings() -> None:
    first = await Ticket.get(ref="SP-2026-0001")
    second = await Ticket.get(ref="SP-2026-0002")
    cancelled = await Ticket.get(ref="SP-2026-0003")
    later = CREATED + timedelta(days=3)
    await _book(first, CREATED + timedelta(days=1), staff="@early:sondages.pro")
    await _book(first, later, staff="@tie-low:sondages.pro")
    await _book(first, later, staff="@tie-high:sondages.pro", provider="bigbluebutton")
    await _book(first, later + timedelta(days=1), status=repo.CANCELLED_BOOKING)
    await _book(second, CREATED + timedelta(days=2), provider=None)
    await _book(cancelled, CREATED, status=repo.CANCELLED_BOOKING)


async def _export_as_before(config: Config) -> list[dict[str, Any]]:
    """The export as it was written first: one `repo.active_booking` query per ticket."""
    tz = ZoneInfo(config.service.timezone)
    await open_db(config.database.url)
    try:
        tickets = await Ticket.all().select_related("client").order_by("created_at", "id")
        return [
            repo.ticket_to_json(t, booking=await repo.active_booking(t), tz=tz) for t in tickets
        ]
    finally:
        await close_db()


async def test_export_json_with_bookings_is_unchanged(
    seeded: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    await _add_bookings(seeded)
    expected = await _export_as_before(seeded)

    assert await cli_tickets.tickets_export(seeded, as_json=True) == 0
    out = capsys.readouterr().out
    assert out == json.dumps(expected, ensure_ascii=False, indent=2) + "\n"
    by_ref = {item["ref"]: item for item in json.loads(out)}
    assert by_ref["SP-2026-0001"]["booking"] == {
        "start": "2026-11-13T09:30:00+01:00",
        "end": "2026-11-13T10:15:00+01:00",
        "provider": "bigbluebutton",
        "staff": "@tie-high:sondages.pro",
    }
    assert by_ref["SP-2026-0002"]["booking"]["provider"] is None
    assert by_ref["SP-2026-0003"]["booking"] is None  # only a cancelled booking
    assert by_ref["Q-2026-0001"]["booking"] is None  # never booked


async def test_export_csv_with_bookings(
    seeded: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    await _add_bookings(seeded)
    assert await cli_tickets.tickets_export(seeded, as_json=False) == 0
    rows = {row["ref"]: row for row in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert rows["SP-2026-0001"]["booking_staff"] == "@tie-high:sondages.pro"
    assert rows["SP-2026-0001"]["booking_start"] == "2026-11-13T09:30:00+01:00"
    assert rows["SP-2026-0003"]["booking_start"] == ""


class _QueryCounter(logging.Handler):
    """Counts the statements Tortoise sends (it logs each one on `tortoise.db_client`)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.statements: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().lstrip().upper()
        if text.startswith(("SELECT", "INSERT", "UPDATE", "DELETE", "WITH")):
            self.statements.append(text)


async def _count_export_queries(config: Config, capsys: pytest.CaptureFixture[str]) -> int:
    logger = logging.getLogger("tortoise.db_client")
    counter, level = _QueryCounter(), logger.level
    logger.addHandler(counter)
    logger.setLevel(logging.DEBUG)
    try:
        assert await cli_tickets.tickets_export(config, as_json=True) == 0
    finally:
        logger.removeHandler(counter)
        logger.setLevel(level)
    capsys.readouterr()
    assert counter.statements, "no statement seen: has Tortoise's query logging changed?"
    return len(counter.statements)


async def test_export_queries_do_not_grow_with_tickets(
    seeded: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    await _add_bookings(seeded)
    few = await _count_export_queries(seeded, capsys)

    await open_db(seeded.database.url)
    try:
        alice = await Client.get(key=ALICE)
        for number in range(10, 40):
            ticket = await _ticket(alice, f"SP-2026-{number:04d}", channel="video")
            await _book(ticket, CREATED + timedelta(days=1, hours=number))
    finally:
        await close_db()
    many = await _count_export_queries(seeded, capsys)

    assert many == few
