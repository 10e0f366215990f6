"""nio events → Incoming values (bot/matrix/inbound.py): pure conversion, no homeserver."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from nio import Event, MegolmEvent, RoomMessageText

from bot.matrix.inbound import (
    IncomingMember,
    IncomingReaction,
    IncomingRedaction,
    IncomingText,
    strip_reply_fallback,
    to_incoming,
)

ROOM = "!room:example.org"
ALICE = "@alice:example.org"
TS = 1_760_000_000_123
WHEN = datetime.fromtimestamp(TS / 1000, tz=UTC)


def raw(event_type: str, content: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": event_type,
        "event_id": "$event",
        "sender": ALICE,
        "origin_server_ts": TS,
        "content": content,
        **extra,
    }


def message(content: dict[str, Any]) -> Any:
    return Event.parse_event(raw("m.room.message", content))


@pytest.mark.parametrize("msgtype", ["m.text", "m.notice", "m.emote"])
def test_text_notice_and_emote(msgtype: str) -> None:
    incoming = to_incoming(ROOM, message({"msgtype": msgtype, "body": "hello"}))

    assert incoming == IncomingText(
        event_id="$event", room_id=ROOM, sender=ALICE, body="hello", ts=WHEN, msgtype=msgtype
    )
    assert incoming.ts.tzinfo is UTC


def test_from_dict_builds_the_same_as_parse_event() -> None:
    event = RoomMessageText.from_dict(raw("m.room.message", {"msgtype": "m.text", "body": "x"}))

    assert to_incoming(ROOM, event) == to_incoming(
        ROOM, message({"msgtype": "m.text", "body": "x"})
    )


def test_formatted_body_is_kept_only_with_a_format() -> None:
    html = {"msgtype": "m.text", "body": "*hi*", "format": "org.matrix.custom.html"}
    with_format = to_incoming(ROOM, message({**html, "formatted_body": "<em>hi</em>"}))
    plain = {"msgtype": "m.text", "body": "hi"}
    without = to_incoming(ROOM, message({**plain, "formatted_body": "<b>x</b>"}))

    assert isinstance(with_format, IncomingText)
    assert with_format.formatted_body == "<em>hi</em>"
    assert isinstance(without, IncomingText)
    assert without.formatted_body is None


def test_edit_takes_the_new_content() -> None:
    event = message(
        {
            "msgtype": "m.text",
            "body": "* corrected",
            "m.new_content": {"msgtype": "m.text", "body": "corrected"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$original"},
        }
    )

    incoming = to_incoming(ROOM, event)

    assert isinstance(incoming, IncomingText)
    assert incoming.is_edit
    assert incoming.body == "corrected"
    assert incoming.replaces == "$original"
    assert incoming.reply_to is None


def test_reply_strips_the_fallback_and_names_the_target() -> None:
    event = message(
        {
            "msgtype": "m.text",
            "body": "> <@bot:example.org> Which version?\n> second line\n\n6.4.1\nthanks",
            "format": "org.matrix.custom.html",
            "formatted_body": "<mx-reply><blockquote>Which version?</blockquote></mx-reply>"
            "6.4.1<br>thanks",
            "m.relates_to": {"m.in_reply_to": {"event_id": "$question"}},
        }
    )

    incoming = to_incoming(ROOM, event)

    assert isinstance(incoming, IncomingText)
    assert incoming.reply_to == "$question"
    assert incoming.body == "6.4.1\nthanks"
    assert incoming.formatted_body == "6.4.1<br>thanks"
    assert not incoming.is_edit


def test_quote_without_reply_relation_is_kept() -> None:
    incoming = to_incoming(ROOM, message({"msgtype": "m.text", "body": "> quoted\n\nmine"}))

    assert isinstance(incoming, IncomingText)
    assert incoming.body == "> quoted\n\nmine"
    assert incoming.reply_to is None


def test_thread_fallback_is_not_a_reply() -> None:
    event = message(
        {
            "msgtype": "m.text",
            "body": "in thread",
            "m.relates_to": {
                "rel_type": "m.thread",
                "event_id": "$root",
                "is_falling_back": True,
                "m.in_reply_to": {"event_id": "$latest"},
            },
        }
    )

    incoming = to_incoming(ROOM, event)

    assert isinstance(incoming, IncomingText)
    assert incoming.reply_to is None
    assert incoming.body == "in thread"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("plain", "plain"),
        ("> <@a:b> q\n\nanswer", "answer"),
        ("> <@a:b> q\n> more\n\nanswer\n> kept", "answer\n> kept"),
        ("> only a quote", ""),
    ],
)
def test_strip_reply_fallback(body: str, expected: str) -> None:
    assert strip_reply_fallback(body) == expected


def test_file_becomes_text_with_its_msgtype_and_file_name() -> None:
    event = message({"msgtype": "m.file", "body": "report.pdf", "url": "mxc://example.org/abc"})

    incoming = to_incoming(ROOM, event)

    assert isinstance(incoming, IncomingText)
    assert (incoming.msgtype, incoming.body) == ("m.file", "report.pdf")


def test_image_becomes_text_with_its_msgtype() -> None:
    event = message({"msgtype": "m.image", "body": "shot.png", "url": "mxc://example.org/abc"})

    incoming = to_incoming(ROOM, event)

    assert isinstance(incoming, IncomingText)
    assert incoming.msgtype == "m.image"


def test_reaction() -> None:
    event = Event.parse_event(
        raw(
            "m.reaction",
            {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$card", "key": "👍"}},
        )
    )

    assert to_incoming(ROOM, event) == IncomingReaction(
        event_id="$event", room_id=ROOM, sender=ALICE, target_event_id="$card", key="👍", ts=WHEN
    )


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"redacts": "$reaction"}, id="top-level-redacts"),
        pytest.param({}, id="room-v11-content-redacts"),
    ],
)
def test_redaction(extra: dict[str, Any]) -> None:
    event = Event.parse_event(raw("m.room.redaction", {"redacts": "$reaction"}, **extra))

    assert to_incoming(ROOM, event) == IncomingRedaction(
        event_id="$event", room_id=ROOM, sender=ALICE, redacts="$reaction", ts=WHEN
    )


@pytest.mark.parametrize("membership", ["join", "leave", "invite", "ban"])
def test_member(membership: str) -> None:
    event = Event.parse_event(
        raw("m.room.member", {"membership": membership}, state_key="@bob:example.org")
    )

    assert to_incoming(ROOM, event) == IncomingMember(
        event_id="$event",
        room_id=ROOM,
        user_id="@bob:example.org",
        membership=membership,
        sender=ALICE,
        ts=WHEN,
    )


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(raw("org.example.custom", {"x": 1}), id="unknown-type"),
        pytest.param(raw("m.room.name", {"name": "Support"}, state_key=""), id="state"),
        pytest.param(raw("m.room.message", {"msgtype": "m.text"}), id="text-without-body"),
        pytest.param(raw("m.room.message", {}, unsigned={"redacted_because": {}}), id="redacted"),
        pytest.param(
            raw("m.reaction", {"m.relates_to": {"rel_type": "m.annotation"}}), id="bad-reaction"
        ),
    ],
)
def test_unknown_or_unusable_events_are_none(source: dict[str, Any]) -> None:
    assert to_incoming(ROOM, Event.parse_event(source)) is None


def test_undecrypted_event_is_none() -> None:
    event = Event.parse_event(
        raw(
            "m.room.encrypted",
            {
                "algorithm": "m.megolm.v1.aes-sha2",
                "ciphertext": "AwgA",
                "device_id": "DEVICE",
                "sender_key": "key",
                "session_id": "session",
            },
        )
    )

    assert isinstance(event, MegolmEvent)
    assert to_incoming(ROOM, event) is None


def test_decrypted_event_is_marked_encrypted() -> None:
    event = message({"msgtype": "m.text", "body": "secret"})
    event.decrypted = True

    incoming = to_incoming(ROOM, event)

    assert isinstance(incoming, IncomingText)
    assert incoming.encrypted


# --- transport helpers (pure; kept here, the one unit-test file of bot/matrix) ---------------


def error_response(
    errcode: str | None,
    status: int,
    retry_after_ms: int | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    from types import SimpleNamespace

    from nio import RoomSendError

    response = RoomSendError("refused", errcode, retry_after_ms)
    response.transport_response = SimpleNamespace(status=status, headers=headers or {})
    return response


@pytest.mark.parametrize(
    ("errcode", "status", "retryable"),
    [
        ("M_LIMIT_EXCEEDED", 429, True),
        (None, 502, True),
        ("M_UNKNOWN", 500, True),
        ("M_FORBIDDEN", 403, False),
        ("M_NOT_FOUND", 404, False),
        ("M_UNKNOWN_TOKEN", 401, False),
    ],
)
def test_error_classification(errcode: str | None, status: int, retryable: bool) -> None:
    from bot.matrix.transport import error_from_response

    error = error_from_response(error_response(errcode, status), "send")

    assert error.retryable is retryable
    assert (error.errcode, error.status) == (errcode, status)


def test_network_errors_are_retryable() -> None:
    import aiohttp

    from bot.matrix.transport import error_from_exception

    assert error_from_exception(aiohttp.ServerDisconnectedError(), "sync").retryable
    assert error_from_exception(TimeoutError(), "sync").retryable
    assert not error_from_exception(ValueError(), "sync").retryable


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7", 7.0),
        (" 0 ", 0.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("soon", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    from bot.matrix.transport import parse_retry_after

    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert parse_retry_after(value, now) == seconds


async def test_rate_limit_waits_what_the_server_asks_then_succeeds() -> None:
    from nio import RoomSendResponse

    from bot.matrix.transport import call

    answers = [
        error_response("M_LIMIT_EXCEEDED", 429, retry_after_ms=20),
        error_response(None, 429, headers={"Retry-After": "0"}),
        RoomSendResponse("$sent", ROOM),
    ]
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def request() -> Any:
        return answers.pop(0)

    response = await call("send", request, expect=RoomSendResponse)

    assert response.event_id == "$sent"
    assert loop.time() - started >= 0.02
    assert not answers


async def test_long_rate_limit_is_handed_to_the_caller() -> None:
    from nio import RoomSendResponse

    from bot.matrix.transport import TransportError, call

    async def request() -> Any:
        return error_response("M_LIMIT_EXCEEDED", 429, retry_after_ms=3_600_000)

    with pytest.raises(TransportError) as raised:
        await call("send", request, expect=RoomSendResponse)

    assert raised.value.retryable
    assert raised.value.retry_after == 3600


def test_backoff_grows_with_jitter_up_to_the_cap() -> None:
    from bot.matrix.client import Backoff

    backoff = Backoff(base=1.0, cap=60.0)

    assert [backoff.delay(n, rand=lambda: 0.0) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff.delay(3, rand=lambda: 1.0) == 4.0
    assert backoff.delay(50, rand=lambda: 1.0) == 60.0
    assert backoff.delay(50, rand=lambda: 0.0) == 30.0
