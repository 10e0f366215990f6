"""`[mail.inbound]`: parsing, the checks across keys, TLS resolution, check-config; the pure
parts of the IMAP reader (FETCH answers, INTERNALDATE), `RawMail` and the mailbox metrics."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from bot.cli_config import check_config_command
from bot.config import ConfigError, InboundMailConfig, parse_config
from bot.mailbox.imap import _fetched, _internal_date, config_warnings, tls_mode
from bot.mailbox.raw import RawMail
from bot.mailbox.reader import MailboxStats
from bot.metrics import Metrics
from tests.unit.test_config import MINIMAL_TOML

FULL = """
[mail.inbound]
host = "imap.sondages.pro"
port = 143
tls = "starttls"
username = "support@sondages.pro"
password = "an imap password"
folder = "Support"
after = "move"
move_to = "Support/Traites"
poll_interval = 30
max_size = 2000000
"""


def problems(section: str, env: dict[str, str] | None = None) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(MINIMAL_TOML + "[mail.inbound]\n" + section), env or {})
    return dict(caught.value.problems)


def test_no_host_no_mailbox_and_defaults() -> None:
    inbound = parse_config(tomllib.loads(MINIMAL_TOML), {}).mail.inbound
    assert inbound == InboundMailConfig()
    assert inbound.host is None
    assert (inbound.port, inbound.folder, inbound.after, inbound.move_to) == (
        993,
        "INBOX",
        "flag",
        "Processed",
    )
    assert (inbound.poll_interval, inbound.max_size) == (60, 10 * 1024 * 1024)


def test_every_key_from_the_file_and_the_password_from_the_environment() -> None:
    raw = tomllib.loads(MINIMAL_TOML + FULL.replace('password = "an imap password"\n', ""))
    env = {"SUPPORT_BOT_MAIL_INBOUND_PASSWORD": "from the environment"}
    inbound = parse_config(raw, env).mail.inbound
    assert inbound == InboundMailConfig(
        host="imap.sondages.pro",
        port=143,
        tls="starttls",
        username="support@sondages.pro",
        password="from the environment",
        folder="Support",
        after="move",
        move_to="Support/Traites",
        poll_interval=30,
        max_size=2_000_000,
    )
    assert "from the environment" not in repr(inbound)


@pytest.mark.parametrize(
    ("section", "key", "fragment"),
    [
        ('host = "imap.sondages.pro"\n', "mail.inbound.username", "mail.inbound.host"),
        ('host = "imap.sondages.pro"\n', "mail.inbound.password", "MAIL_INBOUND_PASSWORD"),
        ('after = "delete"\n', "mail.inbound.after", '"flag", "move"'),
        ('after = "move"\nmove_to = "INBOX"\n', "mail.inbound.move_to", "mail.inbound.folder"),
        ('tls = "starttls"\n', "mail.inbound.port", "143"),
        ('tls = "ssl"\n', "mail.inbound.tls", '"starttls", "implicit", "none"'),
        ('folder = "Traités"\n', "mail.inbound.folder", "modified UTF-7"),
        ('move_to = ""\n', "mail.inbound.move_to", "printable ASCII"),
        ("poll_interval = 0\n", "mail.inbound.poll_interval", "at least 1"),
        ("max_size = 100\n", "mail.inbound.max_size", "at least 1024"),
        ("port = 0\n", "mail.inbound.port", "between 1 and 65535"),
        ('hots = "imap.sondages.pro"\n', "mail.inbound.hots", '"host"'),
    ],
)
def test_bad_settings_are_reported_with_their_key(section: str, key: str, fragment: str) -> None:
    found = problems(section)
    assert key in found, found
    assert fragment in found[key]


def test_a_misspelt_variable_is_reported() -> None:
    found = problems("", {"SUPPORT_BOT_MAIL_INBOUND_PASWORD": "x"})
    assert "SUPPORT_BOT_MAIL_INBOUND_PASSWORD" in found["SUPPORT_BOT_MAIL_INBOUND_PASWORD"]


@pytest.mark.parametrize(
    ("settings", "mode"),
    [
        ({}, "implicit"),  # port 993
        ({"port": 143}, "default"),
        ({"port": 143, "tls": "starttls"}, "starttls"),
        ({"port": 1993, "tls": "implicit"}, "implicit"),
        ({"port": 143, "tls": "none"}, "none"),
    ],
)
def test_tls_mode(settings: dict[str, Any], mode: str) -> None:
    assert tls_mode(InboundMailConfig(host="imap.sondages.pro", **settings)) == mode


@pytest.mark.parametrize(
    ("settings", "warned"),
    [
        ({"host": "imap.sondages.pro"}, []),
        ({"host": "localhost", "port": 143, "tls": "none"}, []),
        ({"host": "127.0.0.1", "port": 143, "tls": "none"}, []),
        ({"host": "imap.sondages.pro", "port": 143, "tls": "none"}, ["mail.inbound.tls"]),
        ({"port": 143, "tls": "none"}, []),  # no mailbox read
    ],
)
def test_config_warnings(settings: dict[str, Any], warned: list[str]) -> None:
    assert [key for key, _ in config_warnings(InboundMailConfig(**settings))] == warned


def test_check_config_shows_the_keys_hides_the_password_and_warns_about_clear_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "bot.toml"
    section = FULL.replace('tls = "starttls"', 'tls = "none"')
    file.write_text(MINIMAL_TOML + section, encoding="utf-8")
    assert check_config_command(str(file), env={}) == 0
    captured = capsys.readouterr()
    assert "mailbox Support on imap.sondages.pro" in captured.out.splitlines()[0]
    assert 'mail.inbound.after = "move"' in captured.out
    assert "mail.inbound.password = set" in captured.out
    assert "an imap password" not in captured.out + captured.err
    (warning,) = captured.err.splitlines()
    assert warning.startswith("warning: mail.inbound.tls: ") and "password" in warning


def test_check_config_refuses_an_unreadable_inbound_ca_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "bot.toml"
    file.write_text(
        MINIMAL_TOML + FULL + f'ca_file = "{tmp_path / "missing.pem"}"\n', encoding="utf-8"
    )
    assert check_config_command(str(file), env={}) == 1
    assert capsys.readouterr().out.startswith("mail.inbound.ca_file: cannot be read")


# -- the IMAP answers ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            b'1 FETCH (UID 4 INTERNALDATE "17-Jul-1996 02:44:25 -0700")',
            datetime(1996, 7, 17, 2, 44, 25, tzinfo=timezone(-timedelta(hours=7))),
        ),
        (
            b'2 FETCH (INTERNALDATE " 6-Dec-2026 05:37:20 +0000" UID 9)',
            datetime(2026, 12, 6, 5, 37, 20, tzinfo=UTC),
        ),
        (
            b'3 FETCH (INTERNALDATE "24-dec-2026 10:00:00 +0130")',
            datetime(2026, 12, 24, 8, 30, tzinfo=UTC),
        ),
        (b'4 FETCH (INTERNALDATE "24-Foo-2026 10:00:00 +0100")', None),
        (b"5 FETCH (UID 3)", None),
    ],
)
def test_internal_date(text: bytes, expected: datetime | None) -> None:
    assert _internal_date(text) == expected


def test_the_fetch_answer_about_the_uid_asked_passes_over_unsolicited_ones() -> None:
    lines = [
        b"3 FETCH (FLAGS (\\Seen))",  # another client read mail 3 meanwhile
        b"5 FETCH (UID 12 RFC822.SIZE 34 BODY[] {34}",
        bytearray(b"From: a@b.c\r\nSubject: x\r\n\r\nhello\r\n"),
        b' INTERNALDATE "06-Dec-2026 05:39:06 +0000")',
        b"Fetch completed (0.001 + 0.000 secs).",
    ]
    text, literal = _fetched(lines, 12)
    assert literal == b"From: a@b.c\r\nSubject: x\r\n\r\nhello\r\n"
    assert text is not None and b"RFC822.SIZE 34" in text and b"INTERNALDATE" in text
    assert _fetched(lines, 13) == (None, None)  # gone meanwhile
    assert _fetched([b"Fetch completed."], 12) == (None, None)


def test_raw_mail_needs_an_aware_date_and_keeps_its_bytes_out_of_its_repr() -> None:
    with pytest.raises(ValueError, match="aware"):
        RawMail("INBOX", 1, 1, b"x", 1, datetime(2026, 12, 6, 10, 0))  # noqa: DTZ001
    mail = RawMail("INBOX", 1, 7, b"From: claire@example.org", 24, datetime.now(UTC))
    assert "claire" not in repr(mail) and "uid=7" in repr(mail)


def test_the_mailbox_metrics_read_the_readers_counters() -> None:
    metrics = Metrics()
    stats = MailboxStats(read=3, errors=1, connected=True)
    metrics.watch_mailbox(stats)
    text = generate_latest(metrics.registry).decode()
    assert "support_bot_mailbox_mails_read_total 3.0" in text
    assert "support_bot_mailbox_errors_total 1.0" in text
    assert "support_bot_mailbox_connected 1.0" in text
    stats.read, stats.connected = 4, False
    text = generate_latest(metrics.registry).decode()
    assert "support_bot_mailbox_mails_read_total 4.0" in text
    assert "support_bot_mailbox_connected 0.0" in text
    assert "support_bot_mailbox_seconds_since_last_check" in text
