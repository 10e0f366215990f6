"""Nextcloud Talk: one public conversation per booking, created through the OCS API.

Every call is made as the configured account (basic auth with an app password), with
`OCS-APIRequest: true` (else HTTP 412, "CSRF check failed") and `Accept: application/json`
(else XML, which the listing cannot even be: its `lastMessage.reactions` are not valid XML).

Re-use per booking: the conversation is named after the non-personal title and the booking id,
`Support SP-2026-0042 [SP-2026-0042-20261201T0900Z]` (≤ 255 characters; an id that is long or
has other characters than `A-Z a-z 0-9 . _ -` is replaced by a digest). `create_meeting` first
lists the account's conversations, `GET {url}/ocs/v2.php/apps/spreed/api/v4/room` with
`noStatusUpdate=1` (the listing must not mark the account online) and `includeLastMessage=0`
(not needed, and the bulk of each entry), `200 OK` with the rooms in `ocs.data`; it re-uses a
public one (type 3) of exactly that name that the account owns (`participantType` 1), the
oldest (lowest `id`) if there are several. Only without one does it create it:
`POST {url}/ocs/v2.php/apps/spreed/api/v4/room` with `roomType` 3 (public: joinable by link,
guests allowed) and `roomName`; success is `201 Created` (200 would mean an existing
conversation) with the room in `ocs.data`. So the same booking gets the same conversation
after a crash and replay. Limits: two calls for the same booking at the same moment could both
create one (every later call then settles on the oldest), and a listing over `MAX_LIST_BYTES`
is not searched: a warning, and a new conversation. The room's `token` makes the link
`{url}/call/{token}`.

Ending: `end_meeting` deletes the conversation with
`DELETE {url}/ocs/v2.php/apps/spreed/api/v4/room/{token}` (same headers and auth): `200 OK`
once deleted; `404 Not Found` (no such conversation for the account) means it is already gone,
which is success too, so asking twice is harmless. A token that is not Talk's (`[a-z0-9]{4,30}`,
the route's own pattern) names no conversation: nothing is sent (a stored value must never
turn into another path, such as `..`).

The same link goes to the client and to staff: in a public conversation only the configured
account is a moderator; staff who need moderation use that account or are promoted in Talk.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from bot.config import NextcloudTalkConfig
from bot.video.base import Meeting, VideoError, read_limited

log = logging.getLogger(__name__)

ROOM_PATH = "/ocs/v2.php/apps/spreed/api/v4/room"
ROOM_TYPE_PUBLIC = 3
PARTICIPANT_OWNER = 1
ROOM_NAME_MAX = 255
BOOKING_KEY_MAX = 64
MAX_RESPONSE_BYTES = 1024 * 1024
# The listing holds every conversation of the account (the bot deletes those of calls that
# were cancelled or are over, but people may keep others): room for thousands of them (an
# entry without its last message is a few kB).
MAX_LIST_BYTES = 32 * 1024 * 1024
LIST_QUERY: Mapping[str, str] = MappingProxyType(
    {"noStatusUpdate": "1", "includeLastMessage": "0"}
)
TIMEOUT = aiohttp.ClientTimeout(total=20)
_STATUS_KEYS = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "notFound",
    412: "preconditionFailed",
}
_BOOKING_KEY = re.compile(rf"[A-Za-z0-9._-]{{1,{BOOKING_KEY_MAX}}}")
# Talk's route requirement for `{token}` (appinfo/routes): anything else matches no route.
_TOKEN = re.compile(r"[a-z0-9]{4,30}")


class _Oversized(VideoError):
    """An answer over its byte limit (still `invalidResponse` for callers)."""


def basic_auth(user: str, password: str) -> str:
    """`Authorization` value for HTTP basic auth (UTF-8, as Nextcloud reads it)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def room_name(title: str, booking_id: str) -> str:
    """`{title} [{booking key}]`, ≤ `ROOM_NAME_MAX` characters; the key is never cut.

    The key is the booking id itself when short and plain, else a digest of it: the name is
    what finds the conversation again, so distinct bookings must never share one.
    """
    key = booking_id
    if not _BOOKING_KEY.fullmatch(booking_id):
        key = hashlib.sha256(booking_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    suffix = f" [{key}]"
    text = " ".join(title.split())[: ROOM_NAME_MAX - len(suffix)].rstrip() or "Support"
    return text + suffix


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


def _room_id(room: Mapping[str, Any]) -> float:
    """Sort key: Talk's numeric `id` (creation order), unknown ones last."""
    value = room.get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) else float("inf")


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

    async def _ocs(
        self,
        method: str,
        *,
        doing: str,
        ok: tuple[int, ...],
        limit: int = MAX_RESPONSE_BYTES,
        body: dict[str, Any] | None = None,
        query: Mapping[str, str] | None = None,
        path: str = "",
    ) -> Any:
        """One OCS call on the room endpoint (or `path` under it, already quoted); its
        `ocs.data` when the status is in `ok`.

        Raises `VideoError`: `unreachable`, a key per HTTP status (with the OCS message, never
        the raw body), or `invalidResponse` for an answer over `limit` bytes or without data.
        """
        host = urlsplit(self._base).hostname
        try:
            async with self._session.request(
                method,
                self._base + ROOM_PATH + path,
                json=body,
                params=query,
                headers={
                    "OCS-APIRequest": "true",
                    "Accept": "application/json",
                    "Authorization": self._authorization,
                },
                allow_redirects=False,
                timeout=TIMEOUT,
            ) as response:
                status = response.status
                raw = await read_limited(response, limit)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise VideoError(
                "unreachable", f"{type(exc).__name__} while {doing} on {host}"
            ) from exc
        if len(raw) > limit:
            raise _Oversized("invalidResponse", f"oversized answer from Nextcloud while {doing}")
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        if status not in ok:
            message = _ocs_message(payload)
            detail = f"HTTP {status} from Nextcloud Talk on {host}"
            raise VideoError(
                _STATUS_KEYS.get(status, "httpError"),
                f"{detail}: {message}" if message else detail,
            )
        ocs = payload.get("ocs") if isinstance(payload, dict) else None
        return ocs.get("data") if isinstance(ocs, dict) else None

    async def list_rooms(self) -> list[dict[str, Any]]:
        """The conversations the account takes part in (`ocs.data` of `GET …/room`)."""
        data = await self._ocs(
            "GET",
            doing="listing Talk conversations",
            ok=(200,),
            limit=MAX_LIST_BYTES,
            query=LIST_QUERY,
        )
        if not isinstance(data, list):
            raise VideoError("invalidResponse", "no conversation list in Nextcloud's answer")
        return [room for room in data if isinstance(room, dict)]

    async def find_room(self, name: str) -> dict[str, Any] | None:
        """The account's own public conversation called exactly `name` (the oldest), if any.

        Owned only: a public conversation of that name that someone else created and invited
        the account to is not the one this bot made for the booking.
        """
        try:
            rooms = await self.list_rooms()
        except _Oversized:
            # Years of bookings outgrew the limit: booking without the check beats not booking
            # at all (a replay may then leave a second conversation). Old ones can be deleted.
            log.warning("Talk conversation list over %d bytes: not checked", MAX_LIST_BYTES)
            return None
        matches = [
            room
            for room in rooms
            if room.get("type") == ROOM_TYPE_PUBLIC
            and room.get("name") == name
            and room.get("participantType") == PARTICIPANT_OWNER
            and isinstance(room.get("token"), str)
            and room["token"]
        ]
        return min(matches, key=_room_id) if matches else None

    async def create_room(self, name: str) -> dict[str, Any]:
        """Create a public conversation; return the room object (`ocs.data`)."""
        data = await self._ocs(
            "POST",
            doing="creating a Talk room",
            ok=(200, 201),
            body={"roomType": ROOM_TYPE_PUBLIC, "roomName": name},
        )
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
        name = room_name(title, booking_id)
        room = await self.find_room(name)
        reused = room is not None
        if room is None:
            room = await self.create_room(name)
        token = room["token"]
        link = self.call_url(token)
        return Meeting(
            provider=self.name,
            meeting_id=token,
            client_url=link,
            staff_url=link,
            extra=MappingProxyType(
                {"token": token, "name": name, "type": room.get("type"), "reused": reused}
            ),
        )

    async def prepare(self, meeting: Meeting) -> None:
        """Talk conversations persist until deleted: nothing to do."""

    async def end_meeting(self, meeting: Meeting) -> None:
        """Delete the booking's conversation; one already gone (404) is fine."""
        token = meeting.meeting_id
        if not _TOKEN.fullmatch(token):
            return  # not a Talk token: no conversation of ours has it
        try:
            await self._ocs(
                "DELETE",
                doing="deleting a Talk conversation",
                ok=(200,),
                path="/" + quote(token, safe=""),
            )
        except VideoError as error:
            if error.key != "notFound":
                raise
