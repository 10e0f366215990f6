"""The staff dashboard's access rules over HTTP (SPEC §10), on SQLite and PostgreSQL: a login
link is for one staff member, once, for a few minutes; a GET never uses it; the session cookie's
flags; staff asked again at every request; the CSP of every page."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from http.cookies import SimpleCookie

import aiohttp
import pytest
import pytest_asyncio

from bot.storage.models import DashboardToken, UserPref
from bot.tokens import token_hash
from bot.web.dashboard import COOKIE, issue_dashboard_link
from bot.web.dashboard_pages import PAGES
from tests.web.dashboard_site import BOB, MALLORY, NOW, SECRET, Site, seed, serve_dashboard

PAGE_PATHS = [path for path, _title, _build in PAGES]
FORBIDDEN_FRENCH = "Lien déjà utilisé"


@pytest_asyncio.fixture
async def site(db_url: str) -> AsyncIterator[Site]:
    async with serve_dashboard(db_url) as served:
        yield served


def local(site: Site, link: str) -> str:
    """The link as the server sees it (the public URL is the reverse proxy's)."""
    return site.base + link.removeprefix(site.config.web.public_url)


async def request(
    method: str,
    url: str,
    *,
    data: dict[str, str] | None = None,
    cookie: str | None = None,
    **headers: str,
) -> tuple[int, str, aiohttp.typedefs.LooseHeaders]:
    if cookie is not None:
        headers["Cookie"] = f"{COOKIE}={cookie}"
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, data=data, headers=headers, allow_redirects=False) as resp,
    ):
        return resp.status, await resp.text(), resp.headers


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert match, "the page has its CSRF field"
    return match[1]


async def log_in(site: Site, staff: str = BOB) -> tuple[str, aiohttp.typedefs.LooseHeaders]:
    """Open a fresh link and press its button: the session cookie and the answer's headers."""
    link = local(site, await issue_dashboard_link(staff, site.config, site.clock()))
    status, page, _ = await request("GET", link)
    assert status == 200
    status, _, headers = await request("POST", link, data={"csrf": csrf_of(page)})
    assert status == 303 and headers["Location"] == "../queue"
    cookie = SimpleCookie(headers["Set-Cookie"])[COOKIE]
    return cookie.value, headers


async def test_a_get_shows_a_button_and_uses_nothing(site: Site) -> None:
    link = local(site, await issue_dashboard_link(BOB, site.config, NOW))
    for _ in range(2):  # a link preview first, then the staff member: both see the page
        status, page, headers = await request("GET", link)
        assert status == 200
        assert "Set-Cookie" not in headers
        assert "Ouvrir le tableau de bord" in page and BOB in page
    row = await DashboardToken.get(kind="link")
    assert row.used_at is None and row.staff == BOB
    assert row.token_hash == token_hash(link.rsplit("/", 1)[1], SECRET)  # only the hash kept
    assert row.expires_at == NOW + timedelta(minutes=10)


async def test_the_button_opens_a_session_with_a_strict_httponly_secure_cookie(
    site: Site,
) -> None:
    cookie, headers = await log_in(site)
    flags = SimpleCookie(headers["Set-Cookie"])[COOKIE]
    assert flags["httponly"] is True
    assert flags["secure"] is True  # the public URL is https
    assert flags["samesite"] == "Strict"
    assert flags["path"] == "/dashboard"
    assert flags["max-age"] == str(8 * 3600)
    session = await DashboardToken.get(kind="session")
    assert session.staff == BOB and session.token_hash == token_hash(cookie, SECRET)
    assert session.expires_at == NOW + timedelta(hours=8)
    for path in PAGE_PATHS:
        status, _page, _ = await request("GET", f"{site.base}/dashboard/{path}", cookie=cookie)
        assert status == 200, path


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_used_link_is_refused(site: Site, method: str) -> None:
    link = local(site, await issue_dashboard_link(BOB, site.config, NOW))
    status, page, _ = await request("GET", link)
    csrf = csrf_of(page)
    assert (await request("POST", link, data={"csrf": csrf}))[0] == 303
    status, page, _ = await request(method, link, data={"csrf": csrf})
    assert status == 403
    assert FORBIDDEN_FRENCH in page and "Set-Cookie" not in _
    assert await DashboardToken.filter(kind="session").count() == 1


async def test_an_expired_link_is_refused(site: Site) -> None:
    link = local(site, await issue_dashboard_link(BOB, site.config, NOW))
    status, page, _ = await request("GET", link)
    csrf = csrf_of(page)
    site.now[0] = NOW + timedelta(minutes=10)
    for method in ("GET", "POST"):
        status, page, _ = await request(method, link, data={"csrf": csrf})
        assert status == 403
        assert "inconnu ou a expiré" in page and "10 minutes" in page
    assert not await DashboardToken.filter(kind="session").exists()


async def test_a_link_of_someone_not_staff_is_refused(site: Site) -> None:
    link = local(site, await issue_dashboard_link(MALLORY, site.config, NOW))
    status, page, _ = await request("GET", link)
    assert status == 403 and "réservé à l’équipe d’assistance" in page
    status, _, _ = await request("POST", link, data={"csrf": "0" * 64})
    assert status == 403
    assert not await DashboardToken.filter(kind="session").exists()


async def test_unknown_or_malformed_links_are_refused(site: Site) -> None:
    for token in ("x" * 43, "short", "a" * 200):
        status, page, _ = await request("GET", f"{site.base}/dashboard/login/{token}")
        assert status == 403 and "Lien non valide" in page


async def test_the_button_needs_its_csrf_field_and_a_same_site_request(site: Site) -> None:
    link = local(site, await issue_dashboard_link(BOB, site.config, NOW))
    _, page, _ = await request("GET", link)
    assert (await request("POST", link))[0] == 403
    assert (await request("POST", link, data={"csrf": "0" * 64}))[0] == 403
    cross = await request(
        "POST", link, data={"csrf": csrf_of(page)}, **{"Sec-Fetch-Site": "cross-site"}
    )
    assert cross[0] == 403
    assert (await DashboardToken.get(kind="link")).used_at is None  # still usable
    assert (await request("POST", link, data={"csrf": csrf_of(page)}))[0] == 303


async def test_asking_again_cancels_the_unused_link(site: Site) -> None:
    first = local(site, await issue_dashboard_link(BOB, site.config, NOW))
    second = local(site, await issue_dashboard_link(BOB, site.config, NOW))
    assert (await request("GET", first))[0] == 403
    assert (await request("GET", second))[0] == 200


async def test_someone_removed_from_staff_loses_access_at_the_next_request(site: Site) -> None:
    cookie, _ = await log_in(site)
    assert (await request("GET", f"{site.base}/dashboard/queue", cookie=cookie))[0] == 200
    site.staff.discard(BOB)
    status, page, _ = await request("GET", f"{site.base}/dashboard/queue", cookie=cookie)
    assert status == 403 and "réservé à l’équipe" in page
    assert "SP-2026" not in page


async def test_pages_need_a_live_session(site: Site) -> None:
    await seed()
    url = f"{site.base}/dashboard/queue"
    for cookie in (None, "", "x" * 43, "not a token"):
        status, page, _ = await request("GET", url, cookie=cookie)
        assert status == 403 and "Non connecté" in page and "SP-2026" not in page
    cookie, _ = await log_in(site)
    site.now[0] = NOW + timedelta(hours=8)
    status, _, _ = await request("GET", url, cookie=cookie)
    assert status == 403


async def test_logging_out_ends_the_session(site: Site) -> None:
    cookie, _ = await log_in(site)
    url = f"{site.base}/dashboard/queue"
    _, page, _ = await request("GET", url, cookie=cookie)
    logout = f"{site.base}/dashboard/logout"
    assert (await request("POST", logout, cookie=cookie))[0] == 403  # no CSRF field
    status, text, headers = await request(
        "POST", logout, data={"csrf": csrf_of(page)}, cookie=cookie
    )
    assert status == 200 and "Déconnecté" in text
    assert SimpleCookie(headers["Set-Cookie"])[COOKIE]["max-age"] == "0"
    assert (await request("GET", url, cookie=cookie))[0] == 403
    assert not await DashboardToken.filter(kind="session").exists()


async def test_no_secure_flag_when_the_public_url_is_plain_http(db_url: str) -> None:
    async with serve_dashboard(db_url, https=False) as site:
        _, headers = await log_in(site)
        flags = SimpleCookie(headers["Set-Cookie"])[COOKIE]
        assert flags["secure"] == "" and flags["httponly"] is True
        assert flags["samesite"] == "Strict"


async def test_every_page_has_a_strict_csp_whose_hash_is_its_only_style(site: Site) -> None:
    await seed()
    cookie, _ = await log_in(site)
    link = local(site, await issue_dashboard_link(BOB, site.config, NOW))
    pages = [await request("GET", link)]  # the login page too
    pages += [
        await request("GET", f"{site.base}/dashboard/{p}", cookie=cookie) for p in PAGE_PATHS
    ]
    pages.append(await request("GET", f"{site.base}/dashboard/queue"))  # a refusal too
    for status, page, headers in pages:
        assert status in (200, 403)
        csp = headers["Content-Security-Policy"]
        assert csp.startswith("default-src 'none'; ")
        assert "frame-ancestors 'none'" in csp and "form-action 'self'" in csp
        assert "script-src" not in csp and "unsafe" not in csp
        assert "<script" not in page and " style=" not in page
        assert not re.search(r"<[^>]*\son[a-z]+\s*=", page, flags=re.I)  # no onclick=…
        assert "javascript:" not in page.lower()
        styles = re.findall(r"<style>(.*?)</style>", page, flags=re.S)
        assert len(styles) == 1
        digest = base64.b64encode(hashlib.sha256(styles[0].encode()).digest()).decode()
        assert f"style-src 'sha256-{digest}';" in csp
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Cache-Control"] == "no-store"


async def test_the_staff_members_language_then_the_query(site: Site) -> None:
    await UserPref.create(user_key=BOB, locale="en")
    cookie, _ = await log_in(site)
    _, page, _ = await request("GET", f"{site.base}/dashboard/deadlines", cookie=cookie)
    assert '<html lang="en">' in page and "Deadlines kept" in page
    _, page, _ = await request("GET", f"{site.base}/dashboard/deadlines?lang=fr", cookie=cookie)
    assert '<html lang="fr">' in page and "Délais tenus" in page


async def test_the_access_log_never_shows_a_login_token(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    link = local(site, await issue_dashboard_link(BOB, site.config, NOW))
    token = link.rsplit("/", 1)[1]
    with caplog.at_level("INFO", logger="aiohttp.access"):
        await request("GET", link)
    assert "/dashboard/login/…" in caplog.text
    assert token not in caplog.text
