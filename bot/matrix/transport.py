"""What the rest of the bot uses to act on Matrix: the `Transport` protocol and its nio version.

Decisions (see also `client.py`):

- `send_event` passes `ignore_unverified_devices=True`. The bot has no way to verify devices
  (nio has no cross-signing), and refusing to encrypt for unverified devices would make every
  encrypted room unusable. The cost: a device added to a member's account (by them, or by
  whoever controls their homeserver) receives the room keys without a check, as with any
  client that does not verify.
- nio's own retry loops are switched off (`max_timeouts=0`, `max_limit_exceeded=0` in the
  client config): every failure comes back here and is raised as a `TransportError`, so the
  caller (the outbox, the sync loop) owns the retry policy. Only `M_LIMIT_EXCEEDED` is retried
  here, waiting what the server asked for (`retry_after_ms`, else the `Retry-After` header,
  else 5 s), a few times, as long as the wait is short.
- `send_event(..., encrypt=False)` sends in clear even in an encrypted room: only the
  notices of `bot.unreadable` (to a client whose app refuses to share keys with the bot's
  device, and may refuse to read what it encrypts), which carry nothing confidential.
- `upload` sends the file unencrypted even when the room is encrypted: the bot only sends
  documents it generated itself (exports, .ics); an `m.file` with a plain `url` is valid in an
  encrypted room, it is just not confidential towards the homeserver.
- A room the bot has just created or joined is not in nio's room list until the next sync,
  and nio refuses to send to an unknown room once encryption is on: `send_event` then loads
  the room's state (`GET /state`) and registers it with nio first.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import io
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
from nio import (
    Api,
    AsyncClient,
    ErrorResponse,
    Event,
    KeysQueryResponse,
    LocalProtocolError,
    MatrixRoom,
    RoomCreateResponse,
    RoomGetStateResponse,
    RoomInviteResponse,
    RoomMemberEvent,
    RoomPreset,
    RoomRedactResponse,
    RoomSendResponse,
    UploadResponse,
)
from nio.exceptions import EncryptionError, OlmUnverifiedDeviceError, SendRetryError

from bot.ports import TransportError

log = logging.getLogger(__name__)

# Waits for M_LIMIT_EXCEEDED inside one call: at most this many, each at most this long.
# A longer wait is handed to the caller as a retryable error carrying `retry_after`.
RATE_LIMIT_RETRIES = 3
RATE_LIMIT_MAX_WAIT = 30.0
RATE_LIMIT_DEFAULT_WAIT = 5.0

# "Unlimited" power of room creators in room version 12 and later (they are not listed in
# the power-levels event). Larger than any level a power-levels event can hold (2**53 - 1).
CREATOR_POWER = 2**53

# What a dropped connection, a refused connection or a timed-out request raise.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, TimeoutError, OSError)

T = TypeVar("T")


# -- errors --------------------------------------------------------------------------------


def error_from_response(response: ErrorResponse, what: str) -> TransportError:
    """Classify an error answer: 5xx, 429 and unknown statuses are retryable."""
    transport = getattr(response, "transport_response", None)
    status = getattr(transport, "status", None)
    errcode = response.status_code
    retry_after: float | None = None
    if response.retry_after_ms:
        retry_after = response.retry_after_ms / 1000
    elif transport is not None:
        retry_after = parse_retry_after(transport.headers.get("Retry-After"))
    rate_limited = status == 429 or errcode == "M_LIMIT_EXCEEDED"
    retryable = rate_limited or status is None or status >= 500
    return TransportError(
        f"{what}: {errcode or 'error'} (HTTP {status})",
        retryable=retryable,
        retry_after=retry_after,
        errcode=errcode,
        status=status,
    )


def error_from_exception(error: BaseException, what: str) -> TransportError:
    if isinstance(error, TransportError):
        return error
    retryable = isinstance(error, NETWORK_ERRORS)
    return TransportError(f"{what}: {type(error).__name__}", retryable=retryable)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` is delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


async def call(
    what: str, request: Callable[[], Awaitable[T]], *, expect: type | tuple[type, ...]
) -> T:
    """Run one nio request; waits out short rate limits, raises `TransportError` otherwise."""
    for attempt in range(RATE_LIMIT_RETRIES + 1):
        try:
            response = await request()
        except NETWORK_ERRORS as error:
            raise error_from_exception(error, what) from error
        if isinstance(response, expect):
            return response
        if not isinstance(response, ErrorResponse):
            raise TransportError(f"{what}: unexpected {type(response).__name__}", retryable=True)
        error = error_from_response(response, what)
        wait = error.retry_after if error.retry_after is not None else RATE_LIMIT_DEFAULT_WAIT
        if not error.rate_limited or attempt == RATE_LIMIT_RETRIES or wait > RATE_LIMIT_MAX_WAIT:
            raise error
        log.warning("%s: rate limited, waiting %.1f s", what, wait)
        await asyncio.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


CLIENT_API = "/_matrix/client/v3"


async def api_request(
    client: AsyncClient,
    what: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    accept: tuple[int, ...] = (200,),
) -> tuple[int, dict[str, Any]]:
    """A client-server API request nio has no method for: `path` under `CLIENT_API`, JSON
    both ways. Returns (status, JSON object) for an `accept`ed status; raises `TransportError`
    otherwise (retryable: network errors, 429, 5xx). No retry here: the caller owns it."""
    headers = {"Content-Type": "application/json"}
    if client.access_token:
        headers["Authorization"] = f"Bearer {client.access_token}"
    data = None if body is None else json.dumps(body)
    try:
        response = await client.send(method, CLIENT_API + path, data, headers)
        async with response:
            status = response.status
            try:
                answer = await response.json(content_type=None)
            except ValueError:
                answer = None
            retry_header = response.headers.get("Retry-After")
    except NETWORK_ERRORS as error:
        raise error_from_exception(error, what) from error
    answer = answer if isinstance(answer, dict) else {}
    if status in accept:
        return status, answer
    errcode = answer.get("errcode") if isinstance(answer.get("errcode"), str) else None
    wait = answer.get("retry_after_ms")
    retry_after = wait / 1000 if isinstance(wait, int) else parse_retry_after(retry_header)
    raise TransportError(
        f"{what}: {errcode or 'error'} (HTTP {status})",
        retryable=status == 429 or status >= 500,
        retry_after=retry_after,
        errcode=errcode,
        status=status,
    )


# -- what the sync loop learns that nio does not keep ---------------------------------------


class RoomFacts:
    """Room facts nio 0.26 does not track: creators (room v12+ power) and direct rooms."""

    def __init__(self) -> None:
        self.creators: dict[str, frozenset[str]] = {}
        self.versions: dict[str, str] = {}
        self.direct: set[str] = set()

    def note_state(self, room_id: str, event: dict[str, Any]) -> None:
        if event.get("type") != "m.room.create" or event.get("state_key") != "":
            return
        content = event.get("content")
        content = content if isinstance(content, dict) else {}
        creators = {event.get("sender")}
        extra = content.get("additional_creators")
        if isinstance(extra, list):
            creators.update(extra)
        self.creators[room_id] = frozenset(c for c in creators if isinstance(c, str))
        self.versions[room_id] = str(content.get("room_version", "1"))

    def note_direct(self, content: dict[str, Any]) -> None:
        """The content of the bot's `m.direct` account data: user → [room ids]."""
        for rooms in content.values():
            if isinstance(rooms, list):
                self.direct.update(r for r in rooms if isinstance(r, str))

    def creators_have_unlimited_power(self, room_id: str) -> bool:
        version = self.versions.get(room_id, "1")
        if version.isdigit():
            return int(version) >= 12
        return "hydra" in version  # the pre-release name of room version 12


# -- the nio implementation ----------------------------------------------------------------


class NioTransport:
    """`Transport` over a nio `AsyncClient` owned by the `MatrixShell`.

    The client only exists once the shell has started (it needs the device id and the pickle
    key from the database): calls before that raise a retryable `TransportError`.
    """

    def __init__(
        self, client: Callable[[], AsyncClient | None], facts: RoomFacts, bot_user_id: str
    ) -> None:
        self._client = client
        self._facts = facts
        self._bot_user_id = bot_user_id
        self._room_lock = asyncio.Lock()
        self._keys_lock = asyncio.Lock()

    @property
    def bot_user_id(self) -> str:
        return self._bot_user_id

    def _nio(self) -> AsyncClient:
        client = self._client()
        if client is None or not client.logged_in:
            raise TransportError("the Matrix client is not started", retryable=True)
        return client

    # -- actions ---------------------------------------------------------------------------

    async def send_event(
        self,
        room_id: str,
        event_type: str,
        content: dict[str, Any],
        txn_id: str,
        *,
        encrypt: bool = True,
    ) -> str:
        client = self._nio()
        await self.ensure_room(room_id)
        if not encrypt:
            response = await call(
                f"send to {room_id}",
                lambda: _send_in_clear(client, room_id, event_type, content, txn_id),
                expect=RoomSendResponse,
            )
            return response.event_id
        if client.olm is not None and self.is_encrypted(room_id):
            await self.query_keys_if_needed()

        async def request() -> Any:
            try:
                return await client.room_send(
                    room_id, event_type, content, tx_id=txn_id, ignore_unverified_devices=True
                )
            except (LocalProtocolError, SendRetryError, EncryptionError) as error:
                # Keys could not be shared or the room is not known yet: worth another try.
                raise TransportError(
                    f"send to {room_id}: {type(error).__name__}", retryable=True
                ) from error
            except OlmUnverifiedDeviceError as error:  # pragma: no cover - we ignore them
                raise TransportError(
                    f"send to {room_id}: unverified device", retryable=False
                ) from error

        response = await call(f"send to {room_id}", request, expect=RoomSendResponse)
        return response.event_id

    async def upload(self, data: bytes, content_type: str, filename: str) -> str:
        client = self._nio()

        async def request() -> Any:
            response, _keys = await client.upload(
                io.BytesIO(data),
                content_type=content_type,
                filename=filename,
                filesize=len(data),
            )
            return response

        response = await call("upload", request, expect=UploadResponse)
        return response.content_uri

    async def create_room(
        self,
        *,
        name: str,
        invite: list[str],
        is_direct: bool,
        encrypted: bool,
        key: str | None = None,
    ) -> str:
        """With `key`, the room gets the local alias `#sb-<key>`: creating it again fails
        with M_ROOM_IN_USE on the homeserver, and the room the alias names is returned
        (a replay after a crash creates no second room)."""
        client = self._nio()
        alias = f"sb-{key}" if key else None
        if alias is not None:
            existing = await self._room_of_alias(alias)
            if existing is not None:
                for user_id in invite:
                    with contextlib.suppress(TransportError):  # already invited or joined
                        await self.invite(existing, user_id)
                return existing
        initial_state = []
        if encrypted:
            initial_state.append(
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                }
            )
        # Not `trusted_private_chat`, even for a direct room: that preset gives invitees the
        # creator's power (in room version 12 Synapse makes them additional creators, with
        # unlimited power). The bot stays the only admin of the rooms it opens.
        preset = RoomPreset.private_chat
        response = await call(
            "create room",
            lambda: client.room_create(
                name=name,
                invite=invite,
                is_direct=is_direct,
                preset=preset,
                initial_state=initial_state,
                alias=alias,
            ),
            expect=RoomCreateResponse,
        )
        room_id: str = response.room_id
        if is_direct:
            self._facts.direct.add(room_id)
        try:
            await self.load_room(room_id, encrypted=encrypted)
        except TransportError as error:  # the next sync brings the rest
            log.info("state of new room %s not loaded yet: %s", room_id, error)
        return room_id

    async def _room_of_alias(self, alias: str) -> str | None:
        """The room a local alias of the bot's names, if the bot is in it."""
        client = self._nio()
        server = self.bot_user_id.partition(":")[2]
        try:
            response = await client.room_resolve_alias(f"#{alias}:{server}")
        except NETWORK_ERRORS as error:
            raise error_from_exception(error, "resolve alias") from error
        room_id = getattr(response, "room_id", None)
        if not room_id:
            return None  # not found: not created yet
        try:
            await self.ensure_room(room_id)
        except TransportError:
            return None
        return room_id if self.bot_user_id in self.joined_members(room_id) else None

    async def redact(self, room_id: str, event_id: str, reason: str | None = None) -> None:
        client = self._nio()
        # A transaction id derived from the event: a retry after a crash is the same request,
        # which the homeserver deduplicates.
        txn_id = "rd" + hashlib.sha256(event_id.encode()).hexdigest()[:24]
        await call(
            f"redact in {room_id}",
            lambda: client.room_redact(room_id, event_id, reason=reason, tx_id=txn_id),
            expect=RoomRedactResponse,
        )

    async def invite(self, room_id: str, user_id: str) -> None:
        client = self._nio()
        await call(
            f"invite to {room_id}",
            lambda: client.room_invite(room_id, user_id),
            expect=RoomInviteResponse,
        )

    # -- local state -----------------------------------------------------------------------

    def joined_members(self, room_id: str) -> set[str]:
        room = self._room(room_id)
        if room is None:
            return set()
        return {user_id for user_id, user in room.users.items() if not user.invited}

    def power_level(self, room_id: str, user_id: str) -> int:
        if self._facts.creators_have_unlimited_power(room_id) and user_id in (
            self._facts.creators.get(room_id, ())
        ):
            return CREATOR_POWER
        room = self._room(room_id)
        if room is None:
            return 0
        return int(room.power_levels.get_user_level(user_id))

    def is_encrypted(self, room_id: str) -> bool:
        client = self._client()
        if client is None:
            return False
        room = client.rooms.get(room_id)
        if room is not None and room.encrypted:
            return True
        return room_id in client.encrypted_rooms

    def is_direct(self, room_id: str) -> bool:
        """Marked direct (m.direct, an `is_direct` invite, created as such), or two members."""
        if room_id in self._facts.direct:
            return True
        room = self._room(room_id)
        if room is None:
            return False
        # `member_count` uses the sync summary (correct with lazy-loaded members).
        return room.member_count == 2 and self._bot_user_id in room.users

    # -- helpers used by the shell ---------------------------------------------------------

    def _room(self, room_id: str) -> MatrixRoom | None:
        client = self._client()
        return None if client is None else client.rooms.get(room_id)

    async def ensure_room(self, room_id: str) -> None:
        """Make nio know `room_id` (state, members, encryption) before the next sync does, or
        complete a room syncs showed only in part (lazy-loaded members).

        The full state, not only `/joined_members`: a room known from incremental syncs alone
        (a fresh key store resuming from the stored sync position) may be encrypted with nio
        unaware of it, and the bot would then answer in clear in an encrypted room.
        """
        room = self._nio().rooms.get(room_id)
        if room is None or not room.members_synced:
            await self.load_room(room_id)

    async def load_room(self, room_id: str, *, encrypted: bool = False) -> None:
        """Read the room's full state into nio's room (created if unknown).

        `encrypted`: the bot made the room encrypted itself. A sync racing the creation can
        show nio a room whose encryption event is not there yet; nio would then send in
        clear text, so the flag is set before anything else.
        """
        client = self._nio()
        async with self._room_lock:
            if encrypted:
                self._mark_encrypted(client, room_id)
            response = await call(
                f"state of {room_id}",
                lambda: client.room_get_state(room_id),
                expect=RoomGetStateResponse,
            )
            room = client.rooms.get(room_id)
            if room is None:
                room = MatrixRoom(room_id, client.user_id, room_id in client.encrypted_rooms)
                client.rooms[room_id] = room
            for raw in response.events:
                self._facts.note_state(room_id, raw)
                event = Event.parse_event(raw)
                if isinstance(event, RoomMemberEvent):
                    room.handle_membership(event)
                elif isinstance(event, Event):
                    room.handle_event(event)
            # The full state lists every member (invited ones too, who must get the room
            # key): nio need not ask /joined_members before sending.
            room.members_synced = True
            if room.encrypted:
                self._mark_encrypted(client, room_id)
            log.debug("room %s loaded from its state", room_id)

    @staticmethod
    def _mark_encrypted(client: AsyncClient, room_id: str) -> None:
        room = client.rooms.get(room_id)
        if room is None:
            room = client.rooms[room_id] = MatrixRoom(room_id, client.user_id, True)
        room.encrypted = True
        client.encrypted_rooms.add(room_id)
        if client.store is not None:
            client.store.save_encrypted_rooms([room_id])
        if client.olm is not None:
            client.olm.update_tracked_users(room)

    async def query_keys_if_needed(self) -> None:
        """Fetch device keys of newly tracked users (nio only does it for unsynced rooms)."""
        client = self._nio()
        if not client.should_query_keys:
            return
        async with self._keys_lock:
            if not client.should_query_keys:
                return
            await call("keys query", client.keys_query, expect=KeysQueryResponse)


async def _send_in_clear(
    client: AsyncClient, room_id: str, event_type: str, content: dict[str, Any], txn_id: str
) -> Any:
    """`room_send` without the encryption nio applies to every event of an encrypted room:
    the same request and answer handling (`_send`, the one path of every nio request)."""
    method, path, data = Api.room_send(client.access_token, room_id, event_type, content, txn_id)
    return await client._send(RoomSendResponse, method, path, data, (room_id,))
