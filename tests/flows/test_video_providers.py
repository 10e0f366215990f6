"""Each video provider against its checking fake, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
import yarl
from aiohttp import web

from bot.config import BigBlueButtonConfig, JitsiConfig, NextcloudTalkConfig, VideoConfig
from bot.testing.fake_bbb import FakeBigBlueButton
from bot.testing.fake_nextcloud import FakeNextcloud
from bot.video import (
    BigBlueButtonProvider,
    JitsiProvider,
    Meeting,
    NextcloudTalkProvider,
    VideoError,
    build_provider,
    nextcloud_talk,
)
from bot.video.bigbluebutton import build_url, clean_text
from bot.video.nextcloud_talk import ROOM_NAME_MAX, basic_auth, room_name

SECRET = "8cd8ef52e8e101574e400365b55e11a6"
NOW = datetime.now(UTC).replace(microsecond=0)
START = NOW + timedelta(days=2)

TRICKY = [
    # (title, staff name, client name)
    ("Support SP-2026-0042", "Zoë Staff", "José Núñez"),
    ("Réunion (support) / été", "Anaïs (équipe) / FR", "Jean-François O'Brien"),
    ("Appel n°42 — café & crème + thé = 100%", "Søren ~ Ærø", "李小龍 (Bruce) / 리"),
    ("Ticket 7/8 (urgent) * fix?", "a/b\\c", "d&e=f+g#h%i"),
]


def now() -> datetime:
    return NOW


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def bbb() -> AsyncIterator[FakeBigBlueButton]:
    async with FakeBigBlueButton(secret=SECRET) as fake:
        yield fake


@pytest.fixture
async def nextcloud() -> AsyncIterator[FakeNextcloud]:
    async with FakeNextcloud(user="support-bot", app_password="Abcde-Fghij-Klmno-Pqrst") as fake:
        yield fake


def bbb_provider(
    fake: FakeBigBlueButton,
    session: aiohttp.ClientSession,
    *,
    secret: str = SECRET,
    algo: str = "sha256",
    url: str | None = None,
) -> BigBlueButtonProvider:
    config = BigBlueButtonConfig(url=url or fake.base_url, secret=secret, checksum=algo)  # type: ignore[arg-type]
    return BigBlueButtonProvider(config, session, now=now)


async def book(provider, **overrides: object) -> Meeting:  # type: ignore[no-untyped-def]
    args: dict[str, object] = {
        "booking_id": "SP-2026-0042",
        "title": "Support SP-2026-0042",
        "start": START,
        "minutes": 45,
        "staff_name": "Zoë Staff",
        "client_name": "José Client",
    } | overrides
    return await provider.create_meeting(**args)


async def replay(session: aiohttp.ClientSession, url: str) -> aiohttp.ClientResponse:
    """Open a join link as a browser would (no re-quoting), without following redirects."""
    async with session.get(yarl.URL(url, encoded=True), allow_redirects=False) as response:
        await response.read()
        return response


# --- BigBlueButton --------------------------------------------------------------------------


@pytest.mark.parametrize(("title", "staff", "client"), TRICKY)
async def test_bbb_create_then_join_with_tricky_names(
    bbb: FakeBigBlueButton,
    session: aiohttp.ClientSession,
    title: str,
    staff: str,
    client: str,
) -> None:
    provider = bbb_provider(bbb, session)
    meeting = await book(provider, title=title, staff_name=staff, client_name=client)

    created = bbb.meetings[meeting.meeting_id]
    assert created.name == clean_text(title, 64) == title
    create = bbb.accepted[0]
    assert create.call == "create" and create.algorithm == "sha256"
    assert create.param("attendeePW") is None and create.param("moderatorPW") is None
    assert meeting.extra["create_time"] == str(created.create_time)

    staff_answer = await replay(session, meeting.staff_url)
    assert staff_answer.status == 302, bbb.refused
    client_answer = await replay(session, meeting.client_url)
    assert client_answer.status == 302, bbb.refused
    assert [(j.role, j.full_name, j.meeting_id) for j in bbb.joins] == [
        ("MODERATOR", staff, meeting.meeting_id),
        ("VIEWER", client, meeting.meeting_id),
    ]
    assert bbb.refused == []


async def test_bbb_no_personal_data_in_name_or_meta(
    bbb: FakeBigBlueButton, session: aiohttp.ClientSession
) -> None:
    meeting = await book(
        bbb_provider(bbb, session), staff_name="Zoë Staff", client_name="José Client"
    )
    created = bbb.meetings[meeting.meeting_id]
    sent = " ".join(value for _, value in created.params)
    assert "José" not in sent and "Zoë" not in sent
    assert created.meta == {"bbb-origin": "support-bot", "booking-id": "SP-2026-0042"}
    assert "José" not in meeting.staff_url and "Zo%C3%AB" in meeting.staff_url


async def test_bbb_create_is_idempotent_and_prepare_recreates(
    bbb: FakeBigBlueButton, session: aiohttp.ClientSession
) -> None:
    provider = bbb_provider(bbb, session)
    first = await book(provider)
    second = await book(provider)
    assert first.meeting_id == second.meeting_id
    assert (first.extra["duplicate"], second.extra["duplicate"]) == (False, True)
    assert bbb.accepted[1].answer_key == "duplicateWarning"

    await provider.prepare(second)
    assert bbb.meetings[first.meeting_id].create_calls == 3

    # A server restart forgets meetings: prepare() makes the old links work again.
    bbb.meetings.clear()
    assert (await replay(session, first.client_url)).status == 200  # XML notFound
    assert bbb.refused[-1].answer_key == "notFound"
    await provider.prepare(first)
    assert (await replay(session, first.client_url)).status == 302
    assert bbb.joins[-1].role == "VIEWER"


async def test_bbb_expiry_covers_the_slot(
    bbb: FakeBigBlueButton, session: aiohttp.ClientSession
) -> None:
    await book(bbb_provider(bbb, session))
    keep = int(bbb.accepted[0].param("meetingExpireIfNoUserJoinedInMinutes") or 0)
    until_end = (START + timedelta(minutes=45) - NOW).total_seconds() / 60
    assert keep >= until_end


async def test_bbb_wrong_secret_is_refused_with_checksum_error(
    bbb: FakeBigBlueButton, session: aiohttp.ClientSession
) -> None:
    provider = bbb_provider(bbb, session, secret="not-the-secret")
    with pytest.raises(VideoError) as caught:
        await book(provider)
    assert caught.value.key == "checksumError"
    assert caught.value.detail == "Checksums do not match"
    assert "<" not in str(caught.value)
    assert bbb.meetings == {} and bbb.accepted == []
    assert bbb.refused[-1].answer_key == "checksumError"


async def test_bbb_requoted_url_breaks_the_checksum(
    bbb: FakeBigBlueButton, session: aiohttp.ClientSession
) -> None:
    """Why we send `encoded=True`: yarl turns `%28` into `(` and the server hashes that."""
    provider = bbb_provider(bbb, session)
    meeting = await book(provider, client_name="Client (FR) / test")
    async with session.get(yarl.URL(meeting.client_url), allow_redirects=False) as response:
        body = await response.text()
    assert "<messageKey>checksumError</messageKey>" in body
    assert bbb.joins == []
    assert (await replay(session, meeting.client_url)).status == 302


@pytest.mark.parametrize("algo", ["sha1", "sha256", "sha384", "sha512"])
async def test_bbb_every_algorithm(
    bbb: FakeBigBlueButton, session: aiohttp.ClientSession, algo: str
) -> None:
    meeting = await book(bbb_provider(bbb, session, algo=algo), title="Réunion (x) / y")
    assert bbb.accepted[0].algorithm == algo
    assert (await replay(session, meeting.staff_url)).status == 302
    assert bbb.accepted[-1].algorithm == algo


async def test_bbb_server_without_sha1_refuses_it(session: aiohttp.ClientSession) -> None:
    async with FakeBigBlueButton(secret=SECRET, algorithms=("sha256", "sha512")) as fake:
        with pytest.raises(VideoError) as caught:
            await book(bbb_provider(fake, session, algo="sha1"))
        assert caught.value.key == "checksumError"
        await book(bbb_provider(fake, session, algo="sha512"))


@pytest.mark.parametrize(
    ("call", "params", "key"),
    [
        ("create", [("name", "Support")], "missingParamMeetingID"),
        ("create", [("meetingID", "m-1")], "validationError"),
        ("create", [("name", "S"), ("meetingID", "m-1")], "validationError"),
        ("create", [("name", "Support"), ("meetingID", "a,b")], "validationError"),
        ("join", [("meetingID", "m-1"), ("role", "VIEWER")], "missingParamFullName"),
        ("join", [("fullName", "X"), ("role", "VIEWER")], "missingParamMeetingID"),
        ("join", [("fullName", "X"), ("meetingID", "nope"), ("role", "VIEWER")], "notFound"),
        ("join", [("fullName", "X"), ("meetingID", "known")], "invalidPassword"),
        (
            "join",
            [("fullName", "X"), ("meetingID", "known"), ("role", "VIEWER"), ("createTime", "1")],
            "mismatchCreateTimeParam",
        ),
        ("getRecordings", [], "unsupportedRequest"),
    ],
)
async def test_bbb_fake_answers_the_real_error_keys(
    bbb: FakeBigBlueButton,
    session: aiohttp.ClientSession,
    call: str,
    params: list[tuple[str, str]],
    key: str,
) -> None:
    provider = bbb_provider(bbb, session)
    await provider.call("create", [("name", "Known"), ("meetingID", "known")])
    with pytest.raises(VideoError) as caught:
        await provider.call(call, params)
    assert caught.value.key == key
    assert bbb.refused[-1].answer_key == key


async def test_bbb_join_with_redirect_false_answers_xml(
    bbb: FakeBigBlueButton, session: aiohttp.ClientSession
) -> None:
    provider = bbb_provider(bbb, session)
    meeting = await book(provider)
    answer = await provider.call(
        "join",
        [
            ("fullName", "Zoë"),
            ("meetingID", meeting.meeting_id),
            ("role", "moderator"),
            ("redirect", "false"),
        ],
    )
    assert answer["messageKey"] == "successfullyJoined"
    assert bbb.joins[-1].role == "MODERATOR"


async def test_bbb_checksum_covers_the_exact_query(
    bbb: FakeBigBlueButton, session: aiohttp.ClientSession
) -> None:
    """A link edited after signing (here: VIEWER → MODERATOR) is refused."""
    meeting = await book(bbb_provider(bbb, session))
    forged = meeting.client_url.replace("role=VIEWER", "role=MODERATOR")
    assert forged != meeting.client_url
    assert (await replay(session, forged)).status == 200
    assert bbb.refused[-1].answer_key == "checksumError"
    assert bbb.joins == []


async def test_bbb_unreachable_and_http_errors(session: aiohttp.ClientSession) -> None:
    fake = FakeBigBlueButton(secret=SECRET)
    url = await fake.start()
    await fake.stop()
    with pytest.raises(VideoError) as caught:
        await book(bbb_provider(fake, session, url=url))
    assert caught.value.key == "unreachable"
    assert "checksum" not in caught.value.detail

    async with FakeBigBlueButton(secret=SECRET) as fake:
        wrong_path = fake.base_url.replace("/bigbluebutton/api", "/other/api")
        with pytest.raises(VideoError) as caught:
            await book(bbb_provider(fake, session, url=wrong_path))
        assert caught.value.key == "httpError"
        assert "404" in caught.value.detail


async def test_bbb_url_from_bbb_conf_is_accepted(
    bbb: FakeBigBlueButton, session: aiohttp.ClientSession
) -> None:
    printed = bbb.base_url.removesuffix("api")  # `bbb-conf --secret` prints …/bigbluebutton/
    meeting = await book(bbb_provider(bbb, session, url=printed))
    assert meeting.meeting_id in bbb.meetings


async def test_bbb_plain_build_url_matches_the_fake(
    bbb: FakeBigBlueButton, session: aiohttp.ClientSession
) -> None:
    url = build_url(bbb.base_url, "create", [("name", "Été (1/2)"), ("meetingID", "x-1")], SECRET)
    assert (await replay(session, url)).status == 200
    assert bbb.meetings["x-1"].name == "Été (1/2)"


# --- Nextcloud Talk ------------------------------------------------------------------------


def talk_provider(
    fake: FakeNextcloud, session: aiohttp.ClientSession, *, password: str | None = None
) -> NextcloudTalkProvider:
    config = NextcloudTalkConfig(
        url=fake.base_url + "/", user=fake.user, app_password=password or fake.app_password
    )
    return NextcloudTalkProvider(config, session, now=now)


async def test_talk_creates_a_public_conversation(
    nextcloud: FakeNextcloud, session: aiohttp.ClientSession
) -> None:
    meeting = await book(talk_provider(nextcloud, session), title="Support (SP-2026-0042) / é")
    token = meeting.meeting_id
    assert meeting.client_url == meeting.staff_url == f"{nextcloud.base_url}/call/{token}"
    room = nextcloud.rooms[token]
    assert room["type"] == 3
    assert room["name"] == "Support (SP-2026-0042) / é [SP-2026-0042]"
    assert meeting.extra["reused"] is False
    listing, request = nextcloud.accepted
    assert (listing.method, listing.status, listing.user) == ("GET", 200, "support-bot")
    assert listing.body == {"noStatusUpdate": "1", "includeLastMessage": "0"}
    assert request.method == "POST"
    assert request.status == 201 and request.user == "support-bot"
    for sent in (listing, request):
        assert sent.header("OCS-APIRequest") == "true"
        assert sent.header("Accept") == "application/json"
    assert request.body == {"roomType": 3, "roomName": "Support (SP-2026-0042) / é [SP-2026-0042]"}

    async with session.get(meeting.client_url) as page:
        assert page.status == 200


async def test_talk_wrong_password(
    nextcloud: FakeNextcloud, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(VideoError) as caught:
        await book(talk_provider(nextcloud, session, password="wrong"))
    assert caught.value.key == "unauthorized"
    assert "Current user is not logged in" in caught.value.detail
    assert nextcloud.rooms == {}
    assert nextcloud.refused[-1].status == 401


async def test_talk_fake_checks_like_nextcloud(
    nextcloud: FakeNextcloud, session: aiohttp.ClientSession
) -> None:
    url = nextcloud.base_url + "/ocs/v2.php/apps/spreed/api/v4/room"
    good = {"Authorization": basic_auth(nextcloud.user, nextcloud.app_password)}
    bad = {"Authorization": basic_auth(nextcloud.user, "nope")}
    ocs = {"OCS-APIRequest": "true", "Accept": "application/json"}
    body = {"roomType": 3, "roomName": "Support"}

    async with session.post(url, json=body, headers=good | {"Accept": "application/json"}) as r:
        assert r.status == 412
        assert await r.json() == {"message": "CSRF check failed"}

    async with session.post(url, json=body, headers=ocs) as r:
        assert r.status == 401
        assert (await r.json())["ocs"]["meta"]["message"] == "Current user is not logged in"

    async with session.post(url, json=body, headers=ocs | bad) as r:
        assert r.status == 401

    async with session.post(url, json={"roomType": 3}, headers=ocs | good) as r:
        assert r.status == 400
        assert (await r.json())["ocs"]["data"] == {"error": "name"}

    async with session.post(url, data={"roomType": "9"}, headers=ocs | good) as r:
        assert r.status == 400

    async with session.post(url, json=body, headers=good | {"OCS-APIRequest": "true"}) as r:
        assert r.status == 201
        assert r.content_type == "application/xml"  # no Accept: JSON → XML, as OCS does

    assert len(nextcloud.accepted) == 1 and len(nextcloud.refused) == 5
    async with session.get(nextcloud.base_url + "/call/unknown1") as r:
        assert r.status == 404

    # The listing: the same login and CSRF checks, in the same order.
    async with session.get(url, headers=good | {"Accept": "application/json"}) as r:
        assert r.status == 412
        assert await r.json() == {"message": "CSRF check failed"}
    async with session.get(url, headers=ocs | bad) as r:
        assert r.status == 401
        assert (await r.json())["ocs"]["meta"]["message"] == "Current user is not logged in"
    async with session.get(url, headers=ocs | good) as r:
        assert r.status == 200
        (room,) = (await r.json())["ocs"]["data"]
        assert (room["type"], room["name"], room["participantType"]) == (3, "Support", 1)
    async with session.get(url, headers=good | {"OCS-APIRequest": "true"}) as r:
        assert r.status == 200
        assert r.content_type == "application/xml"
        assert "<data><element><id>1</id>" in await r.text()


async def test_talk_unreachable(session: aiohttp.ClientSession) -> None:
    fake = FakeNextcloud(user="u", app_password="p")
    await fake.start()
    await fake.stop()
    with pytest.raises(VideoError) as caught:
        await book(talk_provider(fake, session))
    assert caught.value.key == "unreachable"


# --- the same booking, the same meeting (crash and replay) ----------------------------------

BOOKING = "SP-2026-0042-20261201T0900Z"
OTHER_BOOKING = "SP-2026-0042-20261202T1400Z"


def jitsi_provider() -> JitsiProvider:
    config = JitsiConfig(base_url="https://meet.example.org", app_id="bot", app_secret=SECRET)
    return JitsiProvider(config, now=now)


@pytest.mark.parametrize(
    "which",
    # Not Jitsi: it keeps nothing on a server (see bot/video/jitsi.py's docstring).
    ["bigbluebutton", "nextcloud_talk"],
)
async def test_same_booking_gets_the_same_meeting_held_once(
    which: str, bbb: FakeBigBlueButton, nextcloud: FakeNextcloud, session: aiohttp.ClientSession
) -> None:
    """The handler may run twice for one booking (before a crash, on the replay): the second
    call must give back the first meeting and leave nothing more on the server."""
    provider, held = {
        "bigbluebutton": (bbb_provider(bbb, session), lambda: len(bbb.meetings)),
        "nextcloud_talk": (talk_provider(nextcloud, session), lambda: len(nextcloud.rooms)),
    }[which]
    first = await book(provider, booking_id=BOOKING)
    again = await book(provider, booking_id=BOOKING)
    assert again.meeting_id == first.meeting_id
    assert (again.client_url, again.staff_url) == (first.client_url, first.staff_url)
    assert held() == 1

    other = await book(provider, booking_id=OTHER_BOOKING)
    assert other.meeting_id != first.meeting_id
    assert other.client_url != first.client_url and other.staff_url != first.staff_url
    assert held() == 2
    assert bbb.refused == [] and nextcloud.refused == []


async def test_talk_reuse_lists_then_creates_only_once(
    nextcloud: FakeNextcloud, session: aiohttp.ClientSession
) -> None:
    provider = talk_provider(nextcloud, session)
    first = await book(provider, booking_id=BOOKING)
    again = await book(provider, booking_id=BOOKING)
    assert (first.extra["reused"], again.extra["reused"]) == (False, True)
    assert again.extra["name"] == "Support SP-2026-0042 [SP-2026-0042-20261201T0900Z]"
    assert [r.method for r in nextcloud.accepted] == ["GET", "POST", "GET"]
    async with session.get(again.client_url) as page:
        assert page.status == 200


async def test_talk_reuses_only_its_own_public_conversation_of_that_name(
    nextcloud: FakeNextcloud, session: aiohttp.ClientSession
) -> None:
    name = room_name("Support SP-2026-0042", BOOKING)
    base = {"name": name, "displayName": name, "actorType": "users", "actorId": nextcloud.user}
    decoys = {
        "group0001": base | {"id": 1, "type": 2, "participantType": 1},  # not public
        "invited1": base | {"id": 2, "type": 3, "participantType": 3},  # someone else's
        "renamed1": base | {"id": 3, "type": 3, "participantType": 1, "name": name + "x"},
        "others01": base | {"id": 4, "type": 3, "participantType": 1, "actorId": "alice"},
    }
    for token, room in decoys.items():
        nextcloud.rooms[token] = room | {"token": token}
    provider = talk_provider(nextcloud, session)
    meeting = await book(provider, booking_id=BOOKING)
    assert meeting.meeting_id not in decoys and meeting.extra["reused"] is False
    # Two of ours with that name (two calls raced): every later call settles on the oldest.
    nextcloud.rooms["older001"] = nextcloud.rooms[meeting.meeting_id] | {
        "id": 0,
        "token": "older001",
    }
    assert (await book(provider, booking_id=BOOKING)).meeting_id == "older001"
    assert (await book(provider, booking_id=BOOKING)).meeting_id == "older001"


def test_talk_room_names_keep_the_whole_booking_key() -> None:
    long_title = "Support " + "é" * 400
    name = room_name(long_title, BOOKING)
    assert len(name) == ROOM_NAME_MAX and name.endswith(f" [{BOOKING}]")
    assert room_name(" Support \n SP-1 ", "SP-1-x") == "Support SP-1 [SP-1-x]"
    assert room_name("", "SP-1-x") == "Support [SP-1-x]"
    # Ids that are long or unusual become a digest: still one name per booking.
    odd = {room_name("Support", b) for b in ("a b", "a  b", "a]b", "x" * 65, "x" * 66)}
    assert len(odd) == 5 and all(len(n) == len("Support []") + 32 for n in odd)


async def test_talk_oversized_listing_books_without_the_check(
    nextcloud: FakeNextcloud,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider = talk_provider(nextcloud, session)
    await book(provider, booking_id=BOOKING)
    monkeypatch.setattr(nextcloud_talk, "MAX_LIST_BYTES", 100)
    with caplog.at_level(logging.WARNING, logger="bot.video.nextcloud_talk"):
        meeting = await book(provider, booking_id=BOOKING)
    assert meeting.extra["reused"] is False and len(nextcloud.rooms) == 2
    assert "not checked" in caplog.text


async def test_bbb_older_server_idnotunique_is_the_same_meeting(
    session: aiohttp.ClientSession,
) -> None:
    """Before BigBlueButton's #17937 a repeated `create` without passwords is `idNotUnique`."""
    async with FakeBigBlueButton(secret=SECRET, legacy_duplicates=True) as fake:
        provider = bbb_provider(fake, session)
        first = await book(provider, booking_id=BOOKING)
        again = await book(provider, booking_id=BOOKING)
        assert fake.refused[-1].answer_key == "idNotUnique"
        assert again.meeting_id == first.meeting_id and len(fake.meetings) == 1
        assert (again.client_url, again.staff_url) == (first.client_url, first.staff_url)
        assert (first.extra["duplicate"], again.extra["duplicate"]) == (False, True)
        await provider.prepare(again)  # the meeting is still there: idNotUnique again, fine
        assert (await replay(session, again.client_url)).status == 302
        fake.meetings.clear()  # restart: prepare() creates it afresh
        await provider.prepare(again)
        assert (await replay(session, again.staff_url)).status == 302
        assert [j.role for j in fake.joins] == ["VIEWER", "MODERATOR"]


async def test_bbb_fake_repeated_create_follows_the_passwords(
    bbb: FakeBigBlueButton, session: aiohttp.ClientSession
) -> None:
    provider = bbb_provider(bbb, session)
    params = [("name", "Known"), ("meetingID", "known")]
    pw = [("attendeePW", "ap"), ("moderatorPW", "mp")]
    created = await provider.call("create", params + pw)
    again = await provider.call("create", params + pw)
    assert again["messageKey"] == "duplicateWarning"
    for field in ("createTime", "createDate", "internalMeetingID", "attendeePW"):
        assert again[field] == created[field]
    bare = await provider.call("create", params)  # no passwords: the same meeting (2.6+)
    assert bare["messageKey"] == "duplicateWarning"
    for other in ([("attendeePW", "ap"), ("moderatorPW", "other")], [("attendeePW", "ap")]):
        with pytest.raises(VideoError) as caught:
            await provider.call("create", params + other)
        assert caught.value.key == "idNotUnique"
    assert len(bbb.meetings) == 1 and bbb.meetings["known"].create_calls == 3


# --- factory ---------------------------------------------------------------------------------


async def test_build_provider_for_each_service(
    bbb: FakeBigBlueButton, nextcloud: FakeNextcloud, session: aiohttp.ClientSession
) -> None:
    config = VideoConfig(
        provider="bigbluebutton",
        bigbluebutton=BigBlueButtonConfig(url=bbb.base_url, secret=SECRET),
    )
    provider = build_provider(config, session, now=now)
    assert isinstance(provider, BigBlueButtonProvider)
    assert (await book(provider)).meeting_id in bbb.meetings

    config = VideoConfig(
        provider="nextcloud_talk",
        nextcloud_talk=NextcloudTalkConfig(
            url=nextcloud.base_url, user=nextcloud.user, app_password=nextcloud.app_password
        ),
    )
    provider = build_provider(config, session, now=now)
    assert isinstance(provider, NextcloudTalkProvider)
    assert (await book(provider)).meeting_id in nextcloud.rooms


@pytest.mark.parametrize("provider", ["bigbluebutton", "nextcloud_talk"])
def test_build_provider_refuses_empty_settings(
    provider: str, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(VideoError) as caught:
        build_provider(VideoConfig(provider=provider), session, now=now)  # type: ignore[arg-type]
    assert caught.value.key == "notConfigured"


async def test_meetings_can_be_stored_as_json(
    bbb: FakeBigBlueButton, nextcloud: FakeNextcloud, session: aiohttp.ClientSession
) -> None:
    jitsi = build_provider(
        VideoConfig(
            jitsi=JitsiConfig(base_url="https://meet.example.org", app_id="bot", app_secret=SECRET)
        ),
        session,
        now=now,
    )
    for provider in (jitsi, bbb_provider(bbb, session), talk_provider(nextcloud, session)):
        meeting = await book(provider)
        stored = json.loads(json.dumps(dict(meeting.extra)))
        restored = Meeting(
            meeting.provider, meeting.meeting_id, meeting.client_url, meeting.staff_url, stored
        )
        await provider.prepare(restored)


async def test_bbb_prepare_without_extra_still_creates(
    bbb: FakeBigBlueButton, session: aiohttp.ClientSession
) -> None:
    provider = bbb_provider(bbb, session)
    meeting = await book(provider)
    bbb.meetings.clear()
    bare = Meeting(meeting.provider, meeting.meeting_id, meeting.client_url, meeting.staff_url)
    await provider.prepare(bare)
    assert (await replay(session, meeting.staff_url)).status == 302


async def test_bbb_reads_long_streamed_answers_whole(session: aiohttp.ClientSession) -> None:
    """Bodies arriving in many chunks are read entirely; oversized ones are refused."""
    padding = {"size": 0}

    async def create(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/xml"})
        await response.prepare(request)
        await response.write(b"<response><returncode>SUCCESS</returncode><message>")
        for _ in range(padding["size"] // 1000):
            await response.write(b"x" * 1000)
            await asyncio.sleep(0)
        await response.write(b"</message><createTime>42</createTime></response>")
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/bigbluebutton/api/create", create)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        config = BigBlueButtonConfig(url=f"http://{host}:{port}/bigbluebutton/api", secret=SECRET)
        provider = BigBlueButtonProvider(config, session, now=now)
        padding["size"] = 200_000
        assert (await book(provider)).extra["create_time"] == "42"
        padding["size"] = 300_000
        with pytest.raises(VideoError) as caught:
            await book(provider)
        assert caught.value.key == "invalidResponse"
    finally:
        await runner.cleanup()
