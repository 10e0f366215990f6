"""A ✅ that needs one click (issue #16 §4), through the real router and database (SQLite, and
PostgreSQL when configured): a staff ✅ before the client's consent is refused but remembered;
once the client consents, the staff room gets a "start now?" prompt carrying the bot's own ✅,
or (service.confirm_on_early_check) the remembered ✅ confirms at once. Element's behaviour is
played as Element does it: the early ✅ stays on the card, a click on one's own reaction is its
redaction. The same against a real Synapse: tests/e2e/test_one_click_e2e.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.domain import tickets as lifecycle
from bot.domain.tickets import Status
from bot.i18n import Msg
from bot.storage.models import AuditEntry, Reaction, Ticket
from bot.testing.harness import STAFF, STAFF_ROOM, BotHarness, Sent
from handlers import consent
from tests.flows.test_interventions_flow import (
    ALICE,
    BRIDGE,
    DM,
    check,
    config,
    consent_by_web,
    estimate,
    make_ticket,
    messages,
    new_messages,
    reload,
    token_from,
    use_smtp,
)

pytestmark = pytest.mark.postgres

HELPER = "@helper:test"  # staff by power level in the staff room, not in the configured list


@pytest.fixture
async def bot(db_url: str) -> AsyncIterator[BotHarness]:
    async with BotHarness.open(db_url, config()) as harness:
        harness.transport.members[STAFF_ROOM].add(BRIDGE)
        yield harness


def fr(bot: BotHarness, text: str, **params: Any) -> str:
    return bot.catalogs.get("fr").render(Msg(text, params), bot.services.tz)


def refused_reason(bot: BotHarness) -> str:
    return fr(bot, lifecycle._WAITING_FOR_CLIENT)


def prompt_of(sent: list[Sent]) -> Sent:
    [prompt] = [s for s in messages(sent, STAFF_ROOM) if "!confirm" in s.body]
    return prompt


def bot_reactions(sent: list[Sent]) -> list[tuple[str, str]]:
    return [
        (s.content["m.relates_to"]["event_id"], s.content["m.relates_to"]["key"])
        for s in sent
        if s.type == "m.reaction"
    ]


async def audit_details(ticket: Ticket, action: str) -> list[str | None]:
    entries = await AuditEntry.filter(ticket_id=ticket.id, action=action).order_by("id")
    return [e.detail for e in entries]


async def test_early_check_is_remembered_then_one_click_on_the_prompt_starts(bot, smtp):
    inbox, port = smtp
    use_smtp(bot, port)
    ticket = await make_ticket(bot)
    await estimate(bot, ticket, "3h")
    [(_, mail)] = inbox.messages

    # The early ✅: refused (R7), with the reason and what will happen; remembered.
    sent = await check(bot, ticket)
    early = bot.last_reaction_id
    assert new_messages(sent, STAFF_ROOM) == [
        fr(bot, consent._EARLY_NOTED_PROMPT, ref=ticket.ref, reason=refused_reason(bot))
    ]
    assert new_messages(sent, DM) == []
    t = await reload(ticket)
    assert t.status == Status.AWAITING_CLIENT_CONFIRMATION
    assert (t.early_confirm_by, t.early_confirm_event_id) == (STAFF, early)

    # The client consents on the web page: the staff room is asked, with the bot's own ✅.
    sent = await consent_by_web(bot, token_from(mail), ticket)
    prompt = prompt_of(sent)
    assert prompt.body == fr(
        bot,
        consent._START_PROMPT_EARLY,
        ref=ticket.ref,
        tickets=consent._tickets(3),
        staff=STAFF,
    )
    assert bot_reactions(sent) == [(prompt.event_id, "✅")]
    t = await reload(ticket)
    assert t.start_prompt_event_id == prompt.event_id
    assert t.status == Status.AWAITING_STAFF_CONFIRMATION

    # After a restart, the staff member presses the ✅ under the prompt: one click.
    await bot.restart()
    sent = await bot.react(STAFF_ROOM, STAFF, prompt.event_id, "✅")
    pressed = bot.last_reaction_id
    t = await reload(ticket)
    assert (t.status, t.staff_confirmed_by, t.confirmed_tickets) == (Status.CONFIRMED, STAFF, 3)
    assert await audit_details(t, "staff_confirmed") == ["prompt"]
    assert any(STAFF in body and t.ref in body for body in new_messages(sent, STAFF_ROOM))
    assert new_messages(sent, DM) == [
        fr(bot, consent._STAFF_CONFIRMED_CLIENT, ref=t.ref, tickets=consent._tickets(3))
    ]
    assert (t.early_confirm_by, t.early_confirm_event_id) == (None, None)

    # The early ✅ still on the card means nothing now: Element's click on it (a redaction)
    # does not undo the confirmation.
    assert await bot.redact(STAFF_ROOM, STAFF, early) == []
    assert (await reload(ticket)).status == Status.CONFIRMED
    # Taking back the ✅ that confirmed, before any work, does.
    await bot.redact(STAFF_ROOM, STAFF, pressed)
    t = await reload(ticket)
    assert (t.status, t.staff_confirmed_by) == (Status.AWAITING_STAFF_CONFIRMATION, None)


async def test_with_confirm_on_early_check_the_remembered_check_confirms_at_consent(db_url):
    async with BotHarness.open(
        db_url, config(confirmation="chat", confirm_on_early_check=True)
    ) as bot:
        ticket = await make_ticket(bot)
        await estimate(bot, ticket, "2h30")
        sent = await check(bot, ticket)
        early = bot.last_reaction_id
        assert new_messages(sent, STAFF_ROOM) == [
            fr(bot, consent._EARLY_NOTED_AUTO, ref=ticket.ref, reason=refused_reason(bot))
        ]

        sent = await bot.say(DM, ALICE, f"!confirmer {ticket.ref}")
        t = await reload(ticket)
        assert (t.status, t.staff_confirmed_by, t.confirmed_tickets) == (
            Status.CONFIRMED,
            STAFF,
            3,
        )
        assert await audit_details(t, "staff_confirmed") == ["early"]
        assert new_messages(sent, DM) == [
            fr(bot, consent._CLIENT_CONFIRMED_THANKS, ref=t.ref),
            fr(bot, consent._STAFF_CONFIRMED_CLIENT, ref=t.ref, tickets=consent._tickets(3)),
        ]
        assert fr(
            bot,
            consent._EARLY_CONFIRMED_STAFF,
            ref=t.ref,
            staff=STAFF,
            tickets=consent._tickets(3),
        ) in new_messages(sent, STAFF_ROOM)
        assert bot_reactions(sent) == []  # no prompt to press
        # That ✅ confirmed: taking it back (nothing logged yet) undoes the confirmation.
        await bot.redact(STAFF_ROOM, STAFF, early)
        assert (await reload(ticket)).status == Status.AWAITING_STAFF_CONFIRMATION


async def test_an_early_check_taken_back_is_forgotten(db_url):
    async with BotHarness.open(
        db_url, config(confirmation="chat", confirm_on_early_check=True)
    ) as bot:
        ticket = await make_ticket(bot)
        await estimate(bot, ticket, "3h")
        await check(bot, ticket)
        sent = await bot.redact(STAFF_ROOM, STAFF, bot.last_reaction_id)
        assert new_messages(sent, STAFF_ROOM) == [
            fr(bot, consent._EARLY_FORGOTTEN_STAFF, staff=STAFF, ref=ticket.ref)
        ]
        t = await reload(ticket)
        assert (t.early_confirm_by, t.early_confirm_event_id) == (None, None)
        assert await Reaction.all().count() == 0

        # The client consents: nobody's ✅ is waiting, so the staff room is asked.
        sent = await bot.say(DM, ALICE, f"!confirm {ticket.ref}")
        assert (await reload(ticket)).status == Status.AWAITING_STAFF_CONFIRMATION
        prompt = prompt_of(sent)
        assert prompt.body == fr(
            bot, consent._START_PROMPT, ref=ticket.ref, tickets=consent._tickets(3)
        )


async def test_a_remembered_check_of_someone_no_longer_staff_does_not_confirm(db_url):
    async with BotHarness.open(
        db_url, config(confirmation="chat", confirm_on_early_check=True)
    ) as bot:
        bot.transport.members[STAFF_ROOM].add(HELPER)
        bot.transport.powers[STAFF_ROOM][HELPER] = 50
        ticket = await make_ticket(bot)
        await estimate(bot, ticket, "3h")
        await check(bot, ticket, HELPER)
        assert (await reload(ticket)).early_confirm_by == HELPER
        bot.transport.powers[STAFF_ROOM][HELPER] = 0  # demoted before the client consents
        sent = await bot.say(DM, ALICE, f"!confirm {ticket.ref}")
        t = await reload(ticket)
        assert t.status == Status.AWAITING_STAFF_CONFIRMATION and t.staff_confirmed_by is None
        assert prompt_of(sent)


async def test_typed_confirm_in_the_staff_room_and_who_may_press(db_url):
    async with BotHarness.open(db_url, config(confirmation="chat")) as bot:
        bot.transport.members[STAFF_ROOM].add(BRIDGE)
        ticket = await make_ticket(bot)
        await estimate(bot, ticket, "3h")
        # Typed before the consent: refused with the reason, and not remembered.
        sent = await bot.say(STAFF_ROOM, STAFF, f"!confirm {ticket.ref}")
        assert [s.body for s in sent] == [
            fr(bot, consent._CONFIRM_REFUSED, ref=ticket.ref, reason=refused_reason(bot))
        ]
        assert (await reload(ticket)).early_confirm_by is None

        sent = await bot.say(DM, ALICE, f"!confirm {ticket.ref}")
        prompt = prompt_of(sent)
        # A bridge account's ✅ on the prompt does nothing, nor a ✅ from a client room.
        assert await bot.react(STAFF_ROOM, BRIDGE, prompt.event_id, "✅") == []
        assert (await reload(ticket)).status == Status.AWAITING_STAFF_CONFIRMATION

        sent = await bot.say(STAFF_ROOM, STAFF, f"!confirmer {ticket.ref}")
        t = await reload(ticket)
        assert (t.status, t.staff_confirmed_by) == (Status.CONFIRMED, STAFF)
        assert await audit_details(t, "staff_confirmed") == ["command"]
        # Pressing the prompt's ✅ now: refused, already confirmed, with who did it.
        sent = await bot.react(STAFF_ROOM, STAFF, prompt.event_id, "✅")
        reason = fr(bot, lifecycle._ALREADY_CONFIRMED, staff=STAFF)
        assert [s.body for s in sent] == [
            fr(bot, consent._CONFIRM_REFUSED, ref=t.ref, reason=reason)
        ]


async def test_a_check_within_two_tickets_still_confirms_at_once(bot):
    ticket = await make_ticket(bot)
    await estimate(bot, ticket, "2h")
    sent = await check(bot, ticket)
    t = await reload(ticket)
    assert (t.status, t.staff_confirmed_by) == (Status.CONFIRMED, STAFF)
    assert t.early_confirm_by is None and bot_reactions(sent) == []
    assert await audit_details(t, "staff_confirmed") == ["reaction"]
