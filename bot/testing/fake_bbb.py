"""A BigBlueButton API stand-in that checks requests the way the real server does.

Only `create`, `join`, `end` and the version probe (`GET {base}`) are served, each as the real
server answers (XML, `returncode`, `messageKey`, `message`). Checks, in the server's order:

* checksum — recomputed over the query string *as received on the wire*, without the
  `checksum` parameter (older servers), **and** over that query parsed and formatted again the
  way current servers do (Apache `URLEncodedUtils`); both must match, with an algorithm chosen
  by the checksum's length among `algorithms`. A mismatch is `checksumError`;
* `create`: `missingParamMeetingID`, then `validationError` for ids outside 2–256 chars or
  with `,`, and for a missing name or one outside 2–256 chars. A second `create` of the same id
  answers the existing meeting (its `createTime`, `internalMeetingID`, passwords) with
  `SUCCESS` and `duplicateWarning` when it gives both passwords of that meeting or none of
  them, else `FAILED` `idNotUnique`. `legacy_duplicates=True` plays a server from before
  BigBlueButton's pull request 17937 (2023; 2.5, for one), where only matching passwords
  count, so a repeated `create` without passwords is `idNotUnique` too;
* `join`: `missingParamFullName`, `missingParamMeetingID`, `notFound` for an unknown meeting,
  `invalidPassword` without a valid `role` or password, `mismatchCreateTimeParam`; success
  redirects (302) to the client, or answers XML with `redirect=false`;
* `end`: `missingParamMeetingID`, `validationError` (the same id rules as `create`),
  `notFound` for a meeting the server does not have, `invalidPassword` when a `password` is
  given that is not the meeting's moderator password (current servers need none: the
  parameter is deprecated); success is `SUCCESS` `sentEndMeetingRequest`, and the meeting is
  gone (its links answer `notFound`, a later `create` starts a new one).

Accepted requests are kept in `accepted` (and refused ones in `refused`), joins in `joins`, the
ids of ended meetings in `ended`.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Self
from urllib.parse import unquote_plus
from xml.sax.saxutils import escape

from aiohttp import web

API_PATH = "/bigbluebutton/api"
ALL_ALGORITHMS = ("sha1", "sha256", "sha384", "sha512")
_BY_LENGTH = {40: "sha1", 64: "sha256", 96: "sha384", 128: "sha512"}
_JAVA_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.*")


# --- what a Java servlet + Apache HttpClient would do with the query -----------------------


def parse_query(raw: str) -> list[tuple[str, str]]:
    """`URLEncodedUtils.parse`: split on `&`, then `=`, `+` → space, `%XX` as UTF-8."""
    pairs: list[tuple[str, str]] = []
    for chunk in raw.split("&"):
        if not chunk:
            continue
        name, _, value = chunk.partition("=")
        pairs.append((unquote_plus(name), unquote_plus(value)))
    return pairs


def _java_encode(text: str) -> str:
    return "".join(
        chr(b) if b in _JAVA_UNRESERVED else "+" if b == 0x20 else f"%{b:02X}"
        for b in text.encode("utf-8", "surrogatepass")
    )


def format_query(pairs: list[tuple[str, str]]) -> str:
    """`URLEncodedUtils.format(pairs, '&', UTF_8)`."""
    return "&".join(f"{_java_encode(k)}={_java_encode(v)}" for k, v in pairs)


def _strip_checksum(raw: str) -> str:
    """The raw query minus its `checksum=…` parameter(s), as older servers computed it."""
    return "&".join(part for part in raw.split("&") if part and not part.startswith("checksum="))


# --- records -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FakeRequest:
    call: str
    raw_query: str
    params: tuple[tuple[str, str], ...]
    algorithm: str | None
    answer_key: str  # messageKey of our answer ("" for a plain success)

    def param(self, name: str) -> str | None:
        return next((v for k, v in self.params if k == name), None)


@dataclass(slots=True)
class FakeMeeting:
    meeting_id: str
    name: str
    internal_id: str
    create_time: int
    attendee_pw: str
    moderator_pw: str
    meta: dict[str, str]
    params: tuple[tuple[str, str], ...]
    create_calls: int = 1


@dataclass(frozen=True, slots=True)
class FakeJoin:
    meeting_id: str
    full_name: str
    role: str  # MODERATOR or VIEWER
    session_token: str


@dataclass
class FakeBigBlueButton:
    """The fake server. `app()` gives the aiohttp application; `start()` serves it."""

    secret: str
    algorithms: tuple[str, ...] = ALL_ALGORITHMS
    legacy_duplicates: bool = False
    accepted: list[FakeRequest] = field(default_factory=list)
    refused: list[FakeRequest] = field(default_factory=list)
    meetings: dict[str, FakeMeeting] = field(default_factory=dict)
    joins: list[FakeJoin] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    base_url: str = field(default="", init=False)
    _runner: web.AppRunner | None = field(default=None, init=False, repr=False)

    # -- serving ------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(API_PATH, self._version)
        app.router.add_get(API_PATH + "/", self._version)
        app.router.add_get(API_PATH + "/{call}", self._dispatch)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on `host:port` (0 = any free port); return the API URL."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.base_url = f"http://{bound_host}:{bound_port}{API_PATH}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- answers ------------------------------------------------------------------------

    @staticmethod
    def _xml(fields: list[tuple[str, str]]) -> web.Response:
        body = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in fields)
        return web.Response(
            text=f"<response>{body}</response>",
            content_type="text/xml",
            headers={"Cache-Control": "no-cache"},
        )

    def _failed(self, record: FakeRequest, key: str, message: str) -> web.Response:
        self.refused.append(record)
        return self._xml([("returncode", "FAILED"), ("messageKey", key), ("message", message)])

    async def _version(self, request: web.Request) -> web.Response:
        return self._xml(
            [
                ("returncode", "SUCCESS"),
                ("version", "2.0"),
                ("apiVersion", "2.0"),
                ("bbbVersion", "3.0.0"),
            ]
        )

    def _verify_checksum(self, call: str, raw: str, params: list[tuple[str, str]]) -> str | None:
        given = next((v for k, v in params if k == "checksum"), "")
        algo = _BY_LENGTH.get(len(given))
        if not given or algo is None or algo not in self.algorithms:
            return None
        without = [(k, v) for k, v in params if k != "checksum"]
        canonical = format_query(without)
        as_received = _strip_checksum(raw)
        for query in (canonical, as_received):
            expected = hashlib.new(algo, (call + query + self.secret).encode("utf-8")).hexdigest()
            if not secrets.compare_digest(expected, given.lower()):
                return None
        return algo

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        call = request.match_info["call"]
        raw = request.raw_path.partition("?")[2]
        params = parse_query(raw)
        algo = self._verify_checksum(call, raw, params)

        def record(key: str) -> FakeRequest:
            return FakeRequest(call, raw, tuple(params), algo, key)

        if algo is None:
            return self._failed(record("checksumError"), "checksumError", "Checksums do not match")
        values = {k: v for k, v in params if k != "checksum"}
        if call == "create":
            return self._create(values, params, record)
        if call == "join":
            return self._join(values, record)
        if call == "end":
            return self._end(values, record)
        return self._failed(
            record("unsupportedRequest"), "unsupportedRequest", "This request is not supported."
        )

    def _create(
        self,
        values: dict[str, str],
        params: list[tuple[str, str]],
        record: Callable[[str], FakeRequest],
    ) -> web.Response:
        meeting_id = values.get("meetingID", "")
        name = values.get("name")
        refused = self._meeting_id_error(meeting_id, record)
        if refused is not None:
            return refused
        if not name:
            return self._failed(
                record("validationError"), "validationError", "You must provide a meeting name"
            )
        if not 2 <= len(name) <= 256:
            return self._failed(
                record("validationError"),
                "validationError",
                "Meeting name must be between 2 and 256 characters",
            )
        existing = self.meetings.get(meeting_id)
        key = message = ""
        if existing is None:
            now_ms = int(time.time() * 1000)
            digest = hashlib.sha1(meeting_id.encode("utf-8")).hexdigest()
            existing = FakeMeeting(
                meeting_id=meeting_id,
                name=name,
                internal_id=f"{digest}-{now_ms}",
                create_time=now_ms,
                attendee_pw=values.get("attendeePW") or secrets.token_urlsafe(6),
                moderator_pw=values.get("moderatorPW") or secrets.token_urlsafe(6),
                meta={k[5:].lower(): v for k, v in values.items() if k.startswith("meta_")},
                params=tuple((k, v) for k, v in params if k != "checksum"),
            )
            self.meetings[meeting_id] = existing
        else:
            attendee_pw, moderator_pw = values.get("attendeePW"), values.get("moderatorPW")
            same = attendee_pw == existing.attendee_pw and moderator_pw == existing.moderator_pw
            # ApiController: the passwords match, or (since #17937) neither is given.
            if not same and (self.legacy_duplicates or attendee_pw or moderator_pw):
                return self._failed(
                    record("idNotUnique"),
                    "idNotUnique",
                    "A meeting already exists with that meeting ID.  Please use a different"
                    " meeting ID.",
                )
            existing.create_calls += 1
            key = "duplicateWarning"
            message = "This conference was already in existence and may currently be in progress."
        self.accepted.append(record(key))
        return self._xml(
            [
                ("returncode", "SUCCESS"),
                ("meetingID", existing.meeting_id),
                ("internalMeetingID", existing.internal_id),
                ("parentMeetingID", "bbb-none"),
                ("attendeePW", existing.attendee_pw),
                ("moderatorPW", existing.moderator_pw),
                ("createTime", str(existing.create_time)),
                ("voiceBridge", "70757"),
                ("dialNumber", "613-555-1234"),
                (
                    "createDate",
                    time.strftime(
                        "%a %b %d %H:%M:%S UTC %Y", time.gmtime(existing.create_time / 1000)
                    ),
                ),
                ("hasUserJoined", "false"),
                ("duration", "0"),
                ("hasBeenForciblyEnded", "false"),
                ("messageKey", key),
                ("message", message),
            ]
        )

    def _meeting_id_error(
        self, meeting_id: str, record: Callable[[str], FakeRequest]
    ) -> web.Response | None:
        """The answer refusing a meeting id (missing, wrong length, a comma), else None."""
        if not meeting_id:
            return self._failed(
                record("missingParamMeetingID"),
                "missingParamMeetingID",
                "You must provide a meeting ID",
            )
        if not 2 <= len(meeting_id) <= 256:
            return self._failed(
                record("validationError"),
                "validationError",
                "Meeting ID must be between 2 and 256 characters",
            )
        if "," in meeting_id:
            return self._failed(
                record("validationError"), "validationError", "Meeting ID cannot contain ','"
            )
        return None

    def _end(self, values: dict[str, str], record: Callable[[str], FakeRequest]) -> web.Response:
        meeting_id = values.get("meetingID", "")
        refused = self._meeting_id_error(meeting_id, record)
        if refused is not None:
            return refused
        meeting = self.meetings.get(meeting_id)
        if meeting is None:
            return self._failed(
                record("notFound"), "notFound", "A meeting with that ID does not exist"
            )
        password = values.get("password")
        if password is not None and password != meeting.moderator_pw:
            return self._failed(
                record("invalidPassword"),
                "invalidPassword",
                "The supplied moderator password is incorrect",
            )
        del self.meetings[meeting_id]
        self.ended.append(meeting_id)
        self.accepted.append(record("sentEndMeetingRequest"))
        return self._xml(
            [
                ("returncode", "SUCCESS"),
                ("messageKey", "sentEndMeetingRequest"),
                (
                    "message",
                    "A request to end the meeting was sent.  Please wait a few seconds, and then"
                    " use the getMeetingInfo or isMeetingRunning API calls to verify that it was"
                    " ended",
                ),
            ]
        )

    def _join(
        self, values: dict[str, str], record: Callable[[str], FakeRequest]
    ) -> web.StreamResponse:
        full_name = values.get("fullName", "").strip()
        meeting_id = values.get("meetingID", "")
        if not full_name:
            return self._failed(
                record("missingParamFullName"),
                "missingParamFullName",
                "You must provide your name",
            )
        if not meeting_id:
            return self._failed(
                record("missingParamMeetingID"),
                "missingParamMeetingID",
                "You must provide a meeting ID",
            )
        meeting = self.meetings.get(meeting_id)
        if meeting is None:
            return self._failed(
                record("notFound"), "notFound", "A meeting with that ID does not exist"
            )
        role = values.get("role", "").upper()
        if role not in ("MODERATOR", "VIEWER"):
            password = values.get("password")
            if password and password == meeting.moderator_pw:
                role = "MODERATOR"
            elif password and password == meeting.attendee_pw:
                role = "VIEWER"
            else:
                return self._failed(
                    record("invalidPassword"),
                    "invalidPassword",
                    "You either did not supply a password or the password supplied is neither"
                    " the attendee or moderator password for this conference.",
                )
        create_time = values.get("createTime")
        if create_time is not None and create_time != str(meeting.create_time):
            return self._failed(
                record("mismatchCreateTimeParam"),
                "mismatchCreateTimeParam",
                "The createTime parameter submitted mismatches with the current meeting.",
            )
        token = secrets.token_hex(8)
        self.joins.append(FakeJoin(meeting_id, full_name, role, token))
        self.accepted.append(record("successfullyJoined"))
        client_url = f"/html5client/join?sessionToken={token}"
        if values.get("redirect", "true").lower() == "false":
            return self._xml(
                [
                    ("returncode", "SUCCESS"),
                    ("messageKey", "successfullyJoined"),
                    ("message", "You have joined successfully."),
                    ("meeting_id", meeting.internal_id),
                    ("user_id", f"w_{secrets.token_hex(6)}"),
                    ("auth_token", secrets.token_hex(6)),
                    ("session_token", token),
                    ("url", client_url),
                ]
            )
        raise web.HTTPFound(client_url)
