"""The bot's HTTP side (aiohttp): health, consent pages and staff calendar feeds on the public
listener (`[web] listen`), and the Prometheus metrics on a listener of their own.

Routes of the public application (`build_web_app`):

* `GET /healthz` — 200 `{"status": "ok", "db": "ok", "matrix": "ok"}`; 503 when the database
  does not answer (`"db": "error"`) or the sync loop has not moved for minutes
  (`"matrix": "stalled"`: stuck on a batch, or the homeserver unreachable). `"matrix"` is
  `"starting"` until the first sync answer (still 200: the process is up);
* `GET /confirm/{token}` — the consent page, or a page saying why the link cannot be used;
  never changes anything (mail scanners and link previews open links);
* `POST /confirm/{token}` — the page's button (with its CSRF field): records the consent,
  then calls `on_confirmed(ticket_id)`;
* `/dashboard/…` — the staff dashboard and its one-time login links (`bot.web.dashboard`);
* `GET /calendar/{token}.ics` — the bookings of the staff member holding that feed token,
  moderator links included: so the holder's staff status is checked again at each fetch
  (`is_staff`), and a feed of someone no longer staff is a 404 like an unknown token. The row
  is kept: right after a restart the staff room is not synced yet, and a staff member by power
  level would lose their feed for good over a fetch at that moment.

Tokens appear only in URLs: the access log written here replaces them with `…`, and nothing
else logs them.

Slow or greedy clients (`start_web`, `Limits`): a connection must deliver a complete request
head within `header_timeout` of opening or of its previous response, and a request body within
`body_timeout`; connections are capped per client address and in total (a quarter of the
process's file descriptors at most, so that the Matrix, SMTP and database sockets always find
one). A connection over a cap gets a bare 503 and is closed before anything is read. Behind a
reverse proxy every connection comes from the proxy's address: per-client limits belong there.

The metrics application (`build_metrics_app`, on `[metrics] listen`, loopback by default)
serves `GET /metrics` only: Prometheus text (or OpenMetrics when asked) from the registry
passed in (nothing global), after awaiting `refresh` for the figures read at scrape. It is
apart from the public listener because the figures (queue length, errors by handler) are
for the operator, not for whoever reaches the confirmation pages.
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
from collections import Counter as Tally
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.exposition import choose_encoder
from tortoise import connections
from tortoise.transactions import in_transaction

from bot.calendar_ics import FeedEvent, staff_feed_ics
from bot.config import Config
from bot.consent import (
    Confirmed,
    ConsentProblem,
    ProblemKind,
    confirm,
    confirmation_link,
    consent_status,
)
from bot.i18n import N_, Catalogs, Msg, Translator, normalize_locale
from bot.storage.models import Booking, StaffFeed, UserPref
from bot.tokens import check_csrf, csrf_token, looks_like_token, new_token, token_hash
from bot.web import pages
from bot.web.dashboard import add_dashboard

__all__ = [
    "Limits",
    "OnConfirmed",
    "build_metrics_app",
    "build_web_app",
    "confirmation_link",
    "feed_link",
    "issue_staff_feed_token",
    "start_web",
    "stop_web",
]

log = logging.getLogger(__name__)

OnConfirmed = Callable[[int], Awaitable[None]]
IsStaff = Callable[[str], bool]

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Robots-Tag": "noindex, nofollow",
}
PROBLEM_STATUS = {
    ProblemKind.UNKNOWN: 404,
    ProblemKind.EXPIRED: 410,
    ProblemKind.SUPERSEDED: 410,
    ProblemKind.USED: 409,
    ProblemKind.NOT_WAITING: 409,
}
#: Bookings that ended longer ago than this are left out of the feeds.
FEED_HISTORY = timedelta(days=90)
HEALTH_TIMEOUT_SECONDS = 5.0
# A consent form holds one short field; nothing legitimate posts more.
_MAX_BODY = 16 * 1024
#: Seconds a connection has to send a whole request head (from its opening, or from the
#: previous response on a kept-alive connection) and a request its body.
HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 10.0
#: Seconds an unread request body is still drained after the answer (so that the client reads
#: the answer rather than a reset) before the connection closes; aiohttp's default is 10.
LINGERING_TIME = 2.0
#: Connection caps of one listener: per client address, and in total (at most; see
#: `default_max_connections`).
MAX_CONNECTIONS_PER_ADDRESS = 16
MAX_CONNECTIONS = 256
# What a connection over a cap reads before it is closed (nothing of its request is read).
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 5\r\n"
    b"Connection: close\r\n\r\n"
)
_TOKEN_IN_PATH = re.compile(r"^/(confirm|calendar|dashboard/login)/[^/?]+")


class _Web:
    """What the handlers share (one per application)."""

    def __init__(
        self,
        config: Config,
        catalogs: Catalogs,
        registry: CollectorRegistry,
        on_confirmed: OnConfirmed,
        clock: Callable[[], datetime],
        sync_state: Callable[[], str] | None,
        is_staff: IsStaff | None,
        body_timeout: float,
    ) -> None:
        self.sync_state = sync_state
        self.is_staff = is_staff
        self.body_timeout = body_timeout
        self.config = config
        self.catalogs = catalogs
        self.on_confirmed = on_confirmed
        self.clock = clock
        self.tz = ZoneInfo(config.service.timezone)
        self.secret = config.web.secret
        self.requests = Counter(
            "support_bot_http_requests",
            "HTTP requests served, by route and status.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.consents = Counter(
            "support_bot_consent_outcomes",
            "Consent link outcomes: confirmed, or why the link could not be used.",
            ["outcome"],
            registry=registry,
        )
        for outcome in ("confirmed", "csrf", *(kind.value for kind in ProblemKind)):
            self.consents.labels(outcome=outcome)

    def translator(self, request: web.Request, locale: str | None) -> Translator:
        """`?lang=` wins, then the ticket's locale, then the service default."""
        chosen = normalize_locale(request.query.get("lang")) or locale
        return self.catalogs.get(chosen or self.config.service.default_locale)


_WEB = web.AppKey("support_bot_web", _Web)


def build_web_app(
    *,
    config: Config,
    catalogs: Catalogs,
    registry: CollectorRegistry,
    on_confirmed: OnConfirmed,
    clock: Callable[[], datetime],
    sync_state: Callable[[], str] | None = None,
    is_staff: IsStaff | None = None,
    body_timeout: float = BODY_TIMEOUT,
) -> web.Application:
    """The aiohttp application. Its metrics are registered in `registry` (once per app).
    `sync_state` tells /healthz how the Matrix sync loop is ("ok", "starting", "stalled").
    `is_staff(user_id)` is asked at each calendar feed fetch (the bot passes its identity's;
    None serves every valid token, for tests of the feed alone). `body_timeout`: seconds a
    POST has to send its body."""
    if not config.web.secret:
        raise ValueError("web.secret is required: it signs the confirmation links")
    app = web.Application(client_max_size=_MAX_BODY, middlewares=[_count_requests])
    app[_WEB] = _Web(
        config, catalogs, registry, on_confirmed, clock, sync_state, is_staff, body_timeout
    )
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/confirm/{token}", _confirm_page)
    app.router.add_post("/confirm/{token}", _confirm_post)
    app.router.add_get("/calendar/{token}.ics", _calendar)
    add_dashboard(app, config=config, catalogs=catalogs, clock=clock, is_staff=is_staff)
    return app


# -- middleware and signals -------------------------------------------------------------------


@web.middleware
async def _count_requests(
    request: web.Request, handler: Callable[[web.Request], Awaitable[StreamResponse]]
) -> StreamResponse:
    state = request.app[_WEB]
    # The route's pattern, never the path: paths carry secret tokens.
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "other"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        state.requests.labels(route=name, method=request.method, status=str(status)).inc()


async def _security_headers(request: web.Request, response: StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


# -- health -----------------------------------------------------------------------------------


async def _healthz(request: web.Request) -> web.Response:
    state = request.app[_WEB]
    body = {"status": "ok", "db": "ok"}
    if state.sync_state is not None:
        body["matrix"] = state.sync_state()
    try:
        async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS):
            await connections.get("default").execute_query("SELECT 1")
    except Exception as exc:  # any failure means "not healthy", with its kind in the log
        log.warning("healthz: database check failed (%s)", type(exc).__name__)
        body["db"] = "error"
    if body["db"] != "ok" or body.get("matrix") == "stalled":
        body["status"] = "error"
        return web.json_response(body, status=503)
    return web.json_response(body)


# -- consent pages ----------------------------------------------------------------------------


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _languages(state: _Web) -> list[tuple[str, str]]:
    # Query-only relative links keep any path prefix of a reverse proxy.
    return [(code, f"?lang={code}") for code in state.catalogs.locales]


def _problem(state: _Web, request: web.Request, problem: ConsentProblem) -> web.Response:
    state.consents.labels(outcome=problem.kind.value).inc()
    tr = state.translator(request, problem.locale)
    page = pages.problem_page(tr, problem, tz=state.tz, languages=_languages(state))
    return _html(page, PROBLEM_STATUS[problem.kind])


async def _confirm_page(request: web.Request) -> web.Response:
    state = request.app[_WEB]
    token = request.match_info["token"]
    result = await consent_status(token, now=state.clock(), secret=state.secret)
    if isinstance(result, ConsentProblem):
        return _problem(state, request, result)
    tr = state.translator(request, result.locale)
    lang = normalize_locale(request.query.get("lang"))
    # Relative to /confirm/: works behind a reverse proxy that adds a path prefix.
    action = f"./{token}" + (f"?lang={lang}" if lang else "")
    page = pages.consent_page(
        tr,
        result,
        tz=state.tz,
        action=action,
        csrf=csrf_token(token, state.secret),
        languages=_languages(state),
    )
    return _html(page)


async def _confirm_post(request: web.Request) -> web.Response:
    state = request.app[_WEB]
    token = request.match_info["token"]
    try:
        # A body trickled in a byte at a time would hold the connection for ever.
        async with asyncio.timeout(state.body_timeout):
            form = await request.post()
    except TimeoutError:
        return web.Response(status=408, text="Request timeout\n", headers={"Connection": "close"})
    candidate = form.get(pages.CSRF_FIELD)
    cross_site = request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site"
    if (
        cross_site
        or not isinstance(candidate, str)
        or not check_csrf(token, state.secret, candidate)
    ):
        state.consents.labels(outcome="csrf").inc()
        tr = state.translator(request, None)
        return _html(pages.forbidden_page(tr), 403)
    result = await confirm(token, now=state.clock(), secret=state.secret)
    if isinstance(result, ConsentProblem):
        return _problem(state, request, result)
    state.consents.labels(outcome="confirmed").inc()
    await _notify(state, result)
    tr = state.translator(request, result.locale)
    return _html(pages.success_page(tr, result, tz=state.tz))


async def _notify(state: _Web, confirmed: Confirmed) -> None:
    """Tell the bot; the consent is committed whatever happens here."""
    try:
        await state.on_confirmed(confirmed.ticket_id)
    except Exception:
        log.exception("consent: on_confirmed failed for ticket %s", confirmed.ref)


# -- staff calendar feeds ---------------------------------------------------------------------


async def issue_staff_feed_token(staff: str, secret: str, now: datetime) -> str:
    """A new feed token for `staff` (for `!calendar`); the previous one stops working."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("naive datetime refused: pass an aware datetime")
    token = new_token()
    async with in_transaction() as conn:
        await StaffFeed.filter(staff=staff).using_db(conn).delete()
        await StaffFeed.create(
            staff=staff, token_hash=token_hash(token, secret), created_at=now, using_db=conn
        )
    return token


def _safe_url(url: str | None) -> str | None:
    if not url or not url.startswith(("https://", "http://")):
        return None
    if any(c.isspace() or c in '"<>' or ord(c) < 32 for c in url):
        return None
    return url


async def _calendar(request: web.Request) -> web.Response:
    state = request.app[_WEB]
    token = request.match_info["token"]
    feed = None
    if looks_like_token(token):
        feed = await StaffFeed.get_or_none(token_hash=token_hash(token, state.secret))
    # Moderator links are in the feed: only for someone still staff. Same answer as an unknown
    # token, so a former staff member learns nothing from it.
    if feed is None or (state.is_staff is not None and not state.is_staff(feed.staff)):
        return web.Response(status=404, text="Not found\n")
    now = state.clock()
    pref = await UserPref.get_or_none(user_key=feed.staff)
    tr = state.catalogs.get(pref.locale if pref else state.config.service.default_locale)
    bookings = (
        await Booking.filter(staff=feed.staff, status="active", end__gte=now - FEED_HISTORY)
        .select_related("ticket")
        .order_by("start")
    )
    host = urlsplit(state.config.web.public_url).hostname or "support-bot"
    events = [
        FeedEvent(
            uid=f"booking-{booking.id}@{host}",
            start=booking.start,
            end=booking.end,
            summary=tr.render(
                Msg(N_("Support call {ref}"), {"ref": booking.ticket.ref}), state.tz
            ),
            description=pages.category_label(tr, booking.ticket.category),
            location_url=_safe_url(booking.staff_url or booking.client_url),
        )
        for booking in bookings
    ]
    body = staff_feed_ics(
        events,
        state.config.service.timezone,
        now,
        calendar_name=tr.gettext(N_("Support calls")),
    )
    return web.Response(
        body=body,
        content_type="text/calendar",
        charset="utf-8",
        headers={"Content-Disposition": 'inline; filename="support-calls.ics"'},
    )


# -- links (confirmation_link is in bot.consent) ----------------------------------------------


def feed_link(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/calendar/{token}.ics"


# -- metrics ----------------------------------------------------------------------------------


Refresh = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Scrape:
    registry: CollectorRegistry
    refresh: Refresh | None


_SCRAPE = web.AppKey("support_bot_scrape", _Scrape)


def build_metrics_app(
    registry: CollectorRegistry, refresh: Refresh | None = None
) -> web.Application:
    """`GET /metrics` from `registry`; `refresh` runs before each scrape is encoded (it reads
    the figures kept in the database) and handles its own failures."""
    app = web.Application()
    app[_SCRAPE] = _Scrape(registry, refresh)
    app.router.add_get("/metrics", _metrics)
    return app


async def _metrics(request: web.Request) -> web.Response:
    scrape = request.app[_SCRAPE]
    if scrape.refresh is not None:
        await scrape.refresh()
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encoder(scrape.registry), headers={"Content-Type": content_type})


# -- serving ----------------------------------------------------------------------------------


class _AccessLogger(AbstractAccessLogger):
    """One line per request, with the secret part of token URLs replaced by `…`."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        path = _TOKEN_IN_PATH.sub(lambda m: f"/{m[1]}/…", request.path)
        self.logger.info("%s %s %d %.1fms", request.method, path, response.status, time * 1000)


def _split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def default_max_connections() -> int:
    """`MAX_CONNECTIONS`, or a quarter of the file descriptors the process may open when that
    is fewer: at the limit, the Matrix, SMTP and database sockets failed too."""
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return MAX_CONNECTIONS
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(MAX_CONNECTIONS_PER_ADDRESS, min(MAX_CONNECTIONS, soft // 4))


@dataclass(frozen=True, slots=True)
class Limits:
    """What one listener tolerates of its clients (see the module docstring)."""

    header_timeout: float = HEADER_TIMEOUT
    lingering_time: float = LINGERING_TIME
    max_connections: int = field(default_factory=default_max_connections)
    max_per_address: int = MAX_CONNECTIONS_PER_ADDRESS


class _Connections:
    """The open connections of one listener, by client address, against its `Limits`."""

    #: Seconds between two log lines about refused connections (a flood must not flood the log).
    LOG_EVERY = 60.0

    def __init__(self, limits: Limits, name: str) -> None:
        self.limits = limits
        self.name = name
        self.by_address: Tally[str] = Tally()
        self.total = 0
        self.refused = 0  # since the last log line
        self._logged_at: float | None = None

    def admit(self, address: str) -> bool:
        limits = self.limits
        if self.total >= limits.max_connections or (
            self.by_address[address] >= limits.max_per_address
        ):
            self._refused()
            return False
        self.total += 1
        self.by_address[address] += 1
        return True

    def release(self, address: str) -> None:
        self.total -= 1
        self.by_address[address] -= 1
        if self.by_address[address] <= 0:
            del self.by_address[address]

    def _refused(self) -> None:
        self.refused += 1
        now = asyncio.get_running_loop().time()
        if self._logged_at is None or now - self._logged_at >= self.LOG_EVERY:
            log.warning(
                "%s: connection limit reached (%d open, at most %d per address and %d in"
                " all): refused %d connection(s)",
                self.name,
                self.total,
                self.limits.max_per_address,
                self.limits.max_connections,
                self.refused,
            )
            self._logged_at, self.refused = now, 0


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the caps of `_Connections`: a connection
    over a cap never reaches aiohttp (nothing of it is parsed, no task is started)."""

    def __init__(self, make_inner: Callable[[], asyncio.Protocol], connections: _Connections):
        self._make_inner = make_inner
        self._connections = connections
        self._inner: asyncio.Protocol | None = None
        self._address = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not self._connections.admit(self._address):
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(_BUSY)
            transport.close()
            return
        self._inner = self._make_inner()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._connections.release(self._address)
            inner, self._inner = self._inner, None
            inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class _GuardedSite(web.BaseSite):
    """`web.TCPSite`, with each connection behind `_Guarded`."""

    __slots__ = ("_connections", "_host", "_port")

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, connections: _Connections
    ) -> None:
        super().__init__(runner)
        self._host, self._port, self._connections = host, port, connections

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None  # the runner is set up: BaseSite checks it
        connections = self._connections
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Guarded(server, connections), self._host, self._port, backlog=self._backlog
        )


async def start_web(
    app: web.Application,
    listen: str,
    *,
    name: str = "web",
    access_log: bool = True,
    limits: Limits | None = None,
) -> web.AppRunner:
    """Serve `app` on `listen` ("host:port"; port 0 picks a free one, see `runner.addresses`).
    Without `access_log` requests are not logged (a scrape every 15 s would drown the log).
    `limits` (default `Limits()`) bound slow clients and connections."""
    limits = limits or Limits()
    host, port = _split_listen(listen)
    # aiohttp arms its keep-alive timer when a connection opens and again after each response,
    # and closes the connection if no complete request head has arrived when it fires: with
    # `header_timeout` it is the head's deadline, which a byte trickled now and then does not
    # push back (tests/web/test_slow_clients.py holds aiohttp to it).
    options: dict[str, Any] = {
        "keepalive_timeout": limits.header_timeout,
        "lingering_time": limits.lingering_time,
    }
    if access_log:
        options["access_log_class"] = _AccessLogger
    else:
        options["access_log"] = None
    runner = web.AppRunner(app, **options)
    await runner.setup()
    site = _GuardedSite(runner, host, port, _Connections(limits, name))
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("%s: listening on %s", name, ", ".join(map(str, runner.addresses)))
    return runner


async def stop_web(runner: web.AppRunner) -> None:
    await runner.cleanup()
