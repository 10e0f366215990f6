"""The bot's Matrix session: the nio client, its login and device, and its E2EE store.

Owns the access token, the device id (reused across restarts while its E2EE store is still
there), the store's pickle key, the key upload, the direct rooms and the staff room join.
Each step raises `TransportError` (retryable or not) or `MatrixStartError`; retrying them is
the caller's (`Waiter.retry`). Logs never contain tokens or passwords.

Files. The store directory is its owner's alone (0700, its files 0600), made so at each start.
The pickle key, when `matrix.pickle_key` is not configured, is generated once and kept in
`store_path/pickle.key` (0600), not in the database: the database travels (backups, exports,
a PostgreSQL server elsewhere) and also holds the access token. A key an older version kept
in the database (a `BotState` row) is moved to that file once, then the row is deleted. Back
the store directory up whole: without `pickle.key` its keys cannot be read.

One process at a time: `open()` takes an flock on `store_path/.lock` (released by `close()`,
or when the process ends), so `support-bot e2ee setup` cannot run beside the bot and fork the
device's one-time keys. `view()` opens no store: it only looks (`support-bot e2ee status`).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    DirectRoomsResponse,
    JoinResponse,
    KeysUploadResponse,
    LoginResponse,
    WhoamiResponse,
)
from nio.store import DefaultStore
from tortoise.transactions import in_transaction

from bot.config import MatrixConfig
from bot.matrix.runtime import SYNC_TOKEN, MatrixStartError, get_state, set_state
from bot.matrix.transport import RoomFacts, call
from bot.ports import TransportError
from bot.storage.models import BotState

log = logging.getLogger(__name__)

# BotState keys.
ACCESS_TOKEN = "access_token"
DEVICE_ID = "device_id"
DEVICE_USER = "device_user_id"  # whose device the two rows above describe
PICKLE_KEY = "pickle_key"

REQUEST_TIMEOUT = 60.0
#: The generated pickle key's file, in the store directory.
PICKLE_KEY_FILE = "pickle.key"
#: Held (flock) by the process that uses the store: two processes over one store (the bot and
#: a `support-bot e2ee` command) would each keep their own idea of the device's one-time keys.
LOCK_FILE = ".lock"
PRIVATE_DIRECTORY_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


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


class CountingClient(AsyncClient):
    """nio's client, counting HTTP requests (every request goes through `send`)."""

    requests = 0

    async def send(self, *args: Any, **kwargs: Any) -> Any:
        self.requests += 1
        return await super().send(*args, **kwargs)


class Session:
    """The nio client of one bot account: `open()` makes it, the steps log it in."""

    def __init__(self, matrix: MatrixConfig, facts: RoomFacts) -> None:
        self._matrix = matrix
        self._facts = facts
        self.client: CountingClient | None = None
        #: The store's pickle key, once `open()` has read (or made) it.
        self.pickle_key: str | None = None
        self._lock: int | None = None

    @property
    def requests(self) -> int:
        return self.client.requests if self.client is not None else 0

    @property
    def device_id(self) -> str | None:
        return self.client.device_id if self.client is not None else None

    def nio(self) -> CountingClient:
        if self.client is None:
            raise RuntimeError("MatrixShell not started")
        return self.client

    async def open(self) -> CountingClient:
        """Make the client over the E2EE store (created if missing); nothing is sent yet."""
        matrix = self._matrix
        store = Path(matrix.store_path)
        await asyncio.to_thread(protect_store, store)
        self._lock = await asyncio.to_thread(_lock_store, store)
        try:
            self.pickle_key = await self._pickle_key()
        except BaseException:
            await self.close()
            raise
        client_config = AsyncClientConfig(
            store_sync_tokens=False,
            encryption_enabled=True,
            pickle_key=self.pickle_key,
            max_timeouts=0,
            max_limit_exceeded=0,
            request_timeout=REQUEST_TIMEOUT,
            store=_Store,
        )
        self.client = CountingClient(
            matrix.homeserver, matrix.user_id, store_path=str(store), config=client_config
        )
        return self.client

    async def view(self) -> CountingClient:
        """A client of the stored session (or of the configured access token) without the
        E2EE store: for looking (`support-bot e2ee status`) while the bot may be running.
        The pickle key is read if there is one, never made."""
        matrix = self._matrix
        if matrix.pickle_key:
            self.pickle_key = matrix.pickle_key
        else:
            path = Path(matrix.store_path) / PICKLE_KEY_FILE
            self.pickle_key = await asyncio.to_thread(_read_key, path)
        client = self.client = CountingClient(
            matrix.homeserver,
            matrix.user_id,
            config=AsyncClientConfig(
                encryption_enabled=False,
                max_timeouts=0,
                max_limit_exceeded=0,
                request_timeout=REQUEST_TIMEOUT,
            ),
        )
        token = matrix.access_token or await get_state(ACCESS_TOKEN)
        if not token:
            raise MatrixStartError("the bot has not logged in yet: start it first")
        client.access_token, client.user_id = token, matrix.user_id
        who = await call("whoami", client.whoami, expect=WhoamiResponse)
        if who.user_id != matrix.user_id or not who.device_id:
            raise MatrixStartError(f"the stored session is not {matrix.user_id}'s device")
        client.device_id = who.device_id
        return client

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None

    async def _pickle_key(self) -> str:
        """The configured key; else the one in `store_path/pickle.key`, moved there from the
        database if an older version kept it there, or generated."""
        if self._matrix.pickle_key:
            return self._matrix.pickle_key
        path = Path(self._matrix.store_path) / PICKLE_KEY_FILE
        in_file = await asyncio.to_thread(_read_key, path)
        in_database = await get_state(PICKLE_KEY)
        if in_file is None:
            in_file = in_database or secrets.token_urlsafe(32)
            # Written (and synced) before the row goes: a crash in between leaves both, and
            # the next start only deletes the row.
            await asyncio.to_thread(write_private_file, path, in_file)
            log.info(
                "%s the E2EE store pickle key into %s",
                "moved" if in_database else "generated",
                path,
            )
        if in_database == in_file:
            await BotState.filter(key=PICKLE_KEY).delete()
        elif in_database is not None:
            # Someone put a key in the file by hand: the row may be the only copy of the key
            # some store was made with, so it stays until an operator decides.
            log.warning(
                "the database keeps a pickle key other than %s's: the file's is used; delete"
                " the bot_state row %r once that store is known to be the right one",
                path,
                PICKLE_KEY,
            )
        return in_file

    async def forget_other_account(self) -> None:
        """A database last used by another Matrix account: its session and position go."""
        owner = await get_state(DEVICE_USER)
        if owner is not None and owner != self._matrix.user_id:
            log.warning("the database was used by another Matrix account: starting afresh")
            await BotState.filter(key__in=[SYNC_TOKEN, ACCESS_TOKEN, DEVICE_ID]).delete()
        await set_state(DEVICE_USER, self._matrix.user_id)

    async def login(self) -> None:
        client = self.nio()
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
        token = await get_state(ACCESS_TOKEN)
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
        await self.password_login(device_id)

    async def _reusable_device(self) -> str | None:
        """The stored device id, if it is this user's and its E2EE store is still there."""
        device_id = await get_state(DEVICE_ID)
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

    async def password_login(self, device_id: str | None) -> None:
        client = self.nio()
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
            await set_state(ACCESS_TOKEN, response.access_token)
            await set_state(DEVICE_ID, response.device_id)
        log.info(
            "logged in with the password (device %s, %s)",
            response.device_id,
            "reused" if device_id == response.device_id else "new",
        )

    def _open_store(self, device_id: str, token: str) -> None:
        try:
            self.nio().restore_login(self._matrix.user_id, device_id, token)
        except Exception as error:
            raise MatrixStartError(
                f"cannot open the E2EE store in {self._matrix.store_path} "
                f"(wrong pickle_key?): {type(error).__name__}"
            ) from error

    async def upload_keys(self) -> None:
        client = self.nio()
        if client.should_upload_keys:
            try:
                await call("keys upload", client.keys_upload, expect=KeysUploadResponse)
            except TransportError as error:
                if error.retryable:
                    raise
                log.error("device keys refused (%s): encrypted rooms will not work", error)

    async def load_direct_rooms(self) -> None:
        client = self.nio()
        try:
            response = await call("m.direct", client.list_direct_rooms, expect=DirectRoomsResponse)
        except TransportError as error:
            if error.retryable:
                raise
            return  # no m.direct yet (404)
        self._facts.note_direct(response.rooms)

    async def join_staff_room(self) -> str:
        client = self.nio()
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


def protect_store(store: Path) -> None:
    """Create the store directory if needed; make it and what it holds its owner's alone
    (an older version left it 0755, nio's databases 0644). Files of someone else (a mount)
    are logged and left as they are."""
    store.mkdir(mode=PRIVATE_DIRECTORY_MODE, parents=True, exist_ok=True)
    _restrict(store, PRIVATE_DIRECTORY_MODE)
    for entry in store.iterdir():
        if entry.is_file() and not entry.is_symlink():
            _restrict(entry, PRIVATE_FILE_MODE)


def _restrict(path: Path, private: int) -> None:
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & ~private:
            path.chmod(private)
            log.info("store: %s was mode %04o, now %04o", path, mode, private)
    except OSError as error:
        log.warning("store: cannot make %s private (%s)", path, error.strerror or "error")


def _read_key(path: Path) -> str | None:
    """The key in `path`, or None when there is none; an empty file is an error (a key was
    lost: generating another would silently orphan the store's encrypted keys)."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if not text:
        raise MatrixStartError(f"{path} is empty: restore the pickle key from a backup")
    _restrict(path, PRIVATE_FILE_MODE)
    return text


def _lock_store(store: Path) -> int:
    """Take the store's lock (the descriptor holds it until closed); refuse when another
    process holds it."""
    descriptor = os.open(store / LOCK_FILE, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise MatrixStartError(
            f"another support-bot process is using the key store {store}: stop it first "
            "(`support-bot e2ee setup` and `restore` need the bot stopped)"
        ) from None
    return descriptor


def write_private_file(path: Path, text: str) -> None:
    """Write `text` to `path` (mode 0600 from its creation, never a moment readable), durably:
    a temporary file synced, renamed over, and the directory synced."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
