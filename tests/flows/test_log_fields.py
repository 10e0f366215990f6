"""JSON log lines name what they are about: the event being handled, its room, and the
ticket once the handler has touched one — and nothing of what anyone wrote."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator

import pytest

from bot.config import QUIET_LOGGERS, LoggingConfig
from bot.domain.tickets import Channel
from bot.process import setup_logging
from bot.testing.harness import STAFF, STAFF_ROOM, BotHarness
from tests.flows.test_interventions_flow import ALICE, DM, make_ticket

pytestmark = pytest.mark.postgres


@pytest.fixture
async def bot(db_url: str) -> AsyncIterator[BotHarness]:
    async with BotHarness.open(db_url) as harness:
        yield harness


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    # setup_logging configures the process (root handler and level, the traffic loggers'
    # levels): everything it touches is given back, or later tests' caplog would miss records.
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    stream = io.StringIO()
    setup_logging(LoggingConfig(format="json"), level="INFO", stream=stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[1]:
            root.addHandler(handler)
        root.setLevel(saved[0])
        for name, level in quiet.items():
            logging.getLogger(name).setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, str]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def test_a_handled_event_logs_its_event_room_and_ticket(bot, json_lines):
    ticket = await make_ticket(bot, channel=Channel.MESSAGING)
    event = bot.text_event(DM, ALICE, f"!cancel {ticket.ref}")
    await bot.deliver(event)

    cancelled = [
        line for line in lines(json_lines) if "cancelled by its client" in line["message"]
    ]
    assert len(cancelled) == 1
    assert cancelled[0]["event_id"] == event.event_id
    assert cancelled[0]["room_id"] == DM
    assert cancelled[0]["ref"] == ticket.ref


async def test_fields_end_with_their_event(bot, json_lines):
    ticket = await make_ticket(bot, channel=Channel.MESSAGING)
    await bot.say(DM, ALICE, f"!cancel {ticket.ref}")
    logging.getLogger("bot.test").info("after the event")
    await bot.say(STAFF_ROOM, STAFF, "!queue")

    after = [line for line in lines(json_lines) if line["message"] == "after the event"]
    assert len(after) == 1
    assert "event_id" not in after[0] and "ref" not in after[0] and "room_id" not in after[0]
