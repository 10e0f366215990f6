"""Composition root: the one place where objects are built and wired together."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from prometheus_client import CollectorRegistry, Counter

from bot.config import Config
from bot.domain.bridge import bridge_client_key, parse_bridged
from bot.i18n import Catalogs, Translator, normalize_locale
from bot.matrix.inbound import Incoming, IncomingText
from bot.rules import BusinessCalendar
from bot.storage.models import Client, UserPref

if TYPE_CHECKING:
    import aiohttp

    from bot.dispatch import Dispatcher, Sender
    from bot.mail import Mailer
    from bot.matrix.transport import Transport
    from bot.video.base import VideoProvider

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.events = Counter(
            "support_bot_events", "Matrix events handled", ["kind"], registry=self.registry
        )
        self.errors = Counter(
            "support_bot_handler_errors", "Handler errors (apologised for)", registry=self.registry
        )
        self.tickets = Counter(
            "support_bot_requests_opened",
            "Tickets, questions and quotes opened",
            ["kind"],
            registry=self.registry,
        )


class Services:
    """What handlers reach through `ctx.services`: config, clock, calendar, transport…"""

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
        self.calendar = BusinessCalendar(
            country=config.service.country,
            timezone=config.service.timezone,
            day_end=config.service.day_end,
            day_start=config.service.day_start,
        )
        self._staff_room_id = staff_room_id or (lambda: None)
        self._bridges = {bridge.user_id: bridge for bridge in config.bridges}
        self._staff = frozenset(config.matrix.staff)
        self.http = http
        self.video = video
        self.mailer = mailer
        self.dispatcher: Dispatcher | None = None
        # Hooks other modules register (e.g. the web server telling the chat side).
        self.extras: dict[str, Any] = {}

    # Identity -------------------------------------------------------------------------------
    def bot_user_id(self) -> str:
        return self.config.matrix.user_id

    def staff_room_id(self) -> str | None:
        return self._staff_room_id()

    def is_bridge(self, user_id: str) -> bool:
        return user_id in self._bridges

    def identify(self, event: Incoming) -> Sender:
        from bot.dispatch import Sender

        bridge = self._bridges.get(event.sender)
        if bridge is not None and isinstance(event, IncomingText):
            parsed = parse_bridged(event.body, bridge.nick_format)
            if parsed is not None:
                return Sender(
                    event.sender, bridge_client_key(event.room_id, parsed.nick), parsed.nick
                )
        return Sender(event.sender, event.sender)

    def text_of(self, sender: Sender, event: IncomingText) -> str:
        """What the person wrote (without a bridge's nickname prefix; no U+0000, which
        PostgreSQL refuses and nobody types)."""
        body = event.body.replace("\x00", "")
        if sender.bridged:
            bridge = self._bridges[sender.user_id]
            parsed = parse_bridged(body, bridge.nick_format)
            return parsed.text if parsed else body
        return body

    def is_staff(self, sender: Sender) -> bool:
        """Configured staff, or staff-room members with power level ≥ 50. Never a bridge."""
        if sender.bridged or sender.user_id in self._bridges:
            return False
        if sender.user_id in self._staff:
            return True
        room = self.staff_room_id()
        if room is None:
            return False
        try:
            return (
                sender.user_id in self.transport.joined_members(room)
                and self.transport.power_level(room, sender.user_id) >= 50
            )
        except Exception:  # the room may not be synced yet
            return False

    def is_staff_user(self, user_id: str) -> bool:
        from bot.dispatch import Sender

        return self.is_staff(Sender(user_id, user_id))

    # Language ---------------------------------------------------------------------------------
    async def locale_for(self, user_key: str, room_id: str | None = None) -> str:
        pref = await UserPref.get_or_none(user_key=user_key)
        if pref is not None:
            return pref.locale
        return self.config.service.default_locale

    def staff_tr(self) -> Translator:
        return self.catalogs.get(self.config.service.default_locale)

    def tr(self, locale: str | None) -> Translator:
        return self.catalogs.get(normalize_locale(locale) if locale else None)

    # Metrics ------------------------------------------------------------------------------------
    def count_event(self, kind: str) -> None:
        self.metrics.events.labels(kind=kind).inc()

    def count_error(self) -> None:
        self.metrics.errors.inc()

    async def client_for(self, sender: Sender, now: datetime) -> Client:
        client, _ = await Client.get_or_create(
            key=sender.key,
            defaults={"created_at": now, "display_name": sender.nick},
        )
        return client


Sweeper = Callable[[Services, datetime], Awaitable[None]]


async def sweep_forever(
    services: Services, sweepers: list[Sweeper], stop: asyncio.Event, every: float = 30.0
) -> None:
    """Time-outs are database columns swept here, never in-memory timers."""
    while not stop.is_set():
        for sweeper in sweepers:
            try:
                await sweeper(services, services.clock())
            except Exception:
                log.exception("sweeper %s failed", getattr(sweeper, "__name__", sweeper))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)


async def run_bot(
    config: Config,
    *,
    stop: asyncio.Event | None = None,
    ready: Callable[[], None] | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> None:
    """Run the bot until `stop` is set: database, Matrix, outbox, sweepers and web server."""
    import aiohttp

    from bot.dispatch import Dispatcher
    from bot.mail import Mailer
    from bot.matrix.client import MatrixShell
    from bot.outbox import Deliverer
    from bot.storage.db import close_db, open_db
    from bot.video import build_provider
    from bot.web.app import build_web_app, start_web
    from handlers import build_router, sweepers

    stop = stop or asyncio.Event()
    catalogs = Catalogs.load(default=config.service.default_locale)
    applied = await open_db(config.database.url)
    if applied:
        log.info("applied %d pending migration(s) at start", len(applied))
    http = aiohttp.ClientSession()
    shell: MatrixShell | None = None
    deliverer: Deliverer | None = None
    web_runner = None
    tasks: list[asyncio.Task[Any]] = []
    try:
        holder: dict[str, Dispatcher] = {}

        async def on_batch(events: list[Incoming]) -> None:
            await holder["dispatcher"].on_batch(events)

        metrics = Metrics()
        shell = MatrixShell(
            config,
            on_batch=on_batch,
            is_staff_inviter=lambda user_id: services.is_staff_user(user_id),
            clock=clock,
        )
        try:
            video = build_provider(config.video, http, now=clock)
        except Exception as error:  # a misconfigured provider must not stop the front desk
            log.warning("video provider unavailable: %s", type(error).__name__)
            video = None
        services = Services(
            config,
            catalogs=catalogs,
            transport=shell.transport,
            clock=clock,
            metrics=metrics,
            staff_room_id=lambda: shell.staff_room_id if shell else None,
            http=http,
            video=video,
            mailer=Mailer(config.mail),
        )
        deliverer = Deliverer(shell.transport, clock)
        dispatcher = Dispatcher(
            build_router(), services, wake_delivery=deliverer.wake, deliver=deliverer.offer
        )
        services.dispatcher = dispatcher
        holder["dispatcher"] = dispatcher

        async def on_confirmed(ticket_id: int) -> None:
            # The web page confirmed: the chat side updates the card and tells everyone.
            from handlers import interventions

            await interventions.on_client_confirmed(services, ticket_id)

        web = build_web_app(
            config=config,
            catalogs=catalogs,
            registry=metrics.registry,
            on_confirmed=on_confirmed,
            clock=clock,
            sync_state=shell.sync_state,
        )
        web_runner = await start_web(web, config.web.listen)
        await shell.start()
        deliverer.start()
        tasks.append(asyncio.create_task(sweep_forever(services, sweepers(), stop)))
        sync_task = asyncio.create_task(shell.run(), name="matrix-sync")
        tasks.append(sync_task)
        log.info("support-bot ready as %s", config.matrix.user_id)
        # What start-up built (modules, catalogs, nio's and Tortoise's tables) lives as long
        # as the process: frozen out of the collector's sight, so that a full collection in
        # the middle of an answer walks only what answers create.
        gc.collect()
        gc.freeze()
        if ready is not None:
            ready()
        stop_task = asyncio.create_task(stop.wait())
        await asyncio.wait({sync_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        stop_task.cancel()
        if sync_task.done() and sync_task.exception() is not None:
            raise sync_task.exception()  # type: ignore[misc]
    finally:
        log.info("support-bot stopping")
        stop.set()
        if shell is not None:
            with contextlib.suppress(Exception):
                await shell.stop()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if deliverer is not None:
            await deliverer.stop()
        if web_runner is not None:
            with contextlib.suppress(Exception):
                await web_runner.cleanup()
        await http.close()
        await close_db()
