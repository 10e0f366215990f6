"""No message content in the logs from library loggers either: nio logs a malformed event whole
when its schema check fails. Fed through nio's own parsing, then searched in what
`setup_logging`'s handler wrote (text and JSON)."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
from nio import Event, RoomMessage
from nio.responses import SyncResponse

from bot.config import LoggingConfig
from bot.process import REDACTED, setup_logging

# Autouse: the root's handlers and level, and the quiet loggers' levels, given back.
from tests.unit.test_cli import restore_logging  # noqa: F401

MARKER = "SECRET-7f3a my password is hunter2"


def malformed_message() -> dict[str, Any]:
    # No msgtype: nio's schema refuses it and logs the content, body included.
    return {
        "type": "m.room.message",
        "event_id": "$event:test.example",
        "sender": "@client:test.example",
        "origin_server_ts": 1_700_000_000_000,
        "content": {"body": MARKER},
    }


def wrong_type_message() -> dict[str, Any]:
    # The body itself is what fails: the error's first line quotes it.
    return {
        "type": "m.room.message",
        "event_id": "$event:test.example",
        "sender": "@client:test.example",
        "origin_server_ts": 1_700_000_000_000,
        "content": {"msgtype": "m.text", "body": [MARKER]},
    }


def parse_all() -> None:
    RoomMessage.parse_event(malformed_message())
    Event.parse_event(malformed_message())
    Event.parse_event(wrong_type_message())
    SyncResponse.from_dict({"next_batch": 5, "rooms": {"join": {"!r": {"body": MARKER}}}})


def test_nio_would_log_the_content_without_the_filter() -> None:
    # The premise: a plain handler receives the marker (otherwise the tests below prove nothing).
    stream = io.StringIO()
    plain = logging.StreamHandler(stream)
    nio = logging.getLogger("nio")
    nio.addHandler(plain)
    try:
        parse_all()
    finally:
        nio.removeHandler(plain)
    assert MARKER in stream.getvalue()
    assert "Error validating event" in stream.getvalue()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_nio_validation_warnings_are_redacted(fmt: str) -> None:
    stream = io.StringIO()
    setup_logging(LoggingConfig(level="DEBUG", format=fmt), stream=stream)  # type: ignore[arg-type]
    logging.getLogger("nio").setLevel(logging.DEBUG)  # nio's loudest: its DEBUG dumps too
    parse_all()
    text = stream.getvalue()
    assert "SECRET-7f3a" not in text and "hunter2" not in text
    # What happened is still told: which logger, which kind of error.
    lines = text.splitlines()
    assert lines
    if fmt == "json":
        records = [json.loads(line) for line in lines]
        messages = [(r["logger"], r["message"]) for r in records]
    else:
        messages = [(line.split()[3].rstrip(":"), line) for line in lines]
    assert ("nio.events.misc", f"Error validating event: {REDACTED}") in {
        (name, message.split("nio.events.misc: ")[-1]) for name, message in messages
    }


def test_library_records_with_structures_in_their_arguments_are_redacted() -> None:
    stream = io.StringIO()
    setup_logging(LoggingConfig(level="DEBUG"), stream=stream)
    library = logging.getLogger("tortoise.db_client")
    library.setLevel(logging.DEBUG)
    try:
        library.debug("INSERT INTO ticket VALUES (?, ?): %s", ["SP-1", MARKER])
        library.debug("event %r", {"content": {"body": MARKER}})
        library.debug("payload %s", MARKER.encode())
        library.debug({"body": MARKER})
        library.debug("%(body)s", {"body": MARKER})
        library.debug("room %s at %d", "!room:test.example", 3)  # plain values stay
        try:
            raise ValueError({"body": MARKER})
        except ValueError:
            library.exception("handling failed")
    finally:
        library.setLevel(logging.NOTSET)
    text = stream.getvalue()
    assert "SECRET-7f3a" not in text
    assert "room !room:test.example at 3" in text
    assert f"handling failed (ValueError: {REDACTED})" in text


def test_the_bot_s_own_records_pass_untouched() -> None:
    stream = io.StringIO()
    setup_logging(LoggingConfig(level="DEBUG"), stream=stream)
    own = logging.getLogger("bot.test_log_content")
    own.info("handled %s in %s: %s", "$event:test.example", "!room:test.example", ["a", "b"])
    assert "handled $event:test.example in !room:test.example: ['a', 'b']" in stream.getvalue()
