"""Meetings of cancelled, replaced and finished calls are ended by a sweeper, after the commit.

Through the real router, dispatcher and database (SQLite, PostgreSQL), with the checking fakes
of Nextcloud Talk and BigBlueButton served over loopback; and the fakes' own checks of the
`DELETE …/room/{token}` and `end` requests, as the servers document them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
import yarl

from bot.config import BigBlueButtonConfig, NextcloudTalkConfig
from bot.storage.models import Booking, Notice
from bot.testing.fake_bbb import FakeBigBlueButton
from bot.testing.fake_nextcloud import FakeNextcloud
from bot.testing.harness import STAFF_ROOM, BotHarness, FakeClock
from bot.testing.harness import test_config as make_config
from bot.video import (
    BigBlueButtonProvider,
    Meeting,
    NextcloudTalkProvider,
    VideoError,
    build_provider,
)
from bot.video.bigbluebutton import build_url
from bot.video.jitsi import JitsiProvider
from bot.video.nextcloud_talk import basic_auth
from handlers import meetings
from tests.flows.test_booking_flow import (
    ALICE,
    BBB_SECRET,
    MONDAY_9H,
    ROOM_A,
    active_bookings,
    offer_of,
    open_call_ticket,
    starts,
)

TALK_USER, TALK_PASSWORD = "support-bot", "Abcde-Fghij-Klmno-Pqrst"
ROOM_API = "/ocs/v2.php/apps/spreed/api/v4/room"
REF = "SP-2026-0001"


# --- helpers ---------------------------------------------------------------------------------


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def nextcloud() -> AsyncIterator[FakeNextcloud]:
    async with FakeNextcloud(user=TALK_USER, app_password=TALK_PASSWORD) as fake:
        yield fake


@pytest.fixture
async def bbb() -> AsyncIterator[FakeBigBlueButton]:
    async with FakeBigBlueButton(secret=BBB_SECRET) as fake:
        yield fake


@pytest.fixture
async def talk_bot(
    db_url: str, nextcloud: FakeNextcloud, session: aiohttp.ClientSession
) -> AsyncIterator[BotHarness]:
    talk = {"url": nextcloud.base_url, "user": TALK_USER, "app_password": TALK_PASSWORD}
    config = make_config(video={"provider": "nextcloud_talk", "nextcloud_talk": talk})
    async with BotHarness.open(db_url, config=config, clock=FakeClock(MONDAY_9H)) as bot:
        bot.services.video = build_provider(config.video, session, now=bot.clock)
        yield bot


@pytest.fixture
async def bbb_bot(
    db_url: str, bbb: FakeBigBlueButton, session: aiohttp.ClientSession
) -> AsyncIterator[BotHarness]:
    video = {"url": bbb.base_url, "secret": BBB_SECRET}
    config = make_config(video={"provider": "bigbluebutton", "bigbluebutton": video})
    async with BotHarness.open(db_url, config=config, clock=FakeClock(MONDAY_9H)) as bot:
        bot.services.video = build_provider(config.video, session, now=bot.clock)
        yield bot


def deletes(fake: FakeNextcloud) -> list[str]:
    """Tokens of the conversations deleted so far (accepted DELETE requests)."""
    return [r.path.rsplit("/", 1)[1] for r in fake.accepted if r.method == "DELETE"]


async def book_first_slot(bot: BotHarness) -> Booking:
    await open_call_ticket(bot, ROOM_A, ALICE)
    await bot.say(ROOM_A, ALICE, "1")
    (call,) = await active_bookings()
    assert call.meeting_id is not None
    return call


async def reload(booking: Booking) -> Booking:
    return await Booking.get(id=booking.id)


def warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "handlers.meetings" and r.levelno >= logging.WARNING
    ]


# --- Nextcloud Talk --------------------------------------------------------------------------


async def test_talk_rescheduled_then_cancelled_leaves_no_conversation(talk_bot, nextcloud):
    bot = talk_bot
    first = await book_first_slot(bot)
    await bot.say(ROOM_A, ALICE, f"!rdv {REF}")
    await bot.say(ROOM_A, ALICE, "3")  # another time: another booking id, another conversation
    first = await reload(first)
    (second,) = await active_bookings()
    assert first.status == "cancelled" and second.meeting_id not in (None, first.meeting_id)
    assert set(nextcloud.rooms) == {first.meeting_id, second.meeting_id}
    assert deletes(nextcloud) == []  # nothing ended inside the handler's transaction

    await bot.sweep()
    assert deletes(nextcloud) == [first.meeting_id]
    assert set(nextcloud.rooms) == {second.meeting_id}  # the new call keeps its conversation
    assert (await reload(first)).meeting_ended_at == bot.clock()
    assert (await reload(second)).meeting_ended_at is None

    await bot.say(ROOM_A, ALICE, f"!annuler-rdv {REF}")
    assert nextcloud.rooms.keys() == {second.meeting_id}  # still there until the sweep
    await bot.sweep()
    assert nextcloud.rooms == {}
    assert deletes(nextcloud) == [first.meeting_id, second.meeting_id]
    assert (await reload(second)).meeting_ended_at is not None
    async with aiohttp.ClientSession() as browser, browser.get(second.client_url) as page:
        assert page.status == 404  # the link the client had leads nowhere now

    requests = len(nextcloud.accepted)
    await bot.sweep()
    assert len(nextcloud.accepted) == requests  # done once: nothing asked again
    assert [r.path for r in nextcloud.refused] == [f"/call/{second.meeting_id}"]  # the page
    # Every DELETE as Talk wants it: the account's login and the OCS headers.
    for request in nextcloud.accepted:
        if request.method == "DELETE":
            assert request.user == TALK_USER and request.status == 200
            assert request.header("OCS-APIRequest") == "true"
            assert request.header("Accept") == "application/json"


async def test_talk_failure_is_retried_at_the_next_sweep(talk_bot, nextcloud):
    bot = talk_bot
    call = await book_first_slot(bot)
    await bot.say(ROOM_A, ALICE, f"!unbook {REF}")

    nextcloud.app_password = "changed-meanwhile"  # the server now refuses the bot's login
    await bot.sweep()
    assert call.meeting_id in nextcloud.rooms
    assert nextcloud.refused[-1].method == "DELETE" and nextcloud.refused[-1].status == 401
    assert (await reload(call)).meeting_ended_at is None
    assert await Notice.filter(key__startswith=f"meeting-end-failed:{call.id}:").count() == 1

    nextcloud.app_password = TALK_PASSWORD
    bot.clock.advance(timedelta(seconds=30))
    await bot.sweep()
    assert nextcloud.rooms == {}
    assert (await reload(call)).meeting_ended_at == bot.clock()
    assert not await Notice.filter(key__startswith="meeting-end-failed:").exists()


async def test_talk_gives_up_after_repeated_failures_with_a_plain_warning(
    talk_bot, nextcloud, caplog
):
    caplog.set_level(logging.INFO, logger="handlers.meetings")
    bot = talk_bot
    call = await book_first_slot(bot)
    await bot.say(ROOM_A, ALICE, f"!unbook {REF}")
    nextcloud.app_password = "changed-meanwhile"

    for _ in range(meetings.END_MAX_FAILURES - 1):
        await bot.sweep()
        bot.clock.advance(timedelta(seconds=30))
    assert (await reload(call)).meeting_ended_at is None
    assert not warnings(caplog)

    await bot.sweep()  # the last allowed failure: given up
    assert (await reload(call)).meeting_ended_at == bot.clock()
    (warning,) = warnings(caplog)
    text = warning.getMessage()
    assert f"booking {call.id} " in text and "unauthorized" in text
    # No token (a Talk token is the link), no server, no reference: the booking id only.
    assert call.meeting_id not in caplog.text
    assert yarl.URL(nextcloud.base_url).host not in text and REF not in text
    refused = len(nextcloud.refused)
    await bot.sweep()
    assert len(nextcloud.refused) == refused  # not asked again
    assert not await Notice.filter(key__startswith="meeting-end-failed:").exists()


async def test_talk_gives_up_a_day_after_the_first_failure(talk_bot, nextcloud, caplog):
    bot = talk_bot
    call = await book_first_slot(bot)
    await bot.say(ROOM_A, ALICE, f"!unbook {REF}")
    nextcloud.app_password = "changed-meanwhile"
    await bot.sweep()
    bot.clock.advance(meetings.END_GIVE_UP_AFTER)  # the bot was down meanwhile, say
    await bot.sweep()
    assert (await reload(call)).meeting_ended_at == bot.clock()
    assert "after 2 attempts" in caplog.text


async def test_a_meeting_booked_again_for_the_same_slot_is_kept(talk_bot, nextcloud):
    """Cancelled, then the same slot chosen again before the sweep: the same booking id, so the
    same conversation, which the active booking uses. The sweep must not delete it."""
    bot = talk_bot
    first = await book_first_slot(bot)
    await bot.say(ROOM_A, ALICE, f"!unbook {REF}")
    await bot.say(ROOM_A, ALICE, f"!book {REF}")
    assert starts(await offer_of(await first.ticket))[0] == first.start
    await bot.say(ROOM_A, ALICE, "1")
    (second,) = await active_bookings()
    assert second.id != first.id and second.meeting_id == first.meeting_id

    await bot.sweep()
    assert deletes(nextcloud) == []
    assert second.meeting_id in nextcloud.rooms
    assert (await reload(first)).meeting_ended_at is not None  # nothing left to do for it
    async with aiohttp.ClientSession() as browser, browser.get(second.client_url) as page:
        assert page.status == 200

    # The active booking ends it in its turn.
    await bot.say(ROOM_A, ALICE, f"!unbook {REF}")
    await bot.sweep()
    assert deletes(nextcloud) == [second.meeting_id] and nextcloud.rooms == {}


async def test_a_booking_again_while_the_meeting_is_ended_gets_a_new_link(talk_bot, nextcloud):
    """The same slot is booked again in the moment between the sweep's check and its DELETE:
    the new booking found the conversation about to go. Its link is dropped and a new one
    follows."""
    bot = talk_bot
    first = await book_first_slot(bot)
    await bot.say(ROOM_A, ALICE, f"!unbook {REF}")
    await bot.say(ROOM_A, ALICE, f"!book {REF}")

    provider = bot.services.video
    assert isinstance(provider, NextcloudTalkProvider)
    end = provider.end_meeting

    async def booked_meanwhile(meeting: Meeting) -> None:
        await bot.say(ROOM_A, ALICE, "1")  # commits before the DELETE goes out
        await end(meeting)

    provider.end_meeting = booked_meanwhile  # type: ignore[method-assign]
    await bot.sweep()
    del provider.end_meeting
    (second,) = await active_bookings()
    assert deletes(nextcloud) == [first.meeting_id] and nextcloud.rooms == {}
    assert second.client_url is None and second.meeting_id is None

    sent = await bot.sweep()  # the link retry: a new conversation, sent to client and staff
    second = await reload(second)
    assert second.meeting_id in nextcloud.rooms and second.meeting_id != first.meeting_id
    assert any(second.client_url in s.body for s in sent if s.room_id == ROOM_A)
    assert any(second.staff_url in s.body for s in sent if s.room_id == STAFF_ROOM)
    assert second.meeting_ended_at is None


async def test_an_active_call_is_ended_hours_after_its_slot(talk_bot, nextcloud):
    bot = talk_bot
    call = await book_first_slot(bot)
    bot.clock.now = call.end + meetings.END_AFTER - timedelta(minutes=1)
    await bot.sweep()
    assert call.meeting_id in nextcloud.rooms  # people may still be talking
    bot.clock.now = call.end + meetings.END_AFTER
    await bot.sweep()
    assert nextcloud.rooms == {}
    call = await reload(call)
    assert call.status == "active" and call.meeting_ended_at == bot.clock()


# --- BigBlueButton ---------------------------------------------------------------------------


async def test_bbb_meeting_of_a_cancelled_call_is_ended(bbb_bot, bbb, session):
    bot = bbb_bot
    call = await book_first_slot(bot)
    assert call.meeting_id in bbb.meetings
    await bot.say(ROOM_A, ALICE, f"!unbook {REF}")
    assert bbb.ended == []  # after the commit, by the sweeper: not in the handler

    await bot.sweep()
    assert bbb.ended == [call.meeting_id] and call.meeting_id not in bbb.meetings
    (end,) = [r for r in bbb.accepted if r.call == "end"]
    assert [name for name, _ in end.params] == ["meetingID", "checksum"]  # no password
    assert end.algorithm == "sha256" and end.answer_key == "sentEndMeetingRequest"
    assert (await reload(call)).meeting_ended_at == bot.clock()
    # Its links no longer let anyone in.
    async with session.get(yarl.URL(call.client_url, encoded=True)) as response:
        assert "<messageKey>notFound</messageKey>" in await response.text()

    await bot.sweep()
    assert len([r for r in bbb.accepted if r.call == "end"]) == 1
    assert [r.answer_key for r in bbb.refused] == ["notFound"]  # the join above, only


async def test_bbb_meeting_the_server_forgot_counts_as_ended(bbb_bot, bbb):
    bot = bbb_bot
    call = await book_first_slot(bot)
    await bot.say(ROOM_A, ALICE, f"!unbook {REF}")
    bbb.meetings.clear()  # a restart of the server, or nobody joined in time
    await bot.sweep()
    assert [r.answer_key for r in bbb.refused] == ["notFound"]
    assert (await reload(call)).meeting_ended_at is not None


# --- Jitsi and bookings without a meeting ----------------------------------------------------


async def test_jitsi_nothing_is_called(db_url):
    async with BotHarness.open(db_url, clock=FakeClock(MONDAY_9H)) as bot:
        jitsi = JitsiProvider(bot.config.video.jitsi, now=bot.clock)
        ended: list[Meeting] = []

        async def spy(meeting: Meeting) -> None:
            ended.append(meeting)
            await JitsiProvider.end_meeting(jitsi, meeting)

        jitsi.end_meeting = spy  # type: ignore[method-assign]
        bot.services.video = jitsi
        call = await book_first_slot(bot)
        await bot.say(ROOM_A, ALICE, f"!unbook {REF}")
        await bot.sweep()
        # Asked once, and Jitsi (no HTTP session at all) sends nothing anywhere.
        assert [m.meeting_id for m in ended] == [call.meeting_id]
        assert (await reload(call)).meeting_ended_at == bot.clock()
        await bot.sweep()
        assert len(ended) == 1


async def test_a_booking_without_meeting_or_on_another_service_is_settled(talk_bot, nextcloud):
    bot = talk_bot
    call = await book_first_slot(bot)
    await bot.say(ROOM_A, ALICE, f"!unbook {REF}")
    # The operator moved to BigBlueButton meanwhile: a Talk token means nothing there.
    await Booking.filter(id=call.id).update(provider="bigbluebutton")
    await bot.sweep()
    assert deletes(nextcloud) == [] and nextcloud.refused == []
    assert (await reload(call)).meeting_ended_at is not None

    await Booking.filter(id=call.id).update(meeting_ended_at=None, provider=None, meeting_id=None)
    await bot.sweep()
    assert (await reload(call)).meeting_ended_at is not None


# --- the fakes check end and delete as the servers do ----------------------------------------


async def test_talk_fake_refuses_malformed_deletes(nextcloud, session):
    talk = NextcloudTalkProvider(
        NextcloudTalkConfig(url=nextcloud.base_url, user=TALK_USER, app_password=TALK_PASSWORD),
        session,
        now=lambda: MONDAY_9H,
    )
    room = await talk.create_room("Support [SP-2026-0001-20261130T1300Z]")
    token = room["token"]
    url = nextcloud.base_url + ROOM_API + "/" + token
    good = {"Authorization": basic_auth(TALK_USER, TALK_PASSWORD)}
    bad = {"Authorization": basic_auth(TALK_USER, "nope")}
    ocs = {"OCS-APIRequest": "true", "Accept": "application/json"}

    async with session.delete(url, headers=good | {"Accept": "application/json"}) as r:
        assert r.status == 412 and await r.json() == {"message": "CSRF check failed"}
    async with session.delete(url, headers=ocs | bad) as r:
        assert r.status == 401
    async with session.delete(url, headers=ocs) as r:
        assert r.status == 401
    async with session.delete(
        nextcloud.base_url + ROOM_API + "/zzzz9999", headers=ocs | good
    ) as r:
        assert r.status == 404 and (await r.json())["ocs"]["meta"]["status"] == "failure"
    async with session.delete(nextcloud.base_url + ROOM_API + "/ABC-1", headers=ocs | good) as r:
        assert r.status == 404 and r.content_type != "application/json"  # no such route
    # Someone else's conversation, one where the account is a plain participant, a one-to-one.
    nextcloud.rooms["other123"] = dict(room, token="other123", actorId="alice")
    nextcloud.rooms["guest123"] = dict(room, token="guest123", participantType=3)
    nextcloud.rooms["oneto123"] = dict(room, token="oneto123", type=1)
    for other, status in (("other123", 404), ("guest123", 403), ("oneto123", 400)):
        async with session.delete(
            nextcloud.base_url + ROOM_API + "/" + other, headers=ocs | good
        ) as r:
            assert r.status == status, other
    assert token in nextcloud.rooms and len(nextcloud.rooms) == 4
    assert [r.status for r in nextcloud.refused] == [412, 401, 401, 404, 404, 404, 403, 400]

    async with session.delete(url, headers=ocs | good) as r:
        assert r.status == 200 and (await r.json())["ocs"]["data"] == []
    assert token not in nextcloud.rooms
    async with session.delete(url, headers=ocs | good) as r:
        assert r.status == 404  # already gone

    # The provider: gone is fine; a value that is no Talk token is not even sent.
    meeting = Meeting("nextcloud_talk", token, "", "")
    await talk.end_meeting(meeting)
    sent = len(nextcloud.accepted) + len(nextcloud.refused)
    await talk.end_meeting(Meeting("nextcloud_talk", "..", "", ""))
    await talk.end_meeting(Meeting("nextcloud_talk", "", "", ""))
    assert len(nextcloud.accepted) + len(nextcloud.refused) == sent


def bbb_provider(
    bbb: FakeBigBlueButton, session: aiohttp.ClientSession, secret: str = BBB_SECRET
) -> BigBlueButtonProvider:
    config = BigBlueButtonConfig(url=bbb.base_url, secret=secret)
    return BigBlueButtonProvider(config, session, now=lambda: MONDAY_9H)


async def bbb_meeting(provider: BigBlueButtonProvider) -> Meeting:
    return await provider.create_meeting(
        booking_id="SP-2026-0001-20261130T1300Z",
        title="Support SP-2026-0001",
        start=MONDAY_9H + timedelta(hours=5),
        minutes=45,
        staff_name="Support",
        client_name="Client",
    )


async def test_bbb_fake_refuses_malformed_ends(bbb, session):
    provider = bbb_provider(bbb, session)
    meeting = await bbb_meeting(provider)
    mid = meeting.meeting_id

    async def answer(call: str, params: list[tuple[str, str]], secret: str = BBB_SECRET) -> Any:
        url = build_url(bbb.base_url, call, params, secret)
        async with session.get(yarl.URL(url, encoded=True)) as response:
            return await response.text()

    def key(text: str) -> str:
        return text.split("<messageKey>")[1].split("</messageKey>")[0]

    assert key(await answer("end", [("meetingID", mid)], secret="wrong")) == "checksumError"
    assert key(await answer("end", [])) == "missingParamMeetingID"
    assert key(await answer("end", [("meetingID", "a,b")])) == "validationError"
    assert key(await answer("end", [("meetingID", "x")])) == "validationError"
    assert key(await answer("end", [("meetingID", "support-bot-unknown")])) == "notFound"
    wrong_password = [("meetingID", mid), ("password", "not-the-moderator-one")]
    assert key(await answer("end", wrong_password)) == "invalidPassword"
    assert mid in bbb.meetings and bbb.ended == []
    assert [r.answer_key for r in bbb.refused] == [
        "checksumError",
        "missingParamMeetingID",
        "validationError",
        "validationError",
        "notFound",
        "invalidPassword",
    ]

    await provider.end_meeting(meeting)
    assert bbb.ended == [mid] and mid not in bbb.meetings
    await provider.end_meeting(meeting)  # already ended: notFound, which is fine
    assert bbb.refused[-1].answer_key == "notFound"
    # A later create of the same id starts a new meeting.
    again = await bbb_meeting(provider)
    assert again.meeting_id == mid and again.extra["duplicate"] is False

    with pytest.raises(VideoError) as caught:
        await bbb_provider(bbb, session, secret="not-the-secret").end_meeting(meeting)
    assert caught.value.key == "checksumError"
    assert mid in bbb.meetings
