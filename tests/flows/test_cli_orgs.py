"""`support-bot org new|add|show|credit|list` and the report's lines per organisation, against
a real database (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from tortoise.backends.base.executor import EXECUTOR_CACHE

from bot import cli, cli_tickets
from bot.config import Config, parse_config
from bot.storage.db import close_db, open_db
from bot.storage.models import Client, Organisation, OrgMember, Purchase, Ticket
from tests.flows.test_cli_tickets import MINIMAL

PARIS = ZoneInfo("Europe/Paris")
ALICE = "@alice:example.org"
BOB = "@bob:example.org"
TALK_KEY = "bridge:!talk:example.org:Carla Diaz"


@pytest.fixture
async def config(db_url: str) -> AsyncIterator[Config]:
    EXECUTOR_CACHE.clear()  # Tortoise caches statements per connection name across inits
    yield parse_config({**MINIMAL, "database": {"url": db_url}})


async def _ticket(key: str, ref: str, minutes: int, created: datetime, **extra: Any) -> None:
    client, _ = await Client.get_or_create(key=key, defaults={"created_at": created, **extra})
    await Ticket.create(
        ref=ref,
        kind="ticket",
        status="in_progress",
        category="usage",
        channel="messaging",
        client=client,
        room_id="!dm:example.org",
        locale="fr",
        description="…",
        created_at=created,
        minutes_logged=minutes,
    )


@pytest.fixture
async def seeded(config: Config) -> AsyncIterator[Config]:
    await open_db(config.database.url)
    try:
        await _ticket(ALICE, "SP-2026-0001", 61, datetime(2026, 11, 3, 10, 0, tzinfo=PARIS))
        await _ticket(BOB, "SP-2026-0002", 30, datetime(2026, 10, 28, 10, 0, tzinfo=PARIS))
        await _ticket(
            TALK_KEY,
            "SP-2026-0003",
            150,
            datetime(2026, 11, 20, 10, 0, tzinfo=PARIS),
            display_name="Carla Diaz",
        )
    finally:
        await close_db()
    yield config


async def _rows(config: Config, model: Any) -> list[dict[str, Any]]:
    await open_db(config.database.url)
    try:
        return await model.all().order_by("id").values()
    finally:
        await close_db()


async def test_org_commands_from_the_command_line(
    seeded: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli_tickets.org_list(seeded) == 0
    assert capsys.readouterr().out == "No organisations yet.\n"

    assert await cli_tickets.org_new(seeded, "Acme Europe") == 0
    assert capsys.readouterr().out == "Created organisation Acme Europe.\n"
    assert await cli_tickets.org_new(seeded, "ACME  europe") == 2
    assert "already exists" in capsys.readouterr().err

    assert await cli_tickets.org_add(seeded, "acme europe", ALICE) == 0
    assert capsys.readouterr().out == f"Added {ALICE} to Acme Europe.\n"
    assert await cli_tickets.org_add(seeded, "Acme Europe", "SP-2026-0002") == 0  # Bob
    assert await cli_tickets.org_add(seeded, "Acme Europe", "Carla Diaz") == 0  # a nickname
    capsys.readouterr()

    assert await cli_tickets.org_credit(seeded, "Acme Europe", "10", note="invoice 118") == 0
    assert capsys.readouterr().out == (
        "Recorded +10 tickets for Acme Europe; balance 4 (purchased 10, billed 6).\n"
    )
    assert await cli_tickets.org_credit(seeded, "Acme Europe", "-1", by="ops") == 0
    capsys.readouterr()
    purchases = await _rows(seeded, Purchase)
    assert [(p["tickets"], p["note"], p["recorded_by"]) for p in purchases] == [
        (10, "invoice 118", "cli"),
        (-1, None, "ops"),
    ]

    assert await cli_tickets.org_show(seeded, "ACME EUROPE") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Organisation Acme Europe"
    assert out[1] == f"members: {ALICE}, {BOB}, {TALK_KEY}"
    assert out[2] == "balance 3 (purchased 9, billed 6)"
    assert out[3].split() == ["recorded", "tickets", "by", "note"]
    assert out[5].split()[2:] == ["-1", "ops"] and out[6].split()[2:] == [
        "+10",
        "cli",
        "invoice",
        "118",
    ]

    assert await cli_tickets.org_list(seeded) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["organisation", "members", "purchased", "billed", "balance"]
    assert table[2].split() == ["Acme", "Europe", "3", "9", "6", "3"]


async def test_org_command_refusals_and_exit_codes(
    seeded: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli_tickets.org_new(seeded, "ACME") == 0
    capsys.readouterr()
    cases = [
        (cli_tickets.org_add(seeded, "Nope", ALICE), 1, "No organisation is called Nope."),
        (cli_tickets.org_add(seeded, "ACME", "SP-2026-0999"), 1, "SP-2026-0999"),
        (cli_tickets.org_add(seeded, "ACME", "Nobody Here"), 1, "No client behind a bridge"),
        (cli_tickets.org_show(seeded, "Nope"), 1, "No organisation or client is called Nope."),
        (cli_tickets.org_credit(seeded, "ACME", "ten"), 2, "whole number"),
        (cli_tickets.org_credit(seeded, "ACME", "0"), 2, "Zero tickets"),
        (cli_tickets.org_credit(seeded, "Nope", "3"), 1, "No organisation or client"),
        (cli_tickets.org_new(seeded, "@alice:example.org"), 2, "cannot start with @"),
        (cli_tickets.org_new(seeded, ""), 2, "The name is empty."),
    ]
    for command, code, message in cases:
        assert await command == code
        captured = capsys.readouterr()
        assert message in captured.err and captured.out == ""
    assert len(await _rows(seeded, Purchase)) == 0
    assert len(await _rows(seeded, OrgMember)) == 0
    assert [o["name"] for o in await _rows(seeded, Organisation)] == ["ACME"]


async def test_credit_for_a_client_in_no_organisation(
    seeded: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli_tickets.org_credit(seeded, BOB, "2") == 0
    assert capsys.readouterr().out == (
        f"Recorded +2 tickets for {BOB}; balance 1 (purchased 2, billed 1).\n"
    )
    assert await cli_tickets.org_show(seeded, "SP-2026-0002") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{BOB}: a client in no organisation"
    [purchase] = await _rows(seeded, Purchase)
    assert purchase["organisation_id"] is None and purchase["client_id"] is not None


@pytest.mark.parametrize("fmt", ["csv", "json"])
async def test_report_has_a_line_per_organisation(
    seeded: Config, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    assert await cli_tickets.org_new(seeded, "ACME") == 0
    assert await cli_tickets.org_add(seeded, "ACME", ALICE) == 0
    assert await cli_tickets.org_add(seeded, "ACME", BOB) == 0
    assert await cli_tickets.org_credit(seeded, "ACME", "5") == 0  # recorded now: after November
    assert await cli_tickets.org_credit(seeded, TALK_KEY, "1") == 0
    capsys.readouterr()
    # Purchases inside November, written as the bot would have recorded them then.
    await open_db(seeded.database.url)
    try:
        acme = await Organisation.get(name="ACME")
        await Purchase.create(
            organisation=acme,
            tickets=4,
            recorded_by="@staff:sondages.pro",
            at=datetime(2026, 11, 2, 9, 0, tzinfo=PARIS),
        )
        await Purchase.create(
            organisation=acme,
            tickets=2,
            recorded_by="@staff:sondages.pro",
            at=datetime(2026, 10, 30, 9, 0, tzinfo=PARIS),
        )
    finally:
        await close_db()

    assert await cli_tickets.report(seeded, "2026-11", fmt) == 0
    out = capsys.readouterr().out
    rows = json.loads(out) if fmt == "json" else list(csv.DictReader(io.StringIO(out)))
    clients = {row["client"]: row for row in rows if row["row"] == "client"}
    accounts = {row["organisation"]: row for row in rows if row["row"] == "organisation"}
    assert set(clients) == {ALICE, TALK_KEY}  # Bob opened nothing in November
    assert clients[ALICE]["organisation"] == "ACME"
    # ACME: bought 4 in November (2 before, 5 after); Alice's November ticket bills 2; at the
    # end of November it had bought 6 and been billed 3 (Bob's October ticket counts).
    acme_line = accounts["ACME"]
    assert [str(acme_line[c]) for c in ("purchased", "billed_tickets", "balance")] == [
        "4",
        "2",
        "3",
    ]
    assert str(acme_line["tickets"]) == "1" and str(acme_line["minutes_total"]) == "61"
    # Carla, behind a bridge, is an organisation of one; her purchase came after November.
    carla = accounts["Carla Diaz"]
    assert [str(carla[c]) for c in ("purchased", "billed_tickets", "balance")] == [
        "0",
        "3",
        "-3",
    ]
    assert carla["client"] == TALK_KEY


def test_the_org_subcommands_parse(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["org", "credit", "Acme Europe", "-2", "--note", "typo"])
    assert (args.name, args.tickets, args.note, args.by) == ("Acme Europe", "-2", "typo", "cli")
    assert cli.main(["org"]) == 2
    assert "missing subcommand (list, new NAME" in capsys.readouterr().err


async def test_export_and_erasure_know_organisations_and_purchases(
    seeded: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli_tickets.org_new(seeded, "ACME") == 0
    assert await cli_tickets.org_add(seeded, "ACME", ALICE) == 0
    assert await cli_tickets.org_credit(seeded, BOB, "2", note="paid by Robert Dupont") == 0
    capsys.readouterr()
    assert await cli_tickets.client_export(seeded, ALICE) == 0
    alice = json.loads(capsys.readouterr().out)
    assert (alice["organisation"], alice["purchases"]) == ("ACME", [])
    assert await cli_tickets.client_export(seeded, BOB) == 0
    bob = json.loads(capsys.readouterr().out)
    assert bob["organisation"] is None
    assert [(p["tickets"], p["note"]) for p in bob["purchases"]] == [(2, "paid by Robert Dupont")]

    assert await cli_tickets.client_erase(seeded, BOB) == 0
    [purchase] = await _rows(seeded, Purchase)
    assert (purchase["tickets"], purchase["note"]) == (2, "[erased]")  # the figure stays
    capsys.readouterr()
    assert await cli_tickets.org_show(seeded, "SP-2026-0002") == 0
    assert "balance 1 (purchased 2, billed 1)" in capsys.readouterr().out
