"""`bot.process.setup_logging`: text or JSON lines, levels per logger, `--log-level` over the
config, and what the CLI applies once the config is read."""

from __future__ import annotations

import argparse
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.config import DEFAULT_LOG_LEVELS, LoggingConfig
from bot.process import LOG_EXTRA_FIELDS, NIO_CRYPTO_LOGGER, QUIET_LOGGERS, setup_logging

# Autouse: the root's handlers and level, and the quiet loggers' levels, given back.
from tests.unit.test_cli import restore_logging  # noqa: F401

OTHER_NAMES = ("bot.matrix", "bot.test_logging", NIO_CRYPTO_LOGGER)


@pytest.fixture(autouse=True)
def restore_other_levels() -> Iterator[None]:
    levels = {name: logging.getLogger(name).level for name in OTHER_NAMES}
    yield
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


def lines_of(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_lines_parse_and_carry_the_given_fields() -> None:
    stream = io.StringIO()
    setup_logging(LoggingConfig(format="json"), stream=stream)
    log = logging.getLogger("bot.test_logging")
    log.info(
        "ticket %s opened",
        "SP-2026-0042",
        extra={"event_id": "$abc", "room_id": "!room:sondages.pro", "ref": "SP-2026-0042"},
    )
    log.warning("no extra fields")
    first, second = (json.loads(line) for line in lines_of(stream))
    assert first["message"] == "ticket SP-2026-0042 opened"
    assert first["level"] == "INFO"
    assert first["logger"] == "bot.test_logging"
    assert first["time"].endswith("+00:00")
    assert (first["event_id"], first["room_id"], first["ref"]) == (
        "$abc",
        "!room:sondages.pro",
        "SP-2026-0042",
    )
    assert second["level"] == "WARNING"
    assert not set(LOG_EXTRA_FIELDS) & set(second)


def test_json_lines_drop_any_other_extra_and_dict_messages() -> None:
    stream = io.StringIO()
    setup_logging(LoggingConfig(format="json"), stream=stream)
    log = logging.getLogger("bot.test_logging")
    log.info("received", extra={"body": "my password is hunter2", "ref": "SP-2026-0001"})
    log.info({"body": "my password is hunter2"})
    text = stream.getvalue()
    assert "hunter2" not in text
    first, second = (json.loads(line) for line in lines_of(stream))
    assert set(first) == {"time", "level", "logger", "message", "ref"}
    assert second["message"] == ""


def test_json_lines_carry_the_traceback() -> None:
    stream = io.StringIO()
    setup_logging(LoggingConfig(format="json"), stream=stream)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("bot.test_logging").exception("failed")
    (line,) = lines_of(stream)
    assert "RuntimeError: boom" in json.loads(line)["exc_info"]


def test_text_lines_keep_the_usual_format() -> None:
    stream = io.StringIO()
    setup_logging(LoggingConfig(), stream=stream)
    logging.getLogger("bot.test_logging").info("hello", extra={"ref": "SP-2026-0001"})
    (line,) = lines_of(stream)
    assert line.endswith(" INFO bot.test_logging: hello")


def test_levels_per_logger_apply() -> None:
    stream = io.StringIO()
    config = LoggingConfig(
        level="WARNING",
        levels=(*DEFAULT_LOG_LEVELS, ("bot.matrix", "DEBUG"), ("nio", "ERROR")),
    )
    setup_logging(config, stream=stream)
    logging.getLogger("bot.matrix").debug("matrix detail")
    logging.getLogger("bot.test_logging").info("not shown: below WARNING")
    logging.getLogger("nio").warning("not shown: nio at ERROR")
    logging.getLogger("nio").error("nio error")
    logging.getLogger("tortoise").info("not shown: default WARNING")
    text = stream.getvalue()
    assert "matrix detail" in text and "nio error" in text
    assert "not shown" not in text


def test_log_level_option_overrides_the_config() -> None:
    stream = io.StringIO()
    setup_logging(LoggingConfig(level="ERROR"), level="DEBUG", stream=stream)
    logging.getLogger("bot.test_logging").debug("debug shown")
    logging.getLogger("aiohttp.access").info("not shown: traffic stays quiet")
    assert "debug shown" in stream.getvalue()
    assert "not shown" not in stream.getvalue()


def test_default_levels_never_make_a_logger_louder_than_the_root() -> None:
    setup_logging(LoggingConfig(), level="ERROR", stream=io.StringIO())
    assert all(logging.getLogger(name).level == logging.ERROR for name in QUIET_LOGGERS)
    setup_logging(LoggingConfig(), level="DEBUG", stream=io.StringIO())
    assert all(logging.getLogger(name).level == logging.WARNING for name in QUIET_LOGGERS)


def test_a_second_setup_replaces_the_first() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging(LoggingConfig(levels=(("bot.matrix", "DEBUG"),)), stream=first)
    setup_logging(LoggingConfig(format="json"), stream=second)
    logging.getLogger("bot.test_logging").warning("once")
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["message"] == "once"
    # A logger the first setup configured and the second does not is reset.
    assert logging.getLogger("bot.matrix").level == logging.NOTSET


def test_the_cli_applies_the_configs_logging(tmp_path: Path) -> None:
    from bot.cli import _load

    file = tmp_path / "bot.toml"
    file.write_text(
        """\
[matrix]
homeserver = "https://matrix.sondages.pro"
user_id = "@support:sondages.pro"
password = "a real password"
staff_room = "#support-staff:sondages.pro"
[web]
secret = "0123456789abcdef0123"
[video.jitsi]
base_url = "https://meet.sondages.pro"
[logging]
level = "WARNING"
levels = { "bot.matrix" = "DEBUG" }
""",
        encoding="utf-8",
    )
    config = _load(argparse.Namespace(config=str(file), log_level=None))
    assert config is not None
    assert logging.getLogger().level == logging.WARNING
    assert logging.getLogger("bot.matrix").level == logging.DEBUG
    _load(argparse.Namespace(config=str(file), log_level="DEBUG"))
    assert logging.getLogger().level == logging.DEBUG


def nio_fails_to_decrypt(store: Path, times: int) -> None:
    """What nio does while an event's room key has not come: a real client with its Olm
    machine (no network: the login is restored from a made-up token) tries to decrypt a
    Megolm event it has no session for, `times` times (the bot retries at every new key)."""
    from nio import AsyncClient, AsyncClientConfig, Event, MegolmEvent
    from nio.exceptions import EncryptionError

    store.mkdir(exist_ok=True)
    client = AsyncClient(
        "http://127.0.0.1:9",
        "@bot:test",
        store_path=str(store),
        config=AsyncClientConfig(encryption_enabled=True, pickle_key="test"),
    )
    client.restore_login("@bot:test", "BOTDEVICE", "token")
    event = Event.parse_event(
        {
            "type": "m.room.encrypted",
            "event_id": "$sealed",
            "sender": "@alice:test",
            "origin_server_ts": 1_700_000_000_000,
            "room_id": "!dm:test",
            "content": {
                "algorithm": "m.megolm.v1.aes-sha2",
                "ciphertext": "AwgAEhAx",
                "sender_key": "alice-curve25519",
                "session_id": "session-without-key",
                "device_id": "ALICEPHONE",
            },
        }
    )
    assert isinstance(event, MegolmEvent)
    event.room_id = "!dm:test"
    for _ in range(times):
        with pytest.raises(EncryptionError):
            client.decrypt_event(event)


def test_nio_repeated_decryption_warnings_are_dropped_real_ones_kept(tmp_path: Path) -> None:
    """Issue #13: while an event waits for its key, nio wrote a few WARNING lines at every
    new key (59 of a short session's 92 lines). They are gone; nio's other warnings and its
    errors stay; with nio's crypto logger at DEBUG they show, as DEBUG."""
    stream = io.StringIO()
    setup_logging(LoggingConfig(), stream=stream)
    nio_fails_to_decrypt(tmp_path / "store", times=5)
    assert lines_of(stream) == []

    crypto = logging.getLogger(NIO_CRYPTO_LOGGER)
    crypto.warning("Error importing inbound group session: bad session key")
    crypto.error("Failed to decrypt Olm message: unknown error")
    assert [line.split(" ", 2)[2] for line in lines_of(stream)] == [
        "WARNING nio.crypto.log: Error importing inbound group session: bad session key",
        "ERROR nio.crypto.log: Failed to decrypt Olm message: unknown error",
    ]

    debugging = io.StringIO()
    config = LoggingConfig(
        level="DEBUG", levels=(*DEFAULT_LOG_LEVELS, (NIO_CRYPTO_LOGGER, "DEBUG"))
    )
    setup_logging(config, stream=debugging)
    nio_fails_to_decrypt(tmp_path / "store", times=1)
    shown = [line for line in lines_of(debugging) if "Error decrypting megolm event" in line]
    assert len(shown) == 1 and " DEBUG nio.crypto.log: " in shown[0]
    assert " WARNING " not in debugging.getvalue()
    assert len(crypto.filters) == 1  # a second setup does not stack a second filter
