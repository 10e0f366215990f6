"""Composition root: the one place where objects are built and wired, in a straight line:
config → storage → services → Matrix shell → dispatcher → run. Nothing imports this module
but the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import aiohttp

import handlers
from bot.config import Config
from bot.dispatch import Dispatcher
from bot.events import Incoming
from bot.i18n import Catalogs
from bot.mail import Mailer
from bot.mailbox.raw import MailSink
from bot.mailbox.reader import MailboxReader
from bot.mailin import ChannelSink
from bot.matrix.client import MatrixShell
from bot.outbox import Deliverer
from bot.process import private_umask
from bot.services import Metrics, Services, sweep_forever, utc_now
from bot.storage.db import close_db, open_db
from bot.storage.tags import SentTags
from bot.version import version
from bot.video import build_provider
from bot.web.app import build_metrics_app, build_web_app, start_web
from handlers.consent import on_client_confirmed

log = logging.getLogger(__name__)

#: Builds the handler of the support mailbox's mails from the services (`run_bot`'s
#: `mail_sink`); see `bot.mailbox.raw.MailSink` for what a sink promises.
MailSinkFactory = Callable[[Services], MailSink]


def mail_channel(services: Services) -> MailSink:
    """The e-mail channel: each mail of the support mailbox through the dispatcher, like a
    Matrix event (`bot.mailin.ChannelSink`, then `handlers.mail`)."""
    dispatcher = services.jobs
    assert isinstance(dispatcher, Dispatcher)  # set just after the dispatcher is built
    return ChannelSink(dispatcher, own_address=services.config.mail.from_, clock=services.clock)


async def _unless_stopped(step: Awaitable[None], stop: asyncio.Event) -> bool:
    """Run `step` unless `stop` is set first (then `step` is cancelled): True when it ran."""
    task = asyncio.ensure_future(step)
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if task.done():
        task.result()  # its error, if any, is the start's
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    log.info("stopped during start-up")
    return False


async def run_bot(
    config: Config,
    *,
    stop: asyncio.Event | None = None,
    ready: Callable[[], None] | None = None,
    clock: Callable[[], datetime] = utc_now,
    mail_sink: MailSinkFactory = mail_channel,
) -> None:
    """Run the bot until `stop` is set: database, Matrix, outbox, sweepers, web server and,
    with `[mail.inbound]`, the support mailbox, whose mails go to `mail_sink(services)`."""
    stop = stop or asyncio.Event()
    # First, so that the version is in the log even when start-up fails (a migration, a
    # catalog, the homeserver): that is when an operator needs to know which code ran.
    log.info("support-bot %s starting", version())
    private_umask()  # before the first file: the database and the key store hold secrets
    catalogs = Catalogs.load(default=config.service.default_locale)
    applied = await open_db(config.database.url)
    if applied:
        log.info("applied %d pending migration(s) at start", len(applied))
    http = aiohttp.ClientSession()
    shell: MatrixShell | None = None
    deliverer: Deliverer | None = None
    web_runner = None
    metrics_runner = None
    tasks: list[asyncio.Task[Any]] = []
    try:
        holder: dict[str, Dispatcher] = {}

        async def on_batch(events: list[Incoming]) -> None:
            await holder["dispatcher"].on_batch(events)

        metrics = Metrics()
        shell = MatrixShell(
            config,
            on_batch=on_batch,
            is_staff_inviter=lambda user_id: services.identity.is_staff_user(user_id),
            clock=clock,
        )
        metrics.watch_sync(shell.stats)
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
        deliverer = Deliverer(
            shell.transport,
            clock,
            tags=SentTags(),
            mailer=lambda: services.mailer,
            metrics=metrics,
        )
        dispatcher = Dispatcher(
            handlers.build_router(),
            services,
            wake_delivery=deliverer.wake,
            deliver=deliverer.offer,
        )
        services.jobs = dispatcher
        holder["dispatcher"] = dispatcher

        async def on_confirmed(ticket_id: int) -> None:
            # The web page confirmed: the chat side updates the card and tells everyone.
            await on_client_confirmed(services, ticket_id)

        web = build_web_app(
            config=config,
            catalogs=catalogs,
            registry=metrics.registry,
            on_confirmed=on_confirmed,
            clock=clock,
            sync_state=shell.sync_state,
            # Asked at each calendar feed fetch: the feeds carry moderator links.
            is_staff=lambda user_id: services.identity.is_staff_user(user_id),
        )
        web_runner = await start_web(web, config.web.listen)

        async def refresh_metrics() -> None:
            # The figures kept in the database (outbox, queue, tickets at risk), per scrape.
            await metrics.refresh(clock(), services.calendar, config.service.sla_warning_hours)

        # Before the Matrix start (retried while the homeserver is away): its sync failures
        # are worth seeing then already.
        try:
            metrics_runner = await start_web(
                build_metrics_app(metrics.registry, refresh_metrics),
                config.metrics.listen,
                name="metrics",
                access_log=False,
            )
        except OSError as error:
            # The front desk does not stay closed for want of its metrics (the address taken,
            # or not this host's): Prometheus' `up` shows the loss, this line says why.
            log.error(
                "metrics: cannot listen on %s (%s): running without /metrics",
                config.metrics.listen,
                error.strerror or type(error).__name__,
            )
        # A stop during start-up (SIGTERM while the homeserver is unreachable and the login
        # retries) ends the start at once instead of waiting for a SIGKILL.
        if not await _unless_stopped(shell.start(), stop):
            return
        deliverer.start()
        tasks.append(asyncio.create_task(sweep_forever(services, handlers.sweepers(), stop)))
        # A flooder's deferred messages, handled at the allowed pace beside the sync loop.
        tasks.append(asyncio.create_task(dispatcher.run_deferred_forever(stop)))
        if config.mail.inbound.host:
            reader = MailboxReader(config.mail.inbound, mail_sink(services))
            metrics.watch_mailbox(reader.stats)
            tasks.append(asyncio.create_task(reader.run(stop), name="mailbox"))
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
        for runner in (web_runner, metrics_runner):
            if runner is not None:
                with contextlib.suppress(Exception):
                    await runner.cleanup()
        await http.close()
        await close_db()
