"""!forget-me: explained first, then the personal data goes and the billing figures stay."""

from __future__ import annotations

import pytest

from bot.storage.models import Client, Ticket
from bot.testing.harness import STAFF_ROOM, BotHarness

DM = "!dm-alice:test"
ALICE = "@alice:test"


@pytest.fixture
async def bot(db_url):
    async with BotHarness.open(db_url) as harness:
        yield harness


async def _ticket(bot) -> Ticket:
    now = bot.clock()
    client = await Client.create(key=ALICE, email="alice@example.org", created_at=now)
    return await Ticket.create(
        ref="SP-2026-0001",
        kind="ticket",
        status="closed",
        category="configuration",
        channel="messaging",
        client=client,
        room_id=DM,
        locale="fr",
        description="Mes invitations partent avec la mauvaise adresse.",
        email="alice@example.org",
        created_at=now,
        minutes_logged=75,
    )


async def test_forget_me_explains_then_erases_and_keeps_billing(bot):
    ticket = await _ticket(bot)
    sent = await bot.say(DM, ALICE, "!oubliez-moi")
    assert "!oubliez-moi confirmer" in sent[0].body
    assert await Client.filter(key=ALICE).exists()  # nothing erased yet

    sent = await bot.say(DM, ALICE, "!oubliez-moi confirmer")
    assert any("supprimées" in m.body or "supprimé" in m.body for m in sent)
    assert not await Client.filter(key=ALICE).exists()
    erased = await Ticket.get(id=ticket.id)
    assert "invitations" not in erased.description
    assert erased.email is None
    assert erased.minutes_logged == 75  # billing figures stay
    client = await Client.get(id=erased.client_id)
    assert client.key.startswith("anon:") and client.email is None
    assert any(m.room_id == STAFF_ROOM for m in sent)


async def test_forget_me_with_no_data(bot):
    sent = await bot.say(DM, "@nobody:test", "!forget-me")
    assert len(sent) == 1
    assert "rien" in sent[0].body or "nothing" in sent[0].body
