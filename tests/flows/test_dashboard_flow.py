"""`!dashboard` (SPEC §10): the login link goes to the staff member alone, in a direct message;
the staff room only hears that it was sent; the link then opens the dashboard as that staff
member, through the bot's own web application and identity."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bot.dispatch import STAFF_ONLY
from bot.i18n import Msg
from bot.storage.models import DashboardToken
from bot.testing.harness import STAFF, STAFF_ROOM, BotHarness
from bot.tokens import token_hash
from bot.web.app import build_web_app
from bot.web.dashboard import COOKIE

ALICE = "@alice:test"
DM_ALICE = "!dm-alice:test"


@pytest.fixture
async def bot(db_url):
    async with BotHarness.open(db_url) as harness:
        yield harness


def link_in(bot: BotHarness, body: str) -> str:
    prefix = re.escape(f"{bot.config.web.public_url}/dashboard/login/")
    match = re.search(prefix + r"[A-Za-z0-9_-]+", body)
    assert match, body
    return match[0]


async def test_the_link_goes_to_a_direct_message_and_works_once_as_that_staff_member(bot):
    sent = await bot.say(STAFF_ROOM, STAFF, "!dashboard")
    (dm,) = bot.transport.created_rooms
    assert dm["invite"] == [STAFF] and dm["is_direct"]
    (message,) = [s for s in sent if s.room_id == dm["room_id"]]
    link = link_in(bot, message.body)
    assert "10 minutes" in message.body
    (told,) = [s for s in sent if s.room_id == STAFF_ROOM]
    assert "message direct" in told.body and "/dashboard/" not in told.body
    row = await DashboardToken.get(kind="link")
    assert row.staff == STAFF
    assert row.token_hash == token_hash(link.rsplit("/", 1)[1], bot.config.web.secret)
    assert row.expires_at == bot.clock() + timedelta(minutes=10)

    # Again (the French name): the same direct room, a new link; the first one stops.
    sent = await bot.say(STAFF_ROOM, STAFF, "!tableau")
    assert len(bot.transport.created_rooms) == 1
    second = link_in(bot, next(s.body for s in sent if s.room_id == dm["room_id"]))
    assert await DashboardToken.filter(kind="link").count() == 1

    app = build_web_app(
        config=bot.config,
        catalogs=bot.catalogs,
        registry=bot.services.metrics.registry,
        on_confirmed=_never_confirmed,
        clock=bot.clock,
        is_staff=bot.services.identity.is_staff_user,
    )
    public = bot.config.web.public_url
    async with TestClient(TestServer(app)) as client:
        assert (await client.get(link.removeprefix(public))).status == 403
        path = second.removeprefix(public)
        page = await (await client.get(path)).text()
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
        assert csrf and STAFF in page
        answer = await client.post(path, data={"csrf": csrf[1]}, allow_redirects=False)
        assert answer.status == 303
        cookie = answer.cookies[COOKIE].value
        queue = await client.get("/dashboard/queue", headers={"Cookie": f"{COOKIE}={cookie}"})
        assert queue.status == 200
        assert (await client.get(path)).status == 403  # used


async def _never_confirmed(ticket_id: int) -> None:
    raise AssertionError("nothing is confirmed here")


async def test_elsewhere_a_polite_refusal_and_no_link(bot):
    bot.transport.members[DM_ALICE] = {bot.config.matrix.user_id, STAFF}
    sent = await bot.say(DM_ALICE, STAFF, "!dashboard")
    (refusal,) = sent
    assert refusal.room_id == DM_ALICE
    assert "salon de l’équipe" in refusal.body and "/dashboard/" not in refusal.body
    assert not await DashboardToken.exists()
    assert bot.transport.created_rooms == []


async def test_someone_not_staff_gets_the_staff_only_answer(bot):
    sent = await bot.say(STAFF_ROOM, ALICE, "!dashboard")
    refusal = bot.catalogs.get("fr").render(
        Msg(STAFF_ONLY, {"name": "dashboard"}), bot.services.tz
    )
    assert [s.body for s in sent] == [refusal]
    assert not await DashboardToken.exists()
