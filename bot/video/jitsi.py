"""Jitsi Meet: an unguessable room per booking, and a signed token per participant.

Jitsi creates rooms when the first person joins, so nothing is called over the network, and
asking twice for one booking (a replay after a crash) leaves nothing behind on a server: the
room drawn by a first try whose database change was rolled back was never told to anyone. The
web client lower-cases room names and strips characters such as `: ? # [ ] @ ! $ & ' ( ) * +
, ; = > < / "`, so names use only `[a-z0-9-]`: a fixed prefix and 160 random bits in
lower-case base32.

With `app_id`/`app_secret` (prosody token authentication, `jitsi-meet-tokens`) each link
carries `?jwt=` — an HS256 token with header `typ: JWT` and claims `iss` (= `app_id`, the
default accepted issuer), `aud` (`jitsi`; prosody accepts any audience unless configured),
`sub` (the Jitsi host, or the tenant when the base URL has one), `room`, `iat`, `nbf`, `exp`,
and `context.user` = {`name`, `moderator`, `affiliation`}. Every `context.user` field is a
string: the token module raises on numbers or nulls there, and the documented form of the
moderator flag is `"true"`/`"false"`. Only the staff token says `"true"`; whether the server
honours it (rather than making the first participant moderator) is server configuration.

Validity: from issuance (less one minute of clock skew) to `token_minutes` after the
scheduled start, and never less than the call itself. Prosody checks `exp` on connection
only: a call in progress is not cut.
"""

from __future__ import annotations

import base64
import logging
import secrets
import warnings
from collections.abc import Callable
from datetime import datetime, timedelta
from types import MappingProxyType
from urllib.parse import quote, urlsplit

import jwt

from bot.config import JitsiConfig
from bot.video.base import Meeting, VideoError

log = logging.getLogger(__name__)

ROOM_PREFIX = "support"
ROOM_RANDOM_BYTES = 20  # 160 bits, 32 base32 characters, no padding
AUDIENCE = "jitsi"
CLOCK_SKEW = timedelta(minutes=1)
# PyJWT ≥ 2.10 warns about HMAC keys under 32 bytes; we log that once instead (see __init__).
_KeyWarning: type[Warning] = getattr(
    getattr(jwt, "warnings", None), "InsecureKeyLengthWarning", UserWarning
)


def new_room_name() -> str:
    """`support-` + 160 random bits as 32 characters of `[a-z2-7]`."""
    raw = secrets.token_bytes(ROOM_RANDOM_BYTES)
    return f"{ROOM_PREFIX}-{base64.b32encode(raw).decode('ascii').lower()}"


def _subject(base_url: str) -> str:
    """Tenant (first path segment) if any, else the host — lower-cased, as prosody compares."""
    parts = urlsplit(base_url)
    segments = [s for s in parts.path.split("/") if s]
    if segments:
        return segments[0].lower()
    return (parts.hostname or "").lower()


class JitsiProvider:
    name = "jitsi"

    def __init__(self, config: JitsiConfig, *, now: Callable[[], datetime]) -> None:
        parts = urlsplit(config.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise VideoError("notConfigured", "video.jitsi.base_url must be an http(s) URL")
        if bool(config.app_id) != bool(config.app_secret):
            raise VideoError(
                "notConfigured", "video.jitsi.app_id and app_secret go together (both or none)"
            )
        self._config = config
        self._base = config.base_url.rstrip("/")
        self._now = now
        if config.app_secret and len(config.app_secret.encode("utf-8")) < 32:
            log.warning(
                "video.jitsi.app_secret is shorter than 32 bytes: tokens are easier to forge"
            )

    @property
    def signs_tokens(self) -> bool:
        return bool(self._config.app_id and self._config.app_secret)

    def token(
        self,
        *,
        room: str,
        display_name: str,
        moderator: bool,
        start: datetime,
        minutes: int,
        issued: datetime | None = None,
    ) -> str:
        """One participant's JWT (requires `app_id`/`app_secret`)."""
        if not self.signs_tokens:
            raise VideoError("notConfigured", "Jitsi tokens need app_id and app_secret")
        if start.tzinfo is None:
            raise ValueError("start must be time-zone aware")
        if issued is None:
            issued = self._now()
        expires = self.expiry(start=start, minutes=minutes, issued=issued)
        claims = {
            "iss": self._config.app_id,
            "aud": AUDIENCE,
            "sub": _subject(self._config.base_url),
            "room": room,
            "iat": int(issued.timestamp()),
            "nbf": int((issued - CLOCK_SKEW).timestamp()),
            "exp": int(expires.timestamp()),
            "context": {
                "user": {
                    "name": display_name,
                    "moderator": "true" if moderator else "false",
                    "affiliation": "owner" if moderator else "member",
                }
            },
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", _KeyWarning)
            return jwt.encode(
                claims, self._config.app_secret, algorithm="HS256", headers={"typ": "JWT"}
            )

    def expiry(self, *, start: datetime, minutes: int, issued: datetime) -> datetime:
        """`token_minutes` after the start (or after issuance, if later), at least `minutes`."""
        lifetime = timedelta(minutes=max(self._config.token_minutes, minutes))
        return max(start, issued) + lifetime

    def room_url(self, room: str, token: str | None = None) -> str:
        url = f"{self._base}/{quote(room, safe='')}"
        return f"{url}?jwt={token}" if token else url

    async def create_meeting(
        self,
        *,
        booking_id: str,
        title: str,
        start: datetime,
        minutes: int,
        staff_name: str,
        client_name: str,
    ) -> Meeting:
        if start.tzinfo is None:
            raise ValueError("start must be time-zone aware")
        room = new_room_name()
        extra: dict[str, object] = {"room": room, "signed": self.signs_tokens}
        if self.signs_tokens:
            issued = self._now()
            common = {"room": room, "start": start, "minutes": minutes, "issued": issued}
            staff_token = self.token(display_name=staff_name, moderator=True, **common)
            client_token = self.token(display_name=client_name, moderator=False, **common)
            staff_url = self.room_url(room, staff_token)
            client_url = self.room_url(room, client_token)
            expires = self.expiry(start=start, minutes=minutes, issued=issued)
            extra["expires_at"] = expires.isoformat()
        else:
            staff_url = client_url = self.room_url(room)
        return Meeting(
            provider=self.name,
            meeting_id=room,
            client_url=client_url,
            staff_url=staff_url,
            extra=MappingProxyType(extra),
        )

    async def prepare(self, meeting: Meeting) -> None:
        """Jitsi rooms exist as soon as someone joins: nothing to do."""

    async def end_meeting(self, meeting: Meeting) -> None:
        """Nothing to call: Jitsi keeps no room between calls (one exists while someone is in
        it), so there is nothing on the server to delete. Signed links stop working when their
        token expires; unsigned ones name a room nobody else is given."""
