"""The whole two-ticket consent (R7), as it happens: a staff `!estimate` in the staff room, the
e-mail received by a real SMTP server, the link opened and the button clicked in headless
Chromium, then the ticket, the staff card and the client's room checked, and the staff ✅."""

from __future__ import annotations

import re

from bot.config import MailConfig
from bot.mail import Mailer
from bot.storage.models import Ticket
from bot.testing.harness import STAFF, STAFF_ROOM, BotHarness, test_config
from bot.testing.net import free_port
from bot.web.app import build_web_app, start_web, stop_web
from tests.flows.test_interventions_flow import DM, make_ticket

LINK = re.compile(r"https?://\S+/confirm/[A-Za-z0-9_-]+")


async def test_estimate_mail_chromium_click_then_card_and_staff_confirmation(
    db_url, smtp, browser
):
    from handlers import consent

    inbox, smtp_port = smtp
    web_port = free_port()
    config = test_config(
        web={"listen": f"127.0.0.1:{web_port}", "public_url": f"http://127.0.0.1:{web_port}"},
        mail={"host": "127.0.0.1", "port": smtp_port, "from": "support@test.example"},
    )
    async with BotHarness.open(db_url, config=config) as bot:
        bot.services.mailer = Mailer(MailConfig(host="127.0.0.1", port=smtp_port), timeout=10)
        app = build_web_app(
            config=config,
            catalogs=bot.catalogs,
            registry=bot.services.metrics.registry,
            on_confirmed=lambda ticket_id: consent.on_client_confirmed(bot.services, ticket_id),
            clock=bot.clock,
        )
        runner = await start_web(app, config.web.listen)
        try:
            ticket = await make_ticket(bot)
            sent = await bot.say(STAFF_ROOM, STAFF, f"!estimate {ticket.ref} 2h30")
            # The client is warned in their room: 3 tickets, more than two, consent first.
            warning = [m.body for m in sent if m.room_id == DM]
            assert any("3 tickets" in body for body in warning)
            assert (await Ticket.get(id=ticket.id)).status == "awaiting_client_confirmation"

            # A staff ✅ before the consent is refused, with the reason, in the staff room.
            refused = await bot.react(STAFF_ROOM, STAFF, ticket.card_event_id, "✅")
            assert refused and all(m.room_id == STAFF_ROOM for m in refused)
            assert (await Ticket.get(id=ticket.id)).staff_confirmed_by is None

            # The e-mail, received by the SMTP server, carries the link.
            assert len(inbox.messages) == 1
            _, message = inbox.messages[0]
            text = message.get_body(("plain",)).get_content()
            (link,) = LINK.findall(text)

            page = await browser.new_page()
            await page.goto(link)
            body = await page.inner_text("body")
            assert ticket.ref in body and "3 tickets" in body
            # Opening the link changed nothing (mail scanners open links).
            assert (await Ticket.get(id=ticket.id)).client_confirmed_at is None
            clicked = len(bot.transport.sent)
            await page.click("button")
            await page.wait_for_load_state()
            assert ticket.ref in await page.inner_text("body")

            await bot.deliverer.deliver_pending()
            confirmed = await Ticket.get(id=ticket.id)
            assert confirmed.client_confirmed_at is not None
            assert confirmed.confirmed_tickets == 3
            assert confirmed.status == "awaiting_staff_confirmation"
            # The staff card was edited in place and the staff room told; the client thanked.
            edits = [
                m
                for m in bot.transport.sent
                if m.room_id == STAFF_ROOM
                and m.content.get("m.relates_to", {}).get("rel_type") == "m.replace"
            ]
            assert edits
            after = bot.transport.sent[clicked:]
            assert any(m.room_id == DM for m in after)
            # Staff are asked "start now?", with the bot's ✅ under it (one click).
            assert any(m.room_id == STAFF_ROOM and m.type == "m.reaction" for m in after)

            # Now the staff ✅ is accepted and records who confirmed.
            await bot.react(STAFF_ROOM, STAFF, ticket.card_event_id, "✅")
            final = await Ticket.get(id=ticket.id)
            assert final.status == "confirmed" and final.staff_confirmed_by == STAFF
        finally:
            await stop_web(runner)
