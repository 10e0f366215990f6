"""What the parts of the Matrix shell share: the counters, the backoff, waits that `stop()`
cuts short, and the `BotState` rows they keep.

Failures: network errors, 5xx and everything else get exponential backoff with jitter
(0.5-1 s, then doubling, capped at 60 s); `M_LIMIT_EXCEEDED` waits at least what the server
asked. nio's own retry loops are off (`max_timeouts=0`, `max_limit_exceeded=0`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bot.ports import TransportError
from bot.storage.models import BotState

log = logging.getLogger(__name__)

# BotState key of the sync position (the session's rows are in `bot.matrix.session`).
SYNC_TOKEN = "sync_token"

T = TypeVar("T")


class MatrixStartError(RuntimeError):
    """The shell cannot start: bad credentials, unreachable staff room, unusable store…"""


class Stopped(BaseException):
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
    """Counters for metrics and tests (`bot.metrics` reads them at each scrape)."""

    sync_failures: int = 0
    batches: int = 0
    batch_failures: int = 0
    events: int = 0
    invites_accepted: int = 0
    invites_declined: int = 0
    undecryptable: int = 0
    late_decrypted: int = 0
    withheld: int = 0  # kept events whose key will not come (withheld, or shared late)
    last_progress: float | None = None  # time.monotonic() of the last sync answer or commit
    last_sync: float | None = None  # time.monotonic() of the last successful sync answer
    started: float = field(default_factory=time.monotonic)  # when the shell was built
    _syncs: int = 0

    @property
    def syncs(self) -> int:
        """Successful sync answers."""
        return self._syncs

    @syncs.setter
    def syncs(self, value: int) -> None:
        # The sync loop counts each successful answer here (`syncs += 1`): its time is taken
        # with it, for "seconds since the last successful sync" (`last_progress` also moves
        # when a batch is committed).
        self._syncs = value
        self.last_sync = time.monotonic()


class Waiter:
    """Waits and retries with `backoff`, all of them cut short by `stop()` (`Stopped`)."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self._stopping = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        self._stopping.set()

    async def retry(self, what: str, step: Callable[[], Awaitable[T]]) -> T:
        """Run a start-up step, retrying retryable failures with backoff."""
        failures = 0
        while True:
            if self.stopping:
                raise Stopped
            try:
                return await step()
            except TransportError as error:
                if not error.retryable:
                    raise MatrixStartError(f"{what}: {error}") from error
                failures += 1
                delay = max(error.retry_after or 0.0, self.backoff.delay(failures))
                log.warning("%s failed (%s); retrying in %.1f s", what, error, delay)
                await self.sleep(delay)

    async def sleep(self, delay: float) -> None:
        """Wait `delay` seconds; raise `Stopped` as soon as `stop()` is called."""
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        except TimeoutError:
            return
        raise Stopped

    async def unless_stopped(self, request: Coroutine[Any, Any, T]) -> T:
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
        raise Stopped


async def get_state(key: str) -> str | None:
    row = await BotState.get_or_none(key=key)
    return row.value if row is not None else None


async def set_state(key: str, value: str) -> None:
    await BotState.update_or_create(key=key, defaults={"value": value})
