"""BigBlueButton checksum, query encoding and answer parsing (pure functions)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.testing.fake_bbb import format_query, parse_query
from bot.video import VideoError
from bot.video.bigbluebutton import (
    ALGORITHMS,
    api_base,
    build_url,
    checksum,
    clean_text,
    encode_query,
    meeting_id_for,
    parse_response,
    quote_value,
)

# The worked example of the BigBlueButton API documentation ("API Security Model").
DOC_CALL = "create"
DOC_QUERY = "name=Test+Meeting&meetingID=abc123&attendeePW=111222&moderatorPW=333444"
DOC_SECRET = "639259d4-9dd8-4b25-bf01-95f9567eaf4b"
DOC_SHA1 = "1fcbb0c4fc1f039f73aa6d697d2db9ba7f803f17"
DOC_PARAMS = [
    ("name", "Test Meeting"),
    ("meetingID", "abc123"),
    ("attendeePW", "111222"),
    ("moderatorPW", "333444"),
]


def test_public_documentation_vector() -> None:
    assert checksum(DOC_CALL, DOC_QUERY, DOC_SECRET, "sha1") == DOC_SHA1


def test_encoding_reproduces_the_documented_query() -> None:
    assert encode_query(DOC_PARAMS) == DOC_QUERY
    assert encode_query(dict(DOC_PARAMS)) == DOC_QUERY


def test_build_url_reproduces_the_documented_url() -> None:
    base = "https://bbb.example.org/bigbluebutton/api/"
    url = build_url(base, "create", DOC_PARAMS, DOC_SECRET, "sha1")
    assert url == (
        f"https://bbb.example.org/bigbluebutton/api/create?{DOC_QUERY}&checksum={DOC_SHA1}"
    )


@pytest.mark.parametrize(("algo", "length"), sorted(ALGORITHMS.items()))
def test_four_algorithms(algo: str, length: int) -> None:
    digest = checksum(DOC_CALL, DOC_QUERY, DOC_SECRET, algo)
    expected = hashlib.new(algo, f"{DOC_CALL}{DOC_QUERY}{DOC_SECRET}".encode()).hexdigest()
    assert digest == expected
    assert len(digest) == length  # the server picks the algorithm by this length
    url = build_url("https://h/bigbluebutton/api", DOC_CALL, DOC_PARAMS, DOC_SECRET, algo)
    assert url.endswith(f"&checksum={digest}")


def test_sha256_is_the_default() -> None:
    assert checksum(DOC_CALL, DOC_QUERY, DOC_SECRET) == checksum(
        DOC_CALL, DOC_QUERY, DOC_SECRET, "sha256"
    )


def test_unknown_algorithm_is_refused() -> None:
    with pytest.raises(ValueError, match="md5"):
        checksum(DOC_CALL, DOC_QUERY, DOC_SECRET, "md5")


def test_checksum_depends_on_every_part() -> None:
    base = checksum(DOC_CALL, DOC_QUERY, DOC_SECRET)
    assert checksum("join", DOC_QUERY, DOC_SECRET) != base
    assert checksum(DOC_CALL, DOC_QUERY + "x", DOC_SECRET) != base
    assert checksum(DOC_CALL, DOC_QUERY, DOC_SECRET + "x") != base


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("Test Meeting", "Test+Meeting"),
        ("Réunion", "R%C3%A9union"),
        ("(a)/b", "%28a%29%2Fb"),
        ("a+b&c=d", "a%2Bb%26c%3Dd"),
        ("~x*y-z_w.v", "%7Ex*y-z_w.v"),  # Java keeps `*`, escapes `~` (quote_plus: opposite)
        ("日本", "%E6%97%A5%E6%9C%AC"),
        ("", ""),
    ],
)
def test_quote_value_matches_java_url_encoded_utils(text: str, encoded: str) -> None:
    assert quote_value(text) == encoded


@given(st.lists(st.tuples(st.text(min_size=1), st.text()), max_size=6))
def test_the_server_formats_our_query_back_to_the_same_bytes(
    pairs: list[tuple[str, str]],
) -> None:
    # Current servers parse the query and format it again before hashing: it must be a no-op.
    query = encode_query(pairs)
    assert parse_query(query) == pairs
    assert format_query(parse_query(query)) == query


def test_api_base_tolerates_the_bbb_conf_url() -> None:
    assert api_base("https://b.example.org/bigbluebutton/") == (
        "https://b.example.org/bigbluebutton/api"
    )
    assert api_base("https://b.example.org/bigbluebutton/api/") == (
        "https://b.example.org/bigbluebutton/api"
    )


def test_clean_text() -> None:
    assert clean_text("  a\tb\n\x00c  ", 64) == "a b c"
    assert clean_text("x" * 100, 64) == "x" * 64
    assert clean_text("e\u0301", 10) == "é"  # NFC


def test_meeting_id_is_stable_and_safe() -> None:
    assert meeting_id_for("SP-2026-0042") == "support-bot-SP-2026-0042"
    odd = meeting_id_for("SP 2026/0042, é")
    assert odd == meeting_id_for("SP 2026/0042, é")
    assert odd != meeting_id_for("SP 2026/0042, e")
    assert "," not in odd and " " not in odd
    assert 2 <= len(odd) <= 256


def test_parse_success() -> None:
    answer = parse_response(
        b"<response><returncode>SUCCESS</returncode><meetingID>m</meetingID>"
        b"<createTime>1531155809613</createTime></response>"
    )
    assert answer["meetingID"] == "m"
    assert answer["createTime"] == "1531155809613"


def test_parse_failure_carries_key_and_message_not_xml() -> None:
    with pytest.raises(VideoError) as caught:
        parse_response(
            b"<response><returncode>FAILED</returncode><messageKey>checksumError</messageKey>"
            b"<message>Checksums do not match</message></response>"
        )
    assert caught.value.key == "checksumError"
    assert caught.value.detail == "Checksums do not match"
    assert "<" not in str(caught.value)


@pytest.mark.parametrize(
    "body", [b"<html>502 Bad Gateway</html>", b"not xml at all", b"<response></response>"]
)
def test_parse_garbage(body: bytes) -> None:
    with pytest.raises(VideoError) as caught:
        parse_response(body)
    assert caught.value.key == "invalidResponse"
    assert "<" not in str(caught.value)
