"""Configuration: `bot.toml` and `SUPPORT_BOT_*` variables → frozen dataclasses.

`parse_config(raw, env)` is pure: it takes the decoded TOML mapping and an environment mapping
and returns a `Config`, or raises `ConfigError` listing *every* problem with its key path.
Nothing here reads files or the process environment except `read_config_file` and
`load_config`, the thin wrappers the CLI uses.

Environment. Every scalar key can be given as `SUPPORT_BOT_<SECTION>_<KEY>` (nested sections
joined with `_`: `SUPPORT_BOT_VIDEO_JITSI_BASE_URL`), which wins over the file; an empty
variable counts as unset. The text is converted to the key's type: integers and numbers as
written, booleans as true/false, yes/no, on/off or 1/0, times as "HH:MM", arrays of strings or
integers comma-separated (`SUPPORT_BOT_MATRIX_STAFF="@a:x.org,@b:x.org"`; no item of those
arrays can contain a comma), and the `[logging.levels]` table as `logger=LEVEL` pairs
(`SUPPORT_BOT_LOGGING_LEVELS="nio=INFO,bot.matrix=DEBUG"`). Arrays of tables
(`[[availability]]`, `[[bridges]]`) come from the file only. With no file at all the
environment alone can configure the bot (`parse_config_file(None, env, where)`).
"""

from __future__ import annotations

import json
import os
import re
import tomllib
import types
import zoneinfo
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from datetime import time
from difflib import get_close_matches
from email.utils import parseaddr
from functools import cache
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit, urlunsplit

VideoProvider = Literal["jitsi", "bigbluebutton", "nextcloud_talk"]
ConfirmationMode = Literal["email", "chat"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["text", "json"]
# `[mail] tls` (a plain string field: the parser reads `Literal` only without `| None`).
MAIL_TLS = ("starttls", "implicit", "none")
# What `[mail.inbound]` does to a mail once it is handled (it never deletes one).
InboundAfter = Literal["flag", "move"]

# `field(metadata=SECRET)` marks a value that check-config shows as "set", never as written.
SECRET: Mapping[str, bool] = types.MappingProxyType({"secret": True})
# Loggers that speak about traffic (requests, access lines, ORM start/stop), not about the bot:
# by default only their warnings are shown (`[logging.levels]`).
QUIET_LOGGERS = (
    "nio",
    "aiohttp.access",
    "aiohttp.client",
    "aiohttp.server",
    "tortoise",
    # Its DEBUG lines are the IMAP traffic itself: whole mails.
    "aioimaplib",
)
DEFAULT_LOG_LEVELS: tuple[tuple[str, LogLevel], ...] = tuple(
    (name, "WARNING") for name in QUIET_LOGGERS
)


@dataclass(frozen=True, slots=True)
class MatrixConfig:
    homeserver: str
    user_id: str
    staff_room: str  # room id (!…) or alias (#…)
    password: str | None = field(default=None, metadata=SECRET)
    access_token: str | None = field(default=None, metadata=SECRET)
    device_name: str = "support-bot"
    store_path: str = "store"
    # Secret used to encrypt the E2EE key store; never the library's constant default.
    pickle_key: str | None = field(default=None, metadata=SECRET)
    staff: tuple[str, ...] = ()
    support_rooms: tuple[str, ...] = ()
    # Homeservers whose users may invite the bot (besides staff). Empty = the bot's own server.
    allowed_servers: tuple[str, ...] = ()
    # Timeline events per room per sync (the homeserver default of 10 loses bursts).
    sync_timeline_limit: int = 50
    # The recovery key of the bot's cross-signing identity: read at start when the store does
    # not hold the identity's keys (a new installation, a lost store), to restore them.
    recovery_key: str | None = field(default=None, metadata=SECRET)
    # Where the first start writes the recovery key of the identity it creates (mode 0600).
    # None: `store_path/recovery-key.txt`.
    recovery_key_file: str | None = None


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str = "sqlite://support-bot.sqlite3"


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    timezone: str = "Europe/Paris"
    country: str = "FR"
    # A region of `country` with holidays of its own, as the `holidays` package names it
    # ("57" is Moselle, whose Good Friday and 26 December are holidays). None: the country's.
    subdivision: str | None = None
    default_locale: str = "fr"
    ticket_prefix: str = "SP"
    question_prefix: str = "Q"
    quote_prefix: str = "QR"
    day_end: time = time(18, 0)
    day_start: time = time(9, 0)
    terms_url: str = "https://support.sondages.pro/conditions"
    # Warn staff this many working hours before an SLA deadline.
    sla_warning_hours: float = 4.0
    intake_reminder_hours: int = 24
    intake_expiry_days: int = 7
    confirmation: ConfirmationMode = "email"
    confirmation_link_days: int = 7
    warranty_days: int = 7
    max_message_chars: int = 20_000
    # Sent (or failed) outbox rows hold what the bot said, client texts included: they are
    # deleted this many days after they were sent (failed ones: after they were written).
    outbox_retention_days: int = 3
    flood_messages_per_minute: int = 20
    slot_minutes: int = 45
    slot_buffer_minutes: int = 15
    min_notice_hours: int = 4
    slots_offered: int = 5
    reminder_offsets_minutes: tuple[int, ...] = (24 * 60, 15)
    # A call the client did not join (staff 🚫 or !noshow) bills its ticket: 45 minutes of
    # call time (one ticket, R5) logged by the staff member who marked it.
    no_show_billed: bool = False
    # A staff ✅ given on a card before the client consented is remembered; true: it confirms
    # the intervention as soon as the client consents. False: the staff room is asked "start
    # now?" with a ✅ to press (one click).
    confirm_on_early_check: bool = False


@dataclass(frozen=True, slots=True)
class WebConfig:
    listen: str = "127.0.0.1:8080"
    public_url: str = "http://127.0.0.1:8080"
    secret: str = field(default="", metadata=SECRET)  # signs confirmation links, feed tokens
    # The staff dashboard: how long a `!dashboard` login link may be opened (once), and how
    # long the session it opens lasts before a new link is needed.
    dashboard_link_minutes: int = 10
    dashboard_session_hours: int = 8


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    # Where Prometheus scrapes the bot: kept apart from [web], which faces the public.
    listen: str = "127.0.0.1:9464"


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: LogLevel = "INFO"
    # Logger name → level, added to (and overriding) the defaults that quiet traffic loggers.
    # A tuple of pairs rather than a dict: the config stays immutable and hashable.
    levels: tuple[tuple[str, LogLevel], ...] = DEFAULT_LOG_LEVELS
    format: LogFormat = "text"


@dataclass(frozen=True, slots=True)
class InboundMailConfig:
    """`[mail.inbound]`: the support mailbox, read over IMAP (`bot.mailbox`)."""

    # The IMAP server. None (the default): the mailbox is not read.
    host: str | None = None
    port: int = 993
    # As `[mail] tls` (`bot.mailbox.imap.tls_mode`): None is TLS from the start on port 993,
    # else STARTTLS when offered, required off this machine.
    tls: str | None = None  # one of MAIL_TLS
    ca_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False, metadata=SECRET)
    folder: str = "INBOX"
    # A handled mail is flagged (\Seen and the keyword $SupportBot) or moved to `move_to`.
    after: InboundAfter = "flag"
    move_to: str = "Processed"
    # Seconds between two looks at the folder when the server cannot push (no IDLE).
    poll_interval: int = 60
    # Larger mails are handed over with their headers only (`RawMail.too_big`).
    max_size: int = 10 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class MailConfig:
    host: str = "localhost"
    port: int = 25
    # None: STARTTLS whenever the server offers it, required off this machine (TLS from the
    # start on port 465); `bot.mail.tls_mode` resolves it. "none" is the only way to clear text
    # to a server elsewhere.
    tls: str | None = None  # one of MAIL_TLS
    # Deprecated alias of `tls`: true is "starttls", false is the default (it no longer turns
    # STARTTLS off: every copy of the old example said false and sent consent links in clear).
    starttls: bool | None = None
    # CA certificates (PEM) trusted instead of the system's, for a private CA or a
    # self-signed server. Certificates are always verified.
    ca_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, metadata=SECRET)
    from_: str = "support@localhost"  # TOML key: `from`
    # The e-mail channel (`handlers.mail`): attachments kept up to this size (KiB) each, and
    # mails from one address handled per hour at most.
    attachment_max_kib: int = 5120
    sender_mails_per_hour: int = 20
    inbound: InboundMailConfig = field(default_factory=InboundMailConfig)


@dataclass(frozen=True, slots=True)
class JitsiConfig:
    base_url: str = "https://meet.example.org"
    app_id: str | None = None
    app_secret: str | None = field(default=None, metadata=SECRET)
    token_minutes: int = 240


@dataclass(frozen=True, slots=True)
class BigBlueButtonConfig:
    url: str = ""  # e.g. https://bbb.example.org/bigbluebutton/api
    secret: str = field(default="", metadata=SECRET)
    checksum: Literal["sha1", "sha256", "sha384", "sha512"] = "sha256"


@dataclass(frozen=True, slots=True)
class NextcloudTalkConfig:
    url: str = ""  # e.g. https://cloud.example.org
    user: str = ""
    app_password: str = field(default="", metadata=SECRET)


@dataclass(frozen=True, slots=True)
class VideoConfig:
    provider: VideoProvider = "jitsi"
    jitsi: JitsiConfig = field(default_factory=JitsiConfig)
    bigbluebutton: BigBlueButtonConfig = field(default_factory=BigBlueButtonConfig)
    nextcloud_talk: NextcloudTalkConfig = field(default_factory=NextcloudTalkConfig)


@dataclass(frozen=True, slots=True)
class Availability:
    """A weekly window of one staff member, in the service time zone."""

    staff: str
    days: tuple[int, ...]  # 0 = Monday … 6 = Sunday
    start: time
    end: time


@dataclass(frozen=True, slots=True)
class BridgeConfig:
    """A bridge account (e.g. Nextcloud Talk's Matterbridge) speaking for many people."""

    user_id: str
    nick_format: str = "[{PROTOCOL}] <{NICK}> "


@dataclass(frozen=True, slots=True)
class Config:
    matrix: MatrixConfig
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    web: WebConfig = field(default_factory=WebConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    mail: MailConfig = field(default_factory=MailConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    availability: tuple[Availability, ...] = ()
    bridges: tuple[BridgeConfig, ...] = ()


class ConfigError(Exception):
    """Every problem found in a config, each as (key path, message)."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{key}: {msg}" for key, msg in problems))


# --------------------------------------------------------------------------------------------
# Parsing. Generic over the dataclasses above: each field's type hint says how to read its
# TOML value, `_CHECKS` adds the rules a type cannot express, `_check_across` the rules that
# involve several keys. Problems are collected, never raised one by one.

ENV_PREFIX = "SUPPORT_BOT_"
# Names the config file when `--config` is not given.
CONFIG_ENV = "SUPPORT_BOT_CONFIG"
DEFAULT_CONFIG_PATH = "bot.toml"
# Secrets in bot.toml.example start with this; such a value is never a real secret.
PLACEHOLDER_PREFIX = "CHANGE-ME"
# Non-secret values of bot.toml.example that would silently break a running service.
EXAMPLE_VALUES: Mapping[str, str] = {
    "matrix.homeserver": "https://matrix.example.org",
    "web.public_url": "https://support.example.org",
    "video.jitsi.base_url": "https://meet.example.org",
}
LOCALES = ("fr", "en")
MIN_SECRET_CHARS = 16
# Keys each video provider cannot work without (only checked for the chosen provider).
PROVIDER_REQUIRED: Mapping[str, tuple[str, ...]] = {
    "jitsi": ("base_url",),
    "bigbluebutton": ("url", "secret"),
    "nextcloud_talk": ("url", "user", "app_password"),
}

_ABSENT: Any = object()
_DAY_NAMES: Mapping[str, int] = {
    name: number
    for names in (
        ("mon", "tue", "wed", "thu", "fri", "sat", "sun"),
        ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
        ("lun", "mar", "mer", "jeu", "ven", "sam", "dim"),
        ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche"),
    )
    for number, name in enumerate(names)
}
_TIME = re.compile(r"(\d{1,2}):(\d{2})")
_SERVER = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::\d{1,5})?"
_SERVER_NAME = re.compile(_SERVER)
_USER_ID = re.compile(r"@[A-Za-z0-9._=/+-]+:" + _SERVER)
# Room version 12 ids have no server part (`!<hash>`); older ones do (`!opaque:server`).
_ROOM = re.compile(r"(?:![^\s:]+(?::" + _SERVER + r")?|#[^\s:]+:" + _SERVER + ")")
_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9]{0,9}")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


class _Invalid(Exception):
    """A value that cannot be converted; the message is the problem text."""


@dataclass(slots=True)
class _Report:
    problems: list[tuple[str, str]] = field(default_factory=list)
    bad: set[str] = field(default_factory=set)  # paths already reported
    placeholders: set[int] = field(default_factory=set)  # indexes into problems
    env_names: set[str] = field(default_factory=set)  # every variable we looked up

    def covers(self, path: str) -> bool:
        """Whether `path` or a table containing it was already reported."""
        parts = re.split(r"(?=[.[])", path)
        return any("".join(parts[:end]) in self.bad for end in range(1, len(parts) + 1))

    def add(self, path: str, message: str, *, placeholder: bool = False) -> None:
        if placeholder:
            self.placeholders.add(len(self.problems))
        self.problems.append((path, message))
        self.bad.add(path)


def parse_config(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Build a `Config` from decoded TOML plus `SUPPORT_BOT_<SECTION>_<KEY>` variables.

    Variables win over the file. Raises `ConfigError` with every problem found.
    """
    env = {} if env is None else env
    report = _Report()
    values = _read_table(Config, raw, "", env, report, allow_env=True)
    _check_env_names(env, report)
    _check_across(values, report)
    _forgive_unused_placeholders(values, report)
    if report.problems:
        raise ConfigError(report.problems)
    return _build(Config, values)


def config_path(given: str | None, env: Mapping[str, str]) -> str:
    """The config file to read: `--config` (`given`) wins, then `SUPPORT_BOT_CONFIG`, then
    `bot.toml` in the working directory. An empty variable counts as unset."""
    return given or env.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def read_config_file(path: str | Path) -> dict[str, Any] | None:
    """The decoded TOML of `path`, or None when there is no such file (the environment may
    then give every setting); unreadable files and syntax errors are `ConfigError`s."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise ConfigError([(where, "not UTF-8 text")]) from None
    except OSError as exc:
        raise ConfigError([(where, f"cannot read the file: {exc.strerror or exc}")]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([(where, _syntax_message(str(exc)))]) from None


def parse_config_file(raw: Mapping[str, Any] | None, env: Mapping[str, str], where: str) -> Config:
    """`parse_config` for what `read_config_file(where)` gave: None (no file) is an empty file
    when some `SUPPORT_BOT_<SECTION>_<KEY>` variable is set, and then every missing required
    setting is named with its variable. Pure, like `parse_config`."""
    if raw is not None:
        return parse_config(raw, env)
    if not any(env.get(name) for name in _setting_env_names()):
        raise ConfigError(
            [
                (
                    where,
                    "file not found: start from a copy of bot.toml.example, name another file"
                    f" with --config or {CONFIG_ENV}, or give every setting as a"
                    f" {ENV_PREFIX}<SECTION>_<KEY> variable",
                )
            ]
        )
    try:
        return parse_config({}, env)
    except ConfigError as error:
        raise ConfigError(
            [(where, "file not found; from the environment alone:"), *error.problems]
        ) from None


def load_config(path: str | Path, env: Mapping[str, str] = os.environ) -> Config:
    """Read a TOML file (or none: see `parse_config_file`) and parse it; file and syntax
    errors are `ConfigError`s too."""
    return parse_config_file(read_config_file(path), env, str(path))


def summarize(config: Config) -> str:
    """One line describing a valid config, for `check-config` and the start-up log; no secrets."""
    matrix = config.matrix
    database = "sqlite" if config.database.url.startswith("sqlite:") else "postgresql"
    parts = [
        f"ok: {matrix.user_id} on {matrix.homeserver}",
        f"staff room {matrix.staff_room}",
        f"{len(matrix.staff)} staff",
        database,
        f"video {config.video.provider}",
        _count(len(config.availability), "availability window"),
    ]
    if config.bridges:
        parts.append(_count(len(config.bridges), "bridge"))
    inbound = config.mail.inbound
    if inbound.host:
        parts.append(f"mailbox {inbound.folder} on {inbound.host}")
    return " · ".join(parts)


def env_name(key_path: str) -> str:
    """`video.bigbluebutton.secret` → `SUPPORT_BOT_VIDEO_BIGBLUEBUTTON_SECRET`."""
    return ENV_PREFIX + key_path.replace(".", "_").upper()


# -- where each value came from (check-config) -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setting:
    """One key of a valid config as check-config lists it."""

    path: str  # "matrix.password"
    shown: str  # the value as written in TOML; a secret is only "set" or "not set"
    origin: str  # "file", "default", or the name of the variable that gave it


def settings_of(
    config: Config, raw: Mapping[str, Any] | None, env: Mapping[str, str]
) -> list[Setting]:
    """Every key of `config` (parsed from `raw` and `env`) with its value and where it came
    from, in the order of the dataclasses; secrets are never shown. Pure."""
    return list(_settings_of(config, raw or {}, "", env))


def _settings_of(
    node: Any, raw: Mapping[str, Any], path: str, env: Mapping[str, str]
) -> Iterator[Setting]:
    hints = _hints(type(node))
    for fld in fields(node):
        key, hint, value = _toml_key(fld.name), hints[fld.name], getattr(node, fld.name)
        here = _join(path, key)
        if is_dataclass(hint):
            inner = raw.get(key)
            yield from _settings_of(value, inner if isinstance(inner, Mapping) else {}, here, env)
            continue
        if _table_item(hint) is not None:  # [[availability]], [[bridges]]: the file only
            origin = "file" if key in raw else "default"
            yield Setting(here, _count(len(value), "block"), origin)
            continue
        name = env_name(here)
        origin = name if env.get(name) else "file" if key in raw else "default"
        yield Setting(here, _shown(here, value, secret=bool(fld.metadata.get("secret"))), origin)


def _shown(path: str, value: Any, *, secret: bool) -> str:
    if secret:
        return "set" if value else "not set"
    if value is None:
        return "not set"
    if path == "database.url":  # a DSN may carry the database password
        parts = urlsplit(value)
        if parts.password:
            host = parts.netloc.rpartition("@")[2]
            value = urlunsplit(parts._replace(netloc=f"{parts.username or ''}:…@{host}"))
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, time):
        return f'"{value:%H:%M}"'
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if path == "logging.levels":
        return "{" + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in value) + "}"
    if isinstance(value, tuple):
        return "[" + ", ".join(_shown(path, item, secret=False) for item in value) + "]"
    return str(value)


@cache
def _setting_env_names() -> frozenset[str]:
    """The variable of every key the environment can give."""

    def walk(cls: type, path: str) -> Iterator[str]:
        for name, hint in _hints(cls).items():
            here = _join(path, _toml_key(name))
            if is_dataclass(hint):
                yield from walk(hint, here)
            elif _table_item(hint) is None:
                yield env_name(here)

    return frozenset(walk(Config, ""))


# -- reading ----------------------------------------------------------------------------------


def _read_table(
    cls: type,
    raw: Any,
    path: str,
    env: Mapping[str, str],
    report: _Report,
    *,
    allow_env: bool,
) -> dict[str, Any]:
    """Convert and check one TOML table; return the valid values given, by field name."""
    if not isinstance(raw, Mapping):
        report.add(path, f"must be a table, not {_toml_type(raw)}")
        raw = {}
    hints = _hints(cls)
    by_key = {_toml_key(f.name): f for f in fields(cls)}
    for key in raw:
        if key not in by_key:
            report.add(_join(path, key), _unknown_key(key, by_key))
    values: dict[str, Any] = {}
    for key, fld in by_key.items():
        hint, here = hints[fld.name], _join(path, key)
        if is_dataclass(hint):
            values[fld.name] = _read_table(
                hint, raw.get(key, {}), here, env, report, allow_env=allow_env
            )
            continue
        if (item := _table_item(hint)) is not None:
            if key in raw:
                values[fld.name] = _read_array(item, raw[key], here, env, report)
            continue
        value, origin = raw.get(key, _ABSENT), ""
        if allow_env:
            name = env_name(here)
            report.env_names.add(name)
            # An empty variable counts as unset: compose files often pass `VAR=` through.
            if env.get(name):
                value, origin = env[name], name
        if value is _ABSENT:
            if fld.default is MISSING and fld.default_factory is MISSING:
                if not report.covers(path):
                    # Name the variable too: with no file, it is the only way to give it.
                    report.add(
                        here,
                        f"required (or the variable {env_name(here)})"
                        if allow_env
                        else "required",
                    )
            continue
        _read_value(cls, fld.name, hint, value, here, origin, report, values)
    return values


def _read_array(
    cls: type, raw: Any, path: str, env: Mapping[str, str], report: _Report
) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        report.add(path, f"must be an array of tables ([[{path}]]), not {_toml_type(raw)}")
        return []
    return [
        _read_table(cls, item, f"{path}[{index}]", env, report, allow_env=False)
        for index, item in enumerate(raw)
    ]


def _read_value(
    cls: type,
    name: str,
    hint: Any,
    value: Any,
    path: str,
    origin: str,
    report: _Report,
    into: dict[str, Any],
) -> None:
    suffix = f" (from {origin})" if origin else ""
    if _is_placeholder(path, value):
        report.add(path, _placeholder_message(path, value) + suffix, placeholder=True)
        return
    converter = _CONVERTERS.get((cls, name))
    try:
        if converter is not None:
            converted = converter(value)
        elif get_origin(hint) is tuple:
            converted = _convert_tuple(hint, value, path, bool(origin), report)
        else:
            converted = _convert(hint, value, from_env=bool(origin))
    except _Invalid as exc:
        report.add(path, f"{exc}{suffix}")
        return
    if converted is None:  # an empty optional value (the default), or bad items reported
        return
    check = _CHECKS.get((cls, name))
    if check is not None:
        message = check(converted)
        if message:
            report.add(path, message + suffix)
            return
    item_check = _ITEM_CHECKS.get((cls, name))
    if item_check is not None:
        failed = False
        for index, item in enumerate(converted):
            if message := item_check(item):
                report.add(f"{path}[{index}]", message + suffix)
                failed = True
        if failed:
            return
    into[name] = converted


def _convert_tuple(
    hint: Any, value: Any, path: str, from_env: bool, report: _Report
) -> tuple[Any, ...] | None:
    if from_env:
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list):
        raise _Invalid(f"must be an array, not {_toml_type(value)}")
    item_hint = get_args(hint)[0]
    items, failed = [], False
    for index, item in enumerate(value):
        try:
            items.append(_convert(item_hint, item, from_env=from_env))
        except _Invalid as exc:
            report.add(f"{path}[{index}]", str(exc))
            failed = True
    if failed:
        report.bad.add(path)
        return None
    return tuple(items)


def _convert(hint: Any, value: Any, *, from_env: bool) -> Any:
    """Convert one TOML (or environment string) value to the field's type."""
    if isinstance(hint, types.UnionType):  # `str | None`: absent or empty means None
        (inner,) = [arg for arg in get_args(hint) if arg is not type(None)]
        converted = _convert(inner, value, from_env=from_env)
        return converted if converted != "" else None
    if get_origin(hint) is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise _Invalid("must be one of " + ", ".join(f'"{c}"' for c in choices))
        return value
    if hint is str:
        if not isinstance(value, str):
            raise _Invalid(f"must be a string, not {_toml_type(value)}")
        return value
    if hint is bool:
        if from_env and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if not isinstance(value, bool):
            raise _Invalid("must be true or false")
        return value
    if hint is int:
        if from_env:
            try:
                return int(value.strip())
            except ValueError:
                raise _Invalid("must be an integer") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"must be an integer, not {_toml_type(value)}")
        return value
    if hint is float:
        if from_env:
            try:
                return float(value.strip())
            except ValueError:
                raise _Invalid("must be a number") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(f"must be a number, not {_toml_type(value)}")
        return float(value)
    if hint is time:
        return _parse_time(value)
    raise TypeError(f"no converter for {hint!r}")  # a new field type: teach _convert


def _parse_time(value: Any) -> time:
    # A TOML local time (`start = 09:00:00`, unquoted) is accepted too.
    if isinstance(value, time) and value.tzinfo is None:
        return value
    match = _TIME.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None or int(match[1]) > 23 or int(match[2]) > 59:
        raise _Invalid('must be a time "HH:MM" between "00:00" and "23:59"')
    return time(int(match[1]), int(match[2]))


def _log_level(value: Any) -> str:
    level = value.strip().upper() if isinstance(value, str) else None
    if level not in get_args(LogLevel):
        raise _Invalid("must be one of " + ", ".join(f'"{c}"' for c in get_args(LogLevel)))
    return level


def _parse_levels(value: Any) -> tuple[tuple[str, str], ...]:
    """`[logging.levels]` (or `"nio=INFO,tortoise=DEBUG"` from the environment) added to the
    defaults. An unquoted dotted key (`aiohttp.access = "INFO"`) is a nested table in TOML:
    flattened back into the logger name it spells."""
    if isinstance(value, str):
        pairs = []
        for part in value.split(","):
            if not part.strip():
                continue
            name, equals, level = part.partition("=")
            if not equals:
                raise _Invalid('must be "logger=LEVEL" pairs separated by commas, e.g. "nio=INFO"')
            pairs.append((name.strip(), level))
    elif isinstance(value, Mapping):
        pairs = list(_flatten(value))
    else:
        raise _Invalid(f"must be a table of logger names to levels, not {_toml_type(value)}")
    levels = dict(DEFAULT_LOG_LEVELS)
    for name, level in pairs:
        if not name:
            raise _Invalid(
                "a logger name must not be empty (the level of all others is logging.level)"
            )
        try:
            levels[name] = _log_level(level)
        except _Invalid as exc:
            raise _Invalid(f'logger "{name}": {exc}') from None
    return tuple(levels.items())


def _flatten(table: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in table.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _parse_days(value: Any) -> tuple[int, ...]:
    """`["mon", "tue"]`, `["lun-ven"]`, `"mon-fri"`, `[0, 1]` (0 = Monday) → sorted numbers."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise _Invalid('must be a non-empty array of days, e.g. ["mon", "tue"] or ["mon-fri"]')
    days: set[int] = set()
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            if not 0 <= item <= 6:
                raise _Invalid(f"day number {item} out of range: 0 = Monday … 6 = Sunday")
            days.add(item)
        elif isinstance(item, str):
            first, dash, last = item.strip().lower().partition("-")
            if first not in _DAY_NAMES or (dash and last not in _DAY_NAMES):
                raise _Invalid(
                    f'unknown day "{item}": use mon … sun, lun … dim, 0 … 6 (0 = Monday)'
                    ' or a range like "mon-fri"'
                )
            start = _DAY_NAMES[first]
            length = (_DAY_NAMES[last] - start) % 7 if dash else 0  # "sat-mon" wraps
            days.update((start + offset) % 7 for offset in range(length + 1))
        else:
            raise _Invalid(f"a day must be a name or a number, not {_toml_type(item)}")
    return tuple(sorted(days))


# -- per-key rules ----------------------------------------------------------------------------


def _http_url(value: str) -> str | None:
    parts = urlsplit(value)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or any(c.isspace() for c in value)
    ):
        return "must be an http:// or https:// URL"
    return None


def _user_id(value: str) -> str | None:
    if not _USER_ID.fullmatch(value):
        return f'not a Matrix user id: expected "@name:server", got "{value}"'
    return None


def _room(value: str) -> str | None:
    if not _ROOM.fullmatch(value):
        return (
            'not a Matrix room id or alias: expected "!id:server" or "#alias:server",'
            f' got "{value}"'
        )
    return None


def _server_name(value: str) -> str | None:
    if not _SERVER_NAME.fullmatch(value):
        return f'not a server name: expected a host name such as "example.org", got "{value}"'
    return None


def _non_empty(value: str) -> str | None:
    return "must not be empty" if not value.strip() else None


def _secret(value: str | None) -> str | None:
    if value is not None and len(value) < MIN_SECRET_CHARS:
        return f"too short: at least {MIN_SECRET_CHARS} characters (a long random string)"
    return None


def _at_least(minimum: float) -> Callable[[float], str | None]:
    def check(value: float) -> str | None:
        return f"must be at least {minimum}" if value < minimum else None

    return check


def _between(low: int, high: int) -> Callable[[int], str | None]:
    def check(value: int) -> str | None:
        return f"must be between {low} and {high}" if not low <= value <= high else None

    return check


def _timezone(value: str) -> str | None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return f'unknown time zone "{value}": use an IANA name such as "Europe/Paris"'
    return None


def _country(value: str) -> str | None:
    import holidays  # heavy, and only needed when a config is checked

    supported = holidays.list_supported_countries()
    if value in supported:
        return None
    if value.upper() in supported:
        return f'country codes are upper case: "{value.upper()}"'
    return f'unknown country "{value}" for public holidays: use an ISO code such as "FR"'


def _subdivision(country: str, value: str) -> str | None:
    import holidays  # heavy, and only needed when a config is checked

    try:
        holidays.country_holidays(country, subdiv=value)
    except NotImplementedError:
        known = holidays.list_supported_countries().get(country, [])
        if not known:
            return f'"{country}" has no subdivisions with holidays of their own: remove it'
        close = [code for code in known if code.upper() == value.strip().upper()]
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        return (
            f'unknown subdivision "{value}" of {country} for public holidays{hint}: use one of '
            + ", ".join(f'"{code}"' for code in known)
        )
    return None


def _locale(value: str) -> str | None:
    return None if value in LOCALES else "must be one of " + ", ".join(f'"{c}"' for c in LOCALES)


def _prefix(value: str) -> str | None:
    if not _PREFIX.fullmatch(value):
        return "must be 1 to 10 letters or digits, starting with a letter (as in SP-2026-0042)"
    return None


def _listen(value: str) -> str | None:
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return 'must be "host:port", e.g. "127.0.0.1:8080"'
    return None


def _database_url(value: str) -> str | None:
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("sqlite", "postgres", "postgresql"):
        return 'must start with "sqlite://", "postgres://" or "postgresql://"'
    if scheme == "sqlite" and not rest:
        return 'needs a file name, e.g. "sqlite://support-bot.sqlite3"'
    if scheme != "sqlite" and not urlsplit(value).hostname:
        return 'needs a host, e.g. "postgres://user:password@localhost:5432/support"'
    return None


def _email(value: str) -> str | None:
    _, address = parseaddr(value)
    local, at, domain = address.rpartition("@")
    if not at or not local or ("." not in domain and domain != "localhost"):
        return f'not an e-mail address: expected "support@example.org", got "{value}"'
    return None


def _mail_tls(value: str) -> str | None:
    return None if value in MAIL_TLS else "must be one of " + ", ".join(f'"{c}"' for c in MAIL_TLS)


def _imap_folder(value: str) -> str | None:
    # Non-ASCII names travel in IMAP's modified UTF-7, which the bot does not encode: the
    # operator writes the name as the server lists it ("Trait&AOk-s" for "Traités").
    if not value or not all(" " <= c <= "~" for c in value):
        return (
            "must be a folder name in printable ASCII, as the server lists it (a name with"
            ' accents in its modified UTF-7 form, e.g. "Trait&AOk-s" for "Traités")'
        )
    return None


def _nick_format(value: str) -> str | None:
    return None if "{NICK}" in value else 'must contain "{NICK}", e.g. "[{PROTOCOL}] <{NICK}> "'


_CONVERTERS: Mapping[tuple[type, str], Callable[[Any], Any]] = {
    (Availability, "days"): _parse_days,
    (LoggingConfig, "level"): _log_level,
    (LoggingConfig, "levels"): _parse_levels,
}
_CHECKS: Mapping[tuple[type, str], Callable[[Any], str | None]] = {
    (MatrixConfig, "homeserver"): _http_url,
    (MatrixConfig, "user_id"): _user_id,
    (MatrixConfig, "staff_room"): _room,
    (MatrixConfig, "device_name"): _non_empty,
    (MatrixConfig, "store_path"): _non_empty,
    (MatrixConfig, "pickle_key"): _secret,
    (MatrixConfig, "sync_timeline_limit"): _at_least(1),
    (MatrixConfig, "recovery_key"): _non_empty,
    (MatrixConfig, "recovery_key_file"): _non_empty,
    (DatabaseConfig, "url"): _database_url,
    (ServiceConfig, "timezone"): _timezone,
    (ServiceConfig, "country"): _country,
    (ServiceConfig, "default_locale"): _locale,
    (ServiceConfig, "ticket_prefix"): _prefix,
    (ServiceConfig, "question_prefix"): _prefix,
    (ServiceConfig, "quote_prefix"): _prefix,
    (ServiceConfig, "terms_url"): _http_url,
    (ServiceConfig, "sla_warning_hours"): _at_least(0),
    (ServiceConfig, "intake_reminder_hours"): _at_least(1),
    (ServiceConfig, "intake_expiry_days"): _at_least(1),
    (ServiceConfig, "confirmation_link_days"): _at_least(1),
    (ServiceConfig, "warranty_days"): _at_least(0),
    (ServiceConfig, "max_message_chars"): _at_least(1),
    (ServiceConfig, "outbox_retention_days"): _at_least(1),
    (ServiceConfig, "flood_messages_per_minute"): _at_least(1),
    (ServiceConfig, "slot_minutes"): _at_least(1),
    (ServiceConfig, "slot_buffer_minutes"): _at_least(0),
    (ServiceConfig, "min_notice_hours"): _at_least(0),
    # Keycap reactions exist for 1️⃣ … 🔟 only.
    (ServiceConfig, "slots_offered"): _between(1, 10),
    (WebConfig, "listen"): _listen,
    (WebConfig, "public_url"): _http_url,
    (WebConfig, "secret"): _secret,
    (WebConfig, "dashboard_link_minutes"): _between(1, 60),
    (WebConfig, "dashboard_session_hours"): _between(1, 24),
    (MetricsConfig, "listen"): _listen,
    (MailConfig, "host"): _non_empty,
    (MailConfig, "port"): _between(1, 65535),
    (MailConfig, "from_"): _email,
    (MailConfig, "tls"): _mail_tls,
    (MailConfig, "ca_file"): _non_empty,
    (MailConfig, "attachment_max_kib"): _at_least(0),
    (MailConfig, "sender_mails_per_hour"): _at_least(1),
    (InboundMailConfig, "host"): _non_empty,
    (InboundMailConfig, "port"): _between(1, 65535),
    (InboundMailConfig, "tls"): _mail_tls,
    (InboundMailConfig, "ca_file"): _non_empty,
    (InboundMailConfig, "folder"): _imap_folder,
    (InboundMailConfig, "move_to"): _imap_folder,
    (InboundMailConfig, "poll_interval"): _at_least(1),
    (InboundMailConfig, "max_size"): _at_least(1024),
    (JitsiConfig, "base_url"): _http_url,
    (JitsiConfig, "token_minutes"): _at_least(1),
    (BigBlueButtonConfig, "url"): _http_url,
    (NextcloudTalkConfig, "url"): _http_url,
    (Availability, "staff"): _user_id,
    (BridgeConfig, "user_id"): _user_id,
    (BridgeConfig, "nick_format"): _nick_format,
}
_ITEM_CHECKS: Mapping[tuple[type, str], Callable[[Any], str | None]] = {
    (MatrixConfig, "staff"): _user_id,
    (MatrixConfig, "support_rooms"): _room,
    (MatrixConfig, "allowed_servers"): _server_name,
    (ServiceConfig, "reminder_offsets_minutes"): _at_least(1),
}


# -- rules across keys ------------------------------------------------------------------------


def _check_across(values: dict[str, Any], report: _Report) -> None:
    matrix, service, web, mail, video = (
        values[name] for name in ("matrix", "service", "web", "mail", "video")
    )
    if not (matrix.get("password") or matrix.get("access_token")) and not (
        report.covers("matrix.password") or report.covers("matrix.access_token")
    ):
        report.add(
            "matrix.password",
            "required: set matrix.password or matrix.access_token (or the variable "
            f"{env_name('matrix.password')} / {env_name('matrix.access_token')})",
        )
    if not web.get("secret") and not report.covers("web.secret"):
        report.add(
            "web.secret",
            f"required: a random string of at least {MIN_SECRET_CHARS} characters that signs"
            f" confirmation links (or the variable {env_name('web.secret')})",
        )
    if "tls" in mail and "starttls" in mail and not report.covers("mail.starttls"):
        report.add(
            "mail.starttls",
            "deprecated alias of mail.tls, which is set too: remove mail.starttls",
        )
    if "username" in mail and "password" not in mail and not report.covers("mail.password"):
        report.add(
            "mail.password",
            f"required when mail.username is set (or the variable {env_name('mail.password')})",
        )
    _check_inbound(mail["inbound"], report)

    def setting(name: str) -> Any:  # None when the key was already reported
        if report.covers(f"service.{name}"):
            return None
        return service.get(name, _default(ServiceConfig, name))

    day_start, day_end = setting("day_start"), setting("day_end")
    if day_start is not None and day_end is not None and day_start >= day_end:
        report.add("service.day_start", f"must be before service.day_end ({day_end:%H:%M})")
    prefixes: dict[str, str] = {}
    for name in ("ticket_prefix", "question_prefix", "quote_prefix"):
        if (prefix := setting(name)) is None:
            continue
        if (other := prefixes.setdefault(prefix.upper(), name)) != name:
            report.add(
                f"service.{name}",
                f'"{prefix}" is also service.{other}: references must tell tickets, questions'
                " and quotes apart",
            )
    country, subdivision = setting("country"), setting("subdivision")
    if country is not None and subdivision is not None:
        if message := _subdivision(country, subdivision):
            report.add("service.subdivision", message)
    _check_listeners(values, report)
    reminder, expiry = setting("intake_reminder_hours"), setting("intake_expiry_days")
    if reminder is not None and expiry is not None and reminder >= expiry * 24:
        report.add(
            "service.intake_reminder_hours",
            f"must be shorter than service.intake_expiry_days ({expiry} days)",
        )

    provider = video.get("provider")
    if provider is not None or not report.covers("video.provider"):
        provider = provider or _default(VideoConfig, "provider")
        settings = video[provider]
        for key in PROVIDER_REQUIRED[provider]:
            path = f"video.{provider}.{key}"
            if not settings.get(key) and not report.covers(path):
                report.add(path, f'required when video.provider is "{provider}"')
    jitsi = video["jitsi"]
    if ("app_id" in jitsi) != ("app_secret" in jitsi):
        missing = "app_secret" if "app_id" in jitsi else "app_id"
        if not report.covers(f"video.jitsi.{missing}"):
            report.add(
                f"video.jitsi.{missing}",
                "required: app_id and app_secret go together (signed Jitsi tokens)",
            )

    for index, window in enumerate(values.get("availability", [])):
        if "start" in window and "end" in window and window["start"] >= window["end"]:
            report.add(
                f"availability[{index}].start",
                f"must be before availability[{index}].end ({window['end']:%H:%M})",
            )


def _check_inbound(inbound: dict[str, Any], report: _Report) -> None:
    """`[mail.inbound]`: a server to read needs a login, and what is handled must leave."""
    if inbound.get("host"):
        for key in ("username", "password"):
            if not inbound.get(key) and not report.covers(f"mail.inbound.{key}"):
                report.add(
                    f"mail.inbound.{key}",
                    "required when mail.inbound.host is set (or the variable"
                    f" {env_name(f'mail.inbound.{key}')})",
                )
    folder = inbound.get("folder", _default(InboundMailConfig, "folder"))
    move_to = inbound.get("move_to", _default(InboundMailConfig, "move_to"))
    if (
        inbound.get("after") == "move"
        and move_to == folder
        and not report.covers("mail.inbound.folder")
    ):
        report.add("mail.inbound.move_to", f'must not be mail.inbound.folder ("{folder}")')
    port = inbound.get("port", _default(InboundMailConfig, "port"))
    if port == 993 and inbound.get("tls") in ("starttls", "none"):
        report.add(
            "mail.inbound.port",
            f'993 is IMAP over TLS from the first byte: with tls = "{inbound["tls"]}" use the'
            " port of plain IMAP (143), or leave tls out",
        )


def _check_listeners(values: dict[str, Any], report: _Report) -> None:
    """Two servers cannot listen on one port; a wildcard host takes the port on every address."""
    if report.covers("web.listen") or report.covers("metrics.listen"):
        return
    web = values["web"].get("listen", _default(WebConfig, "listen"))
    metrics = values["metrics"].get("listen", _default(MetricsConfig, "listen"))
    web_host, _, web_port = web.rpartition(":")
    metrics_host, _, metrics_port = metrics.rpartition(":")
    wildcards = {"0.0.0.0", "[::]", "*"}
    if int(web_port) == int(metrics_port) and (
        web_host == metrics_host or web_host in wildcards or metrics_host in wildcards
    ):
        report.add("metrics.listen", f"must not be the address of web.listen ({web})")


def _check_env_names(env: Mapping[str, str], report: _Report) -> None:
    """A misspelt `SUPPORT_BOT_MATRIX_PASWORD` would be ignored silently: report it."""
    sections = [
        env_name(name) + "_" for name, hint in _hints(Config).items() if is_dataclass(hint)
    ]
    for name in env:
        if name in report.env_names or not name.startswith(tuple(sections)):
            continue
        close = get_close_matches(name, report.env_names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        report.add(name, f"unknown setting in the environment{hint}")


def _forgive_unused_placeholders(values: dict[str, Any], report: _Report) -> None:
    """Example values in the sections of video providers not in use are harmless."""
    provider = values["video"].get("provider", _default(VideoConfig, "provider"))
    unused = tuple(f"video.{name}." for name in PROVIDER_REQUIRED if name != provider)
    report.problems = [
        problem
        for index, problem in enumerate(report.problems)
        if index not in report.placeholders or not problem[0].startswith(unused)
    ]


# -- helpers ----------------------------------------------------------------------------------


def _is_placeholder(path: str, value: Any) -> bool:
    if not isinstance(value, str):
        return False
    if value.strip().upper().startswith(PLACEHOLDER_PREFIX):
        return True
    example = EXAMPLE_VALUES.get(path)
    return example is not None and value.strip().rstrip("/") == example


def _placeholder_message(path: str, value: str) -> str:
    if path in EXAMPLE_VALUES:
        return f'"{EXAMPLE_VALUES[path]}" is the example\'s value from bot.toml.example: use yours'
    return (
        f'still the example\'s placeholder from bot.toml.example ("{PLACEHOLDER_PREFIX}…"):'
        " replace it with your own value"
    )


def _build(cls: type, values: Mapping[str, Any]) -> Any:
    hints, kwargs = _hints(cls), {}
    for name, value in values.items():
        hint = hints[name]
        if is_dataclass(hint):
            kwargs[name] = _build(hint, value)
        elif (item := _table_item(hint)) is not None:
            kwargs[name] = tuple(_build(item, one) for one in value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _default(cls: type, name: str) -> Any:
    # Slotted dataclasses keep no class attribute holding the default: ask the field.
    (fld,) = [f for f in fields(cls) if f.name == name]
    return fld.default


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _table_item(hint: Any) -> type | None:
    """The dataclass of a `tuple[SomeDataclass, ...]` field (a TOML array of tables)."""
    if get_origin(hint) is tuple:
        item = get_args(hint)[0]
        if is_dataclass(item):
            return item
    return None


def _toml_key(name: str) -> str:
    return name.rstrip("_")  # `from_` is `from` in TOML


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _unknown_key(key: str, known: Mapping[str, Any]) -> str:
    close = get_close_matches(key, list(known), n=1)
    if close:
        return f'unknown key (did you mean "{close[0]}"?)'
    return "unknown key (known: " + ", ".join(known) + ")"


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    return "a date or time"


def _syntax_message(error: str) -> str:
    match = re.search(r"\s*\(at line (\d+), column (\d+)\)$", error)
    if match is None:
        return f"TOML syntax error: {error}"
    return f"TOML syntax error at line {match[1]}, column {match[2]}: {error[: match.start()]}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
