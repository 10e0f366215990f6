"""Interventions, time, closing, warranty and reports through the real router and database.

A real SMTP server (aiosmtpd) receives the consent e-mails; the consent is then given as the
web page's POST does (`bot.web.consent.confirm`), followed by the hook the web server calls.
Expected texts are rendered from the handler's msgids with the same catalogs, so these tests
hold before and after the catalogs are translated.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

import pytest

from bot.config import MailConfig
from bot.consent import Confirmed, confirm
from bot.domain import tickets as lifecycle
from bot.domain.tickets import Channel, Kind, Status
from bot.i18n import Msg
from bot.mail import Mailer
from bot.storage import repo
from bot.storage.models import AuditEntry, Client, Reaction, Ticket, TimeLog
from bot.testing.harness import STAFF, STAFF_ROOM, BotHarness, Sent
from bot.testing.harness import test_config as base_config
from bot.testing.net import free_port
from handlers import billing, closing, consent, satisfaction

DM = "!dm-alice:test"
ALICE = "@alice:test"
ALICE_MAIL = "alice.client@example.com"
BOB_DM = "!dm-bob:test"
BOB = "@bob:test"
BRIDGE = "@talkbridge:test"
LINK = re.compile(r"https?://[^\s\"<>]+/confirm/([A-Za-z0-9_-]+)")


# -- fixtures -----------------------------------------------------------------------------------


def config(**service: Any):
    return base_config(
        service=service,
        bridges=[{"user_id": BRIDGE}],
        mail={"host": "127.0.0.1", "port": 1, "from": "support@test.example"},
    )


@pytest.fixture
async def bot(db_url: str) -> AsyncIterator[BotHarness]:
    async with BotHarness.open(db_url, config()) as harness:
        # A bridge account in the staff room, even with power: it must never act.
        harness.transport.members[STAFF_ROOM].add(BRIDGE)
        harness.transport.powers[STAFF_ROOM][BRIDGE] = 100
        yield harness


def use_smtp(bot: BotHarness, port: int) -> None:
    bot.services.mailer = Mailer(MailConfig(host="127.0.0.1", port=port), timeout=5)


# -- helpers ------------------------------------------------------------------------------------


async def make_ticket(
    bot: BotHarness,
    *,
    channel: Channel = Channel.INTERVENTION,
    kind: Kind = Kind.TICKET,
    client_key: str = ALICE,
    room_id: str = DM,
    email_address: str | None = ALICE_MAIL,
    minutes: int = 0,
    status: Status | None = None,
    created_at: Any = None,
    locale: str = "fr",
) -> Ticket:
    """A ticket as the intake would open it, with its card already in the staff room."""
    now = bot.clock()
    client, _ = await Client.get_or_create(key=client_key, defaults={"created_at": now})
    created = created_at or now
    prefix = {Kind.TICKET: "SP", Kind.QUESTION: "Q", Kind.QUOTE: "QT"}[kind]
    ref = await repo.allocate_ref(prefix, created.year)
    ticket = await Ticket.create(
        ref=ref,
        kind=str(kind),
        status=str(status or lifecycle.initial_state(kind, channel).status),
        category="theme",
        channel=str(channel),
        client=client,
        room_id=room_id,
        locale=locale,
        description="The submit button of our survey theme is hidden on phones.",
        email=email_address,
        created_at=created,
        minutes_logged=minutes,
    )
    ticket.card_event_id = f"$card-{ticket.id}"
    await ticket.save(update_fields=["card_event_id"])
    return ticket


async def reload(ticket: Ticket) -> Ticket:
    return await Ticket.get(id=ticket.id)


def fr(bot: BotHarness, text: str, **params: Any) -> str:
    return bot.catalogs.get("fr").render(Msg(text, params), bot.services.tz)


def tickets_fr(bot: BotHarness, n: int) -> str:
    return bot.catalogs.get("fr").render(consent._tickets(n), bot.services.tz)


def messages(sent: list[Sent], room_id: str) -> list[Sent]:
    return [s for s in sent if s.room_id == room_id and s.type == "m.room.message"]


def new_messages(sent: list[Sent], room_id: str) -> list[str]:
    """Bodies of new messages (not card edits) in a room."""
    return [
        s.body
        for s in messages(sent, room_id)
        if s.content.get("m.relates_to", {}).get("rel_type") != "m.replace"
    ]


def card_edits(sent: list[Sent], ticket: Ticket) -> list[Sent]:
    return [
        s
        for s in messages(sent, STAFF_ROOM)
        if s.content.get("m.relates_to", {}).get("event_id") == ticket.card_event_id
    ]


async def estimate(bot: BotHarness, ticket: Ticket, duration: str) -> list[Sent]:
    return await bot.say(STAFF_ROOM, STAFF, f"!estimate {ticket.ref} {duration}")


async def check(bot: BotHarness, ticket: Ticket, sender: str = STAFF) -> list[Sent]:
    return await bot.react(STAFF_ROOM, sender, ticket.card_event_id or "", "✅")


def token_from(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    match = LINK.search(body.get_content())
    assert match is not None
    return match.group(1)


async def consent_by_web(bot: BotHarness, token: str, ticket: Ticket) -> list[Sent]:
    result = await confirm(token, now=bot.clock(), secret=bot.config.web.secret)
    assert isinstance(result, Confirmed)
    before = len(bot.transport.sent)
    await consent.on_client_confirmed(bot.services, ticket.id)
    await bot.deliverer.deliver_pending()
    return bot.transport.sent[before:]


# -- estimate and consent -----------------------------------------------------------------------


async def test_estimate_refuses_what_is_not_a_duration_with_the_accepted_forms(bot):
    ticket = await make_ticket(bot)
    sent = await estimate(bot, ticket, "trois heures")
    assert len(sent) == 1 and sent[0].room_id == STAFF_ROOM
    assert "90, 90m, 1h30" in sent[0].body  # the accepted forms, from DurationError.msg
    assert f"!estimate {ticket.ref} 2h30" in sent[0].body
    assert (await reload(ticket)).status == Status.AWAITING_ESTIMATE

    sent = await estimate(bot, ticket, "0")
    assert fr(bot, "A duration must be longer than zero.") in sent[0].body
    sent = await bot.say(STAFF_ROOM, STAFF, "!estimate 3h")
    assert "SP-2026-0042" in sent[0].body  # asks for the reference


async def test_estimate_is_a_staff_command(bot):
    ticket = await make_ticket(bot)
    sent = await bot.say(DM, ALICE, f"!estimate {ticket.ref} 1h")
    assert len(sent) == 1 and sent[0].room_id == DM
    assert (await reload(ticket)).estimate_minutes is None


async def test_two_hours_needs_no_consent_and_check_confirms_at_once(bot, smtp):
    inbox, port = smtp
    use_smtp(bot, port)
    ticket = await make_ticket(bot)
    sent = await estimate(bot, ticket, "2h")
    t = await reload(ticket)
    assert t.status == Status.AWAITING_STAFF_CONFIRMATION
    assert t.estimate_minutes == 120
    to_client = new_messages(sent, DM)
    assert to_client == [
        fr(
            bot,
            consent._ESTIMATED_CLIENT,
            ref=t.ref,
            duration="2h",
            tickets=consent._tickets(2),
        )
    ]
    assert card_edits(sent, ticket)  # the card shows the estimate
    assert inbox.messages == []  # no consent needed, no e-mail

    sent = await check(bot, ticket)
    t = await reload(ticket)
    assert t.status == Status.CONFIRMED
    assert t.staff_confirmed_by == STAFF
    assert t.confirmed_tickets == 2
    staff_msgs = new_messages(sent, STAFF_ROOM)
    assert any(STAFF in body and t.ref in body for body in staff_msgs)
    assert new_messages(sent, DM) == [
        fr(bot, consent._STAFF_CONFIRMED_CLIENT, ref=t.ref, tickets=consent._tickets(2))
    ]
    assert card_edits(sent, ticket)
    actions = [e.action for e in await AuditEntry.filter(ticket_id=t.id).order_by("id")]
    assert actions == ["estimate", "staff_confirmed"]
    assert await Reaction.filter(target_event_id=t.card_event_id).count() == 1


async def test_above_two_tickets_mail_in_french_then_check_only_after_consent(bot, smtp):
    inbox, port = smtp
    use_smtp(bot, port)
    ticket = await make_ticket(bot)
    sent = await estimate(bot, ticket, "2h01")
    t = await reload(ticket)
    assert t.status == Status.AWAITING_CLIENT_CONFIRMATION

    # The client is warned in the room: N tickets, more than two, starts after confirmation.
    [warning] = new_messages(sent, DM)
    assert fr(bot, consent._CONSENT_NEEDED_CLIENT, ref=t.ref, duration="2h01", n=3) in warning
    expires = bot.clock() + timedelta(days=bot.config.service.confirmation_link_days)
    assert fr(bot, consent._CONSENT_BY_EMAIL_CLIENT, expires_at=expires) in warning

    # The e-mail: to the ticket's address, in French, with a link to the consent page.
    [(recipients, message)] = inbox.messages
    assert recipients == [ALICE_MAIL]
    assert t.ref in message["Subject"]
    text = message.get_body(preferencelist=("plain",)).get_content()
    assert f"{bot.config.web.public_url}/confirm/" in text
    assert "décembre 2026" in text  # the expiry date, formatted in French (+7 days)
    token = token_from(message)

    # Staff ✅ before the consent: refused in the staff room, with the reason (and remembered:
    # tests/flows/test_one_click_flow.py).
    sent = await check(bot, ticket)
    [refusal] = new_messages(sent, STAFF_ROOM)
    assert t.ref in refusal
    assert fr(bot, lifecycle._WAITING_FOR_CLIENT) in refusal
    assert new_messages(sent, DM) == []
    assert (await reload(ticket)).status == Status.AWAITING_CLIENT_CONFIRMATION
    assert (await reload(ticket)).staff_confirmed_by is None

    # The client confirms on the web page; the web server calls the hook; staff are asked.
    sent = await consent_by_web(bot, token, ticket)
    prompt = fr(
        bot, consent._START_PROMPT_EARLY, ref=t.ref, tickets=consent._tickets(3), staff=STAFF
    )
    assert new_messages(sent, STAFF_ROOM) == [prompt]
    assert new_messages(sent, DM) == [fr(bot, consent._CLIENT_CONFIRMED_THANKS, ref=t.ref)]
    assert card_edits(sent, ticket)
    # Calling the hook again (a retry) tells nobody twice.
    before = len(bot.transport.sent)
    await consent.on_client_confirmed(bot.services, ticket.id)
    await bot.deliverer.deliver_pending()
    assert bot.transport.sent[before:] == []

    sent = await check(bot, ticket)
    t = await reload(ticket)
    assert t.status == Status.CONFIRMED
    assert t.staff_confirmed_by == STAFF
    assert t.confirmed_tickets == 3


async def test_mail_failure_tells_staff_and_client_without_the_address(bot, caplog):
    caplog.set_level(logging.INFO)  # SPEC §7: nothing personal at INFO or above
    ticket = await make_ticket(bot)
    bot.services.mailer = Mailer(MailConfig(host="127.0.0.1", port=free_port()), timeout=2)
    sent = await estimate(bot, ticket, "3h")
    t = await reload(ticket)
    assert t.status == Status.AWAITING_CLIENT_CONFIRMATION  # still waits for the consent
    [to_client] = new_messages(sent, DM)
    assert fr(bot, consent._MAIL_FAILED_CLIENT, ref=t.ref) in to_client
    staff = new_messages(sent, STAFF_ROOM)
    assert any(fr(bot, consent._MAIL_SMTP) in body and t.ref in body for body in staff)
    assert ALICE_MAIL not in caplog.text
    assert all(ALICE_MAIL not in s.body for s in sent)

    # No address on the ticket (and none known for the client): same, with the reason.
    other = await make_ticket(bot, email_address=None)
    sent = await estimate(bot, other, "3h")
    staff = new_messages(sent, STAFF_ROOM)
    assert any(fr(bot, consent._MAIL_NO_ADDRESS) in body for body in staff)

    # No mailer at all.
    bot.services.mailer = None
    third = await make_ticket(bot)
    sent = await estimate(bot, third, "3h")
    staff = new_messages(sent, STAFF_ROOM)
    assert any(fr(bot, consent._MAIL_NOT_CONFIGURED) in body for body in staff)


async def test_new_estimate_sends_a_new_link_and_the_old_one_stops_working(bot, smtp):
    inbox, port = smtp
    use_smtp(bot, port)
    ticket = await make_ticket(bot)
    await estimate(bot, ticket, "3h")
    await estimate(bot, ticket, "4h")
    assert len(inbox.messages) == 2
    old, new = (token_from(m) for _, m in inbox.messages)
    result = await confirm(old, now=bot.clock(), secret=bot.config.web.secret)
    assert not isinstance(result, Confirmed)
    result = await confirm(new, now=bot.clock(), secret=bot.config.web.secret)
    assert isinstance(result, Confirmed) and result.tickets == 4


async def test_chat_mode_accepts_confirm_in_the_client_room(db_url, smtp):
    inbox, port = smtp
    async with BotHarness.open(db_url, config(confirmation="chat")) as bot:
        use_smtp(bot, port)
        ticket = await make_ticket(bot)
        sent = await estimate(bot, ticket, "3h")
        [warning] = new_messages(sent, DM)
        assert fr(bot, consent._CONSENT_BY_CHAT_CLIENT, ref=ticket.ref) in warning
        assert inbox.messages == []

        # Only the ticket's client can confirm it: anyone else does not even see it.
        sent = await bot.say(BOB_DM, BOB, f"!confirm {ticket.ref}")
        assert ticket.ref in sent[0].body
        assert (await reload(ticket)).status == Status.AWAITING_CLIENT_CONFIRMATION

        sent = await bot.say(DM, ALICE, "!confirmer")  # the only ticket waiting: no ref needed
        t = await reload(ticket)
        assert t.status == Status.AWAITING_STAFF_CONFIRMATION
        assert t.client_confirmed_at == bot.clock()
        assert new_messages(sent, DM) == [fr(bot, consent._CLIENT_CONFIRMED_THANKS, ref=t.ref)]
        prompt = fr(bot, consent._START_PROMPT, ref=t.ref, tickets=consent._tickets(3))
        assert prompt in new_messages(sent, STAFF_ROOM)

        await check(bot, ticket)
        assert (await reload(ticket)).status == Status.CONFIRMED


async def test_email_mode_confirm_command_explains_the_link_is_needed(bot, smtp):
    _, port = smtp
    use_smtp(bot, port)
    ticket = await make_ticket(bot)
    await estimate(bot, ticket, "3h")
    sent = await bot.say(DM, ALICE, f"!confirm {ticket.ref}")
    assert [s.body for s in sent] == [fr(bot, consent._CONFIRM_BY_EMAIL, ref=ticket.ref)]
    assert (await reload(ticket)).status == Status.AWAITING_CLIENT_CONFIRMATION


# -- reactions ----------------------------------------------------------------------------------


async def test_check_by_non_staff_or_bridge_does_nothing(bot):
    ticket = await make_ticket(bot)
    await estimate(bot, ticket, "1h")
    bot.transport.members[STAFF_ROOM].add(ALICE)
    for sender in (ALICE, BRIDGE):
        assert await check(bot, ticket, sender) == []
        assert await bot.react(STAFF_ROOM, sender, ticket.card_event_id, "❌") == []
    t = await reload(ticket)
    assert t.status == Status.AWAITING_STAFF_CONFIRMATION
    assert t.staff_confirmed_by is None
    # A staff ✅ on something that is not a card does nothing either.
    assert await bot.react(STAFF_ROOM, STAFF, "$not-a-card", "✅") == []


async def test_removing_the_check_before_work_unconfirms_even_after_a_restart(bot):
    ticket = await make_ticket(bot)
    await estimate(bot, ticket, "1h30")
    await bot.react(STAFF_ROOM, STAFF, ticket.card_event_id, "✔️")
    reaction_id = bot.last_reaction_id
    assert (await reload(ticket)).status == Status.CONFIRMED

    await bot.restart()
    sent = await bot.redact(STAFF_ROOM, STAFF, reaction_id)
    t = await reload(ticket)
    assert t.status == Status.AWAITING_STAFF_CONFIRMATION
    assert t.staff_confirmed_by is None and t.confirmed_tickets is None
    assert any(t.ref in body for body in new_messages(sent, STAFF_ROOM))
    assert card_edits(sent, ticket)
    assert await Reaction.filter(event_id=reaction_id).count() == 0
    # A redaction of an unknown event (or a redelivery) does nothing.
    assert await bot.redact(STAFF_ROOM, STAFF, reaction_id) == []
    assert await bot.redact(STAFF_ROOM, STAFF, "$something-else") == []


async def test_removing_the_check_after_work_keeps_the_confirmation(bot):
    ticket = await make_ticket(bot)
    await estimate(bot, ticket, "2h")
    await check(bot, ticket)
    reaction_id = bot.last_reaction_id
    await bot.say(STAFF_ROOM, STAFF, f"!log {ticket.ref} 20")
    sent = await bot.redact(STAFF_ROOM, STAFF, reaction_id)
    t = await reload(ticket)
    assert t.status == Status.CONFIRMED and t.staff_confirmed_by == STAFF
    [notice] = new_messages(sent, STAFF_ROOM)
    assert fr(bot, lifecycle._UNCONFIRM_WORKED) in notice


async def test_cross_declines_and_the_client_is_told_politely(bot):
    ticket = await make_ticket(bot, channel=Channel.MESSAGING)
    await bot.say(DM, ALICE, "!lang en")
    sent = await bot.react(STAFF_ROOM, STAFF, ticket.card_event_id, "❌")
    t = await reload(ticket)
    assert t.status == Status.DECLINED
    assert lifecycle.billed_tickets(repo.ticket_state(t)) == 0
    # In the client's own language (English here).
    assert new_messages(sent, DM) == [closing._DECLINED_CLIENT.format(ref=t.ref)]
    assert any(t.ref in body for body in new_messages(sent, STAFF_ROOM))
    # A second ❌: refused with the reason, nothing sent to the client.
    sent = await bot.react(STAFF_ROOM, STAFF, ticket.card_event_id, "❌")
    assert new_messages(sent, DM) == []
    assert fr(bot, "This request was declined by the support team.") in sent[0].body


# -- time and billing ---------------------------------------------------------------------------


async def test_log_messaging_boundary_60_then_61_announces_a_new_ticket(bot):
    ticket = await make_ticket(bot, channel=Channel.MESSAGING)
    sent = await bot.say(STAFF_ROOM, STAFF, f"!log {ticket.ref} 1h fixed the CSS of the theme")
    assert new_messages(sent, DM) == []  # 60 minutes: still one ticket
    assert len(new_messages(sent, STAFF_ROOM)) == 1
    log_row = await TimeLog.get(ticket_id=ticket.id)
    assert (log_row.minutes, log_row.note, log_row.staff) == (
        60,
        "fixed the CSS of the theme",
        STAFF,
    )
    t = await reload(ticket)
    assert t.status == Status.IN_PROGRESS and t.minutes_logged == 60

    sent = await bot.say(STAFF_ROOM, STAFF, f"!log {ticket.ref} 1")
    staff = new_messages(sent, STAFF_ROOM)
    crossed = fr(
        bot,
        billing._CROSSED_STAFF,
        ref=t.ref,
        tickets=billing._tickets(2),
        total="1h01",
        duration="1 min",
    )
    assert crossed in staff
    assert new_messages(sent, DM) == [
        fr(
            bot,
            billing._CROSSED_CLIENT,
            ref=t.ref,
            tickets=billing._tickets(2),
            rule=Msg(billing._RULE_HOUR),
        )
    ]
    assert (await reload(ticket)).minutes_logged == 61


async def test_log_call_boundary_45_then_46(bot):
    ticket = await make_ticket(bot, channel=Channel.VIDEO)
    sent = await bot.say(STAFF_ROOM, STAFF, f"!log {ticket.ref} 45m")
    assert new_messages(sent, DM) == []
    sent = await bot.say(STAFF_ROOM, STAFF, f"!temps {ticket.ref} 1 min")
    assert new_messages(sent, DM) == [
        fr(
            bot,
            billing._CROSSED_CLIENT,
            ref=ticket.ref,
            tickets=billing._tickets(2),
            rule=Msg(billing._RULE_CALL),
        )
    ]
    assert len(new_messages(sent, STAFF_ROOM)) == 2  # the log, and the new-ticket warning


async def test_log_refuses_a_bad_duration_and_unconfirmed_interventions(bot):
    ticket = await make_ticket(bot)
    sent = await bot.say(STAFF_ROOM, STAFF, f"!log {ticket.ref} beaucoup")
    assert "1h30" in sent[0].body
    sent = await bot.say(STAFF_ROOM, STAFF, f"!log {ticket.ref} 1h")
    assert fr(bot, lifecycle._LOG_NOT_CONFIRMED) in sent[0].body
    assert await TimeLog.all().count() == 0


async def test_logging_past_the_confirmed_tickets_needs_a_new_consent(bot, smtp):
    inbox, port = smtp
    use_smtp(bot, port)
    ticket = await make_ticket(bot)
    await estimate(bot, ticket, "2h")
    await check(bot, ticket)
    await bot.say(STAFF_ROOM, STAFF, f"!log {ticket.ref} 2h")
    sent = await bot.say(STAFF_ROOM, STAFF, f"!log {ticket.ref} 10")
    assert "!estimate" in sent[0].body
    assert (await reload(ticket)).minutes_logged == 120
    assert await TimeLog.filter(ticket_id=ticket.id).count() == 1

    await estimate(bot, ticket, "3h")  # above the confirmed 2 tickets and above two: consent
    t = await reload(ticket)
    assert t.status == Status.AWAITING_CLIENT_CONFIRMATION
    [(_, message)] = inbox.messages
    await consent_by_web(bot, token_from(message), ticket)
    sent = await bot.say(STAFF_ROOM, STAFF, f"!log {ticket.ref} 10")
    assert (await reload(ticket)).minutes_logged == 120  # the staff ✅ is still missing
    await check(bot, ticket)
    await bot.say(STAFF_ROOM, STAFF, f"!log {ticket.ref} 10")
    t = await reload(ticket)
    assert t.minutes_logged == 130 and t.confirmed_tickets == 3


# -- closing and warranty -----------------------------------------------------------------------


async def resolve_and_accept(bot: BotHarness, ticket: Ticket) -> None:
    await bot.say(STAFF_ROOM, STAFF, f"!log {ticket.ref} 30")
    await bot.say(STAFF_ROOM, STAFF, f"!resolve {ticket.ref}")
    await bot.say(DM, ALICE, f"!accept {ticket.ref}")


async def test_resolve_then_accept_closes_with_a_week_of_warranty(bot):
    ticket = await make_ticket(bot, channel=Channel.MESSAGING)
    await bot.say(STAFF_ROOM, STAFF, f"!log {ticket.ref} 30")
    sent = await bot.say(STAFF_ROOM, STAFF, f"!resolve {ticket.ref}")
    t = await reload(ticket)
    assert t.status == Status.RESOLVED and t.resolved_at == bot.clock()
    assert new_messages(sent, DM) == [fr(bot, closing._RESOLVED_CLIENT, ref=t.ref)]

    bot.clock.advance(timedelta(hours=3))
    sent = await bot.say(DM, ALICE, "!accepter")  # the only resolved ticket: no ref needed
    t = await reload(ticket)
    assert t.status == Status.CLOSED
    assert t.accepted_at == bot.clock()
    assert t.warranty_until == bot.clock() + timedelta(days=7)
    # Thanked, then asked to rate it (tests/flows/test_satisfaction_flow.py).
    assert new_messages(sent, DM) == [
        fr(bot, closing._ACCEPTED_CLIENT, ref=t.ref, warranty_until=t.warranty_until),
        fr(bot, satisfaction._QUESTION, ref=t.ref),
    ]
    assert any(t.ref in body for body in new_messages(sent, STAFF_ROOM))
    assert card_edits(sent, ticket)


async def test_check_on_the_resolved_message_accepts(bot):
    ticket = await make_ticket(bot, channel=Channel.MESSAGING)
    await bot.say(STAFF_ROOM, STAFF, f"!log {ticket.ref} 30")
    sent = await bot.say(STAFF_ROOM, STAFF, f"!resolve {ticket.ref}")
    [resolved_message] = messages(sent, DM)
    # Someone else's ✅ (here the bridge account) does nothing.
    assert await bot.react(DM, BRIDGE, resolved_message.event_id, "✅") == []
    assert (await reload(ticket)).status == Status.RESOLVED
    # After a restart, the client's ✅ on that message is their acceptance.
    await bot.restart()
    await bot.react(DM, ALICE, resolved_message.event_id, "✅")
    t = await reload(ticket)
    assert t.status == Status.CLOSED and t.warranty_until == bot.clock() + timedelta(days=7)


async def test_not_solved_puts_the_ticket_back_in_progress(bot):
    ticket = await make_ticket(bot, channel=Channel.MESSAGING)
    await bot.say(STAFF_ROOM, STAFF, f"!log {ticket.ref} 30")
    await bot.say(STAFF_ROOM, STAFF, f"!resolve {ticket.ref}")
    sent = await bot.say(DM, ALICE, f"!pasresolu {ticket.ref}")
    assert (await reload(ticket)).status == Status.IN_PROGRESS
    assert new_messages(sent, STAFF_ROOM) == [fr(bot, closing._NOT_SOLVED_STAFF, ref=ticket.ref)]
    assert new_messages(sent, DM) == [fr(bot, closing._NOT_SOLVED_CLIENT, ref=ticket.ref)]


async def test_reopen_inside_the_warranty_keeps_the_ticket_and_the_bill(bot):
    ticket = await make_ticket(bot, channel=Channel.MESSAGING)
    await resolve_and_accept(bot, ticket)
    billed = lifecycle.billed_tickets(repo.ticket_state(await reload(ticket)))
    assert billed == 1

    bot.clock.advance(timedelta(days=6, hours=23))
    sent = await bot.say(DM, ALICE, f"!rouvrir {ticket.ref}")
    t = await reload(ticket)
    assert t.status == Status.IN_PROGRESS and t.ref == ticket.ref
    assert new_messages(sent, DM) == [fr(bot, closing._REOPENED_CLIENT, ref=t.ref)]
    assert new_messages(sent, STAFF_ROOM) == [fr(bot, closing._REOPENED_STAFF, ref=t.ref)]
    assert await Ticket.all().count() == 1  # no new ticket

    # Warranty rework is logged but not billed.
    await bot.say(STAFF_ROOM, STAFF, f"!log {ticket.ref} 2h")
    t = await reload(ticket)
    assert lifecycle.billed_tickets(repo.ticket_state(t)) == billed

    # Staff may refuse the warranty with a reason: told to the client.
    sent = await bot.say(STAFF_ROOM, STAFF, f"!refuse-warranty {ticket.ref} LimeSurvey update")
    t = await reload(ticket)
    assert t.status == Status.CLOSED and t.closed_reason == "LimeSurvey update"
    assert new_messages(sent, DM) == [
        fr(bot, closing._WARRANTY_REFUSED_CLIENT, ref=t.ref, reason="LimeSurvey update")
    ]
    sent = await bot.say(STAFF_ROOM, STAFF, f"!refuse-warranty {ticket.ref}")
    assert fr(bot, closing._NEED_REASON, example=f"!refuse-warranty {t.ref} …") == sent[0].body


async def test_reopen_after_the_warranty_is_refused_and_a_new_ticket_proposed(bot):
    ticket = await make_ticket(bot, channel=Channel.MESSAGING)
    await resolve_and_accept(bot, ticket)
    until = (await reload(ticket)).warranty_until
    bot.clock.advance(timedelta(days=7, minutes=1))
    sent = await bot.say(DM, ALICE, f"!reopen {ticket.ref}")
    reason = Msg(lifecycle._WARRANTY_OVER, {"warranty_until": until})
    assert [s.body for s in sent] == [fr(bot, closing._REOPEN_TOO_LATE, reason=reason)]
    assert (await reload(ticket)).status == Status.CLOSED
    assert await Ticket.all().count() == 1


async def test_unsolvable_messaging_is_cancelled_and_becomes_a_quote_request(bot):
    ticket = await make_ticket(bot, channel=Channel.MESSAGING)
    await bot.say(STAFF_ROOM, STAFF, f"!log {ticket.ref} 1h30")
    sent = await bot.say(STAFF_ROOM, STAFF, f"!unsolvable {ticket.ref} needs a plugin")
    t = await reload(ticket)
    assert t.status == Status.CANCELLED and t.closed_reason == "needs a plugin"
    assert lifecycle.billed_tickets(repo.ticket_state(t)) == 0
    quote = await Ticket.get(kind=str(Kind.QUOTE))
    assert quote.ref == "QR-2026-0001"
    assert quote.status == Status.OPEN and quote.converted_from == t.ref
    assert quote.client_id == t.client_id  # type: ignore[attr-defined]
    # Its card is posted in the staff room, and remembered once sent.
    assert any(body.startswith("💼 QR-2026-0001") for body in new_messages(sent, STAFF_ROOM))
    assert (await reload(quote)).card_event_id is not None
    assert new_messages(sent, DM) == [
        fr(
            bot,
            closing._UNSOLVABLE_CANCELLED_CLIENT,
            ref=t.ref,
            quote=quote.ref,
            tickets=closing._tickets(0),
        )
    ]


async def test_unsolvable_intervention_keeps_the_logged_tickets_billed(bot):
    ticket = await make_ticket(bot)
    await estimate(bot, ticket, "2h")
    await check(bot, ticket)
    await bot.say(STAFF_ROOM, STAFF, f"!log {ticket.ref} 1h10")
    sent = await bot.say(STAFF_ROOM, STAFF, f"!insoluble {ticket.ref} server side change")
    t = await reload(ticket)
    assert t.status == Status.UNSOLVABLE
    assert lifecycle.billed_tickets(repo.ticket_state(t)) == 2
    assert new_messages(sent, DM) == [
        fr(
            bot,
            closing._UNSOLVABLE_BILLED_CLIENT,
            ref=t.ref,
            quote="QR-2026-0001",
            tickets=closing._tickets(2),
        )
    ]
    sent = await bot.say(STAFF_ROOM, STAFF, f"!unsolvable {ticket.ref}")
    assert sent[0].body == fr(bot, closing._NEED_REASON, example=f"!unsolvable {t.ref} …")


# -- report -------------------------------------------------------------------------------------


async def test_report_prints_the_month_per_client(bot):
    nov = bot.clock() - timedelta(days=5)  # 2026-11-21
    a1 = await make_ticket(bot, channel=Channel.MESSAGING, minutes=61, created_at=nov)
    await make_ticket(bot, channel=Channel.VIDEO, minutes=46, created_at=nov)
    await make_ticket(bot, kind=Kind.QUESTION, channel=Channel.MESSAGING, created_at=nov)
    await make_ticket(
        bot,
        client_key=BOB,
        room_id=BOB_DM,
        channel=Channel.INTERVENTION,
        minutes=120,
        status=Status.CONFIRMED,
        created_at=nov,
    )
    await make_ticket(bot, client_key=BOB, room_id=BOB_DM, kind=Kind.QUOTE, created_at=nov)
    # Opened in December: not in November's report.
    await make_ticket(
        bot, channel=Channel.MESSAGING, minutes=200, created_at=nov + timedelta(days=15)
    )
    assert a1.created_at.month == 11

    sent = await bot.say(STAFF_ROOM, STAFF, "!report 2026-11")
    [report] = sent
    # The first table, per client (the second one is per organisation: test_orgs_flow.py).
    lines = report.body.split("\n\n")[0].splitlines()
    assert "2026-11" in lines[0]
    cells = {
        line.split("|")[0].strip().replace("\u2060", ""): [c.strip() for c in line.split("|")[1:]]
        for line in lines
    }
    # tickets, billed, messaging, video, phone, intervention, questions, quotes, ratings,
    # average rating, no-shows
    assert cells[ALICE] == ["2", "4", "1h01", "46 min", "0", "0", "1", "0", "0", "–", "0"]
    assert cells[BOB] == ["1", "2", "0", "0", "0", "2h", "0", "1", "0", "–", "0"]
    total = ["3", "6", "1h01", "46 min", "0", "2h", "1", "1", "0", "–", "0"]
    assert cells[fr(bot, billing._TOTAL)] == total
    assert "<table>" in (report.html or "")

    sent = await bot.say(STAFF_ROOM, STAFF, "!rapport 2026-02")
    assert sent[0].body == fr(bot, billing._REPORT_EMPTY, month="2026-02")
    sent = await bot.say(STAFF_ROOM, STAFF, "!report novembre")
    assert sent[0].body == fr(bot, billing._REPORT_BAD_MONTH, example="2026-11")
    # Reports hold every client's figures: never outside the staff room.
    sent = await bot.say(DM, STAFF, "!report 2026-11")
    assert sent[0].body == fr(bot, billing._REPORT_STAFF_ROOM_ONLY)
    sent = await bot.say(DM, ALICE, "!report 2026-11")
    assert ALICE not in sent[0].body and "2026-11" not in sent[0].body
