"""The staff dashboard in headless Chromium (SPEC §10): the login link and its button, each
page with its chart, the numbers of the charts' tables against the seeded month, refused links,
the cookie as the browser keeps it, and no CSP violation reported by the browser.

Set SUPPORT_BOT_SCREENSHOT=1 to write `docs/dashboard-*.png`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest_asyncio

from bot.domain.tickets import Kind, billed_tickets
from bot.storage.models import Booking, Purchase, Ticket
from bot.storage.repo import ticket_state
from bot.web.dashboard import COOKIE, dashboard_csp, issue_dashboard_link
from bot.web.dashboard_pages import PAGES
from tests.web.dashboard_site import (
    BOB,
    CAROL,
    MALLORY,
    NOW,
    PARIS,
    Seeded,
    Site,
    paris,
    seed,
    serve_dashboard,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest_asyncio.fixture
async def site(db_url: str) -> AsyncIterator[Site]:
    # Plain http public URL: Chromium keeps a Secure cookie only from a secure origin, and
    # the Secure flag itself is checked over HTTP (tests/web/test_dashboard_http.py).
    async with serve_dashboard(db_url, https=False) as served:
        yield served


class Browser:
    """One Chromium page, with every console message and failed request it saw."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.console: list[str] = []
        self.requests: list[str] = []
        page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        page.on("request", lambda request: self.requests.append(request.url))

    async def cells(self, selector: str) -> dict[str, dict[str, str]]:
        """A table's numbers: row key (its data-* attribute) → column key → text."""
        return await self.page.eval_on_selector(
            selector,
            """table => Object.fromEntries([...table.tBodies[0].rows].map(row => [
                row.dataset.month || row.dataset.account || row.dataset.staff || row.dataset.state,
                Object.fromEntries([...row.cells].filter(c => c.dataset.k || c.dataset.day)
                    .map(c => [c.dataset.k || c.dataset.day, c.textContent.trim()]))
            ]))""",
        )


@pytest_asyncio.fixture
async def chromium(browser: Any) -> AsyncIterator[Browser]:
    context = await browser.new_context(locale="fr-FR", viewport={"width": 1280, "height": 900})
    try:
        yield Browser(await context.new_page())
    finally:
        await context.close()


async def open_link(site: Site, staff: str = BOB) -> str:
    link = await issue_dashboard_link(staff, site.config, site.clock())
    assert link.startswith(site.base + "/dashboard/login/")
    return link


async def log_in(site: Site, chromium: Browser) -> None:
    page = chromium.page
    response = await page.goto(await open_link(site))
    assert response is not None and response.status == 200
    async with page.expect_navigation():
        await page.get_by_role("button", name="Ouvrir le tableau de bord").click()
    assert page.url == site.base + "/dashboard/queue"


def no_trouble(chromium: Browser, site: Site) -> None:
    """No CSP violation (Chromium reports each in the console), no other message but the
    403 answers themselves, nothing loaded from anywhere but the bot."""
    expected = "Failed to load resource: the server responded with a status of 403"
    assert [m for m in chromium.console if expected not in m] == [], chromium.console
    assert all(url.startswith(site.base + "/") for url in chromium.requests), chromium.requests


async def test_every_page_renders_with_its_chart_and_no_script(
    site: Site, chromium: Browser
) -> None:
    await seed()
    await log_in(site, chromium)
    page = chromium.page
    cookies = await page.context.cookies()
    assert [(c["name"], c["httpOnly"], c["sameSite"], c["path"]) for c in cookies] == [
        (COOKIE, True, "Strict", "/dashboard")
    ]
    assert await page.evaluate("document.cookie") == ""  # HttpOnly: no script could read it
    for path, _title, _build in PAGES:
        response = await page.goto(f"{site.base}/dashboard/{path}")
        assert response is not None and response.status == 200, path
        assert await page.locator("script").count() == 0
        assert await page.locator("figure svg[role=img]").count() == 1, path
        # The chart is drawn: bars or a line, and the axis labels, as SVG in the page.
        assert await page.locator("figure svg .axis text").count() > 0, path
        box = await page.locator("figure svg").bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 100
        assert await page.locator(".numbers table").count() == 1, path
        assert await page.get_attribute("html", "lang") == "fr"
        if os.environ.get("SUPPORT_BOT_SCREENSHOT"):
            await page.screenshot(
                path=str(ROOT / "docs" / f"dashboard-{path}.png"), full_page=True
            )
    # The menu goes from page to page, and the language can be switched.
    await page.get_by_role("link", name="Satisfaction").click()
    assert page.url.endswith("/dashboard/satisfaction")
    await page.get_by_role("link", name="English").click()
    assert await page.get_attribute("html", "lang") == "en"
    assert "Ratings per month" in await page.inner_text("body")
    no_trouble(chromium, site)


async def test_the_tables_match_the_seeded_month(site: Site, chromium: Browser) -> None:
    seeded = await seed()
    await log_in(site, chromium)
    page = chromium.page

    # Deadlines kept in February: one met, two missed (one late, one never answered); the
    # request its client cancelled before any answer is left out. March: two met (one of them
    # answered in February), two not decided yet (due at noon today, and tomorrow).
    await page.goto(f"{site.base}/dashboard/deadlines")
    deadlines = await chromium.cells("#deadlines")
    february = await Ticket.filter(sla_due__gte=utc(2026, 2), sla_due__lt=utc(2026, 3))
    counted = [t for t in february if not (t.status == "cancelled" and not t.first_response_at)]
    met = sum(
        t.first_response_at is not None and t.first_response_at <= t.sla_due for t in counted
    )
    assert (met, len(counted) - met) == (1, 2)
    assert deadlines["2026-02"] == {
        "met": str(met),
        "missed": str(len(counted) - met),
        "pending": "0",
        "share": "33,3 %",
    }
    assert deadlines["2026-03"] == {"met": "2", "missed": "0", "pending": "2", "share": "100,0 %"}
    assert deadlines["2025-12"]["share"] == "—"
    assert len(deadlines) == 12

    # Satisfaction: February's 5 and 4; the 3 given at 00:30 on 1 March (Paris) is March's.
    await page.goto(f"{site.base}/dashboard/satisfaction")
    ratings = await chromium.cells("#satisfaction")
    rated = await Ticket.filter(rated_at__gte=utc(2026, 2), rated_at__lt=utc(2026, 3))
    assert sorted(t.rating for t in rated) == [4, 5]
    assert ratings["2026-02"] == {
        "1": "0", "2": "0", "3": "0", "4": "1", "5": "1", "total": "2", "average": "4,5",
    }  # fmt: skip
    assert ratings["2026-03"]["3"] == "1" and ratings["2026-03"]["total"] == "1"

    # Consumption of February, per account: what was bought in the month, what the tickets
    # opened in it bill, the balance at its end (January's purchase included).
    await page.goto(f"{site.base}/dashboard/consumption?month=2026-02")
    accounts = await chromium.cells("#consumption-accounts")
    acme = f"org-{seeded.acme.id}"
    zoe = f"client-{seeded.alone.id}"
    assert set(accounts) == {acme, zoe}
    jan, feb, mar, apr = (utc(2026, month) for month in (1, 2, 3, 4))
    bought = {
        when: await purchased(when, end) for when, end in ((jan, feb), (feb, mar), (mar, apr))
    }
    billed = {
        when: await billed_in(when, end) for when, end in ((jan, feb), (feb, mar), (mar, apr))
    }
    # Acme bought 10 in February (and 5 in January); Zoé 3 in February, 2 in March.
    assert bought[feb] == {"acme": 10, "zoe": 3} and bought[jan] == {"acme": 5, "zoe": 0}
    # February bills: Acme 90 min → 2, an open ticket → 1, a cancelled one → 0; Zoé a
    # 45-minute call → 1 and 61 minutes → 2.
    assert billed[feb] == {"acme": 3, "zoe": 3} and billed[jan] == {"acme": 0, "zoe": 0}
    for key, who in ((acme, "acme"), (zoe, "zoe")):
        total_bought = bought[jan][who] + bought[feb][who]
        total_billed = billed[jan][who] + billed[feb][who]
        assert accounts[key] == {
            "purchased": str(bought[feb][who]),
            "billed": str(billed[feb][who]),
            "purchased_total": str(total_bought),
            "billed_total": str(total_billed),
            "balance": str(total_bought - total_billed),
        }
    months = await chromium.cells("#consumption-months")
    balance = 0
    for month in (jan, feb, mar):
        balance += sum(bought[month].values()) - sum(billed[month].values())
        assert months[month.astimezone(PARIS).strftime("%Y-%m")] == {
            "purchased": str(sum(bought[month].values())),
            "billed": str(sum(billed[month].values())),
            "balance": str(balance),
        }
    assert months["2026-02"]["balance"] == "12"  # 15 + 3 bought, 3 + 3 billed
    # One account's chart and table.
    await page.get_by_role("link", name="Zoé").click()
    assert "Consommation de Zoé" in await page.inner_text("h1")
    zoe_months = await chromium.cells("#consumption-months")
    assert zoe_months["2026-02"] == {"purchased": "3", "billed": "3", "balance": "0"}
    assert billed[mar]["zoe"] == 1  # the queue's ticket opened in March: nothing logged yet
    assert zoe_months["2026-03"] == {"purchased": "2", "billed": "1", "balance": "1"}

    # The calendar of this week: Bob on Wednesday, Carol on Wednesday and Friday; neither the
    # cancelled call nor next week's.
    await page.goto(f"{site.base}/dashboard/calendar")
    calls = await chromium.cells("#calendar-counts")
    week = await Booking.filter(
        status="active",
        start__gte=paris(2026, 3, 9).astimezone(UTC),
        start__lt=paris(2026, 3, 16).astimezone(UTC),
    )
    assert sorted(b.staff for b in week) == [BOB, CAROL, CAROL]
    assert calls[BOB]["2026-03-11"] == "1" and calls[BOB]["2026-03-12"] == "0"
    assert calls[CAROL]["2026-03-11"] == "1" and calls[CAROL]["2026-03-13"] == "1"
    assert sum(int(n) for who in calls.values() for n in who.values()) == len(week)
    view = await page.inner_text("#week")
    assert "14:00–14:45" in view and seeded.later.ref in view
    await page.get_by_role("link", name="Semaine suivante →").click()
    assert (await chromium.cells("#calendar-counts"))[BOB]["2026-03-16"] == "1"

    # The queue: overdue first, then at risk, then later, then answered.
    await page.goto(f"{site.base}/dashboard/queue")
    rows = await page.eval_on_selector_all(
        "#queue tbody tr", "rows => rows.map(r => [r.dataset.ref, r.className])"
    )
    assert rows == [
        [seeded.overdue.ref, "overdue"],
        [seeded.due_soon.ref, "due_soon"],
        [seeded.later.ref, "later"],
        [seeded.answered.ref, "answered"],
    ]
    states = await page.eval_on_selector_all(
        "#queue-counts tbody tr",
        "rows => rows.map(r => [r.dataset.state, r.cells[1].textContent.trim()])",
    )
    assert dict(states) == {
        "overdue": "1", "due_soon": "1", "later": "1", "answered": "1", "none": "0",
    }  # fmt: skip
    no_trouble(chromium, site)


def utc(year: int, month: int) -> datetime:
    """The start of a month in Paris, in UTC: SQLite compares stored times as text, so a
    query's bounds are written in UTC as the stored times are."""
    return paris(year, month, 1).astimezone(UTC)


def owner(key: str) -> str:
    return "zoe" if key.startswith("@zoe") else "acme"


async def purchased(start: Any, end: Any) -> dict[str, int]:
    """Tickets bought in [start, end), per seeded account."""
    totals = {"acme": 0, "zoe": 0}
    for purchase in await Purchase.filter(at__gte=start, at__lt=end):
        totals["acme" if purchase.organisation_id else "zoe"] += purchase.tickets  # type: ignore[attr-defined]
    return totals


async def billed_in(start: Any, end: Any) -> dict[str, int]:
    """What the tickets opened in [start, end) bill, per seeded account (the terms' rule)."""
    totals = {"acme": 0, "zoe": 0}
    tickets = await Ticket.filter(
        created_at__gte=start, created_at__lt=end, kind=Kind.TICKET.value
    ).select_related("client")
    for ticket in tickets:
        totals[owner(ticket.client.key)] += billed_tickets(ticket_state(ticket))
    return totals


async def test_refused_links_get_403_in_the_readers_language(
    site: Site, chromium: Browser
) -> None:
    page = chromium.page
    # Someone not staff.
    response = await page.goto(await open_link(site, MALLORY))
    assert response is not None and response.status == 403
    assert "réservé à l’équipe d’assistance" in await page.inner_text("body")
    # Expired.
    link = await open_link(site)
    site.now[0] = NOW.replace(minute=10)
    response = await page.goto(link)
    assert response is not None and response.status == 403
    assert "a expiré" in await page.inner_text("body")
    # Used: the button once, then the link again (a second tab, a forwarded message).
    site.now[0] = NOW
    await log_in(site, chromium)
    used = await open_link(site)
    other = await page.context.browser.new_context(locale="en-GB")
    try:
        second = await other.new_page()
        await second.goto(used)
        async with second.expect_navigation():
            await second.get_by_role("button", name="Ouvrir le tableau de bord").click()
        response = await second.goto(used + "?lang=en")
        assert response is not None and response.status == 403
        assert "already been used" in await second.inner_text("body")
    finally:
        await other.close()
    # Without a session, a page is refused and shows nothing of the queue.
    await page.context.clear_cookies()
    response = await page.goto(f"{site.base}/dashboard/queue")
    assert response is not None and response.status == 403
    assert "Non connecté" in await page.inner_text("body")
    assert await page.locator("#queue").count() == 0
    no_trouble(chromium, site)


async def test_someone_removed_from_staff_is_refused_at_the_next_page(
    site: Site, chromium: Browser
) -> None:
    seeded: Seeded = await seed()
    await log_in(site, chromium)
    page = chromium.page
    assert seeded.overdue.ref in await page.inner_text("#queue")
    site.staff.discard(BOB)
    response = await page.goto(f"{site.base}/dashboard/calendar")
    assert response is not None and response.status == 403
    assert seeded.later.ref not in await page.inner_text("body")
    no_trouble(chromium, site)


async def test_chromium_reports_what_the_dashboard_csp_refuses(browser: Any) -> None:
    """The console check above can fail: under the dashboard's CSP, an inline script, an
    inline style attribute and an unhashed <style> are refused and reported."""
    from aiohttp import web

    css = "body{margin:0}"

    async def page(request: web.Request) -> web.Response:
        body = (
            f"<!DOCTYPE html><html><head><style>{css}</style><style>p{{color:red}}</style>"
            '</head><body><p style="color:blue">x</p><script>document.title="ran"</script>'
            "</body></html>"
        )
        return web.Response(
            text=body,
            content_type="text/html",
            headers={"Content-Security-Policy": dashboard_csp(css)},
        )

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    context = await browser.new_context()
    try:
        tab = Browser(await context.new_page())
        await tab.page.goto(f"http://{host}:{port}/")
        assert await tab.page.title() != "ran"
        refused = [m for m in tab.console if "Content Security Policy" in m]
        assert len(refused) == 3, tab.console  # the script, the style attribute, the <style>
    finally:
        await context.close()
        await runner.cleanup()
