"""The Matrix shell: login, E2EE store, auto-join, and the sync loop that feeds `on_batch`.

`MatrixShell` is the facade the app drives (`start()`, `run()`, `stop()`, `transport`); it
composes the parts, each in a module of its own:

- `session`: the nio client, login and device reuse, the E2EE store, the staff room join;
- `crosssign`: the bot's cross-signing identity, its device signed (Secret Storage, recovery);
- `sync`: the sync loop, gaps of limited timelines, the batch commit and the sync position;
- `invites`: accepting or declining the bot's invites;
- `pending`: encrypted events that cannot be decrypted yet, retried, given up after a day;
- `runtime`: what they share: the counters, the backoff, waits that `stop()` cuts short.

Logs never contain message content, tokens or passwords.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from bot.config import Config
from bot.matrix.crosssign import CrossSigning
from bot.matrix.invites import Invites
from bot.matrix.pending import PendingEvents
from bot.matrix.runtime import Backoff, MatrixStartError, ShellStats, Stopped, Waiter
from bot.matrix.session import Session
from bot.matrix.sync import SYNC_TIMEOUT_MS, OnBatch, SyncLoop
from bot.matrix.transport import NioTransport, RoomFacts
from bot.ports import Transport

__all__ = ["STALL_SECONDS", "Backoff", "MatrixShell", "MatrixStartError", "ShellStats"]

log = logging.getLogger(__name__)

# /healthz says "stalled" when neither a sync answer nor a handled batch came for this long:
# a long poll returns within the sync timeout, so this is a stuck loop or a homeserver that
# has been unreachable for minutes, not a quiet afternoon.
STALL_SECONDS = 180.0
STOP_GRACE = 30.0


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
        matrix = self._matrix = config.matrix
        facts = RoomFacts()
        self.stats = ShellStats()
        self.staff_room_id: str | None = None
        self._waiter = Waiter(backoff or Backoff())
        self._session = session = Session(matrix, facts)
        self._cross_signing = CrossSigning(session, matrix)
        self._nio_transport = NioTransport(lambda: session.client, facts, matrix.user_id)
        self.transport: Transport = self._nio_transport
        self._pending = PendingEvents(
            session.nio, bot_user_id=matrix.user_id, clock=clock, stats=self.stats
        )
        invites = Invites(
            session.nio,
            bot_user_id=matrix.user_id,
            allowed_servers=matrix.allowed_servers,
            is_staff_inviter=is_staff_inviter,
            staff_room_id=lambda: self.staff_room_id,
            facts=facts,
            stats=self.stats,
            clock=clock,
        )
        self._sync = SyncLoop(
            matrix,
            session=session,
            transport=self._nio_transport,
            facts=facts,
            pending=self._pending,
            invites=invites,
            waiter=self._waiter,
            stats=self.stats,
            on_batch=on_batch,
            sync_timeout_ms=sync_timeout_ms,
        )
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def bot_user_id(self) -> str:
        return self._matrix.user_id

    @property
    def requests(self) -> int:
        """HTTP requests sent to the homeserver by this shell's client so far."""
        return self._session.requests

    @property
    def device_id(self) -> str | None:
        return self._session.device_id

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Log in, open the E2EE store, join the staff room and do the first sync.

        Network trouble is retried with backoff (until `stop()`); a refusal (bad password,
        no access to the staff room) raises `MatrixStartError`.
        """
        if self._session.client is not None:
            raise RuntimeError("MatrixShell.start() called twice")
        session, retry = self._session, self._waiter.retry
        await session.open()
        try:
            await session.forget_other_account()
            await retry("login", session.login)
            await retry("key upload", session.upload_keys)
            await retry("cross-signing", self._cross_signing.ensure)
            await self._sync.load_position()
            await retry("direct rooms", session.load_direct_rooms)
            self.staff_room_id = await retry("staff room", session.join_staff_room)
            # Its power levels say who is staff: read before any event is handled.
            staff_room = self.staff_room_id
            await retry("staff room state", lambda: self._nio_transport.load_room(staff_room))
            await self._sync.first_batch()
        except Stopped:
            log.info("stopped while starting")
        except BaseException:
            await session.close()  # the client, and the store's lock
            raise

    async def run(self) -> None:
        """Sync and hand batches to `on_batch` until `stop()`."""
        if self._session.client is None:
            raise RuntimeError("MatrixShell.run() before start()")
        self._idle.clear()
        try:
            await self._sync.run()
        except Stopped:
            pass
        finally:
            self._idle.set()

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Let the batch being handled finish (up to `grace` seconds), then close the client."""
        self._waiter.stop()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=grace)
        except TimeoutError:
            log.warning("the current batch did not finish within %.0f s", grace)
        await self._sync.flush_position()
        await self._session.close()

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
        await self._session.nio().import_keys(str(path), passphrase)
        self._pending.mark_due()
