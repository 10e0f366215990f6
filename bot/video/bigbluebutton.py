"""BigBlueButton: `create` the meeting, then signed `join` links (moderator / viewer).

Checksum: `hex(hash(call + query + shared_secret))`, the query without its `checksum`
parameter; the server picks the hash by the checksum's length (40 sha1, 64 sha256, 96 sha384,
128 sha512) among its `supportedChecksumAlgorithms`.

Which query string? Older servers hashed the query string as received; current ones (2.5+)
parse it and format it again with Apache `URLEncodedUtils` (UTF-8, space as `+`, only
`A-Z a-z 0-9 - _ . *` left as is, everything else `%XX` upper case) before hashing. We encode
values exactly that way, so both readings give the same string — Python's `quote_plus` would
not (it keeps `~` and escapes `*`). The URL must then reach the server byte for byte:
aiohttp/yarl re-quote URLs by default (`%28` → `(`, `%2F` → `/`), which changes the string the
server hashes, so requests go out as `yarl.URL(url, encoded=True)`.

Privacy: the meeting name is the booking's non-personal title and the only `meta_*` values
are our origin and the booking id (servers pass `meta_*` to clients and recordings). Client
and staff names appear only in their own join links, which are bearer credentials.

Lifetime: a server forgets a meeting nobody joined within `meetingExpireIfNoUserJoinedInMinutes`
(5 by default) and every meeting on restart, so `create` asks to keep it until the end of the
slot, and `prepare()` creates it again shortly before the call (join links carry no
`createTime`, so they stay valid across re-creations).

Re-use: the meeting id comes from the booking id alone (`meeting_id_for`), so asking again for
the same booking (a replay after a crash, `prepare()`) asks for the same meeting. A repeated
`create` of an existing, not ended meeting answers it (`SUCCESS`, `duplicateWarning`) when it
carries that meeting's passwords or, on current servers, none; older ones (before pull request
17937, 2023; 2.5, for one) answer `idNotUnique` to a repeated `create` without passwords. We
never send passwords (joins say `role`), and a meeting under our id can only be this booking's,
so both answers mean "already there": the same meeting, the same links.

Ending: `end_meeting` calls `end` with the `meetingID` alone, signed like every call. Current
servers need no password for it (the parameter is deprecated); `SUCCESS` with
`sentEndMeetingRequest` means participants are being sent out, and `FAILED` `notFound` means the
server no longer has the meeting (it forgot it, or it was ended already): both are success, so
asking twice is harmless. Servers that still require the moderator password (we keep none)
refuse with their error key, and forget the meeting on their own as before.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
import yarl

from bot.config import BigBlueButtonConfig
from bot.video.base import Meeting, VideoError, read_limited

ChecksumAlgorithm = Literal["sha1", "sha256", "sha384", "sha512"]
ALGORITHMS: Mapping[str, int] = MappingProxyType(
    {"sha1": 40, "sha256": 64, "sha384": 96, "sha512": 128}
)
NAME_MIN, NAME_MAX = 2, 64  # the server accepts 2–256; we keep names short
MEETING_ID_PREFIX = "support-bot-"
ORIGIN = "support-bot"
EXPIRY_MARGIN = timedelta(minutes=30)
MAX_RESPONSE_BYTES = 256 * 1024
TIMEOUT = aiohttp.ClientTimeout(total=20)

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.*")
_MEETING_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

Params = Mapping[str, str] | Iterable[tuple[str, str]]


# --- pure helpers -------------------------------------------------------------------------


def checksum(call: str, query: str, secret: str, algo: str = "sha256") -> str:
    """Hex digest of `call + query + secret` (UTF-8) with `algo` (sha1/256/384/512)."""
    if algo not in ALGORITHMS:
        raise ValueError(f"unsupported checksum algorithm {algo!r}")
    return hashlib.new(algo, (call + query + secret).encode("utf-8")).hexdigest()


def quote_value(text: str) -> str:
    """Form-encode like Apache `URLEncodedUtils.format`: UTF-8, ` ` → `+`, `%XX` upper case."""
    out: list[str] = []
    for byte in text.encode("utf-8"):
        if byte in _UNRESERVED:
            out.append(chr(byte))
        elif byte == 0x20:
            out.append("+")
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def encode_query(params: Params) -> str:
    """`k=v&k=v` in the given order, every name and value through `quote_value`."""
    items = params.items() if isinstance(params, Mapping) else params
    return "&".join(f"{quote_value(k)}={quote_value(v)}" for k, v in items)


def api_base(url: str) -> str:
    """The API endpoint, tolerating the `…/bigbluebutton/` that `bbb-conf --secret` prints."""
    base = url.strip().rstrip("/")
    if base.endswith("/bigbluebutton"):
        base += "/api"
    return base


def build_url(base_url: str, call: str, params: Params, secret: str, algo: str = "sha256") -> str:
    """The signed URL of one API call: `{base}/{call}?{query}&checksum={hex}`.

    Send it with `yarl.URL(url, encoded=True)`: the checksum covers these exact bytes.
    """
    query = encode_query(params)
    digest = checksum(call, query, secret, algo)
    signed = f"{query}&checksum={digest}" if query else f"checksum={digest}"
    return f"{api_base(base_url)}/{call}?{signed}"


def clean_text(text: str, limit: int) -> str:
    """NFC, no control characters or lone surrogates, single spaces, at most `limit` chars."""
    text = unicodedata.normalize("NFC", text)
    kept = "".join(
        " " if ch.isspace() else ch
        for ch in text
        if unicodedata.category(ch) not in ("Cc", "Cs") or ch.isspace()
    )
    return " ".join(kept.split())[:limit].strip()


def meeting_id_for(booking_id: str) -> str:
    """A stable meeting id per booking (so `create` is idempotent), `[A-Za-z0-9._-]` only.

    Ids that needed rewriting get a digest of the original, so distinct bookings never meet.
    """
    safe = _MEETING_ID_UNSAFE.sub("-", booking_id).strip("-")[:64]
    if safe != booking_id or not safe:
        digest = hashlib.sha256(booking_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        safe = f"{safe}-{digest}" if safe else digest
    return MEETING_ID_PREFIX + safe


def parse_response(body: bytes) -> Mapping[str, str]:
    """The `<response>` children as text; `VideoError` for FAILED answers or non-XML."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise VideoError("invalidResponse", "the server did not answer with XML") from exc
    if root.tag != "response":
        raise VideoError("invalidResponse", f"unexpected XML root element {root.tag[:40]!r}")
    fields = {child.tag: (child.text or "").strip() for child in root}
    code = fields.get("returncode", "")
    if code == "SUCCESS":
        return MappingProxyType(fields)
    if code == "FAILED":
        raise VideoError(fields.get("messageKey") or "unknownError", fields.get("message", ""))
    raise VideoError("invalidResponse", "no returncode in the answer")


# --- provider -----------------------------------------------------------------------------


class BigBlueButtonProvider:
    name = "bigbluebutton"

    def __init__(
        self,
        config: BigBlueButtonConfig,
        session: aiohttp.ClientSession,
        *,
        now: Callable[[], datetime],
    ) -> None:
        parts = urlsplit(config.url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise VideoError("notConfigured", "video.bigbluebutton.url must be an http(s) URL")
        if not config.secret:
            raise VideoError("notConfigured", "video.bigbluebutton.secret is empty")
        if config.checksum not in ALGORITHMS:
            raise VideoError("notConfigured", f"unsupported checksum {config.checksum!r}")
        self._base = api_base(config.url)
        self._secret = config.secret
        self._algo: str = config.checksum
        self._session = session
        self._now = now

    def url(self, call: str, params: Params) -> str:
        return build_url(self._base, call, params, self._secret, self._algo)

    async def call(self, call: str, params: Params) -> Mapping[str, str]:
        """GET one API call and return the parsed SUCCESS answer (or raise `VideoError`)."""
        target = yarl.URL(self.url(call, params), encoded=True)
        try:
            async with self._session.get(
                target, allow_redirects=False, timeout=TIMEOUT
            ) as response:
                body = await read_limited(response, MAX_RESPONSE_BYTES)
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise VideoError(
                "unreachable", f"{type(exc).__name__} while calling {call} on {target.host}"
            ) from exc
        if status != 200:
            raise VideoError("httpError", f"HTTP {status} from {call} on {target.host}")
        if len(body) > MAX_RESPONSE_BYTES:
            raise VideoError("invalidResponse", f"oversized answer to {call}")
        return parse_response(body)

    async def create(self, params: Params) -> Mapping[str, str]:
        """`create`; an existing meeting of that id is success (see "Re-use" above).

        An `idNotUnique` answer carries nothing of the meeting: it comes back as
        `{"messageKey": "idNotUnique"}`.
        """
        try:
            return await self.call("create", params)
        except VideoError as error:
            if error.key != "idNotUnique":
                raise
            return MappingProxyType({"messageKey": "idNotUnique"})

    def _create_params(
        self, *, meeting_id: str, name: str, booking_id: str, start: datetime, minutes: int
    ) -> list[tuple[str, str]]:
        ends = start + timedelta(minutes=minutes) + EXPIRY_MARGIN
        keep = max(5, math.ceil((ends - self._now()).total_seconds() / 60))
        return [
            ("name", name),
            ("meetingID", meeting_id),
            ("record", "false"),
            ("meetingExpireIfNoUserJoinedInMinutes", str(keep)),
            ("meta_bbb-origin", ORIGIN),
            ("meta_booking-id", clean_text(booking_id, 64)),
        ]

    def join_url(self, *, meeting_id: str, full_name: str, moderator: bool) -> str:
        return self.url(
            "join",
            [
                ("fullName", full_name),
                ("meetingID", meeting_id),
                ("role", "MODERATOR" if moderator else "VIEWER"),
            ],
        )

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
        name = clean_text(title, NAME_MAX)
        if len(name) < NAME_MIN:
            name = "Support"
        meeting_id = meeting_id_for(booking_id)
        created = await self.create(
            self._create_params(
                meeting_id=meeting_id,
                name=name,
                booking_id=booking_id,
                start=start,
                minutes=minutes,
            ),
        )
        staff = clean_text(staff_name, 128) or "Support"
        client = clean_text(client_name, 128) or "Client"
        extra = {
            "name": name,
            "booking_id": booking_id,
            "start": start.isoformat(),
            "minutes": minutes,
            "internal_meeting_id": created.get("internalMeetingID", ""),
            "create_time": created.get("createTime", ""),
            "duplicate": created.get("messageKey") in ("duplicateWarning", "idNotUnique"),
        }
        return Meeting(
            provider=self.name,
            meeting_id=meeting_id,
            client_url=self.join_url(meeting_id=meeting_id, full_name=client, moderator=False),
            staff_url=self.join_url(meeting_id=meeting_id, full_name=staff, moderator=True),
            extra=MappingProxyType(extra),
        )

    async def prepare(self, meeting: Meeting) -> None:
        """`create` again (re-used if still there): the meeting exists when people click."""
        extra = meeting.extra
        start = self._now()
        if extra.get("start"):
            start = datetime.fromisoformat(str(extra["start"]))
        await self.create(
            self._create_params(
                meeting_id=meeting.meeting_id,
                name=str(extra.get("name") or "Support"),
                booking_id=str(extra.get("booking_id") or meeting.meeting_id),
                start=start,
                minutes=int(extra.get("minutes") or 60),
            ),
        )

    async def end_meeting(self, meeting: Meeting) -> None:
        """`end` the meeting; one the server no longer has (`notFound`) is already ended."""
        try:
            await self.call("end", [("meetingID", meeting.meeting_id)])
        except VideoError as error:
            if error.key != "notFound":
                raise
