"""Configuration from the environment alone, `SUPPORT_BOT_CONFIG`, where check-config says each
value came from, and the [metrics], [logging] and service.subdivision keys."""

from __future__ import annotations

from datetime import time
from pathlib import Path
from typing import Any

import pytest

from bot.cli import main
from bot.cli_config import check_config_command
from bot.config import (
    DEFAULT_LOG_LEVELS,
    ConfigError,
    config_path,
    load_config,
    parse_config,
    parse_config_file,
    settings_of,
)

# Autouse here too: `main` sets up logging for the process, this gives it back.
from tests.unit.test_cli import restore_logging  # noqa: F401
from tests.unit.test_config import clean_environ  # noqa: F401

# Everything a bot needs, without a file.
ENV: dict[str, str] = {
    "SUPPORT_BOT_MATRIX_HOMESERVER": "https://matrix.sondages.pro",
    "SUPPORT_BOT_MATRIX_USER_ID": "@support:sondages.pro",
    "SUPPORT_BOT_MATRIX_STAFF_ROOM": "#support-staff:sondages.pro",
    "SUPPORT_BOT_MATRIX_PASSWORD": "hunter2hunter2",
    "SUPPORT_BOT_WEB_SECRET": "0123456789abcdef0123",
    "SUPPORT_BOT_VIDEO_JITSI_BASE_URL": "https://meet.sondages.pro",
}

FILE = """\
[matrix]
homeserver = "https://matrix.sondages.pro"
user_id = "@support:sondages.pro"
staff_room = "#support-staff:sondages.pro"

[web]
secret = "0123456789abcdef0123"

[video.jitsi]
base_url = "https://meet.sondages.pro"
"""


def problems_of(raw: dict[str, Any], env: dict[str, str]) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env)
    return dict(caught.value.problems)


@pytest.fixture
def file_and_password(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    clean_environ: None,  # noqa: F811 - the fixture imported above
) -> Path:
    """FILE in tmp_path, with the Matrix password in the (otherwise clean) environment."""
    file = tmp_path / "bot.toml"
    file.write_text(FILE, encoding="utf-8")
    monkeypatch.setenv("SUPPORT_BOT_MATRIX_PASSWORD", "hunter2hunter2")
    return file


# -- the environment alone -----------------------------------------------------------------


def test_the_environment_alone_configures_the_bot() -> None:
    config = parse_config_file(None, ENV, "bot.toml")
    assert config.matrix.homeserver == "https://matrix.sondages.pro"
    assert config.matrix.password == "hunter2hunter2"
    assert config.video.jitsi.base_url == "https://meet.sondages.pro"
    assert config.service.country == "FR"  # defaults for the rest


@pytest.mark.parametrize(
    ("name", "text", "attribute", "expected"),
    [
        ("SUPPORT_BOT_MATRIX_SYNC_TIMELINE_LIMIT", "80", "matrix.sync_timeline_limit", 80),
        ("SUPPORT_BOT_MAIL_STARTTLS", "yes", "mail.starttls", True),
        ("SUPPORT_BOT_MAIL_STARTTLS", "off", "mail.starttls", False),
        ("SUPPORT_BOT_SERVICE_SLA_WARNING_HOURS", "1.5", "service.sla_warning_hours", 1.5),
        ("SUPPORT_BOT_SERVICE_DAY_START", "08:30", "service.day_start", time(8, 30)),
        ("SUPPORT_BOT_SERVICE_CONFIRMATION", "chat", "service.confirmation", "chat"),
        (
            "SUPPORT_BOT_SERVICE_REMINDER_OFFSETS_MINUTES",
            "60, 10",
            "service.reminder_offsets_minutes",
            (60, 10),
        ),
        (
            "SUPPORT_BOT_MATRIX_ALLOWED_SERVERS",
            "sondages.pro,matrix.org",
            "matrix.allowed_servers",
            ("sondages.pro", "matrix.org"),
        ),
        ("SUPPORT_BOT_VIDEO_JITSI_TOKEN_MINUTES", "30", "video.jitsi.token_minutes", 30),
        (
            "SUPPORT_BOT_VIDEO_BIGBLUEBUTTON_CHECKSUM",
            "sha512",
            "video.bigbluebutton.checksum",
            "sha512",
        ),
        ("SUPPORT_BOT_SERVICE_SUBDIVISION", "57", "service.subdivision", "57"),
        ("SUPPORT_BOT_METRICS_LISTEN", "0.0.0.0:9100", "metrics.listen", "0.0.0.0:9100"),
        ("SUPPORT_BOT_LOGGING_LEVEL", "debug", "logging.level", "DEBUG"),
        ("SUPPORT_BOT_LOGGING_FORMAT", "json", "logging.format", "json"),
    ],
)
def test_every_scalar_key_comes_from_its_variable(
    name: str, text: str, attribute: str, expected: Any
) -> None:
    value: Any = parse_config_file(None, {**ENV, name: text}, "bot.toml")
    for part in attribute.split("."):
        value = getattr(value, part)
    assert value == expected


def test_the_environment_wins_over_the_file() -> None:
    raw = {"service": {"country": "DE", "timezone": "Europe/Berlin"}}
    config = parse_config(raw, {**ENV, "SUPPORT_BOT_SERVICE_COUNTRY": "BE"})
    assert config.service.country == "BE"
    assert config.service.timezone == "Europe/Berlin"


def test_logging_levels_from_the_environment_are_pairs() -> None:
    env = {**ENV, "SUPPORT_BOT_LOGGING_LEVELS": "nio=info, bot.matrix=DEBUG,"}
    levels = dict(parse_config_file(None, env, "bot.toml").logging.levels)
    assert levels["nio"] == "INFO"
    assert levels["bot.matrix"] == "DEBUG"
    assert levels["tortoise"] == "WARNING"  # the defaults stay


def test_missing_file_and_no_variable_says_how_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "bot.toml", env={"SUPPORT_BOT_CONFIG": "x", "HOME": "/root"})
    ((path, message),) = caught.value.problems
    assert path.endswith("bot.toml")
    assert "not found" in message
    assert "SUPPORT_BOT_CONFIG" in message and "bot.toml.example" in message


def test_missing_file_names_each_missing_variable(tmp_path: Path) -> None:
    env = {"SUPPORT_BOT_MATRIX_PASSWORD": "hunter2hunter2"}
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "bot.toml", env=env)
    problems = caught.value.problems
    assert problems[0][0].endswith("bot.toml") and "not found" in problems[0][1]
    named = dict(problems[1:])
    assert named["matrix.homeserver"] == "required (or the variable SUPPORT_BOT_MATRIX_HOMESERVER)"
    assert "SUPPORT_BOT_MATRIX_USER_ID" in named["matrix.user_id"]
    assert "SUPPORT_BOT_WEB_SECRET" in named["web.secret"]


def test_missing_file_with_a_complete_environment_is_fine(tmp_path: Path) -> None:
    config = load_config(tmp_path / "nowhere.toml", env=ENV)
    assert config.matrix.user_id == "@support:sondages.pro"


# -- SUPPORT_BOT_CONFIG --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "env", "expected"),
    [
        (None, {}, "bot.toml"),
        (None, {"SUPPORT_BOT_CONFIG": "/etc/support-bot.toml"}, "/etc/support-bot.toml"),
        (None, {"SUPPORT_BOT_CONFIG": ""}, "bot.toml"),
        ("mine.toml", {"SUPPORT_BOT_CONFIG": "/etc/support-bot.toml"}, "mine.toml"),
    ],
)
def test_config_path(given: str | None, env: dict[str, str], expected: str) -> None:
    assert config_path(given, env) == expected


def test_cli_reads_the_file_named_by_support_bot_config(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    file_and_password: Path,
) -> None:
    monkeypatch.setenv("SUPPORT_BOT_CONFIG", str(file_and_password))
    assert main(["check-config"]) == 0
    assert f"file: {file_and_password}\n" in capsys.readouterr().out
    # --config wins over the variable.
    other = tmp_path / "other.toml"
    assert main(["--config", str(other), "check-config"]) == 1
    assert capsys.readouterr().out.startswith(f"{other}: file not found")
    other.write_text("[matrix\n", encoding="utf-8")
    assert main(["check-config", "--config", str(other)]) == 1
    assert capsys.readouterr().out.startswith(f"{other}: TOML syntax error")


# -- where values came from ------------------------------------------------------------------


def test_settings_say_where_each_value_came_from() -> None:
    raw = {
        "matrix": {
            "homeserver": "https://matrix.sondages.pro",
            "user_id": "@support:sondages.pro",
            "staff_room": "#support-staff:sondages.pro",
        },
        "database": {"url": "postgres://support:dbpass@db/support"},
        "web": {"secret": "0123456789abcdef0123"},
        "video": {"jitsi": {"base_url": "https://meet.sondages.pro"}},
    }
    env = {"SUPPORT_BOT_MATRIX_PASSWORD": "hunter2hunter2", "SUPPORT_BOT_MAIL_PORT": "587"}
    config = parse_config(raw, env)
    settings = {s.path: (s.shown, s.origin) for s in settings_of(config, raw, env)}
    assert settings["matrix.homeserver"] == ('"https://matrix.sondages.pro"', "file")
    assert settings["matrix.password"] == ("set", "SUPPORT_BOT_MATRIX_PASSWORD")
    assert settings["matrix.access_token"] == ("not set", "default")
    assert settings["web.secret"] == ("set", "file")
    assert settings["mail.port"] == ("587", "SUPPORT_BOT_MAIL_PORT")
    assert settings["mail.from"] == ('"support@localhost"', "default")
    assert settings["service.day_end"] == ('"18:00"', "default")
    assert settings["database.url"] == ('"postgres://support:…@db/support"', "file")
    assert settings["metrics.listen"] == ('"127.0.0.1:9464"', "default")
    assert settings["availability"] == ("0 blocks", "default")
    shown = repr(settings)
    for secret in ("hunter2", "0123456789abcdef", "dbpass"):
        assert secret not in shown


def test_check_config_lists_origins_without_secrets(
    capsys: pytest.CaptureFixture[str], file_and_password: Path
) -> None:
    assert check_config_command(str(file_and_password)) == 0
    out = capsys.readouterr().out
    lines = {line.split(" = ")[0].strip(): line for line in out.splitlines()[2:]}
    assert lines["matrix.password"].endswith("(environment: SUPPORT_BOT_MATRIX_PASSWORD)")
    assert lines["matrix.homeserver"].endswith("(file)")
    assert lines["service.timezone"].endswith("(default)")
    assert "hunter2" not in out and "0123456789abcdef" not in out


def test_check_config_without_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "bot.toml"
    assert check_config_command(str(missing), ENV) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == f"file: none ({missing} not found)"
    assert all("(file)" not in line for line in out)


# -- [metrics], [logging], service.subdivision ------------------------------------------------


def test_new_keys_have_their_defaults() -> None:
    config = parse_config({}, ENV)
    assert config.metrics.listen == "127.0.0.1:9464"
    assert config.logging.level == "INFO"
    assert config.logging.format == "text"
    assert config.logging.levels == DEFAULT_LOG_LEVELS
    assert config.service.subdivision is None


def test_logging_levels_table_adds_to_the_defaults() -> None:
    raw = {
        "logging": {
            "level": "warning",
            "format": "json",
            # `aiohttp.access = "INFO"` unquoted is a nested table in TOML.
            "levels": {"nio": "ERROR", "aiohttp": {"access": "INFO"}, "bot.matrix": "DEBUG"},
        }
    }
    logging_config = parse_config(raw, ENV).logging
    assert logging_config.level == "WARNING"
    assert logging_config.format == "json"
    levels = dict(logging_config.levels)
    assert levels["nio"] == "ERROR"
    assert levels["aiohttp.access"] == "INFO"
    assert levels["bot.matrix"] == "DEBUG"
    assert levels["tortoise"] == "WARNING"


@pytest.mark.parametrize(
    ("raw", "path", "fragment"),
    [
        ({"metrics": {"listen": "9464"}}, "metrics.listen", "host:port"),
        ({"metrics": {"listen": "127.0.0.1:8080"}}, "metrics.listen", "web.listen"),
        (
            {"metrics": {"listen": "0.0.0.0:9000"}, "web": {"listen": "127.0.0.1:9000"}},
            "metrics.listen",
            "web.listen",
        ),
        ({"metrics": {"port": 9464}}, "metrics.port", "unknown key"),
        ({"logging": {"level": "LOUD"}}, "logging.level", '"DEBUG"'),
        ({"logging": {"format": "xml"}}, "logging.format", '"json"'),
        ({"logging": {"levels": {"nio": "LOUD"}}}, "logging.levels", 'logger "nio"'),
        ({"logging": {"levels": ["nio"]}}, "logging.levels", "table"),
        ({"service": {"subdivision": "99"}}, "service.subdivision", '"57"'),
        ({"service": {"subdivision": "6ae"}}, "service.subdivision", 'did you mean "6AE"'),
        ({"service": {"subdivision": 57}}, "service.subdivision", "must be a string"),
        (
            {"service": {"country": "DE", "timezone": "Europe/Berlin", "subdivision": "57"}},
            "service.subdivision",
            '"BY"',
        ),
    ],
)
def test_new_keys_are_checked(raw: dict[str, Any], path: str, fragment: str) -> None:
    problems = problems_of(raw, ENV)
    assert list(problems) == [path]
    assert fragment in problems[path]


def test_subdivision_is_not_checked_against_a_bad_country() -> None:
    problems = problems_of({"service": {"country": "XX", "subdivision": "57"}}, ENV)
    assert list(problems) == ["service.country"]


@pytest.mark.parametrize(("country", "subdivision"), [("FR", "57"), ("FR", "6AE"), ("DE", "BY")])
def test_known_subdivisions_are_accepted(country: str, subdivision: str) -> None:
    raw = {"service": {"country": country, "subdivision": subdivision}}
    assert parse_config(raw, ENV).service.subdivision == subdivision
