"""The staff dashboard (SPEC §10): server-rendered pages behind a one-time login link.

Routes (added to the public application by `add_dashboard`):

* `GET /dashboard/login/{token}` — a page with one button, "Open the dashboard", for the staff
  member the link was made for. A GET changes nothing: Element and the homeserver fetch the
  links of a message for their previews, and that must not use up the link.
* `POST /dashboard/login/{token}` — the button (with its CSRF field): the link is used once
  and opens a session; its cookie is set and the browser goes to the queue.
* `GET /dashboard/{page}` — the pages (`bot.web.dashboard_pages.PAGES`), for a session.
* `POST /dashboard/logout` — ends the session (CSRF field derived from the session).

Access (decisions the issue left open):

* `!dashboard` (`handlers.dashboard`) sends the link in the bot's direct room with the staff
  member who asked, never in the staff room: the link logs in as that staff member only. It
  works once, for `web.dashboard_link_minutes` (10 by default); asking again cancels the links
  of that staff member not used yet.
* The session cookie is `HttpOnly`, `SameSite=Strict`, `Secure` when `web.public_url` is
  https, limited to the dashboard's path, and lasts `web.dashboard_session_hours` (8). Tokens
  of links and sessions are stored as `bot.tokens.token_hash` only.
* Whether the holder is staff is asked again at every request (`is_staff`, the bot's identity:
  the configured list or power level in the staff room): someone removed from staff is refused
  at their next request. Without `is_staff` nobody gets in.
* An unknown, expired, used or not-staff link, and a page without a valid session, answer
  403 with a page in the reader's language saying why and what to do (`!dashboard`).

Pages: Jinja2 templates with autoescape, charts as inline SVG from pygal (`bot.web.charts`),
no script at all, no external asset. The Content-Security-Policy of each page allows nothing
but its one `<style>`, by hash (`default-src 'none'`). Language: `?lang=` for one page, else
the staff member's (`!lang`), else the service's.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from aiohttp import web
from babel import Locale
from babel.dates import format_datetime
from babel.numbers import format_decimal, format_percent
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from bot.config import Config
from bot.i18n import N_, Catalogs, Msg, Translator, normalize_locale
from bot.rules import BusinessCalendar
from bot.storage import dashboard as store
from bot.storage.models import DashboardToken, UserPref
from bot.tokens import check_csrf, csrf_token, looks_like_token, new_token, token_hash
from bot.web.dashboard_pages import PAGES, Page, View

__all__ = [
    "COOKIE",
    "CSRF_FIELD",
    "add_dashboard",
    "dashboard_csp",
    "dashboard_link",
    "issue_dashboard_link",
]

COOKIE = "support_bot_dashboard"
CSRF_FIELD = "csrf"
BODY_TIMEOUT = 10.0

IsStaff = Callable[[str], bool]

#: Why a request is refused (all 403): title and text (English msgids).
REFUSALS: dict[str, tuple[str, str]] = {
    "link": (
        N_("Link not valid"),
        N_(
            "This login link is unknown or has expired: a link works once, within {minutes} "
            "minutes. Type !dashboard in the staff room for a new one."
        ),
    ),
    "used": (
        N_("Link already used"),
        N_(
            "This login link has already been used: a link works only once. Type !dashboard "
            "in the staff room for a new one."
        ),
    ),
    "not_staff": (
        N_("Staff only"),
        N_("The dashboard is for the support staff only, and {staff} is not one of them."),
    ),
    "session": (
        N_("Not logged in"),
        N_(
            "Your dashboard session has ended, or you are not logged in. Type !dashboard in the "
            "staff room to receive a login link."
        ),
    ),
    "csrf": (
        N_("Request refused"),
        N_("This request could not be checked. Open the dashboard again and retry."),
    ),
}

# The page's own style; pygal's CSS of the page's charts is appended (`Page.charts`).
_CSS = """
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:#1b1b1b;background:#f4f5f7}
header{background:#1f3a66;color:#fff;padding:.6rem 1rem;display:flex;flex-wrap:wrap;
gap:.4rem 1.2rem;align-items:center}
header strong{font-size:1.05rem;margin-right:auto}
header a{color:#fff}header a[aria-current=page]{font-weight:700;text-decoration:none}
header form{margin:0}
header button{font:inherit;color:#1f3a66;background:#fff;border:0;border-radius:6px;
padding:.2rem .7rem;cursor:pointer}
main{max-width:78rem;margin:0 auto;padding:1rem}
h1{font-size:1.35rem;margin:.3rem 0 1rem}h2{font-size:1.1rem;margin:1.2rem 0 .5rem}
.pair{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start}
figure{flex:2 1 30rem;margin:0;background:#fff;border:1px solid #d9dce1;border-radius:10px;
padding:.6rem}
figure svg{width:100%;height:auto;display:block}
.numbers{flex:1 1 18rem}
table{border-collapse:collapse;background:#fff;width:100%;font-variant-numeric:tabular-nums}
caption{text-align:left;font-weight:600;padding:.3rem 0}
th,td{border:1px solid #d9dce1;padding:.3rem .5rem;text-align:left;vertical-align:top}
td.n,th.n{text-align:right}
thead th{background:#eef1f5}
tr.overdue td{background:#fdeef0}tr.due_soon td{background:#fff6e8}
.today{background:#eef3fb}
.call{display:block;white-space:nowrap}
.muted{color:#5a606a}
.card{background:#fff;border:1px solid #d9dce1;border-radius:10px;padding:1rem 1.1rem;
max-width:36rem}
.card button{display:block;width:100%;min-height:3rem;font:inherit;font-size:1.1rem;
font-weight:700;color:#fff;background:#1f5fbf;border:0;border-radius:8px;cursor:pointer}
.forbidden{border-color:#b00020;background:#fdeef0}
nav.lang{text-align:right;font-size:.9rem}nav.lang a{margin-left:.8rem}
nav.weeks{display:flex;gap:1rem;margin:.5rem 0}
"""


@dataclass(frozen=True, slots=True)
class _Dashboard:
    config: Config
    catalogs: Catalogs
    clock: Callable[[], datetime]
    is_staff: IsStaff | None
    calendar: BusinessCalendar
    tz: ZoneInfo
    env: Environment
    cookie_path: str
    secure: bool

    @property
    def secret(self) -> str:
        return self.config.web.secret


_DASHBOARD = web.AppKey("support_bot_dashboard", _Dashboard)


def add_dashboard(
    app: web.Application,
    *,
    config: Config,
    catalogs: Catalogs,
    clock: Callable[[], datetime],
    is_staff: IsStaff | None,
) -> None:
    """Add the dashboard's routes to the public application."""
    public = urlsplit(config.web.public_url)
    env = Environment(
        loader=PackageLoader("bot.web", "templates/dashboard"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    app[_DASHBOARD] = _Dashboard(
        config=config,
        catalogs=catalogs,
        clock=clock,
        is_staff=is_staff,
        calendar=BusinessCalendar.for_service(config.service),
        tz=ZoneInfo(config.service.timezone),
        env=env,
        cookie_path=public.path.rstrip("/") + "/dashboard",
        secure=public.scheme == "https",
    )
    app.router.add_get("/dashboard", _home)
    app.router.add_get("/dashboard/", _home)
    app.router.add_get("/dashboard/login/{token}", _login_page)
    app.router.add_post("/dashboard/login/{token}", _login)
    app.router.add_post("/dashboard/logout", _logout)
    for path, _title, _build in PAGES:
        app.router.add_get(f"/dashboard/{path}", _page)


# -- links ------------------------------------------------------------------------------------


def dashboard_link(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/dashboard/login/{token}"


async def issue_dashboard_link(staff: str, config: Config, now: datetime) -> str:
    """A new one-time login link for `staff` (for `!dashboard`); their unused ones stop."""
    token = new_token()
    expires_at = now + timedelta(minutes=config.web.dashboard_link_minutes)
    await store.issue_login(staff, token_hash(token, config.web.secret), now, expires_at)
    return dashboard_link(config.web.public_url, token)


# -- rendering --------------------------------------------------------------------------------


def dashboard_csp(css: str) -> str:
    """The Content-Security-Policy of a page whose only `<style>` holds `css`."""
    digest = base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()
    return (
        f"default-src 'none'; style-src 'sha256-{digest}'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )


def _language_name(code: str) -> str:
    name = Locale.parse(code).get_display_name(code) or code
    return name[:1].upper() + name[1:]


def _helpers(state: _Dashboard, tr: Translator) -> dict[str, Any]:
    """What templates call: translation (`_`, `ngettext`) and Babel formats."""
    tz, locale = state.tz, tr.babel_locale

    def gettext(text: str, **params: Any) -> str:
        return tr.render(Msg(text, params), tz)

    def ngettext(singular: str, plural: str, n: int, **params: Any) -> str:
        return tr.render(Msg(singular, params, plural, n), tz)

    def when(moment: datetime | None) -> str:
        if moment is None:
            return "—"
        return format_datetime(moment, "short", tzinfo=tz, locale=locale).replace("\u202f", " ")

    return {
        "_": gettext,
        "ngettext": ngettext,
        "when": when,
        "time": lambda moment: tr.format_time(moment, tz),
        "number": lambda value: format_decimal(value, "#,##0.0", locale=locale),
        "percent": lambda value: format_percent(value, "#,##0.0 %", locale=locale),
    }


def _render(
    state: _Dashboard,
    request: web.Request,
    tr: Translator,
    page: Page,
    *,
    status: int = 200,
    staff: str | None = None,
    current: str = "",
) -> web.Response:
    css = _CSS + "\n".join(chart.css for chart in page.charts)
    lang = normalize_locale(request.query.get("lang"))
    suffix = f"?lang={lang}" if lang else ""
    context = {
        **_helpers(state, tr),
        **page.context,
        # The page's own CSS and pygal's (checked in `bot.web.charts`): raw in <style>.
        "css": Markup(css),
        "lang": tr.locale,
        "languages": [
            (code, _language_name(code)) for code in state.catalogs.locales if code != tr.locale
        ],
        "menu": [(path, title) for path, title, _build in PAGES] if staff else [],
        "current": current,
        "suffix": suffix,
        "staff": staff,
        "logout_csrf": _session_csrf(state, request) if staff else "",
        "tz": state.config.service.timezone,
    }
    text = state.env.get_template(page.template).render(context)
    response = web.Response(text=text, status=status, content_type="text/html", charset="utf-8")
    response.headers["Content-Security-Policy"] = dashboard_csp(css)
    return response


def _refuse(
    state: _Dashboard, request: web.Request, tr: Translator, why: str, **params: Any
) -> web.Response:
    title, text = REFUSALS[why]
    params.setdefault("minutes", state.config.web.dashboard_link_minutes)
    page = Page("refused.html", {"title": title, "text": text, "params": params})
    return _render(state, request, tr, page, status=403)


async def _translator(state: _Dashboard, request: web.Request, staff: str | None) -> Translator:
    """`?lang=`, else the staff member's language (`!lang`), else the service's."""
    chosen = normalize_locale(request.query.get("lang"))
    if chosen is None and staff is not None:
        pref = await UserPref.get_or_none(user_key=staff)
        chosen = pref.locale if pref else None
    return state.catalogs.get(chosen or state.config.service.default_locale)


def _staff_now(state: _Dashboard, staff: str) -> bool:
    return state.is_staff is not None and state.is_staff(staff)


# -- login ------------------------------------------------------------------------------------


async def _valid_link(
    state: _Dashboard, request: web.Request, token: str
) -> tuple[DashboardToken | None, web.Response | None]:
    """The link row of `token` if it can still log in, else the refusal to answer."""
    link = None
    if looks_like_token(token):
        link = await store.link_of(token_hash(token, state.secret))
    tr = await _translator(state, request, link.staff if link else None)
    if link is None or link.expires_at <= state.clock():
        return None, _refuse(state, request, tr, "link")
    if link.used_at is not None:
        return None, _refuse(state, request, tr, "used")
    if not _staff_now(state, link.staff):
        return None, _refuse(state, request, tr, "not_staff", staff=link.staff)
    return link, None


async def _login_page(request: web.Request) -> web.Response:
    state = request.app[_DASHBOARD]
    token = request.match_info["token"]
    link, refusal = await _valid_link(state, request, token)
    if link is None:
        assert refusal is not None
        return refusal
    tr = await _translator(state, request, link.staff)
    lang = normalize_locale(request.query.get("lang"))
    page = Page(
        "login.html",
        {
            "action": f"./{token}" + (f"?lang={lang}" if lang else ""),
            "csrf_field": CSRF_FIELD,
            "csrf": csrf_token(token, state.secret),
            "login_staff": link.staff,
            "expires_at": link.expires_at,
        },
    )
    return _render(state, request, tr, page)


async def _form(request: web.Request) -> str | None:
    """The CSRF field of a posted form, or None (missing, too slow, or cross-site)."""
    if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        return None
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            form = await request.post()
    except TimeoutError:
        return None
    value = form.get(CSRF_FIELD)
    return value if isinstance(value, str) else None


async def _login(request: web.Request) -> web.Response:
    state = request.app[_DASHBOARD]
    token = request.match_info["token"]
    candidate = await _form(request)
    link, refusal = await _valid_link(state, request, token)
    if link is None:
        assert refusal is not None
        return refusal
    if not check_csrf(token, state.secret, candidate):
        return _refuse(state, request, await _translator(state, request, link.staff), "csrf")
    now = state.clock()
    session = new_token()
    lifetime = timedelta(hours=state.config.web.dashboard_session_hours)
    opened = await store.open_session(
        token_hash(token, state.secret), token_hash(session, state.secret), now, now + lifetime
    )
    if opened is None:  # used by a concurrent request in the meantime
        return _refuse(state, request, await _translator(state, request, link.staff), "used")
    # Relative: a reverse proxy's path prefix is kept.
    response = web.Response(status=303, headers={"Location": "../queue"})
    response.set_cookie(
        COOKIE,
        session,
        max_age=int(lifetime.total_seconds()),
        path=state.cookie_path,
        secure=state.secure,
        httponly=True,
        samesite="Strict",
    )
    return response


# -- session ----------------------------------------------------------------------------------


def _session_csrf(state: _Dashboard, request: web.Request) -> str:
    return csrf_token(request.cookies.get(COOKIE, ""), state.secret)


async def _session(
    state: _Dashboard, request: web.Request
) -> tuple[str | None, web.Response | None]:
    """The staff member of the request's session, or the refusal to answer."""
    cookie = request.cookies.get(COOKIE, "")
    session = None
    if looks_like_token(cookie):
        session = await store.session_of(token_hash(cookie, state.secret), state.clock())
    tr = await _translator(state, request, session.staff if session else None)
    if session is None:
        return None, _refuse(state, request, tr, "session")
    if not _staff_now(state, session.staff):
        return None, _refuse(state, request, tr, "not_staff", staff=session.staff)
    return session.staff, None


async def _home(request: web.Request) -> web.Response:
    # Relative, so that a reverse proxy's path prefix is kept.
    raise web.HTTPSeeOther("queue" if request.path.endswith("/") else "dashboard/queue")


async def _page(request: web.Request) -> web.Response:
    state = request.app[_DASHBOARD]
    staff, refusal = await _session(state, request)
    if staff is None:
        assert refusal is not None
        return refusal
    name = request.path.rstrip("/").rsplit("/", 1)[-1]
    build = next(build for path, _title, build in PAGES if path == name)
    tr = await _translator(state, request, staff)
    view = View(
        tr=tr,
        tz=state.tz,
        now=state.clock(),
        config=state.config,
        calendar=state.calendar,
        query=request.query,
    )
    return _render(state, request, tr, await build(view), staff=staff, current=name)


async def _logout(request: web.Request) -> web.Response:
    state = request.app[_DASHBOARD]
    candidate = await _form(request)
    cookie = request.cookies.get(COOKIE, "")
    tr = await _translator(state, request, None)
    if not looks_like_token(cookie) or not check_csrf(cookie, state.secret, candidate):
        return _refuse(state, request, tr, "csrf")
    await store.end_session(token_hash(cookie, state.secret))
    page = Page("logged_out.html")
    response = _render(state, request, tr, page)
    response.del_cookie(COOKIE, path=state.cookie_path)
    return response
