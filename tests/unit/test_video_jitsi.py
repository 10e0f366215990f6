"""Jitsi Meet: room names and per-participant tokens."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest

from bot.config import JitsiConfig, VideoConfig
from bot.video import JitsiProvider, Meeting, VideoError, VideoProvider, build_provider
from bot.video.jitsi import ROOM_PREFIX, new_room_name

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
APP_ID = "support-bot"
NOW = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
START = datetime(2026, 3, 4, 14, 0, tzinfo=UTC)
ROOM_RE = re.compile(rf"^{ROOM_PREFIX}-([a-z2-7]{{32}})$")
JITSI_STRIPPED = set(":?#[]@!$&'()*+,;=><\"/")


def provider(**overrides: object) -> JitsiProvider:
    config = JitsiConfig(base_url="https://meet.example.org", **overrides)  # type: ignore[arg-type]
    return JitsiProvider(config, now=lambda: NOW)


async def book(p: JitsiProvider, **overrides: object) -> Meeting:
    args: dict[str, object] = {
        "booking_id": "SP-2026-0042",
        "title": "Support SP-2026-0042",
        "start": START,
        "minutes": 45,
        "staff_name": "Zoë Staff",
        "client_name": "José Client",
    } | overrides
    return await p.create_meeting(**args)  # type: ignore[arg-type]


def token_of(url: str) -> str:
    (token,) = parse_qs(urlsplit(url).query)["jwt"]
    return token


def claims_of(url: str) -> dict:
    return jwt.decode(
        token_of(url),
        SECRET,
        algorithms=["HS256"],
        audience="jitsi",
        issuer=APP_ID,
        # exp/nbf are checked below against the injected clock, not the wall clock.
        options={"verify_exp": False, "verify_nbf": False, "require": ["exp", "nbf", "iss"]},
    )


# --- room names ----------------------------------------------------------------------------


def test_room_name_charset_survives_the_jitsi_client() -> None:
    for _ in range(200):
        name = new_room_name()
        assert re.fullmatch(r"[a-z0-9-]+", name)
        assert name == name.lower()
        assert not JITSI_STRIPPED & set(name)


def test_room_name_entropy_is_at_least_128_bits() -> None:
    match = ROOM_RE.match(new_room_name())
    assert match is not None
    bits = len(match.group(1)) * math.log2(32)
    assert bits >= 128
    names = {new_room_name() for _ in range(2000)}
    assert len(names) == 2000
    # every base32 symbol shows up: the random part is not a narrow alphabet
    assert set("".join(ROOM_RE.match(n).group(1) for n in names)) == set(  # type: ignore[union-attr]
        "abcdefghijklmnopqrstuvwxyz234567"
    )


async def test_each_booking_gets_its_own_room() -> None:
    p = provider()
    first, second = await book(p), await book(p)
    assert first.meeting_id != second.meeting_id
    assert ROOM_RE.match(first.meeting_id)
    assert first.client_url == f"https://meet.example.org/{first.meeting_id}"


async def test_booking_data_never_reaches_the_room_name() -> None:
    meeting = await book(provider(), booking_id="SP-2026-0042", client_name="José")
    assert "0042" not in meeting.meeting_id
    assert "jos" not in meeting.meeting_id


# --- without tokens ------------------------------------------------------------------------


async def test_no_jwt_without_app_secret() -> None:
    meeting = await book(provider())
    assert "jwt" not in meeting.client_url and "jwt" not in meeting.staff_url
    assert meeting.client_url == meeting.staff_url
    assert meeting.extra["signed"] is False


def test_app_id_and_secret_go_together() -> None:
    with pytest.raises(VideoError) as caught:
        provider(app_id=APP_ID)
    assert caught.value.key == "notConfigured"
    with pytest.raises(VideoError):
        provider(app_secret=SECRET)


def test_base_url_must_be_http() -> None:
    with pytest.raises(VideoError):
        JitsiProvider(JitsiConfig(base_url="meet.example.org"), now=lambda: NOW)


# --- with tokens ---------------------------------------------------------------------------


async def test_jwt_header_and_claims() -> None:
    meeting = await book(provider(app_id=APP_ID, app_secret=SECRET))
    room = meeting.meeting_id
    for url in (meeting.client_url, meeting.staff_url):
        assert url.startswith(f"https://meet.example.org/{room}?jwt=")
        assert jwt.get_unverified_header(token_of(url)) == {"alg": "HS256", "typ": "JWT"}
        claims = claims_of(url)
        assert claims["iss"] == APP_ID
        assert claims["aud"] == "jitsi"
        assert claims["sub"] == "meet.example.org"
        assert claims["room"] == room
        assert isinstance(claims["exp"], int) and isinstance(claims["nbf"], int)
        assert claims["nbf"] <= NOW.timestamp() <= claims["exp"]
        # valid when the call starts and until token_minutes (240) after it
        assert claims["exp"] == int((START + timedelta(minutes=240)).timestamp())
        user = claims["context"]["user"]
        assert all(isinstance(value, str) for value in user.values())
    assert meeting.staff_url != meeting.client_url


async def test_moderator_only_for_staff() -> None:
    meeting = await book(provider(app_id=APP_ID, app_secret=SECRET))
    staff = claims_of(meeting.staff_url)["context"]["user"]
    client = claims_of(meeting.client_url)["context"]["user"]
    assert staff == {"name": "Zoë Staff", "moderator": "true", "affiliation": "owner"}
    assert client == {"name": "José Client", "moderator": "false", "affiliation": "member"}


async def test_token_signed_with_the_secret_only() -> None:
    meeting = await book(provider(app_id=APP_ID, app_secret=SECRET))
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(
            token_of(meeting.client_url),
            "another-secret-that-is-also-long-enough!",
            algorithms=["HS256"],
            options={"verify_aud": False, "verify_exp": False},
        )


async def test_token_is_valid_against_the_real_clock() -> None:
    now = datetime.now(UTC)
    p = JitsiProvider(
        JitsiConfig(base_url="https://meet.example.org", app_id=APP_ID, app_secret=SECRET),
        now=lambda: now,
    )
    meeting = await book(p, start=now + timedelta(hours=1))
    claims = jwt.decode(
        token_of(meeting.client_url),
        SECRET,
        algorithms=["HS256"],
        audience="jitsi",
        issuer=APP_ID,
    )
    assert claims["room"] == meeting.meeting_id


async def test_token_outlives_a_long_call_and_a_late_booking() -> None:
    p = provider(app_id=APP_ID, app_secret=SECRET, token_minutes=30)
    meeting = await book(p, minutes=90)
    assert claims_of(meeting.client_url)["exp"] == int((START + timedelta(minutes=90)).timestamp())
    late = NOW + timedelta(days=1)
    p_late = JitsiProvider(
        JitsiConfig(base_url="https://meet.example.org", app_id=APP_ID, app_secret=SECRET),
        now=lambda: late,
    )
    meeting = await book(p_late, start=NOW)  # booked after its start (e.g. an ad-hoc call)
    assert claims_of(meeting.client_url)["exp"] > late.timestamp()


async def test_tenant_in_base_url_is_the_subject() -> None:
    config = JitsiConfig(
        base_url="https://meet.example.org/Support/", app_id=APP_ID, app_secret=SECRET
    )
    meeting = await book(JitsiProvider(config, now=lambda: NOW))
    assert meeting.client_url.startswith(f"https://meet.example.org/Support/{meeting.meeting_id}")
    assert claims_of(meeting.client_url)["sub"] == "support"


async def test_short_secret_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    p = provider(app_id=APP_ID, app_secret="short")
    assert "shorter than 32 bytes" in caplog.text
    meeting = await book(p)  # pytest turns warnings into errors: none may escape
    assert "jwt=" in meeting.client_url


async def test_naive_start_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        await book(provider(), start=datetime(2026, 3, 4, 14, 0))  # noqa: DTZ001


async def test_meeting_repr_hides_the_links() -> None:
    meeting = await book(provider(app_id=APP_ID, app_secret=SECRET))
    assert "jwt" not in repr(meeting)
    assert meeting.meeting_id in repr(meeting)


async def test_build_provider_and_protocol() -> None:
    p = build_provider(VideoConfig(provider="jitsi"), None, now=lambda: NOW)  # type: ignore[arg-type]
    assert isinstance(p, JitsiProvider)
    assert isinstance(p, VideoProvider)
    meeting = await book(p)  # type: ignore[arg-type]
    await p.prepare(meeting)  # a no-op for Jitsi
