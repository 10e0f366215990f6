"""Configuration: `bot.toml` → frozen dataclasses.

`parse_config(raw, env)` is pure: it takes the decoded TOML mapping and an environment mapping
(for `SUPPORT_BOT_<SECTION>_<KEY>` secrets) and returns a `Config`, or raises `ConfigError`
listing *every* problem with its key path. Nothing here reads files or the process environment
except `load_config`, the thin wrapper the CLI uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import time
from typing import Literal

VideoProvider = Literal["jitsi", "bigbluebutton", "nextcloud_talk"]
ConfirmationMode = Literal["email", "chat"]


@dataclass(frozen=True, slots=True)
class MatrixConfig:
    homeserver: str
    user_id: str
    staff_room: str  # room id (!…) or alias (#…)
    password: str | None = None
    access_token: str | None = None
    device_name: str = "support-bot"
    store_path: str = "store"
    # Secret used to encrypt the E2EE key store; never the library's constant default.
    pickle_key: str | None = None
    staff: tuple[str, ...] = ()
    support_rooms: tuple[str, ...] = ()
    # Homeservers whose users may invite the bot (besides staff). Empty = the bot's own server.
    allowed_servers: tuple[str, ...] = ()
    # Timeline events per room per sync (the homeserver default of 10 loses bursts).
    sync_timeline_limit: int = 50


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str = "sqlite://support-bot.sqlite3"


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    timezone: str = "Europe/Paris"
    country: str = "FR"
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
    flood_messages_per_minute: int = 20
    slot_minutes: int = 45
    slot_buffer_minutes: int = 15
    min_notice_hours: int = 4
    slots_offered: int = 5
    reminder_offsets_minutes: tuple[int, ...] = (24 * 60, 15)


@dataclass(frozen=True, slots=True)
class WebConfig:
    listen: str = "127.0.0.1:8080"
    public_url: str = "http://127.0.0.1:8080"
    secret: str = ""  # signs confirmation links and feed tokens


@dataclass(frozen=True, slots=True)
class MailConfig:
    host: str = "localhost"
    port: int = 25
    starttls: bool = False
    username: str | None = None
    password: str | None = None
    from_: str = "support@localhost"  # TOML key: `from`


@dataclass(frozen=True, slots=True)
class JitsiConfig:
    base_url: str = "https://meet.example.org"
    app_id: str | None = None
    app_secret: str | None = None
    token_minutes: int = 240


@dataclass(frozen=True, slots=True)
class BigBlueButtonConfig:
    url: str = ""  # e.g. https://bbb.example.org/bigbluebutton/api
    secret: str = ""
    checksum: Literal["sha1", "sha256", "sha384", "sha512"] = "sha256"


@dataclass(frozen=True, slots=True)
class NextcloudTalkConfig:
    url: str = ""  # e.g. https://cloud.example.org
    user: str = ""
    app_password: str = ""


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
    mail: MailConfig = field(default_factory=MailConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    availability: tuple[Availability, ...] = ()
    bridges: tuple[BridgeConfig, ...] = ()


class ConfigError(Exception):
    """Every problem found in a config, each as (key path, message)."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{key}: {msg}" for key, msg in problems))
