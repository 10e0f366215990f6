"""The consent link (R7, SPEC §6) end to end: a real SMTP server receives the e-mail, headless
Chromium opens the link and presses the button, and the database tells what happened.

Set SUPPORT_BOT_SCREENSHOT=1 to write `docs/confirmation-page.png` (phone viewport).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from babel.messages.pofile import read_po, write_po
from prometheus_client import CollectorRegistry, generate_latest
from tortoise.backends.base.executor import EXECUTOR_CACHE

from bot.config import Config, MailConfig, MatrixConfig, WebConfig
from bot.consent import (
    AUDIT_ACTION,
    AUDIT_ACTOR,
    Confirmed,
    ConsentProblem,
    ConsentView,
    ProblemKind,
    confirm,
    confirmation_link,
    consent_mail,
    consent_status,
    issue_confirmation,
)
from bot.i18n import LOCALES_DIR, Catalogs
from bot.mail import Mailer, MailError, build_message
from bot.storage.db import close_db, open_db
from bot.storage.models import AuditEntry, Client, ConfirmationToken, Ticket
from bot.testing.consent import request_consent
from bot.testing.net import free_port
from bot.tokens import check_csrf, csrf_token, new_token, token_hash
from bot.web import pages
from bot.web.app import SECURITY_HEADERS, build_web_app, start_web, stop_web
from tests.smtp import Inbox

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "confirmation-page.png"
SECRET = "test-secret-0123456789abcdef"
NOW = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)  # 10:00 in Paris
REF = "SP-2026-0042"
ADDRESS = "alice.client@example.com"
DESCRIPTION = (
    "Our survey theme breaks on phones: the submit button is hidden behind the footer.\n\n"
    "Please adapt the theme's CSS so that the button stays visible on small screens."
)
LINK = re.compile(r"https?://[^\s\"<>]+/confirm/[A-Za-z0-9_-]+")
FRENCH_RULE = (
    "Si l'intervention peut dépasser les deux (2) tickets une confirmation par courriel est "
    "demandée avant l'intervention."
)

# French translations of the web and mail messages, used by these tests only while the
# committed catalog lacks them (`python scripts/i18n.py extract && update`, then copy them into
# locales/fr/LC_MESSAGES/messages.po). Entries already in the catalog win.
FRENCH: dict[Any, Any] = {
    pages.CONFIRMATION_RULE: FRENCH_RULE,
    "Our terms of service say:": "Nos conditions de support précisent :",
    "The link works once and expires on {expires_at}.": (
        "Ce lien ne sert qu’une fois et expire le {expires_at}."
    ),
    ("{duration}, that is {n} ticket", "{duration}, that is {n} tickets"): (
        "{duration}, soit {n} ticket",
        "{duration}, soit {n} tickets",
    ),
    (
        "By confirming, you agree that the support team carries out this intervention for up "
        "to {n} ticket. If the work turns out to need more, you will be asked again.",
        "By confirming, you agree that the support team carries out this intervention for up "
        "to {n} tickets. If the work turns out to need more, you will be asked again.",
    ): (
        "En confirmant, vous acceptez que l’équipe d’assistance réalise cette intervention pour "
        "{n} ticket au plus. Si le travail en demande davantage, votre accord vous sera de "
        "nouveau demandé.",
        "En confirmant, vous acceptez que l’équipe d’assistance réalise cette intervention pour "
        "{n} tickets au plus. Si le travail en demande davantage, votre accord vous sera de "
        "nouveau demandé.",
    ),
    (
        "Thank you: intervention {ref} is confirmed for {n} ticket.",
        "Thank you: intervention {ref} is confirmed for {n} tickets.",
    ): (
        "Merci : l’intervention {ref} est confirmée pour {n} ticket.",
        "Merci : l’intervention {ref} est confirmée pour {n} tickets.",
    ),
    "Nothing has been changed.": "Rien n’a été modifié.",
    "Link not recognised": "Lien non reconnu",
    (
        "This confirmation link is not valid. Check that you opened the whole link from the "
        "e-mail, or ask for a new one in the support room."
    ): (
        "Ce lien de confirmation n’est pas valide. Vérifiez que vous avez ouvert le lien "
        "complet de l’e-mail, ou demandez-en un nouveau dans le salon d’assistance."
    ),
    "Link expired": "Lien expiré",
    (
        "This confirmation link for {ref} expired on {expires_at}. Ask for a new one in the "
        "support room."
    ): (
        "Ce lien de confirmation pour {ref} a expiré le {expires_at}. Demandez-en un nouveau "
        "dans le salon d’assistance."
    ),
    "Already confirmed": "Déjà confirmée",
    (
        "This link has already been used: intervention {ref} was confirmed on {used_at}. "
        "There is nothing more to do."
    ): (
        "Ce lien a déjà été utilisé : l’intervention {ref} a été confirmée le {used_at}. "
        "Il n’y a plus rien à faire."
    ),
    "Link replaced": "Lien remplacé",
    (
        "This link for {ref} is no longer valid: the estimate has changed since it was sent. "
        "If your confirmation is needed, use the link of the most recent e-mail."
    ): (
        "Ce lien pour {ref} n’est plus valable : l’estimation a changé depuis son envoi. Si "
        "votre confirmation est nécessaire, utilisez le lien de l’e-mail le plus récent."
    ),
    "Nothing to confirm": "Rien à confirmer",
    "Intervention {ref} no longer waits for your confirmation.": (
        "L’intervention {ref} n’attend plus votre confirmation."
    ),
    "Confirm intervention {ref}": "Confirmer l’intervention {ref}",
    "Ticket": "Ticket",
    "Category": "Catégorie",
    "What will be done": "Ce qui sera fait",
    "Estimate": "Estimation",
    "The support team needs your confirmation before this intervention.": (
        "L’équipe d’assistance a besoin de votre confirmation avant cette intervention."
    ),
    "Confirm": "Confirmer",
    (
        "If you do not want this intervention, do nothing: nothing will be done without your "
        "confirmation."
    ): (
        "Si vous ne souhaitez pas cette intervention, ne faites rien : rien ne sera fait sans "
        "votre confirmation."
    ),
    "The support team has been told and will now plan the work. You can close this page.": (
        "L’équipe d’assistance est prévenue et va maintenant planifier le travail. Vous pouvez "
        "fermer cette page."
    ),
    "Intervention confirmed": "Intervention confirmée",
    (
        "This confirmation could not be checked, so nothing has been changed. Open the link "
        "from the e-mail again and press the button on that page."
    ): (
        "Cette confirmation n’a pas pu être vérifiée, rien n’a donc été modifié. Ouvrez de "
        "nouveau le lien de l’e-mail et appuyez sur le bouton de cette page."
    ),
    "Request refused": "Demande refusée",
    (
        "{ref}: please confirm the intervention ({n} ticket)",
        "{ref}: please confirm the intervention ({n} tickets)",
    ): (
        "{ref} : merci de confirmer l’intervention ({n} ticket)",
        "{ref} : merci de confirmer l’intervention ({n} tickets)",
    ),
    (
        "The support team estimated intervention {ref} at {duration}, that is {n} ticket.",
        "The support team estimated intervention {ref} at {duration}, that is {n} tickets.",
    ): (
        "L’équipe d’assistance a estimé l’intervention {ref} à {duration}, soit {n} ticket.",
        "L’équipe d’assistance a estimé l’intervention {ref} à {duration}, soit {n} tickets.",
    ),
    "Hello,": "Bonjour,",
    "To confirm it, open this link and press the “Confirm” button:": (
        "Pour la confirmer, ouvrez ce lien et appuyez sur le bouton « Confirmer » :"
    ),
    (
        "Nothing will be done before you confirm. If you do not want this intervention, ignore "
        "this e-mail and tell us in the support room."
    ): (
        "Rien ne sera fait avant votre confirmation. Si vous ne souhaitez pas cette "
        "intervention, ignorez cet e-mail et dites-le-nous dans le salon d’assistance."
    ),
    "The support team": "L’équipe d’assistance",
    "Review and confirm": "Vérifier et confirmer",
    "Support call {ref}": "Appel d’assistance {ref}",
    "Support calls": "Appels d’assistance",
}


def catalogs_with_pending_french(directory: Path) -> Catalogs:
    """The committed catalogs, plus the `FRENCH` entries they do not translate yet."""
    shutil.copytree(LOCALES_DIR, directory, dirs_exist_ok=True)
    path = directory / "fr" / "LC_MESSAGES" / "messages.po"
    with path.open("rb") as fileobj:
        catalog = read_po(fileobj, locale="fr")
    for msgid, msgstr in FRENCH.items():
        entry = catalog.get(msgid)
        if entry is None or entry.fuzzy or not entry.string or not all(entry.string):
            if entry is not None:
                catalog.delete(msgid)
            catalog.add(msgid, msgstr)
    with path.open("wb") as fileobj:
        write_po(fileobj, catalog)
    return Catalogs.load(directory)


# -- fixtures ---------------------------------------------------------------------------------


@dataclass
class Clock:
    now: datetime = NOW

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Site:
    base: str
    config: Config
    catalogs: Catalogs
    clock: Clock
    confirmed: list[int]
    registry: CollectorRegistry


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory: pytest.TempPathFactory) -> Catalogs:
    return catalogs_with_pending_french(tmp_path_factory.mktemp("locales"))


@pytest_asyncio.fixture
async def db(db_url: str) -> AsyncIterator[str]:
    # Tortoise caches each model's SQL by connection name, not by dialect: a PostgreSQL test
    # after a SQLite one in the same process would reuse SQLite's `?` placeholders.
    EXECUTOR_CACHE.clear()
    await open_db(db_url)
    try:
        yield db_url
    finally:
        await close_db()
        EXECUTOR_CACHE.clear()


@pytest_asyncio.fixture
async def site(db: str, catalogs: Catalogs, smtp: tuple[Inbox, int]) -> AsyncIterator[Site]:
    _, smtp_port = smtp
    port = free_port()
    config = Config(
        matrix=MatrixConfig(
            homeserver="https://matrix.test.example",
            user_id="@bot:test.example",
            staff_room="!staff:test.example",
            password="unused-in-these-tests",
        ),
        web=WebConfig(
            listen=f"127.0.0.1:{port}", public_url=f"http://127.0.0.1:{port}", secret=SECRET
        ),
        mail=MailConfig(host="127.0.0.1", port=smtp_port, from_="support@test.example"),
    )
    clock, confirmed, registry = Clock(), [], CollectorRegistry()

    async def on_confirmed(ticket_id: int) -> None:
        confirmed.append(ticket_id)

    app = build_web_app(
        config=config,
        catalogs=catalogs,
        registry=registry,
        on_confirmed=on_confirmed,
        clock=clock,
    )
    runner = await start_web(app, config.web.listen)
    try:
        yield Site(config.web.public_url, config, catalogs, clock, confirmed, registry)
    finally:
        await stop_web(runner)


async def new_ticket(*, locale: str = "fr", estimate: int = 150, ref: str = REF) -> Ticket:
    client = await Client.create(
        key=f"@client-{ref.lower()}:test.example", locale=locale, email=ADDRESS, created_at=NOW
    )
    return await Ticket.create(
        ref=ref,
        kind="ticket",
        status="awaiting_client_confirmation",
        category="theme",
        channel="intervention",
        client=client,
        room_id="!room:test.example",
        locale=locale,
        description=DESCRIPTION,
        email=ADDRESS,
        created_at=NOW,
        estimate_minutes=estimate,
    )


async def issue(ticket: Ticket, *, now: datetime = NOW, days: int = 7) -> str:
    assert ticket.estimate_minutes is not None
    return await issue_confirmation(
        ticket,
        tickets=-(-ticket.estimate_minutes // 60),
        estimate_minutes=ticket.estimate_minutes,
        now=now,
        days=days,
        secret=SECRET,
    )


async def assert_unchanged(ticket: Ticket) -> None:
    """Nothing recorded: the ticket still waits, no token used, no audit entry."""
    fresh = await Ticket.get(id=ticket.id)
    assert fresh.status == "awaiting_client_confirmation"
    assert fresh.client_confirmed_at is None
    assert fresh.confirmed_tickets is None
    assert fresh.version == ticket.version
    assert not await ConfirmationToken.filter(ticket_id=ticket.id, used_at__isnull=False).exists()
    assert await AuditEntry.filter(ticket_id=ticket.id).count() == 0


async def fetch(
    method: str, url: str, *, data: dict[str, str] | None = None, **headers: str
) -> tuple[int, str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, data=data, headers=headers, allow_redirects=False) as resp,
    ):
        return resp.status, await resp.text(), resp.headers


def text_of(page_html: str) -> str:
    """The visible words of a page, for assertions (tags dropped, entities kept simple)."""
    body = re.sub(r"<style>.*?</style>", " ", page_html, flags=re.S)
    body = re.sub(r"<[^>]+>", " ", body).replace("&#x27;", "'").replace("&quot;", '"')
    return " ".join(body.split())


# -- the whole journey ------------------------------------------------------------------------


async def test_mail_link_opens_in_chromium_and_the_button_confirms(
    site: Site, smtp: tuple[Inbox, int], browser: Any
) -> None:
    inbox, _ = smtp
    ticket = await new_ticket()
    expires_at = await request_consent(
        ticket,
        config=site.config,
        catalogs=site.catalogs,
        mailer=Mailer(site.config.mail, timeout=10),
        now=site.clock(),
    )
    assert expires_at == NOW + timedelta(days=7)

    # The e-mail: to the client, in French, quoting the rule, carrying the link.
    assert len(inbox.messages) == 1
    recipients, message = inbox.messages[0]
    assert recipients == [ADDRESS]
    assert message["Subject"] == f"{REF} : merci de confirmer l’intervention (3 tickets)"
    text_part = message.get_body(("plain",))
    html_part = message.get_body(("html",))
    assert text_part is not None and html_part is not None
    text = text_part.get_content()
    assert "2h30, soit 3 tickets" in text
    assert FRENCH_RULE in text
    assert "mardi 17 mars 2026 à 10:00" in text  # 7 days, shown in Paris time
    links = LINK.findall(text)
    assert len(links) == 1 and links[0].startswith(site.base + "/confirm/")
    link = links[0]
    assert link in html_part.get_content()
    token = link.rsplit("/", 1)[1]
    stored = await ConfirmationToken.get(ticket_id=ticket.id)
    assert stored.token_hash == token_hash(token, SECRET) != token  # only the hash is kept
    assert (stored.tickets, stored.estimate_minutes) == (3, 150)

    # The page, on a phone.
    context = await browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, locale="fr-FR"
    )
    page = await context.new_page()
    response = await page.goto(link)
    assert response is not None and response.status == 200
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name.lower()] == value
    shown = await page.inner_text("body")
    assert REF in shown
    assert "2h30, soit 3 tickets" in shown
    assert "Thème du questionnaire : CSS, HTML, JavaScript" in shown
    assert "the submit button is hidden behind the footer." in shown  # the client's own words
    assert FRENCH_RULE in shown
    assert await page.get_attribute("html", "lang") == "fr"
    viewport = await page.get_attribute("meta[name=viewport]", "content")
    assert viewport is not None and "width=device-width" in viewport
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, "the page scrolls sideways on a phone"
    button = page.get_by_role("button", name="Confirmer")
    assert await button.is_visible()
    if os.environ.get("SUPPORT_BOT_SCREENSHOT") == "1":
        SCREENSHOT.parent.mkdir(exist_ok=True)
        await page.screenshot(path=str(SCREENSHOT), full_page=True)

    # Looking changed nothing; the button does.
    await assert_unchanged(ticket)
    async with page.expect_navigation():
        await button.click()
    success = await page.inner_text("body")
    assert "Intervention confirmée" in success
    assert f"l’intervention {REF} est confirmée pour 3 tickets" in success

    fresh = await Ticket.get(id=ticket.id)
    assert fresh.status == "awaiting_staff_confirmation"
    assert fresh.client_confirmed_at == NOW
    assert fresh.confirmed_tickets == 3
    assert fresh.version == ticket.version + 1
    audit = await AuditEntry.filter(ticket_id=ticket.id).all()
    assert [(a.actor, a.action, a.from_status, a.to_status) for a in audit] == [
        (AUDIT_ACTOR, AUDIT_ACTION, "awaiting_client_confirmation", "awaiting_staff_confirmation")
    ]
    assert ADDRESS not in (audit[0].detail or "")
    assert (await ConfirmationToken.get(id=stored.id)).used_at == NOW
    assert site.confirmed == [ticket.id]

    # The same link again: already used, and a second POST changes nothing.
    response = await page.goto(link)
    assert response is not None and response.status == 409
    again = await page.inner_text("body")
    assert "Déjà confirmée" in again and "Ce lien a déjà été utilisé" in again
    status, body, _ = await fetch("POST", link, data={pages.CSRF_FIELD: csrf_token(token, SECRET)})
    assert status == 409 and "Déjà confirmée" in body
    assert await AuditEntry.filter(ticket_id=ticket.id).count() == 1
    assert (await Ticket.get(id=ticket.id)).version == ticket.version + 1
    assert site.confirmed == [ticket.id]
    await context.close()


async def test_english_page_for_an_english_ticket_and_lang_switch(
    site: Site, browser: Any
) -> None:
    ticket = await new_ticket(locale="en", estimate=181)
    token = await issue(ticket)
    page = await browser.new_page()
    await page.goto(confirmation_link(site.base, token))
    shown = await page.inner_text("body")
    assert f"Confirm intervention {REF}" in shown
    assert "3h01, that is 4 tickets" in shown
    assert pages.CONFIRMATION_RULE in shown
    assert "Survey theme: CSS, HTML, JavaScript" in shown
    assert await page.get_attribute("html", "lang") == "en"

    await page.get_by_role("link", name="Français").click()
    assert await page.get_attribute("html", "lang") == "fr"
    assert FRENCH_RULE in await page.inner_text("body")
    await assert_unchanged(ticket)
    async with page.expect_navigation():
        await page.get_by_role("button", name="Confirmer").click()
    # The language chosen on the page is kept for the answer.
    assert "Intervention confirmée" in await page.inner_text("body")
    assert site.confirmed == [ticket.id]
    await page.close()


# -- GET never changes anything; bad links change nothing -------------------------------------


async def test_get_three_times_changes_nothing(site: Site) -> None:
    ticket = await new_ticket()
    token = await issue(ticket)
    link = confirmation_link(site.base, token)
    for _ in range(3):
        status, body, headers = await fetch("GET", link)
        assert status == 200
        assert "Confirmer" in body and f'value="{csrf_token(token, SECRET)}"' in body
        assert headers["Cache-Control"] == "no-store"
    status, _, _ = await fetch("HEAD", link)
    assert status == 200
    await assert_unchanged(ticket)
    assert site.confirmed == []


async def test_expired_link_shows_a_clear_page_and_changes_nothing(site: Site) -> None:
    ticket = await new_ticket()
    token = await issue(ticket)
    link = confirmation_link(site.base, token)
    site.clock.now = NOW + timedelta(days=7)  # expires_at itself is too late
    status, body, _ = await fetch("GET", link)
    assert status == 410
    words = text_of(body)
    assert "Lien expiré" in words
    assert f"Ce lien de confirmation pour {REF} a expiré le mardi 17 mars 2026 à 10:00" in words
    assert "Rien n’a été modifié." in words
    assert "<form" not in body
    status, body, _ = await fetch("POST", link, data={pages.CSRF_FIELD: csrf_token(token, SECRET)})
    assert status == 410 and "Lien expiré" in body
    await assert_unchanged(ticket)
    assert site.confirmed == []


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(new_token(), id="random"),
        pytest.param("x", id="short"),
        pytest.param("A" * 43, id="shaped"),
        pytest.param("%3Cscript%3E", id="markup"),
    ],
)
async def test_forged_token_gets_a_not_found_page(site: Site, token: str) -> None:
    ticket = await new_ticket()
    await issue(ticket)
    status, body, headers = await fetch("GET", f"{site.base}/confirm/{token}")
    assert status == 404
    assert "Lien non reconnu" in body and "<script>" not in body
    assert headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    await assert_unchanged(ticket)


async def test_token_signed_with_another_secret_is_unknown(site: Site) -> None:
    ticket = await new_ticket()
    token = new_token()
    await ConfirmationToken.create(
        ticket_id=ticket.id,
        token_hash=token_hash(token, "another-secret-0123456789"),
        tickets=3,
        estimate_minutes=150,
        created_at=NOW,
        expires_at=NOW + timedelta(days=7),
    )
    status, _, _ = await fetch("GET", confirmation_link(site.base, token))
    assert status == 404


@pytest.mark.parametrize(
    ("form", "headers"),
    [
        pytest.param({}, {}, id="no-csrf"),
        pytest.param({pages.CSRF_FIELD: "0" * 64}, {}, id="wrong-csrf"),
        pytest.param({pages.CSRF_FIELD: csrf_token(new_token(), SECRET)}, {}, id="other-link"),
        pytest.param("right", {"Sec-Fetch-Site": "cross-site"}, id="cross-site"),
    ],
)
async def test_post_without_the_right_csrf_is_refused(
    site: Site, form: dict[str, str] | str, headers: dict[str, str]
) -> None:
    ticket = await new_ticket()
    token = await issue(ticket)
    data = {pages.CSRF_FIELD: csrf_token(token, SECRET)} if form == "right" else form
    assert isinstance(data, dict)
    status, body, _ = await fetch(
        "POST", confirmation_link(site.base, token), data=data, **headers
    )
    assert status == 403
    assert "Demande refusée" in body and "rien n’a donc été modifié" in body
    await assert_unchanged(ticket)
    assert site.confirmed == []


async def test_superseded_link_is_refused_and_the_new_one_works(site: Site) -> None:
    ticket = await new_ticket()
    first = await issue(ticket)
    second = await issue(ticket, now=NOW + timedelta(hours=1))
    status, body, _ = await fetch("GET", confirmation_link(site.base, first))
    assert status == 410 and "Lien remplacé" in body
    status, _, _ = await fetch(
        "POST", confirmation_link(site.base, first), data={"csrf": csrf_token(first, SECRET)}
    )
    assert status == 410
    await assert_unchanged(ticket)
    old = await ConfirmationToken.get(token_hash=token_hash(first, SECRET))
    assert old.expires_at == NOW + timedelta(hours=1)  # cut when the second one was issued
    status, body, _ = await fetch(
        "POST", confirmation_link(site.base, second), data={"csrf": csrf_token(second, SECRET)}
    )
    assert status == 200 and "Intervention confirmée" in body
    assert site.confirmed == [ticket.id]


async def test_ticket_no_longer_waiting_shows_why(site: Site) -> None:
    ticket = await new_ticket()
    token = await issue(ticket)
    await Ticket.filter(id=ticket.id).update(status="cancelled")
    status, body, _ = await fetch("GET", confirmation_link(site.base, token))
    assert status == 409
    assert "Rien à confirmer" in body and "Ce ticket a été annulé." in body
    status, _, _ = await fetch(
        "POST", confirmation_link(site.base, token), data={"csrf": csrf_token(token, SECRET)}
    )
    assert status == 409
    assert await AuditEntry.filter(ticket_id=ticket.id).count() == 0
    assert site.confirmed == []


async def test_estimate_changed_without_a_new_link_is_superseded(site: Site) -> None:
    ticket = await new_ticket()
    token = await issue(ticket)
    await Ticket.filter(id=ticket.id).update(estimate_minutes=240)
    status, body, _ = await fetch("GET", confirmation_link(site.base, token))
    assert status == 410 and "Lien remplacé" in body


async def test_two_posts_at_once_confirm_once(site: Site) -> None:
    ticket = await new_ticket()
    token = await issue(ticket)
    link, data = confirmation_link(site.base, token), {"csrf": csrf_token(token, SECRET)}
    results = await asyncio.gather(*(fetch("POST", link, data=data) for _ in range(4)))
    assert sorted(status for status, _, _ in results) == [200, 409, 409, 409]
    assert await AuditEntry.filter(ticket_id=ticket.id).count() == 1
    assert site.confirmed == [ticket.id]


async def test_metrics_count_outcomes_without_tokens(site: Site) -> None:
    ticket = await new_ticket()
    token = await issue(ticket)
    await fetch("GET", confirmation_link(site.base, token))
    await fetch("GET", f"{site.base}/confirm/{new_token()}")
    # Served by the metrics listener, not the public one: read the registry the app fills.
    metrics = generate_latest(site.registry).decode()
    assert 'support_bot_consent_outcomes_total{outcome="unknown"} 1.0' in metrics
    assert 'route="/confirm/{token}"' in metrics
    assert token not in metrics


async def test_on_confirmed_failure_does_not_undo_the_consent(db: str, catalogs: Catalogs) -> None:
    async def broken(ticket_id: int) -> None:
        raise RuntimeError("matrix is down")

    port = free_port()
    config = Config(
        matrix=MatrixConfig(
            homeserver="https://matrix.test.example",
            user_id="@bot:test.example",
            staff_room="!staff:test.example",
            password="unused-in-these-tests",
        ),
        web=WebConfig(listen=f"127.0.0.1:{port}", secret=SECRET),
    )
    app = build_web_app(
        config=config,
        catalogs=catalogs,
        registry=CollectorRegistry(),
        on_confirmed=broken,
        clock=Clock(),
    )
    runner = await start_web(app, config.web.listen)
    try:
        ticket = await new_ticket()
        token = await issue(ticket)
        status, body, _ = await fetch(
            "POST",
            f"http://127.0.0.1:{port}/confirm/{token}",
            data={"csrf": csrf_token(token, SECRET)},
        )
    finally:
        await stop_web(runner)
    assert status == 200 and "Intervention confirmée" in body
    assert (await Ticket.get(id=ticket.id)).status == "awaiting_staff_confirmation"


# -- the consent module without HTTP ----------------------------------------------------------


async def test_consent_status_and_confirm_directly(db: str) -> None:
    ticket = await new_ticket(estimate=121)
    token = await issue(ticket)
    view = await consent_status(token, now=NOW, secret=SECRET)
    assert isinstance(view, ConsentView)
    assert (view.ref, view.tickets, view.estimate_minutes, view.locale) == (REF, 3, 121, "fr")
    assert view.summary.startswith("Our survey theme breaks on phones: the submit button")
    assert "\n" not in view.summary
    result = await confirm(token, now=NOW + timedelta(minutes=5), secret=SECRET)
    assert isinstance(result, Confirmed) and result.tickets == 3
    again = await confirm(token, now=NOW + timedelta(minutes=6), secret=SECRET)
    assert isinstance(again, ConsentProblem) and again.kind is ProblemKind.USED
    assert again.used_at == NOW + timedelta(minutes=5)
    with pytest.raises(ValueError, match="naive"):
        await consent_status(token, now=NOW.replace(tzinfo=None), secret=SECRET)


def test_tokens_are_long_random_and_bound_to_the_secret() -> None:
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(len(token) >= 22 and re.fullmatch(r"[A-Za-z0-9_-]+", token) for token in tokens)
    token = next(iter(tokens))
    assert len(token_hash(token, SECRET)) == 64
    assert token_hash(token, SECRET) != token_hash(token, SECRET + "x")
    assert csrf_token(token, SECRET) != token_hash(token, SECRET)
    assert check_csrf(token, SECRET, csrf_token(token, SECRET))
    assert not check_csrf(token, SECRET, None)
    assert not check_csrf(token, SECRET, csrf_token(token, SECRET + "x"))


# -- mail ---------------------------------------------------------------------------------------


def test_consent_mail_in_english_escapes_the_html(catalogs: Catalogs) -> None:
    from zoneinfo import ZoneInfo

    link = "https://support.test.example/confirm/abc?x=<b>&y=1"
    subject, text, html = consent_mail(
        catalogs.get("en"),
        ref=REF,
        tickets=3,
        estimate_minutes=150,
        link=link,
        expires_at=NOW + timedelta(days=7),
        tz=ZoneInfo("Europe/Paris"),
    )
    assert subject == f"{REF}: please confirm the intervention (3 tickets)"
    assert "2h30, that is 3 tickets" in text and pages.CONFIRMATION_RULE in text
    assert "Tuesday, March 17, 2026 at 10:00 AM" in text
    assert "<b>" not in html and "&lt;b&gt;" in html


async def test_mail_errors_never_carry_the_address(caplog: pytest.LogCaptureFixture) -> None:
    mailer = Mailer(MailConfig(host="127.0.0.1", port=free_port(), from_="support@test.example"))
    with pytest.raises(MailError) as raised:
        await mailer.send(ADDRESS, "Subject", "Body")
    assert ADDRESS not in str(raised.value)
    assert ADDRESS not in caplog.text
    with pytest.raises(MailError):
        await mailer.send("not an address", "Subject", "Body")
    with pytest.raises(MailError):
        await mailer.send(ADDRESS, "Injected\r\nBcc: someone@example.com", "Body")


async def test_mail_is_refused_by_the_server(smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp

    async def refuse(server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        return "550 5.1.1 <" + address + ">: no such user"

    inbox.handle_RCPT = refuse  # type: ignore[attr-defined]
    mailer = Mailer(MailConfig(host="127.0.0.1", port=port, from_="support@test.example"))
    with pytest.raises(MailError) as raised:
        await mailer.send(ADDRESS, "Subject", "Body")
    assert ADDRESS not in str(raised.value)
    assert inbox.messages == []


def test_build_message_has_text_and_html() -> None:
    message = build_message(
        "Support <support@test.example>", ADDRESS, "Sujet é", "Texte", "<p>x</p>"
    )
    assert message["To"] == ADDRESS
    assert message["Message-ID"].endswith("@test.example>")
    assert message.get_body(("plain",)) is not None
    assert message.get_body(("html",)) is not None


def test_config_replace_keeps_secret() -> None:
    # The web app refuses to run without a secret: links could be forged otherwise.
    config = Config(
        matrix=MatrixConfig(
            homeserver="https://matrix.test.example",
            user_id="@bot:test.example",
            staff_room="!staff:test.example",
            password="x",
        )
    )
    with pytest.raises(ValueError, match="secret"):
        build_web_app(
            config=replace(config, web=WebConfig(secret="")),
            catalogs=Catalogs.load(),
            registry=CollectorRegistry(),
            on_confirmed=lambda ticket_id: asyncio.sleep(0),
            clock=Clock(),
        )
