"""The Matrix shell: login, E2EE store, auto-join, and the sync loop that feeds `on_batch`.

How a sync becomes a batch, and why:

- The sync token is ours, stored in `BotState("sync_token")` **after** `on_batch` returned for
  the events of that sync (nio's own token storage is off). A crash or an exception in
  `on_batch` means the same events come again; the dispatcher de-duplicates by event id.
  While messages keep coming, the position is written at most once a second (and at stop):
  a crash replays at most that second of handled events, which the dispatcher skips, and
  the write stays off the path of each answer.
- First start (no stored token): one sync, its token stored, nothing handled: the bot does not
  answer history. Invites found in that sync are still accepted or declined.
- Every sync asks for `sync_timeline_limit` events per room with lazy-loaded members; a room
  whose timeline is `limited` is completed with `/messages` back to the previous token, so a
  burst is delivered whole and in order.
- A room the bot has just entered: only events after the bot's invite (or after its join when
  it joined without one) are delivered, so the message a client sent right after inviting the
  bot is answered and the room's older history is not.
- Undecryptable events are kept in `UndecryptedEvent`, their room key is requested (nio asks
  the bot's own other devices only: in practice the key comes when the sender's client shares
  it), and they are retried when to-device messages (keys) arrive, and every 10 minutes; a
  decrypted one is
  delivered in the next batch; after 24 h the bot gives up and hands an `IncomingUnreadable`
  to the handlers, which ask the sender to send it again.
- Failures: network errors, 5xx and everything else get exponential backoff with jitter
  (0.5-1 s, then doubling, capped at 60 s); `M_LIMIT_EXCEEDED` waits at least what the server
  asked. nio's own retry loops are off (`max_timeouts=0`, `max_limit_exceeded=0`).
- Logs never contain message content, tokens or passwords.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from nio import (
    AsyncClient,
    AsyncClientConfig,
    DirectRoomsResponse,
    Event,
    InviteMemberEvent,
    JoinResponse,
    KeysClaimResponse,
    KeysUploadResponse,
    LocalProtocolError,
    LoginResponse,
    MegolmEvent,
    MessageDirection,
    RoomLeaveResponse,
    RoomMemberEvent,
    RoomMessagesResponse,
    SyncResponse,
    UnknownAccountDataEvent,
    WhoamiResponse,
)
from nio.store import DefaultStore
from tortoise.transactions import in_transaction

from bot.config import Config
from bot.matrix.inbound import Incoming, to_incoming, to_unreadable
from bot.matrix.transport import (
    NETWORK_ERRORS,
    NioTransport,
    RoomFacts,
    Transport,
    TransportError,
    call,
    error_from_exception,
    error_from_response,
)
from bot.storage.models import BotState, UndecryptedEvent

log = logging.getLogger(__name__)

# BotState keys.
SYNC_TOKEN = "sync_token"
POSITION_EVERY = 1.0  # seconds between two writes of the sync position while busy
ACCESS_TOKEN = "access_token"
DEVICE_ID = "device_id"
DEVICE_USER = "device_user_id"  # whose device the two rows above describe
PICKLE_KEY = "pickle_key"

SYNC_TIMEOUT_MS = 30_000
REQUEST_TIMEOUT = 60.0
# Longest wait for a sync answer beyond its long-poll time (an initial sync can be slow).
FULL_SYNC_TIMEOUT = 120.0
# /healthz says "stalled" when neither a sync answer nor a handled batch came for this long:
# a long poll returns within the sync timeout, so this is a stuck loop or a homeserver that
# has been unreachable for minutes, not a quiet afternoon.
STALL_SECONDS = 180.0
GAP_PAGE = 100
# A room whose gap is larger than this (the bot was away for long in a busy room) is only
# partly replayed: the newest events, never an unbounded walk back.
GAP_MAX_EVENTS = 2_000
UNDECRYPTED_GIVE_UP = timedelta(hours=24)
UNDECRYPTED_RETRY_EVERY = 600.0  # seconds, besides every sync that brings to-device events
STOP_GRACE = 30.0
INVITE_ATTEMPTS = 10  # syncs in a row a join/decline may fail (5xx, network) before giving up
GAP_ATTEMPTS = 5  # syncs in a row a room's gap may fail before its events are skipped

OnBatch = Callable[[list[Incoming]], Awaitable[None]]
T = TypeVar("T")


class MatrixStartError(RuntimeError):
    """The shell cannot start: bad credentials, unreachable staff room, unusable store…"""


class _Stopped(BaseException):
    """`stop()` was called while waiting; unwinds the loop without storing anything."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with "equal jitter": failure n waits in [d/2, d], d = base·2ⁿ⁻¹."""

    base: float = 1.0
    cap: float = 60.0

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        ceiling = min(self.cap, self.base * 2 ** min(max(failures, 1) - 1, 32))
        return ceiling / 2 + rand() * ceiling / 2


@dataclass(slots=True)
class ShellStats:
    """Counters for metrics and tests."""

    syncs: int = 0
    sync_failures: int = 0
    batches: int = 0
    batch_failures: int = 0
    events: int = 0
    invites_accepted: int = 0
    invites_declined: int = 0
    undecryptable: int = 0
    late_decrypted: int = 0
    last_progress: float | None = None  # time.monotonic() of the last sync answer or commit


@dataclass(slots=True)
class _Batch:
    token: str
    events: list[Incoming] = field(default_factory=list)
    # UndecryptedEvent rows decrypted for this batch: deleted when it is committed.
    decrypted: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Invite:
    inviter: str
    is_direct: bool
    attempts: int = 0


class _Store(DefaultStore):
    """nio's store, except that the list of encrypted rooms is written only when it grows:
    nio rewrites it after every sync that touches an encrypted room, a blocking SQLite write
    (about 1 ms) on the path of every answer."""

    _saved_rooms: set[str] | None = None

    def save_encrypted_rooms(self, rooms: Iterable[str]) -> None:
        if self._saved_rooms is None:
            self._saved_rooms = set(self.load_encrypted_rooms())
        new = set(rooms) - self._saved_rooms
        if new:
            super().save_encrypted_rooms(new)
            self._saved_rooms |= new


class _CountingClient(AsyncClient):
    """nio's client, counting HTTP requests (every request goes through `send`)."""

    requests = 0

    async def send(self, *args: Any, **kwargs: Any) -> Any:
        self.requests += 1
        return await super().send(*args, **kwargs)


def server_name(user_id: str) -> str:
    return user_id.partition(":")[2]


class MatrixShell:
    """Owns the nio client. `start()`, then `run()` until `stop()`; acts through `transport`."""

    def __init__(
        self,
        config: Config,
        *,
        on_batch: OnBatch,
        is_staff_inviter: Callable[[str], bool],
        clock: Callable[[], datetime],
        backoff: Backoff | None = None,
        sync_timeout_ms: int = SYNC_TIMEOUT_MS,
    ) -> None:
        self._config = config
        self._matrix = config.matrix
        self._on_batch = on_batch
        self._is_staff_inviter = is_staff_inviter
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._sync_timeout_ms = sync_timeout_ms
        self._client: _CountingClient | None = None
        self._facts = RoomFacts()
        self._nio_transport = NioTransport(
            lambda: self._client, self._facts, config.matrix.user_id
        )
        self.transport: Transport = self._nio_transport
        self.staff_room_id: str | None = None
        self.stats = ShellStats()
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._token: str | None = None
        self._stored_token: str | None = None
        self._stored_at = float("-inf")  # time.monotonic() of the last position write
        self._position_task: asyncio.Task[None] | None = None
        self._first_sync = True  # answered at once (no long poll), to be ready quickly
        self._pending: _Batch | None = None
        self._invites: dict[str, _Invite] = {}  # pending: accepted or declined each sync
        self._undecrypted_due = True
        self._undecrypted_checked = 0.0
        self._gap_failures: dict[str, int] = {}
        allowed = config.matrix.allowed_servers or (server_name(config.matrix.user_id),)
        self._allowed_servers = frozenset(s.lower() for s in allowed)
        self._sync_filter = {
            "room": {
                "state": {"lazy_load_members": True},
                "timeline": {
                    "limit": config.matrix.sync_timeline_limit,
                    "lazy_load_members": True,
                },
            },
            "presence": {"not_types": ["*"]},
        }

    @property
    def bot_user_id(self) -> str:
        return self._matrix.user_id

    @property
    def requests(self) -> int:
        """HTTP requests sent to the homeserver by this shell's client so far."""
        return self._client.requests if self._client is not None else 0

    @property
    def device_id(self) -> str | None:
        return self._client.device_id if self._client is not None else None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Log in, open the E2EE store, join the staff room and do the first sync.

        Network trouble is retried with backoff (until `stop()`); a refusal (bad password,
        no access to the staff room) raises `MatrixStartError`.
        """
        if self._client is not None:
            raise RuntimeError("MatrixShell.start() called twice")
        matrix = self._matrix
        store = Path(matrix.store_path)
        await asyncio.to_thread(store.mkdir, parents=True, exist_ok=True)
        client_config = AsyncClientConfig(
            store_sync_tokens=False,
            encryption_enabled=True,
            pickle_key=await self._pickle_key(),
            max_timeouts=0,
            max_limit_exceeded=0,
            request_timeout=REQUEST_TIMEOUT,
            store=_Store,
        )
        self._client = _CountingClient(
            matrix.homeserver, matrix.user_id, store_path=str(store), config=client_config
        )
        try:
            await self._forget_other_account()
            await self._retry("login", self._login)
            await self._retry("key upload", self._upload_keys)
            self._token = self._stored_token = await _get_state(SYNC_TOKEN)
            await self._retry("direct rooms", self._load_direct_rooms)
            self.staff_room_id = await self._retry("staff room", self._join_staff_room)
            # Its power levels say who is staff: read before any event is handled.
            staff_room = self.staff_room_id
            await self._retry(
                "staff room state", lambda: self._nio_transport.load_room(staff_room)
            )
            batch = await self._next_batch()
            if self._token is None:
                # First start: remember where "now" is; history is not answered.
                await self._commit(_Batch(batch.token))
                log.info("first start: sync position stored, earlier messages are ignored")
            else:
                self._pending = batch
        except _Stopped:
            log.info("stopped while starting")
        except BaseException:
            await self._client.close()
            raise

    async def run(self) -> None:
        """Sync and hand batches to `on_batch` until `stop()`."""
        if self._client is None:
            raise RuntimeError("MatrixShell.run() before start()")
        self._idle.clear()
        try:
            while not self._stopping.is_set():
                batch, self._pending = self._pending, None
                if batch is None:
                    batch = await self._next_batch()
                await self._deliver(batch)
        except _Stopped:
            pass
        finally:
            self._idle.set()

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Let the batch being handled finish (up to `grace` seconds), then close the client."""
        self._stopping.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=grace)
        except TimeoutError:
            log.warning("the current batch did not finish within %.0f s", grace)
        await self._flush_position()
        if self._client is not None:
            await self._client.close()

    def sync_state(self, now: float | None = None) -> str:
        """For /healthz: "starting" before the first sync answer, "stalled" when the loop has
        not moved for STALL_SECONDS (stuck on a batch, or the homeserver unreachable), "ok"."""
        last = self.stats.last_progress
        if last is None:
            return "starting"
        now = time.monotonic() if now is None else now
        return "stalled" if now - last > STALL_SECONDS else "ok"

    async def import_keys(self, path: str | Path, passphrase: str) -> None:
        """Import room keys exported by another client; kept undecryptable events are retried
        at the next sync."""
        await self._nio().import_keys(str(path), passphrase)
        self._undecrypted_due = True

    # -- start-up steps --------------------------------------------------------------------

    async def _pickle_key(self) -> str:
        if self._matrix.pickle_key:
            return self._matrix.pickle_key
        stored = await _get_state(PICKLE_KEY)
        if stored:
            return stored
        key = secrets.token_urlsafe(32)
        await BotState.create(key=PICKLE_KEY, value=key)
        log.info("generated the E2EE store pickle key (kept in the database)")
        return key

    async def _forget_other_account(self) -> None:
        """A database last used by another Matrix account: its session and position go."""
        owner = await _get_state(DEVICE_USER)
        if owner is not None and owner != self._matrix.user_id:
            log.warning("the database was used by another Matrix account: starting afresh")
            await BotState.filter(key__in=[SYNC_TOKEN, ACCESS_TOKEN, DEVICE_ID]).delete()
        await _set_state(DEVICE_USER, self._matrix.user_id)

    async def _login(self) -> None:
        client = self._nio()
        matrix = self._matrix
        if matrix.access_token:
            client.access_token = matrix.access_token
            client.user_id = matrix.user_id
            who = await call("whoami", client.whoami, expect=WhoamiResponse)
            if who.user_id != matrix.user_id:
                raise MatrixStartError(
                    f"the access token belongs to {who.user_id}, not {matrix.user_id}"
                )
            if not who.device_id:
                raise MatrixStartError("the access token has no device: E2EE needs one")
            self._open_store(who.device_id, matrix.access_token)
            log.info("logged in with an access token (device %s)", who.device_id)
            return
        if not matrix.password:
            raise MatrixStartError("matrix.password or matrix.access_token is required")

        device_id = await self._reusable_device()
        token = await _get_state(ACCESS_TOKEN)
        if device_id and token:
            client.access_token, client.user_id = token, matrix.user_id
            try:
                who = await call("whoami", client.whoami, expect=WhoamiResponse)
            except TransportError as error:
                if error.retryable:
                    raise
                who = None  # token revoked or expired: log in again, same device
            if who is not None and who.device_id == device_id:
                self._open_store(device_id, token)
                log.info("resumed the stored session (device %s)", device_id)
                return
        await self._password_login(device_id)

    async def _reusable_device(self) -> str | None:
        """The stored device id, if it is this user's and its E2EE store is still there."""
        device_id = await _get_state(DEVICE_ID)
        if not device_id:
            return None
        database = Path(self._matrix.store_path) / f"{self._matrix.user_id}_{device_id}.db"
        if not await asyncio.to_thread(database.exists):
            log.warning(
                "E2EE store of device %s is missing from %s: logging in as a new device",
                device_id,
                self._matrix.store_path,
            )
            return None
        return device_id

    async def _password_login(self, device_id: str | None) -> None:
        client = self._nio()
        client.access_token = ""
        client.device_id = device_id
        password = self._matrix.password or ""
        try:
            response = await call(
                "login",
                lambda: client.login(password, device_name=self._matrix.device_name),
                expect=LoginResponse,
            )
        except Exception as error:
            if isinstance(error, TransportError) and error.retryable:
                raise
            raise MatrixStartError(f"cannot open the E2EE store or log in: {error}") from error
        async with in_transaction():
            await _set_state(ACCESS_TOKEN, response.access_token)
            await _set_state(DEVICE_ID, response.device_id)
        log.info(
            "logged in with the password (device %s, %s)",
            response.device_id,
            "reused" if device_id == response.device_id else "new",
        )

    def _open_store(self, device_id: str, token: str) -> None:
        try:
            self._nio().restore_login(self._matrix.user_id, device_id, token)
        except Exception as error:
            raise MatrixStartError(
                f"cannot open the E2EE store in {self._matrix.store_path} "
                f"(wrong pickle_key?): {type(error).__name__}"
            ) from error

    async def _upload_keys(self) -> None:
        client = self._nio()
        if client.should_upload_keys:
            try:
                await call("keys upload", client.keys_upload, expect=KeysUploadResponse)
            except TransportError as error:
                if error.retryable:
                    raise
                log.error("device keys refused (%s): encrypted rooms will not work", error)

    async def _load_direct_rooms(self) -> None:
        client = self._nio()
        try:
            response = await call("m.direct", client.list_direct_rooms, expect=DirectRoomsResponse)
        except TransportError as error:
            if error.retryable:
                raise
            return  # no m.direct yet (404)
        self._facts.note_direct(response.rooms)

    async def _join_staff_room(self) -> str:
        client = self._nio()
        target = self._matrix.staff_room
        try:
            # Accepts a pending invite, joins by id, or resolves an alias (with its servers).
            joined = await call(
                "join staff room", lambda: client.join(target), expect=JoinResponse
            )
        except TransportError as error:
            if error.retryable:
                raise
            raise MatrixStartError(
                f"cannot join the staff room {target} ({error.errcode}): invite the bot "
                "there, or check matrix.staff_room"
            ) from error
        log.info("in the staff room %s", joined.room_id)
        return str(joined.room_id)

    # -- one sync → one batch --------------------------------------------------------------

    async def _next_batch(self) -> _Batch:
        since = self._token
        failures = 0
        while True:
            response = await self._sync(since)
            try:
                await self._housekeeping()
                self._note_facts(response)
                await self._handle_invites(response)
                if since is None:  # first start: nothing is handled
                    return _Batch(response.next_batch)
                return await self._collect(response, since)
            except Exception as error:
                # The token has not moved: the same sync is fetched again after the pause.
                failures += 1
                delay = self._backoff.delay(failures)
                expected = isinstance(error, (TransportError, *NETWORK_ERRORS))
                log.warning(
                    "reading a sync failed (%s); retrying in %.1f s",
                    error_from_exception(error, "sync"),
                    delay,
                    exc_info=not expected,
                )
                await self._sleep(delay)

    async def _sync(self, since: str | None) -> SyncResponse:
        client = self._nio()
        failures = 0
        while True:
            if self._stopping.is_set():
                raise _Stopped
            try:
                # No full-state sync, even at start: with hundreds of rooms it takes seconds
                # and the bot needs the state of the rooms it acts in only, which it reads
                # then (`_complete_rooms`, `NioTransport.ensure_room`). nio puts no client-side
                # timeout on a first sync: bound it here.
                response = await self._unless_stopped(
                    asyncio.wait_for(
                        client.sync(
                            timeout=0 if self._first_sync else self._sync_timeout_ms,
                            sync_filter=self._sync_filter,
                            since=since,
                        ),
                        timeout=self._sync_timeout_ms / 1000 + FULL_SYNC_TIMEOUT,
                    )
                )
            except NETWORK_ERRORS as exc:
                error = error_from_exception(exc, "sync")
            except Exception as exc:  # a nio bug or an odd answer: still never a hot loop
                log.warning("sync raised %s", type(exc).__name__, exc_info=True)
                error = TransportError(f"sync: {type(exc).__name__}", retryable=True)
            else:
                if isinstance(response, SyncResponse):
                    self.stats.syncs += 1
                    self.stats.last_progress = time.monotonic()
                    self._first_sync = False
                    return response
                error = error_from_response(response, "sync")
            failures += 1
            self.stats.sync_failures += 1
            if error.errcode == "M_UNKNOWN_TOKEN" and not self._matrix.access_token:
                with contextlib.suppress(TransportError, MatrixStartError):
                    await self._password_login(client.device_id)
            delay = max(error.retry_after or 0.0, self._backoff.delay(failures))
            level = logging.WARNING if failures <= 3 or failures % 10 == 0 else logging.DEBUG
            log.log(level, "sync failed %d time(s) (%s); retry in %.1f s", failures, error, delay)
            await self._sleep(delay)

    async def _housekeeping(self) -> None:
        """What `sync_forever` does around each sync: key upload/query/claim, to-device."""
        client = self._nio()
        if client.olm is None:
            return

        async def claim_keys() -> None:
            if client.should_claim_keys:
                claim = partial(client.keys_claim, client.get_users_for_key_claiming())
                await call("keys claim", claim, expect=KeysClaimResponse)

        steps: list[tuple[str, Callable[[], Coroutine[Any, Any, Any]]]] = [
            ("keys upload", self._upload_keys),
            ("keys query", self._nio_transport.query_keys_if_needed),
            ("keys claim", claim_keys),
            # Last: claiming may queue messages (e.g. to unwedge an Olm session).
            ("to-device", client.send_to_device_messages),
        ]
        for name, step in steps:
            try:
                await step()
            except Exception as error:  # never holds back the batch: retried next sync
                expected = isinstance(error, (TransportError, LocalProtocolError, *NETWORK_ERRORS))
                log.warning(
                    "E2EE %s failed: %s",
                    name,
                    error_from_exception(error, name),
                    exc_info=not expected,
                )

    def _note_facts(self, response: SyncResponse) -> None:
        for room_id, info in response.rooms.join.items():
            for event in (*info.state, *info.timeline.events):
                source = getattr(event, "source", None)
                if isinstance(source, dict) and source.get("type") == "m.room.create":
                    self._facts.note_state(room_id, source)
        for event in response.account_data_events:
            if isinstance(event, UnknownAccountDataEvent) and event.type == "m.direct":
                self._facts.note_direct(event.content)

    # -- invites ---------------------------------------------------------------------------

    async def _handle_invites(self, response: SyncResponse) -> None:
        """Accept or decline the bot's invites. Never raises: a join that keeps failing (a
        remote server down) must not hold back the events of every other room."""
        bot = self.bot_user_id
        for room_id, info in response.rooms.invite.items():
            for event in info.invite_state:
                if (
                    isinstance(event, InviteMemberEvent)
                    and event.state_key == bot
                    and event.membership == "invite"
                ):
                    is_direct = bool(event.content.get("is_direct"))
                    self._invites.setdefault(room_id, _Invite(event.sender, is_direct))
        client = self._nio()
        for room_id, invite in list(self._invites.items()):
            if room_id in client.rooms and room_id not in client.invited_rooms:
                del self._invites[room_id]  # joined meanwhile
                continue
            accept = room_id == self.staff_room_id or self._may_invite(invite.inviter)
            what = "join" if accept else "decline"
            try:
                if accept:
                    await call(what, partial(client.join, room_id), expect=JoinResponse)
                else:
                    await call(what, partial(client.room_leave, room_id), expect=RoomLeaveResponse)
            except TransportError as error:
                invite.attempts += 1
                if error.retryable and invite.attempts < INVITE_ATTEMPTS:
                    log.info("%s of %s failed (%s): retried next sync", what, room_id, error)
                    continue
                log.warning("%s of %s failed (%s): invite dropped", what, room_id, error)
            else:
                server = server_name(invite.inviter)
                if accept:
                    self.stats.invites_accepted += 1
                    if invite.is_direct:
                        self._facts.direct.add(room_id)
                    log.info("joined %s (invited from %s)", room_id, server)
                else:
                    self.stats.invites_declined += 1
                    log.info(
                        "declined an invite to %s from a user of %s (not staff, "
                        "server not allowed)",
                        room_id,
                        server,
                    )
            del self._invites[room_id]

    def _may_invite(self, inviter: str) -> bool:
        if server_name(inviter).lower() in self._allowed_servers:
            return True
        try:
            return bool(self._is_staff_inviter(inviter))
        except Exception:
            log.exception("is_staff_inviter failed: treating the inviter as not staff")
            return False

    # -- events ----------------------------------------------------------------------------

    async def _collect(self, response: SyncResponse, since: str) -> _Batch:
        batch = _Batch(response.next_batch)
        seen: set[str] = set()
        # Events whose keys came late are older than this sync's: they go first.
        if self._undecrypted_due or response.to_device_events or self._undecrypted_stale():
            await self._retry_undecrypted(batch, seen)
        bot = self.bot_user_id
        for room_id, info in response.rooms.join.items():
            events = list(info.timeline.events)
            if info.timeline.limited and info.timeline.prev_batch and _entry(events, bot) is None:
                events = await self._with_gap(room_id, info.timeline.prev_batch, since) + events
            entry = _entry(events, bot)
            if entry is not None:
                events = events[entry + 1 :]
            for event in events:
                await self._add(batch, seen, room_id, event)
        for room_id, info in response.rooms.leave.items():
            # Only the membership changes (a kick, a ban): the bot can no longer answer there.
            for event in info.timeline.events:
                if isinstance(event, RoomMemberEvent):
                    await self._add(batch, seen, room_id, event)
        return batch

    async def _add(self, batch: _Batch, seen: set[str], room_id: str, event: Any) -> None:
        event_id = getattr(event, "event_id", None)
        if not isinstance(event_id, str) or event_id in seen:
            return
        seen.add(event_id)
        if getattr(event, "sender", None) == self.bot_user_id:
            return
        if isinstance(event, MegolmEvent):
            decrypted = self._decrypt(room_id, event)
            if decrypted is None:
                await self._keep_undecrypted(room_id, event)
                return
            event = decrypted
        incoming = to_incoming(room_id, event)
        if incoming is not None:
            batch.events.append(incoming)

    async def _with_gap(self, room_id: str, start: str, since: str) -> list[Any]:
        """The gap, or nothing once it failed `GAP_ATTEMPTS` syncs in a row (logged): one
        broken room must not hold back every other room forever."""
        try:
            gap = await self._fetch_gap(room_id, start, since)
        except TransportError as error:
            failures = self._gap_failures.get(room_id, 0) + 1
            if error.retryable and failures < GAP_ATTEMPTS:
                self._gap_failures[room_id] = failures
                raise
            self._gap_failures.pop(room_id, None)
            log.warning("gap in %s not fetched (%s): its older events are skipped", room_id, error)
            return []
        self._gap_failures.pop(room_id, None)
        return gap

    async def _fetch_gap(self, room_id: str, start: str, since: str) -> list[Any]:
        """Events between `since` and a limited timeline's `prev_batch`, oldest first.

        Stops early at the bot's own invite or join (what precedes it is not for the bot).
        """
        client = self._nio()
        bot = self.bot_user_id
        events: list[Any] = []
        token = start
        while len(events) < GAP_MAX_EVENTS:
            page = await call(
                f"messages of {room_id}",
                lambda token=token: client.room_messages(
                    room_id,
                    start=token,
                    end=since,
                    direction=MessageDirection.back,
                    limit=GAP_PAGE,
                ),
                expect=RoomMessagesResponse,
            )
            events.extend(page.chunk)
            if any(_is_entry(event, bot) for event in page.chunk):
                break
            if not page.chunk or not page.end or page.end == token:
                break
            token = page.end
        else:
            log.warning("gap in %s over %d events: older ones skipped", room_id, len(events))
        events.reverse()
        return events

    # -- undecryptable events --------------------------------------------------------------

    def _decrypt(self, room_id: str, event: MegolmEvent) -> Event | None:
        client = self._nio()
        if client.olm is None:
            return None
        event.room_id = room_id
        try:
            decrypted = client.decrypt_event(event)
        except Exception as error:  # EncryptionError, or anything vodozemac raises
            log.debug("cannot decrypt %s yet: %s", event.event_id, type(error).__name__)
            return None
        return decrypted if isinstance(decrypted, Event) else None

    async def _keep_undecrypted(self, room_id: str, event: MegolmEvent) -> None:
        _row, created = await UndecryptedEvent.get_or_create(
            event_id=event.event_id,
            defaults={
                "room_id": room_id,
                "sender": event.sender,
                "session_id": event.session_id or "",
                "source": event.source,
                "received_at": self._clock(),
            },
        )
        if created:
            self.stats.undecryptable += 1
            log.info("event %s in %s cannot be decrypted yet: keeping it", event.event_id, room_id)
        await self._request_key(event)

    async def _request_key(self, event: MegolmEvent) -> None:
        client = self._nio()
        if client.olm is None or event.session_id in client.outgoing_key_requests:
            return
        try:
            await client.request_room_key(event)
        except (LocalProtocolError, *NETWORK_ERRORS) as error:
            log.debug("room key request not sent: %s", type(error).__name__)

    def _undecrypted_stale(self) -> bool:
        return time.monotonic() - self._undecrypted_checked > UNDECRYPTED_RETRY_EVERY

    async def _retry_undecrypted(self, batch: _Batch, seen: set[str]) -> None:
        self._undecrypted_due = False
        self._undecrypted_checked = time.monotonic()
        now = self._clock()
        for row in await UndecryptedEvent.all().order_by("received_at"):
            event = Event.parse_event(row.source)
            if not isinstance(event, MegolmEvent):
                await row.delete()
                log.warning(
                    "dropped undecryptable event %s in %s: not Megolm", row.event_id, row.room_id
                )
                continue
            if now - row.received_at > UNDECRYPTED_GIVE_UP:
                # Given up: the sender is told (once: the row goes when the batch is handled).
                log.warning(
                    "gave up decrypting event %s in %s after %d attempt(s)",
                    row.event_id,
                    row.room_id,
                    row.attempts,
                )
                seen.add(row.event_id)
                batch.decrypted.append(row.event_id)
                if event.sender != self.bot_user_id:
                    batch.events.append(to_unreadable(row.room_id, event))
                continue
            decrypted = self._decrypt(row.room_id, event)
            if decrypted is None:
                row.attempts += 1
                await row.save(update_fields=["attempts"])
                await self._request_key(event)
                continue
            seen.add(row.event_id)
            batch.decrypted.append(row.event_id)
            self.stats.late_decrypted += 1
            incoming = to_incoming(row.room_id, decrypted)
            if incoming is not None and decrypted.sender != self.bot_user_id:
                batch.events.append(incoming)
            log.info("event %s in %s decrypted after its keys arrived", row.event_id, row.room_id)

    # -- delivery --------------------------------------------------------------------------

    async def _deliver(self, batch: _Batch) -> None:
        failures = 0
        while True:
            try:
                if batch.events:
                    await self._complete_rooms({event.room_id for event in batch.events})
                    await self._on_batch(list(batch.events))
                await self._commit(batch)
                return
            except Exception:
                failures += 1
                self.stats.batch_failures += 1
                reference = secrets.token_hex(4)
                delay = self._backoff.delay(failures)
                log.exception(
                    "handling a batch of %d event(s) failed [ref %s]; retrying in %.1f s",
                    len(batch.events),
                    reference,
                    delay,
                )
                await self._sleep(delay)

    async def _complete_rooms(self, room_ids: Iterable[str]) -> None:
        """Complete what nio knows of the rooms of a batch, once per room and process.

        Syncs are lazy (members) and incremental (no full state at start): a room's member
        list is read once (`/joined_members`). Its encryption is known from nio's store, and
        the staff room, whose power levels matter, is read whole at start."""
        for room_id in room_ids:
            try:
                await self._nio_transport.ensure_room(room_id)
            except TransportError as error:
                log.debug("state of %s not loaded: %s", room_id, error)

    async def _commit(self, batch: _Batch) -> None:
        """The batch is handled: sync on from its token, and store it (now, or within
        POSITION_EVERY seconds when the last write is more recent than that)."""
        if batch.decrypted or time.monotonic() - self._stored_at >= POSITION_EVERY:
            await self._store_now(batch.token, batch.decrypted)
        elif self._position_task is None:
            self._position_task = asyncio.create_task(self._store_later())
        self._token = batch.token
        self.stats.last_progress = time.monotonic()
        if batch.events:
            self.stats.batches += 1
            self.stats.events += len(batch.events)

    async def _store_now(self, token: str, decrypted: Sequence[str] = ()) -> None:
        # In a task of its own: if the database drops the connection mid-transaction, Tortoise
        # can leave its "current transaction" marker set in the task that opened it, and the
        # sync task would then carry a dead connection into every later batch.
        await asyncio.create_task(self._store_position(token, decrypted))

    async def _store_later(self) -> None:
        try:
            await asyncio.sleep(max(0.0, self._stored_at + POSITION_EVERY - time.monotonic()))
            if self._token is not None:
                await self._store_position(self._token, ())
        except Exception as error:  # the next batch stores it
            log.warning("storing the sync position failed: %s", type(error).__name__)
        finally:
            self._position_task = None

    async def _flush_position(self) -> None:
        task, self._position_task = self._position_task, None
        if task is not None:
            task.cancel()
        if self._token is not None and self._token != self._stored_token:
            try:
                await self._store_position(self._token, ())
            except Exception as error:  # replayed (and skipped) at the next start
                log.warning("storing the sync position failed: %s", type(error).__name__)

    async def _store_position(self, token: str, decrypted: Sequence[str]) -> None:
        async with in_transaction():
            if decrypted:
                await UndecryptedEvent.filter(event_id__in=list(decrypted)).delete()
            if token != self._stored_token:
                await _set_state(SYNC_TOKEN, token)
        self._stored_token = token
        self._stored_at = time.monotonic()

    # -- waiting ---------------------------------------------------------------------------

    async def _retry(self, what: str, step: Callable[[], Awaitable[T]]) -> T:
        """Run a start-up step, retrying retryable failures with backoff."""
        failures = 0
        while True:
            if self._stopping.is_set():
                raise _Stopped
            try:
                return await step()
            except TransportError as error:
                if not error.retryable:
                    raise MatrixStartError(f"{what}: {error}") from error
                failures += 1
                delay = max(error.retry_after or 0.0, self._backoff.delay(failures))
                log.warning("%s failed (%s); retrying in %.1f s", what, error, delay)
                await self._sleep(delay)

    async def _sleep(self, delay: float) -> None:
        """Wait `delay` seconds; raise `_Stopped` as soon as `stop()` is called."""
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        except TimeoutError:
            return
        raise _Stopped

    async def _unless_stopped(self, request: Coroutine[Any, Any, T]) -> T:
        """Await a (long-poll) request, abandoning it as soon as `stop()` is called."""
        task = asyncio.ensure_future(request)
        stopper = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            stopper.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise _Stopped

    def _nio(self) -> _CountingClient:
        if self._client is None:
            raise RuntimeError("MatrixShell not started")
        return self._client


# -- pure helpers --------------------------------------------------------------------------


def _is_entry(event: Any, bot: str) -> bool:
    return (
        isinstance(event, RoomMemberEvent)
        and event.state_key == bot
        and event.membership in ("invite", "join")
    )


def _entry(events: Sequence[Any], bot: str) -> int | None:
    """Index of the event after which a room's events concern the bot, if it entered here.

    The bot's last invite; failing that, its join when it joined without an invite (a room it
    created, a public room). A join that follows an invite seen in an earlier sync is not a
    cut: what came between the invite and the join is for the bot.
    """
    last_join: int | None = None
    for index in range(len(events) - 1, -1, -1):
        event = events[index]
        if not _is_entry(event, bot):
            continue
        if event.membership == "invite":
            return index
        if last_join is None and event.prev_membership not in ("invite", "join"):
            last_join = index
    return last_join


async def _get_state(key: str) -> str | None:
    row = await BotState.get_or_none(key=key)
    return row.value if row is not None else None


async def _set_state(key: str, value: str) -> None:
    await BotState.update_or_create(key=key, defaults={"value": value})
