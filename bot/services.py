"""The services handlers reach through `ctx.services`: config, clock, calendar, catalogs,
identity, transport, video, mailer, metrics and the job runner.

Built once by the composition root (`bot.app`) or the test harness and handed down; nothing
here builds anything that talks to the outside world.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol
from zoneinfo import ZoneInfo

from bot import logcontext
from bot.config import Config
from bot.i18n import Catalogs, Translator, normalize_locale
from bot.identity import Identity
from bot.metrics import Metrics
from bot.ports import Transport
from bot.rules import BusinessCalendar

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import aiohttp

    from bot.mail import Mailer
    from bot.video.base import VideoProvider


def utc_now() -> datetime:
    return datetime.now(UTC)


class JobRunner(Protocol):
    """Runs a background job once for a stable key, in one transaction with its messages
    (the dispatcher is the one implementation)."""

    async def run_job(
        self,
        key: str,
        job: Callable[..., Awaitable[None]],
        *,
        room_id: str = "",
        locale: str | None = None,
    ) -> bool: ...


class Services:
    """What a handler may use besides its event; no identity or database answers here."""

    def __init__(
        self,
        config: Config,
        *,
        catalogs: Catalogs,
        transport: Transport,
        clock: Callable[[], datetime] = utc_now,
        metrics: Metrics | None = None,
        staff_room_id: Callable[[], str | None] | None = None,
        http: aiohttp.ClientSession | None = None,
        video: VideoProvider | None = None,
        mailer: Mailer | None = None,
    ):
        self.config = config
        self.catalogs = catalogs
        self.transport = transport
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.tz = ZoneInfo(config.service.timezone)
        self.calendar = BusinessCalendar.for_service(config.service)
        self.identity = Identity(config, transport, staff_room_id)
        self.http = http
        self.video = video
        self.mailer = mailer
        # Set once the dispatcher exists (it needs these services to be built).
        self.jobs: JobRunner | None = None

    def bot_user_id(self) -> str:
        return self.identity.bot_user_id()

    def staff_room_id(self) -> str | None:
        return self.identity.staff_room_id()

    def room_key(self, purpose: str, who: str) -> str:
        """A stable, unguessable key for a room the bot creates for someone (`create_room`'s
        `key`): asking twice, as a replay after a crash does, finds the same room."""
        secret = self.config.web.secret or self.config.matrix.user_id
        digest = hmac.new(secret.encode(), f"{purpose}:{who}".encode(), hashlib.sha256)
        return digest.hexdigest()[:32]

    def staff_tr(self) -> Translator:
        return self.catalogs.get(self.config.service.default_locale)

    def tr(self, locale: str | None) -> Translator:
        return self.catalogs.get(normalize_locale(locale) if locale else None)

    def count_event(self, kind: str) -> None:
        self.metrics.events.labels(kind=kind).inc()

    def count_error(self, handler: str) -> None:
        """A handler (by its function name) or a background job failed and was apologised for."""
        self.metrics.count_error(handler)


Sweeper = Callable[[Services, datetime], Awaitable[None]]


async def sweep_forever(
    services: Services, sweepers: list[Sweeper], stop: asyncio.Event, every: float = 30.0
) -> None:
    """Time-outs are database columns swept here, never in-memory timers."""
    while not stop.is_set():
        for sweeper in sweepers:
            try:
                with logcontext.bound():  # what a sweep binds ends with it
                    await sweeper(services, services.clock())
            except Exception:
                log.exception("sweeper %s failed", getattr(sweeper, "__name__", sweeper))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
