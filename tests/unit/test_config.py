"""parse_config / load_config / summarize / check-config: every problem, with its key path."""

from __future__ import annotations

import copy
import os
import re
import tomllib
from dataclasses import is_dataclass
from datetime import time
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import pytest

from bot.cli_config import check_config_command
from bot.config import (
    Availability,
    BridgeConfig,
    Config,
    ConfigError,
    load_config,
    parse_config,
    summarize,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "bot.toml.example"

MINIMAL: dict[str, Any] = {
    "matrix": {
        "homeserver": "https://matrix.sondages.pro",
        "user_id": "@support:sondages.pro",
        "password": "a real password",
        "staff_room": "#support-staff:sondages.pro",
        "staff": ["@alice:sondages.pro", "@bob:sondages.pro"],
    },
    "web": {"secret": "0123456789abcdef0123"},
    "video": {"jitsi": {"base_url": "https://meet.sondages.pro"}},
}

MINIMAL_TOML = """
[matrix]
homeserver = "https://matrix.sondages.pro"
user_id = "@support:sondages.pro"
password = "a real password"
staff_room = "#support-staff:sondages.pro"
staff = ["@alice:sondages.pro", "@bob:sondages.pro"]

[web]
secret = "0123456789abcdef0123"

[video.jitsi]
base_url = "https://meet.sondages.pro"
"""


def config_with(*changes: tuple[str, Any]) -> dict[str, Any]:
    """MINIMAL with `("a.b.c", value)` set (`None` deletes); `a[0]` indexes arrays."""
    raw = copy.deepcopy(MINIMAL)
    for path, value in changes:
        *parents, last = path.split(".")
        node: Any = raw
        for part in parents:
            name, _, index = part.partition("[")
            node = node.setdefault(name, {})
            if index:
                node = node[int(index.rstrip("]"))]
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return raw


def problems_of(raw: dict[str, Any], env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, env)
    return caught.value.problems


def paths_of(raw: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    return [path for path, _ in problems_of(raw, env)]


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SUPPORT_BOT_"):
            monkeypatch.delenv(name)


# -- valid configs ------------------------------------------------------------------------------


def test_minimal_config_parses_with_french_defaults() -> None:
    config = parse_config(MINIMAL)
    assert config.matrix.user_id == "@support:sondages.pro"
    assert config.matrix.staff == ("@alice:sondages.pro", "@bob:sondages.pro")
    assert config.matrix.access_token is None
    assert config.service.timezone == "Europe/Paris"
    assert config.service.country == "FR"
    assert config.service.default_locale == "fr"
    assert config.service.ticket_prefix == "SP"
    assert config.database.url.startswith("sqlite://")
    assert config.video.provider == "jitsi"
    assert config.video.jitsi.base_url == "https://meet.sondages.pro"
    assert config.availability == ()
    assert config.bridges == ()


def test_parse_config_does_not_modify_its_input() -> None:
    raw = copy.deepcopy(MINIMAL)
    parse_config(raw, {"SUPPORT_BOT_MATRIX_PASSWORD": "from env"})
    assert raw == MINIMAL


@pytest.mark.parametrize(
    ("changes", "attribute", "expected"),
    [
        ([("mail.from", "support@sondages.pro")], "mail.from_", "support@sondages.pro"),
        (
            [("mail.from", "Support <support@sondages.pro>")],
            "mail.from_",
            "Support <support@sondages.pro>",
        ),
        ([("mail.port", 587), ("mail.starttls", True)], "mail.port", 587),
        ([("service.day_end", "17:30")], "service.day_end", time(17, 30)),
        ([("service.day_end", time(17, 0))], "service.day_end", time(17, 0)),  # TOML local time
        ([("service.sla_warning_hours", 2)], "service.sla_warning_hours", 2.0),
        ([("service.default_locale", "en")], "service.default_locale", "en"),
        (
            [("service.country", "BE"), ("service.timezone", "Europe/Brussels")],
            "service.country",
            "BE",
        ),
        ([("service.confirmation", "chat")], "service.confirmation", "chat"),
        ([("service.reminder_offsets_minutes", [60])], "service.reminder_offsets_minutes", (60,)),
        (
            [("matrix.staff_room", "!AbC123_-xyz")],
            "matrix.staff_room",
            "!AbC123_-xyz",
        ),  # room v12 id
        (
            [("matrix.staff_room", "!opaque:sondages.pro")],
            "matrix.staff_room",
            "!opaque:sondages.pro",
        ),
        (
            [("matrix.allowed_servers", ["sondages.pro", "matrix.org:8448"])],
            "matrix.allowed_servers",
            ("sondages.pro", "matrix.org:8448"),
        ),
        ([("matrix.password", None), ("matrix.access_token", "syt_x")], "matrix.password", None),
        ([("matrix.access_token", "")], "matrix.access_token", None),  # empty optional = unset
        (
            [("database.url", "postgres://u:p@db:5432/s")],
            "database.url",
            "postgres://u:p@db:5432/s",
        ),
        ([("database.url", "postgresql://u:p@db/s")], "database.url", "postgresql://u:p@db/s"),
        ([("web.listen", "[::1]:8080")], "web.listen", "[::1]:8080"),
        (
            [
                ("video.provider", "bigbluebutton"),
                (
                    "video.bigbluebutton",
                    {
                        "url": "https://bbb.sondages.pro/bigbluebutton/api",
                        "secret": "s3cr3t",
                        "checksum": "sha1",
                    },
                ),
            ],
            "video.bigbluebutton.checksum",
            "sha1",
        ),
    ],
)
def test_valid_values(changes: list[tuple[str, Any]], attribute: str, expected: Any) -> None:
    config = parse_config(config_with(*changes))
    value: Any = config
    for part in attribute.split("."):
        value = getattr(value, part)
    assert value == expected


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        (["mon", "tue"], (0, 1)),
        (["lun", "mer", "ven"], (0, 2, 4)),
        (["Monday", "dimanche"], (0, 6)),
        (["mon-fri"], (0, 1, 2, 3, 4)),
        ("lun-ven", (0, 1, 2, 3, 4)),
        (["sat-mon"], (0, 5, 6)),
        ([0, 6, 6], (0, 6)),
        (["mon", 1], (0, 1)),
    ],
)
def test_availability_days(days: Any, expected: tuple[int, ...]) -> None:
    raw = config_with(
        (
            "availability",
            [{"staff": "@alice:sondages.pro", "days": days, "start": "09:00", "end": "12:00"}],
        )
    )
    assert parse_config(raw).availability == (
        Availability("@alice:sondages.pro", expected, time(9, 0), time(12, 0)),
    )


def test_bridges_parse() -> None:
    raw = config_with(("bridges", [{"user_id": "@nctalk:sondages.pro"}]))
    assert parse_config(raw).bridges == (BridgeConfig("@nctalk:sondages.pro"),)


# -- one mistake, one problem, at the right path --------------------------------------------


@pytest.mark.parametrize(
    ("changes", "path", "fragment"),
    [
        # required keys
        ([("matrix.homeserver", None)], "matrix.homeserver", "required"),
        ([("matrix.user_id", None)], "matrix.user_id", "required"),
        ([("matrix.staff_room", None)], "matrix.staff_room", "required"),
        ([("matrix.password", None)], "matrix.password", "access_token"),
        ([("web.secret", None)], "web.secret", "required"),
        # types
        ([("matrix.staff", "@alice:sondages.pro")], "matrix.staff", "must be an array"),
        ([("matrix.staff", ["@alice:sondages.pro", 3])], "matrix.staff[1]", "must be a string"),
        ([("mail.port", "25")], "mail.port", "must be an integer"),
        ([("mail.port", True)], "mail.port", "must be an integer"),
        ([("mail.port", 70000)], "mail.port", "between 1 and 65535"),
        ([("mail.starttls", "yes")], "mail.starttls", "true or false"),
        ([("service.sla_warning_hours", "4")], "service.sla_warning_hours", "number"),
        ([("web", "127.0.0.1")], "web", "must be a table"),
        ([("availability", {"staff": "@a:b"})], "availability", "array of tables"),
        # shapes
        ([("matrix.homeserver", "matrix.sondages.pro")], "matrix.homeserver", "http"),
        ([("matrix.homeserver", "ftp://matrix.sondages.pro")], "matrix.homeserver", "http"),
        ([("matrix.user_id", "support:sondages.pro")], "matrix.user_id", "@name:server"),
        ([("matrix.user_id", "@support")], "matrix.user_id", "@name:server"),
        ([("matrix.staff", ["alice"])], "matrix.staff[0]", "@name:server"),
        ([("matrix.staff_room", "support-staff")], "matrix.staff_room", "room id or alias"),
        ([("matrix.staff_room", "#support-staff")], "matrix.staff_room", "room id or alias"),
        (
            [("matrix.support_rooms", ["#ok:sondages.pro", "nope"])],
            "matrix.support_rooms[1]",
            "room",
        ),
        ([("matrix.allowed_servers", ["bad server"])], "matrix.allowed_servers[0]", "server name"),
        ([("service.timezone", "Europe/Pariss")], "service.timezone", "time zone"),
        ([("service.timezone", "Europe")], "service.timezone", "time zone"),
        ([("service.country", "XX")], "service.country", "unknown country"),
        ([("service.country", "fr")], "service.country", '"FR"'),
        ([("service.default_locale", "de")], "service.default_locale", '"fr", "en"'),
        ([("service.day_end", "18h")], "service.day_end", "HH:MM"),
        ([("service.day_end", "25:00")], "service.day_end", "HH:MM"),
        ([("service.day_start", "19:00")], "service.day_start", "before service.day_end"),
        ([("service.ticket_prefix", "S-P")], "service.ticket_prefix", "letters or digits"),
        ([("service.quote_prefix", "q")], "service.quote_prefix", "also service.question_prefix"),
        ([("service.confirmation", "sms")], "service.confirmation", '"email", "chat"'),
        ([("service.slots_offered", 0)], "service.slots_offered", "between 1 and 10"),
        ([("service.intake_reminder_hours", 200)], "service.intake_reminder_hours", "shorter"),
        ([("web.secret", "too-short")], "web.secret", "at least 16"),
        ([("web.listen", "8080")], "web.listen", "host:port"),
        ([("web.public_url", "support.sondages.pro")], "web.public_url", "http"),
        ([("database.url", "mysql://u@h/db")], "database.url", "sqlite://"),
        ([("database.url", "support.sqlite3")], "database.url", "sqlite://"),
        ([("database.url", "sqlite://")], "database.url", "file name"),
        ([("mail.from", "support")], "mail.from", "e-mail address"),
        ([("mail.username", "support")], "mail.password", "mail.username"),
        ([("video.provider", "zoom")], "video.provider", '"jitsi", "bigbluebutton"'),
        ([("video.jitsi.app_id", "support")], "video.jitsi.app_secret", "together"),
        ([("video.bigbluebutton.checksum", "md5")], "video.bigbluebutton.checksum", '"sha1"'),
        (
            [("bridges", [{"user_id": "@nctalk:sondages.pro", "nick_format": "<{nick}> "}])],
            "bridges[0].nick_format",
            "{NICK}",
        ),
        ([("bridges", [{"nick_format": "<{NICK}> "}])], "bridges[0].user_id", "required"),
        # availability windows
        (
            [
                (
                    "availability",
                    [
                        {
                            "staff": "@a:sondages.pro",
                            "days": ["mon"],
                            "start": "12:00",
                            "end": "09:00",
                        }
                    ],
                )
            ],
            "availability[0].start",
            "before availability[0].end",
        ),
        (
            [
                (
                    "availability",
                    [
                        {
                            "staff": "@a:sondages.pro",
                            "days": ["mon", "funday"],
                            "start": "09:00",
                            "end": "12:00",
                        }
                    ],
                )
            ],
            "availability[0].days",
            "unknown day",
        ),
        (
            [
                (
                    "availability",
                    [{"staff": "@a:sondages.pro", "days": [7], "start": "09:00", "end": "12:00"}],
                )
            ],
            "availability[0].days",
            "0 = Monday",
        ),
        (
            [
                (
                    "availability",
                    [{"staff": "@a:sondages.pro", "days": [], "start": "09:00", "end": "12:00"}],
                )
            ],
            "availability[0].days",
            "non-empty",
        ),
        (
            [("availability", [{"staff": "@a:sondages.pro", "days": ["mon"], "start": "09:00"}])],
            "availability[0].end",
            "required",
        ),
        # example values left in place
        ([("matrix.homeserver", "https://matrix.example.org")], "matrix.homeserver", "example's"),
        ([("matrix.homeserver", "https://matrix.example.org/")], "matrix.homeserver", "example's"),
        ([("matrix.password", "CHANGE-ME-matrix-password")], "matrix.password", "example's"),
        ([("web.secret", "CHANGE-ME-long-random-web-secret")], "web.secret", "example's"),
        ([("web.public_url", "https://support.example.org")], "web.public_url", "example's"),
        (
            [("video.jitsi.base_url", "https://meet.example.org")],
            "video.jitsi.base_url",
            "example's",
        ),
    ],
)
def test_each_mistake_is_reported_at_its_path(
    changes: list[tuple[str, Any]], path: str, fragment: str
) -> None:
    problems = problems_of(config_with(*changes))
    assert [p for p, _ in problems] == [path]
    assert fragment in problems[0][1]


def test_five_mistakes_are_all_reported() -> None:
    raw = config_with(
        ("matrix.user_id", "support"),
        ("service.timezone", "Mars/Olympus"),
        ("web.secret", "short"),
        ("mail.port", "25"),
        (
            "availability",
            [
                {"staff": "@a:sondages.pro", "days": ["mon"], "start": "09:00", "end": "12:00"},
                {"staff": "@b:sondages.pro", "days": ["tue"], "start": "9h", "end": "12:00"},
            ],
        ),
    )
    assert sorted(paths_of(raw)) == sorted(
        [
            "matrix.user_id",
            "service.timezone",
            "web.secret",
            "mail.port",
            "availability[1].start",
        ]
    )


def test_problems_are_not_reported_twice() -> None:
    # A bad value is not "required" too, and does not spill into the rules that use it.
    raw = config_with(
        ("matrix.password", 42),
        ("web.secret", ""),
        ("service.day_start", "late"),
        ("service.day_end", "08:00"),
    )
    assert paths_of(raw) == ["matrix.password", "service.day_start", "web.secret"]


# -- unknown keys ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "path", "suggestion"),
    [
        ([("matrix.pasword", "x")], "matrix.pasword", '"password"'),
        ([("servce", {})], "servce", '"service"'),
        ([("service.timezon", "Europe/Paris")], "service.timezon", '"timezone"'),
        ([("video.jitsi.baseurl", "https://x.org")], "video.jitsi.baseurl", '"base_url"'),
        ([("mail.from_", "a@b.org")], "mail.from_", '"from"'),
        ([("bridges", [{"user_id": "@b:sondages.pro", "nick": "x"}])], "bridges[0].nick", None),
    ],
)
def test_unknown_keys_are_reported(
    changes: list[tuple[str, Any]], path: str, suggestion: str | None
) -> None:
    ((reported, message),) = problems_of(config_with(*changes))
    assert reported == path
    assert "unknown key" in message
    if suggestion:
        assert suggestion in message


# -- video providers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "required"),
    [
        ("jitsi", ["video.jitsi.base_url"]),
        ("bigbluebutton", ["video.bigbluebutton.url", "video.bigbluebutton.secret"]),
        (
            "nextcloud_talk",
            [
                "video.nextcloud_talk.url",
                "video.nextcloud_talk.user",
                "video.nextcloud_talk.app_password",
            ],
        ),
    ],
)
def test_only_the_chosen_providers_keys_are_required(provider: str, required: list[str]) -> None:
    raw = config_with(("video", {"provider": provider}))
    problems = problems_of(raw)
    assert [path for path, _ in problems] == required
    assert all(provider in message for _, message in problems)


@pytest.mark.parametrize(
    ("provider", "settings"),
    [
        ("jitsi", {"base_url": "https://meet.sondages.pro"}),
        ("bigbluebutton", {"url": "https://bbb.sondages.pro/bigbluebutton/api", "secret": "s"}),
        (
            "nextcloud_talk",
            {"url": "https://cloud.sondages.pro", "user": "bot", "app_password": "xxxxx-xxxxx"},
        ),
    ],
)
def test_each_provider_with_its_keys_parses(provider: str, settings: dict[str, str]) -> None:
    # The other providers' sections may still hold the example's placeholders: unused.
    raw = config_with(
        (
            "video",
            {
                "provider": provider,
                "jitsi": {"base_url": "https://meet.example.org"},
                "bigbluebutton": {"secret": "CHANGE-ME-bbb"},
                "nextcloud_talk": {"app_password": "CHANGE-ME-nc"},
            }
            | {provider: settings},
        ),
    )
    config = parse_config(raw)
    assert config.video.provider == provider
    for key, value in settings.items():
        assert getattr(getattr(config.video, provider), key) == value


# -- environment -------------------------------------------------------------------------------


def test_environment_overrides_the_file() -> None:
    config = parse_config(MINIMAL, {"SUPPORT_BOT_MATRIX_PASSWORD": "from the environment"})
    assert config.matrix.password == "from the environment"


def test_environment_makes_a_missing_secret_valid() -> None:
    raw = config_with(("matrix.password", None), ("web.secret", None))
    assert paths_of(raw) == ["matrix.password", "web.secret"]
    config = parse_config(
        raw,
        {"SUPPORT_BOT_MATRIX_PASSWORD": "hunter2", "SUPPORT_BOT_WEB_SECRET": "x" * 32},
    )
    assert config.matrix.password == "hunter2"
    assert config.web.secret == "x" * 32


@pytest.mark.parametrize(
    ("env", "attribute", "expected"),
    [
        ({"SUPPORT_BOT_MATRIX_ACCESS_TOKEN": "syt_abc"}, "matrix.access_token", "syt_abc"),
        ({"SUPPORT_BOT_VIDEO_BIGBLUEBUTTON_SECRET": "bbb"}, "video.bigbluebutton.secret", "bbb"),
        (
            {"SUPPORT_BOT_VIDEO_NEXTCLOUD_TALK_APP_PASSWORD": "nc"},
            "video.nextcloud_talk.app_password",
            "nc",
        ),
        (
            {"SUPPORT_BOT_DATABASE_URL": "postgres://u:p@db/s"},
            "database.url",
            "postgres://u:p@db/s",
        ),
        ({"SUPPORT_BOT_MAIL_FROM": "help@sondages.pro"}, "mail.from_", "help@sondages.pro"),
        ({"SUPPORT_BOT_MAIL_PORT": "587"}, "mail.port", 587),
        ({"SUPPORT_BOT_MAIL_STARTTLS": "true"}, "mail.starttls", True),
        ({"SUPPORT_BOT_MAIL_STARTTLS": "0"}, "mail.starttls", False),
        ({"SUPPORT_BOT_SERVICE_SLA_WARNING_HOURS": "2.5"}, "service.sla_warning_hours", 2.5),
        ({"SUPPORT_BOT_SERVICE_DAY_END": "17:00"}, "service.day_end", time(17, 0)),
        (
            {"SUPPORT_BOT_MATRIX_STAFF": "@a:sondages.pro, @b:sondages.pro"},
            "matrix.staff",
            ("@a:sondages.pro", "@b:sondages.pro"),
        ),
        # Empty variables count as unset; unrelated SUPPORT_BOT_* variables are left alone.
        ({"SUPPORT_BOT_MATRIX_PASSWORD": ""}, "matrix.password", "a real password"),
        ({"SUPPORT_BOT_TEST_POSTGRES": "1"}, "matrix.password", "a real password"),
    ],
)
def test_environment_values_are_converted(
    env: dict[str, str], attribute: str, expected: Any
) -> None:
    raw = config_with(
        ("video.bigbluebutton", {"url": "https://bbb.sondages.pro/bigbluebutton/api"})
    )
    value: Any = parse_config(raw, env)
    for part in attribute.split("."):
        value = getattr(value, part)
    assert value == expected


@pytest.mark.parametrize(
    ("env", "path", "fragment"),
    [
        ({"SUPPORT_BOT_MAIL_PORT": "smtp"}, "mail.port", "SUPPORT_BOT_MAIL_PORT"),
        ({"SUPPORT_BOT_MAIL_STARTTLS": "maybe"}, "mail.starttls", "SUPPORT_BOT_MAIL_STARTTLS"),
        ({"SUPPORT_BOT_WEB_SECRET": "short"}, "web.secret", "SUPPORT_BOT_WEB_SECRET"),
        (
            {"SUPPORT_BOT_WEB_SECRET": "CHANGE-ME-long-random-web-secret"},
            "web.secret",
            "example's",
        ),
        (
            {"SUPPORT_BOT_MATRIX_PASWORD": "x"},
            "SUPPORT_BOT_MATRIX_PASWORD",
            "did you mean SUPPORT_BOT_MATRIX_PASSWORD",
        ),
    ],
)
def test_bad_environment_values_are_reported(
    env: dict[str, str], path: str, fragment: str
) -> None:
    problems = problems_of(MINIMAL, env)
    assert [p for p, _ in problems] == [path]
    assert fragment in problems[0][1]


# -- the example file --------------------------------------------------------------------------


def test_example_file_as_is_is_refused_for_its_placeholders() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(EXAMPLE, env={})
    problems = dict(caught.value.problems)
    assert set(problems) == {
        "matrix.homeserver",
        "matrix.password",
        "matrix.pickle_key",
        "web.public_url",
        "web.secret",
        "video.jitsi.base_url",
    }
    assert all("example's" in message for message in problems.values())


def test_example_file_with_its_placeholders_replaced_is_valid() -> None:
    text = (
        EXAMPLE.read_text(encoding="utf-8")
        .replace("CHANGE-ME", "replaced")
        .replace("https://matrix.example.org", "https://matrix.sondages.pro")
        .replace("https://support.example.org", "https://support.sondages.pro")
        .replace("https://meet.example.org", "https://meet.sondages.pro")
    )
    config = parse_config(tomllib.loads(text), {})
    assert config.service.timezone == "Europe/Paris"
    assert config.service.country == "FR"
    assert config.service.default_locale == "fr"
    assert config.service.ticket_prefix == "SP"
    assert config.mail.from_ == "Support LimeSurvey <support@example.org>"
    assert len(config.availability) == 2
    assert config.availability[0].days == (0, 1, 2, 3, 4)
    assert len(config.bridges) == 1


def toml_keys(cls: type) -> set[str]:
    keys: set[str] = set()
    for name, hint in get_type_hints(cls).items():
        item = get_args(hint)[0] if get_origin(hint) is tuple else hint
        if is_dataclass(item):
            keys |= {name} | toml_keys(item)  # type: ignore[arg-type]
        else:
            keys.add(name.rstrip("_"))  # `from_` is `from`
    return keys


def test_example_file_documents_every_key() -> None:
    # Commented-out keys count: the example shows how to write each of them.
    text = EXAMPLE.read_text(encoding="utf-8")
    missing = {
        key
        for key in toml_keys(Config)
        if not re.search(rf"^(# )*({re.escape(key)} =|\[+(\w+\.)?{key}\]+)", text, re.M)
    }
    assert not missing


# -- files and the check-config command ----------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "bot.toml", env={})
    ((path, message),) = caught.value.problems
    assert path.endswith("bot.toml")
    assert "not found" in message


def test_syntax_error_gives_the_line(tmp_path: Path) -> None:
    file = tmp_path / "bot.toml"
    file.write_text('[matrix]\nhomeserver = "https://a.org"\nuser_id = \n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(file, env={})
    ((_, message),) = caught.value.problems
    assert "line 3" in message


def test_summary_has_no_secret() -> None:
    config = parse_config(
        config_with(("database.url", "postgres://support:dbpass@db/support")),
        {"SUPPORT_BOT_MATRIX_PASSWORD": "hunter2hunter2"},
    )
    summary = summarize(config)
    assert summary == (
        "ok: @support:sondages.pro on https://matrix.sondages.pro · staff room"
        " #support-staff:sondages.pro · 2 staff · postgresql · video jitsi"
        " · 0 availability windows"
    )
    for secret in ("hunter2", "dbpass", "0123456789abcdef"):
        assert secret not in summary


def test_check_config_valid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_environ: None
) -> None:
    file = tmp_path / "bot.toml"
    file.write_text(
        MINIMAL_TOML + '\n[[availability]]\nstaff = "@alice:sondages.pro"\ndays = ["lun-ven"]\n'
        'start = "09:00"\nend = "12:00"\n',
        encoding="utf-8",
    )
    assert check_config_command(str(file)) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: @support:sondages.pro on https://matrix.sondages.pro")
    assert "1 availability window\n" in out
    # Then the file, and every key with where its value came from (tests/unit/test_config_env).
    lines = out.splitlines()
    assert lines[1] == f"file: {file}"
    assert all(line.startswith("  ") and line.endswith(")") for line in lines[2:])


def test_check_config_reports_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_environ: None
) -> None:
    file = tmp_path / "bot.toml"
    broken = MINIMAL_TOML.replace('"@support:sondages.pro"', '"support"').replace(
        'secret = "0123456789abcdef0123"', 'secret = "short"\nlisen = "x"'
    )
    file.write_text(broken, encoding="utf-8")
    assert check_config_command(str(file)) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [
        "matrix.user_id",
        "web.lisen",
        "web.secret",
    ]


def test_check_config_takes_secrets_from_the_environment(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    clean_environ: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    file = tmp_path / "bot.toml"
    file.write_text(MINIMAL_TOML.replace('password = "a real password"\n', ""), encoding="utf-8")
    assert check_config_command(str(file)) == 1
    assert capsys.readouterr().out.startswith("matrix.password: required")
    monkeypatch.setenv("SUPPORT_BOT_MATRIX_PASSWORD", "from the environment")
    assert check_config_command(str(file)) == 0
    assert capsys.readouterr().out.startswith("ok: ")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "not found"), ("[matrix\n", "line 1"), (b"\xff\xfe", "UTF-8")],
)
def test_check_config_unreadable_file(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    clean_environ: None,
    content: str | bytes | None,
    fragment: str,
) -> None:
    file = tmp_path / "bot.toml"
    if isinstance(content, str):
        file.write_text(content, encoding="utf-8")
    elif isinstance(content, bytes):
        file.write_bytes(content)
    assert check_config_command(str(file)) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{file}: ")
    assert fragment in out
