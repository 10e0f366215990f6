"""Nextcloud Talk: one public conversation per booking, created through the OCS API.

`POST {url}/ocs/v2.php/apps/spreed/api/v4/room` with `roomType` 3 (public: joinable by link,
guests allowed) and `roomName` (the non-personal title, ≤ 255 characters), as the configured
account (basic auth with an app password). OCS needs `OCS-APIRequest: true` (else HTTP 412,
"CSRF check failed") and answers JSON with `Accept: application/json` (else XML). Success is
`201 Created` (200 would mean an existing conversation) with the room in `ocs.data`; its
`token` makes the link `{url}/call/{token}`.

The same link goes to the client and to staff: in a public conversation only the configured
account is a moderator; staff who need moderation use that account or are promoted in Talk.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import datetime
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from bot.config import NextcloudTalkConfig
from bot.video.base import Meeting, VideoError, read_limited

ROOM_PATH = "/ocs/v2.php/apps/spreed/api/v4/room"
ROOM_TYPE_PUBLIC = 3
ROOM_NAME_MAX = 255
MAX_RESPONSE_BYTES = 1024 * 1024
TIMEOUT = aiohttp.ClientTimeout(total=20)
_STATUS_KEYS = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "notFound",
    412: "preconditionFailed",
}


def basic_auth(user: str, password: str) -> str:
    """`Authorization` value for HTTP basic auth (UTF-8, as Nextcloud reads it)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _ocs_message(payload: Any) -> str:
    """`ocs.meta.message` (or a bare `message`, as the CSRF answer has), else ``""``."""
    if not isinstance(payload, dict):
        return ""
    ocs = payload.get("ocs")
    if isinstance(ocs, dict):
        meta = ocs.get("meta")
        message = meta.get("message") if isinstance(meta, dict) else None
        data = ocs.get("data")
        if not message and isinstance(data, dict) and isinstance(data.get("error"), str):
            message = f"error: {data['error']}"
        return str(message or "")
    return str(payload.get("message") or "")


class NextcloudTalkProvider:
    name = "nextcloud_talk"

    def __init__(
        self,
        config: NextcloudTalkConfig,
        session: aiohttp.ClientSession,
        *,
        now: Callable[[], datetime],
    ) -> None:
        parts = urlsplit(config.url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise VideoError("notConfigured", "video.nextcloud_talk.url must be an http(s) URL")
        if not config.user or not config.app_password:
            raise VideoError("notConfigured", "video.nextcloud_talk.user/app_password are empty")
        self._base = config.url.strip().rstrip("/")
        if ":" in config.user:
            raise VideoError("notConfigured", "video.nextcloud_talk.user cannot contain ':'")
        self._authorization = basic_auth(config.user, config.app_password)
        self._session = session
        self._now = now

    def call_url(self, token: str) -> str:
        return f"{self._base}/call/{quote(token, safe='')}"

    async def create_room(self, name: str) -> dict[str, Any]:
        """Create a public conversation; return the room object (`ocs.data`)."""
        host = urlsplit(self._base).hostname
        try:
            async with self._session.post(
                self._base + ROOM_PATH,
                json={"roomType": ROOM_TYPE_PUBLIC, "roomName": name},
                headers={
                    "OCS-APIRequest": "true",
                    "Accept": "application/json",
                    "Authorization": self._authorization,
                },
                allow_redirects=False,
                timeout=TIMEOUT,
            ) as response:
                status = response.status
                body = await read_limited(response, MAX_RESPONSE_BYTES)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise VideoError(
                "unreachable", f"{type(exc).__name__} while creating a Talk room on {host}"
            ) from exc
        if len(body) > MAX_RESPONSE_BYTES:
            raise VideoError("invalidResponse", "oversized answer from Nextcloud")
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = None
        if status not in (200, 201):
            message = _ocs_message(payload)
            detail = f"HTTP {status} from Nextcloud Talk on {host}"
            raise VideoError(
                _STATUS_KEYS.get(status, "httpError"),
                f"{detail}: {message}" if message else detail,
            )
        data = payload.get("ocs", {}).get("data") if isinstance(payload, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("token"), str):
            raise VideoError("invalidResponse", "no conversation token in Nextcloud's answer")
        if not data["token"]:
            raise VideoError("invalidResponse", "empty conversation token")
        return data

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
        name = " ".join(title.split())[:ROOM_NAME_MAX] or "Support"
        room = await self.create_room(name)
        token = room["token"]
        link = self.call_url(token)
        return Meeting(
            provider=self.name,
            meeting_id=token,
            client_url=link,
            staff_url=link,
            extra=MappingProxyType({"token": token, "name": name, "type": room.get("type")}),
        )

    async def prepare(self, meeting: Meeting) -> None:
        """Talk conversations persist until deleted: nothing to do."""
