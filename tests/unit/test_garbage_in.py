"""Garbage in (property tests): every parser of what people type or send survives anything.

Each property feeds arbitrary Unicode (empty, whitespace, control and format characters, RTL
marks, emoji, look-alike digits, huge inputs) mixed with fragments that steer the parsers into
their deeper branches, and checks the same invariant: the documented exception or nothing, and
a result that is valid by the parser's own rules.

`EXAMPLES` examples per property (11 properties × 1,000 = 11,000 per run); `deadline=None`
because a cold regex or catalog makes the first examples slow, never the later ones.
"""

from __future__ import annotations

import json
import re
import unicodedata
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import idna
import pytest
from email_validator import SPECIAL_USE_DOMAIN_NAMES
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot import rules
from bot.config import Config, ConfigError, parse_config
from bot.domain.bridge import DEFAULT_NICK_FORMAT, Bridged, parse_bridged
from bot.domain.intake import (
    CATEGORIES,
    CHANNELS,
    AddToTicket,
    InstanceInfo,
    Intake,
    IntakeStep,
    OpenRequest,
    Transition,
    advance,
    extract_email,
    intake_from_data,
    intake_to_data,
    parse_instance,
    start,
)
from bot.domain.slots import SlotInputError, parse_block
from bot.i18n import Catalogs, Msg
from handlers.booking import parse_choice
from handlers.common import find_ref

EXAMPLES = 1_000
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
PARIS = ZoneInfo("Europe/Paris")
ZONES = [PARIS, ZoneInfo("America/New_York"), ZoneInfo("Australia/Lord_Howe"), ZoneInfo("UTC")]
NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
CATALOGS = Catalogs.load(default="fr")

# --- what people type --------------------------------------------------------------------------

#: Pieces that reach the parsers' deeper branches (or tried to break them in other bots).
FRAGMENTS = [
    "",
    " ",
    "\t",
    "\n",
    "\r\n",
    "\u00a0",
    "\u202f",
    "\u2028",
    "\x00",
    "\x1b[31m",
    "\u200b",
    "\u200f",
    "\u202e",
    "\u2066",
    "\ufe0f",
    "\u20e3",
    "1️⃣",
    "👍",
    "✅",
    "❌",
    "👩‍👩‍👧",
    "é",
    "İ",
    "ß",
    "ﬃ",
    "١",
    "٣",
    "１",
    "𝟙",
    "½",
    "0",
    "1",
    "2",
    "4",
    "9",
    "10",
    "99999999999999999999",
    "-5",
    "1h30",
    "1.5h",
    "90m",
    "2h",
    "h",
    ":",
    "-",
    "–",
    ".",
    ",",
    "!",
    "！",
    "?",
    "(",
    ")",
    "<",
    ">",
    "[",
    "]",
    "{",
    "}",
    "{ref}",
    "%s",
    "'",
    '"',
    "\\",
    "/",
    "../../",
    "@",
    "@room",
    "@staff:test",
    "mailto:",
    "bob@example.org",
    "a@b",
    "x@xn--",
    "https://",
    "http://",
    "https://survey.example.org",
    "http://[::1]:99999",
    "https://a..b",
    "https://matrix.to/#/@staff:test",
    "javascript:alert(1)",
    "?sid=123456",
    "/index.php/123456",
    "6.4.2",
    "5.x",
    "v6",
    "+240129",
    "build",
    "123456",
    "sid=",
    "2026-11-30",
    "2026-02-30",
    "2026-13-01",
    "2026-03-29",
    "2026-10-25",
    "14:00",
    "02:30",
    "24:00",
    "14h00",
    "SP-2026-0001",
    "sp-2026-00001",
    "Q-2026-0007",
    "SP-٢٠٢٦-٠٠٠١",
    "[nctalk]",
    "<Alice>",
    "[nctalk] <Alice> ",
    "oui",
    "non",
    "yes",
    "no",
    "o",
    "n",
    "!skip",
    "!passer",
    "skip",
    "!cancel",
    "!status",
    "!log SP-2026-0001 -5h",
    "vidéo",
    "e-mail",
    "configuration",
    "other",
    "description",
    "canal",
    "<script>alert(1)</script>",
]

fragment = st.sampled_from(FRAGMENTS)
odd_chars = st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp", "Mn", "Nd", "No", "So"])
garbage = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=odd_chars, max_size=30),
    st.lists(st.one_of(fragment, st.text(max_size=4)), max_size=10).map("".join),
    st.lists(fragment, max_size=8).map(" ".join),
)
big = st.builds(
    lambda piece, n: piece * n, st.text(min_size=1, max_size=8), st.integers(1, 40_000)
)
any_text = st.one_of(garbage, big)


def rendered(msg: Msg) -> None:
    """A reply must render in both languages whatever the client wrote."""
    for locale in ("fr", "en"):
        assert isinstance(CATALOGS.get(locale).render(msg, PARIS), str)


# --- durations (`!estimate`, `!log`) -----------------------------------------------------------

duration_like = st.builds(
    lambda a, sep1, unit1, b, unit2: f"{a}{sep1}{unit1}{b}{unit2}",
    st.sampled_from(["", "0", "1", "01", "1.5", "1,25", "999", "9999", "٣", "１"]),
    st.sampled_from(["", " ", "\u00a0", ":"]),
    st.sampled_from(["", "h", "H", "hr", "heures", "m", "min", "minutes", "mn"]),
    st.sampled_from(["", "0", "30", "59", "60", "99", "00"]),
    st.sampled_from(["", "m", "min", " minutes", "h"]),
)


@PROPERTY
@given(st.one_of(any_text, duration_like))
def test_parse_duration_accepts_valid_minutes_or_raises_duration_error(text: str) -> None:
    try:
        minutes = rules.parse_duration(text)
    except rules.DurationError as error:
        rendered(error.msg)
        assert str(error) == error.reason  # the input is never in the exception text
        return
    assert type(minutes) is int
    assert 1 <= minutes <= rules.MAX_DURATION_MINUTES
    assert rules.parse_duration(rules.format_duration(minutes)) == minutes


# --- blocked periods (`!block`) ----------------------------------------------------------------

#: The property stays inside the years a calendar can shift by a day in any zone; the first and
#: last years of `datetime` are the explicit cases below.
block_dates = st.dates(min_value=date(1900, 1, 1), max_value=date(2999, 12, 31)).map(str)
block_times = st.builds(
    lambda h, m, sep: f"{h}{sep}{m:02d}",
    st.integers(0, 30),
    st.integers(0, 70),
    st.sampled_from([":", "h", "H"]),
)
block_like = st.builds(
    lambda parts: " ".join(parts),
    st.lists(
        st.one_of(block_dates, block_times, st.sampled_from(["-", "–", "—", "14:00-16:00"])),
        min_size=1,
        max_size=5,
    ),
)


@PROPERTY
@given(st.one_of(any_text, block_like), st.sampled_from(ZONES))
def test_parse_block_returns_a_utc_period_or_raises_slot_input_error(
    text: str, tz: ZoneInfo
) -> None:
    try:
        start_at, end_at = parse_block(text, tz)
    except SlotInputError as error:
        rendered(error.msg)
        return
    assert start_at.utcoffset() == timedelta(0) and end_at.utcoffset() == timedelta(0)
    assert start_at < end_at
    assert end_at - start_at <= timedelta(days=366 * 1100 + 2)


@pytest.mark.parametrize(
    "text",
    ["9999-12-31", "2026-12-01 9999-12-31", "0001-01-01", "0001-01-01 00:00-01:00"],
)
def test_parse_block_at_the_ends_of_the_calendar_refuses_cleanly(text: str) -> None:
    try:
        parse_block(text, PARIS)
    except SlotInputError:
        pass


# --- the intake conversation, at every step ----------------------------------------------------

keys_or_junk = st.one_of(
    st.none(),
    st.sampled_from([c.key for c in CATEGORIES] + [c.key for c in CHANNELS]),
    st.text(max_size=6),
)


@st.composite
def intakes(draw: st.DrawFn) -> Intake:
    """Intakes at every step, with whatever the earlier steps may have stored (an unknown
    category or channel included: a row written by another version)."""
    step = draw(st.sampled_from(list(IntakeStep)))
    return Intake(
        step=step,
        started_at=NOW - timedelta(days=1),
        last_activity_at=NOW - timedelta(hours=draw(st.integers(0, 400))),
        description_parts=tuple(draw(st.lists(garbage, max_size=3))),
        category=draw(keys_or_junk),
        instance_url=draw(st.none() | st.just("https://survey.example.org")),
        instance_version=draw(st.none() | st.just("6.4.2")),
        survey_id=draw(st.none() | st.just("123456")),
        channel=draw(keys_or_junk),
        email=draw(st.none() | st.just("bob@example.org")),
        known_email=draw(st.none() | st.just("old@example.org")),
        reminded=draw(st.booleans()),
        return_to_summary=draw(st.booleans()),
        pending_text=draw(st.none() | garbage.map(lambda t: t.strip() or "message")),
        open_ticket_ref=(
            "SP-2026-0001"
            if step is IntakeStep.RELATED
            else draw(st.none() | st.just("SP-2026-0001"))
        ),
    )


def check_transition(before: Intake | None, transition: Transition) -> None:
    assert isinstance(transition, Transition)
    after = transition.intake
    assert isinstance(after.step, IntakeStep)
    assert all(isinstance(msg, Msg) for msg in transition.replies)
    assert transition.replies, "every message gets an answer"
    for msg in transition.replies:
        rendered(msg)
    stored = json.loads(json.dumps(intake_to_data(after)))
    assert intake_from_data(stored) == after
    if before is not None:
        # Nothing already given is lost: the description only grows.
        assert after.description_parts[: len(before.description_parts)] == (
            before.description_parts
        )
    for effect in transition.effects:
        assert isinstance(effect, OpenRequest | AddToTicket)
        if isinstance(effect, OpenRequest):
            assert after.step is IntakeStep.DONE
            assert effect.category in {c.key for c in CATEGORIES}
            assert effect.channel in {c.key for c in CHANNELS}
            assert extract_email(effect.email) == effect.email
            assert len(effect.description) >= 20
        else:
            assert effect.text.strip()


@PROPERTY
@given(intakes(), any_text)
def test_advance_at_every_step_answers_and_stays_a_valid_intake(intake: Intake, text: str) -> None:
    check_transition(intake, advance(intake, text, now=NOW))


@PROPERTY
@given(
    any_text,
    st.none() | st.just("old@example.org") | garbage,
    st.none() | st.just("SP-2026-0001"),
    st.lists(any_text, max_size=4),
)
def test_start_then_any_answers_stay_a_valid_intake(
    text: str, known: str | None, open_ref: str | None, answers: list[str]
) -> None:
    transition = start(now=NOW, text=text, known_email=known, open_ticket_ref=open_ref)
    check_transition(None, transition)
    for answer in answers:
        before = transition.intake
        transition = advance(before, answer, now=NOW)
        check_transition(before, transition)


# --- instance URL and e-mail (intake) ----------------------------------------------------------

url_like = st.builds(
    lambda scheme, host, port, path, rest: f"{scheme}{host}{port}{path} {rest}",
    st.sampled_from(["https://", "http://", "HTTPS://", "ftp://", "https:/", ""]),
    st.one_of(
        st.sampled_from(["survey.example.org", "localhost", "[::1]", "a..b", "-x.org", "é.fr"]),
        st.from_regex(r"[a-z0-9-]{0,8}(\.[a-z0-9-]{0,8}){0,3}", fullmatch=True),
    ),
    st.sampled_from(["", ":443", ":0", ":99999", ":x", ":"]),
    st.sampled_from(["", "/", "/index.php/123456", "/?sid=987654", "?surveyid=12", "#frag"]),
    st.one_of(garbage, st.sampled_from(["6.4.2", "5.x 123456", "v6 sid=4242", "1 2"])),
)
_VERSION_OK = re.compile(r"[0-9]{1,2}(?:\.(?:[0-9]{1,3}|x)){0,3}(\+[0-9]{4,})?")


@PROPERTY
@given(st.one_of(any_text, url_like))
def test_parse_instance_gives_an_instance_or_an_explanation(text: str) -> None:
    result = parse_instance(text)
    if isinstance(result, Msg):
        rendered(result)
        return
    assert isinstance(result, InstanceInfo)
    assert result.url.lower().startswith(("http://", "https://"))
    assert result.url in text
    assert result.version is None or _VERSION_OK.fullmatch(result.version)
    assert result.survey_id is None or (
        result.survey_id.isascii() and result.survey_id.isdigit() and 4 <= len(result.survey_id)
    )


_ASCII_LOCAL = re.compile(r"[!-~]{1,64}")
_HOST = re.compile(r"[a-z0-9.-]+")


@PROPERTY
@given(st.one_of(any_text, st.emails(), st.emails().map(lambda e: f"mine is <{e.upper()}>.")))
def test_extract_email_gives_one_valid_address_or_none(text: str) -> None:
    address = extract_email(text)
    if address is None:
        return
    assert address.count("@") == 1 and len(address) <= 254
    local, domain = address.split("@")
    # An internationalised domain is stored in Unicode; its IDNA form is a plain host name.
    assert _HOST.fullmatch(idna.encode(domain).decode("ascii")), address
    assert domain == domain.lower() and "." in domain and not domain.endswith(".")
    assert domain.split(".")[-1].isalpha()  # "fr", "рф"
    # The local part is as typed (NFC; role names such as Postmaster lower-cased); ASCII ones
    # are printable, and nothing in the address is invisible.
    assert local.casefold() in unicodedata.normalize("NFC", text).casefold()
    assert not local.isascii() or _ASCII_LOCAL.fullmatch(local)
    assert not any(unicodedata.category(char)[0] in "CZ" for char in address)
    assert extract_email(address) == address  # a stored address is read back as is


_ATOM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_%+-"
_LABEL = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
ordinary_emails = st.builds(
    lambda atoms, labels, tld: f"{'.'.join(atoms)}@{'.'.join(labels)}.{tld}",
    st.lists(st.text(alphabet=_ATOM, min_size=1, max_size=12), min_size=1, max_size=3),
    st.lists(
        # "ab--c" is reserved for IDNA labels ("xn--…"): not an ordinary host name.
        st.builds(
            lambda a, mid, b: a + mid + b if mid else a,
            st.sampled_from(_LABEL),
            st.text(alphabet=_LABEL + "-", max_size=10),
            st.sampled_from(_LABEL),
        ).filter(lambda label: label[2:4] != "--"),
        min_size=1,
        max_size=3,
    ),
    # Special-use names ("test", "local", …) receive no mail and are refused.
    st.text(alphabet=_LABEL[:52], min_size=2, max_size=8).filter(
        lambda tld: tld.lower() not in SPECIAL_USE_DOMAIN_NAMES
    ),
)


@PROPERTY
@given(ordinary_emails, st.sampled_from(["{}", "mine is {}", "<{}>", "{}.", "mailto:{}", "({})"]))
def test_extract_email_accepts_ordinary_addresses(address: str, around: str) -> None:
    local, domain = address.split("@")
    # Role mailboxes (Postmaster, Abuse, …) are case-insensitive: stored in lower case.
    if local.lower() in CASE_INSENSITIVE_MAILBOX_NAMES:
        local = local.lower()
    assert extract_email(around.format(address)) == f"{local}@{domain.lower()}"


# --- references, choices, bridged nicknames -----------------------------------------------------

_REF = re.compile(r"[A-Z]{1,10}-\d{4}-\d{4,}")


@PROPERTY
@given(any_text)
def test_find_ref_gives_a_reference_found_in_the_text_or_none(text: str) -> None:
    ref = find_ref(text)
    assert ref is None or (_REF.fullmatch(ref) and ref.casefold() in text.casefold())
    choice = parse_choice(text)
    assert choice is None or 1 <= choice <= 9


nick_formats = st.one_of(
    st.just(DEFAULT_NICK_FORMAT),
    st.sampled_from(["<{NICK}> ", "{NICK}: ", "[{PROTOCOL}] {NICK}: ", "({NICK}) ", "{NICK}"]),
    st.builds(
        lambda a, b, c: f"{a}{{NICK}}{b}{c}",
        st.text(max_size=4),
        st.text(max_size=4),
        st.sampled_from(["", " ", "{PROTOCOL}"]),
    ),
)
nicks = st.text(
    alphabet=st.characters(blacklist_characters=">\n", blacklist_categories=["Cs"]),
    min_size=1,
    max_size=40,
).filter(lambda nick: nick.replace("\x00", "").strip() != "")  # NUL is dropped at the edge


@PROPERTY
@given(
    st.one_of(any_text, st.builds(lambda n, t: f"[nctalk] <{n}> {t}", nicks, any_text)),
    nick_formats,
)
def test_parse_bridged_gives_a_nickname_and_a_text_or_none(body: str, nick_format: str) -> None:
    parsed = parse_bridged(body, nick_format)
    if parsed is None:
        return
    assert isinstance(parsed, Bridged)
    assert parsed.nick and parsed.nick == parsed.nick.strip() and "\n" not in parsed.nick
    assert len(parsed.nick) <= 128
    assert parsed.text == parsed.text.strip() and parsed.text in body.replace("\x00", "")


@PROPERTY
@given(nicks, any_text)
def test_parse_bridged_reads_back_what_the_bridge_writes(nick: str, text: str) -> None:
    parsed = parse_bridged(f"[nctalk] <{nick}> {text}")
    assert parsed is not None
    # U+0000 is dropped (PostgreSQL refuses it and nobody types it).
    expected = (nick.replace("\x00", "").strip(), text.replace("\x00", "").strip(), "nctalk")
    assert (parsed.nick, parsed.text, parsed.protocol) == expected


# --- the configuration --------------------------------------------------------------------------

#: Config strings: cheaper to draw than `garbage` (the config has many of them).
small = st.one_of(fragment, st.text(max_size=6))
toml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    small,
    st.sampled_from(["https://matrix.example.org", "CHANGE-ME", "@bot:test", "!r:test", "09:00"]),
    st.sampled_from(
        [
            datetime(2026, 11, 30, 9, 0, tzinfo=UTC).replace(tzinfo=None),  # TOML local time
            datetime(2026, 11, 30, 9, 0, tzinfo=UTC),
            date(2026, 11, 30),
            time(9, 0),
            time(25 % 24, 59),
        ]
    ),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(small, inner, max_size=3),
    max_leaves=6,
)
SECTIONS = ["matrix", "database", "service", "web", "mail", "video", "availability", "bridges"]
KEYS = [
    "homeserver",
    "user_id",
    "password",
    "access_token",
    "staff_room",
    "staff",
    "support_rooms",
    "allowed_servers",
    "url",
    "timezone",
    "country",
    "default_locale",
    "ticket_prefix",
    "day_end",
    "day_start",
    "listen",
    "public_url",
    "secret",
    "host",
    "port",
    "starttls",
    "from",
    "provider",
    "jitsi",
    "bigbluebutton",
    "nextcloud_talk",
    "days",
    "start",
    "end",
    "nick_format",
    "max_message_chars",
    "reminder_offsets_minutes",
    "confirmation",
]
key_names = st.one_of(st.sampled_from(KEYS), small)
sections = st.dictionaries(key_names, toml_values, max_size=5)
raw_configs = st.one_of(
    st.dictionaries(st.sampled_from(SECTIONS) | small, toml_values, max_size=5),
    st.dictionaries(
        st.sampled_from(SECTIONS),
        st.one_of(sections, st.lists(sections, max_size=3), toml_values),
        max_size=8,
    ),
)


def valid_raw() -> dict[str, Any]:
    return {
        "matrix": {
            "homeserver": "https://matrix.test",
            "user_id": "@bot:test",
            "password": "a-real-password",
            "staff_room": "!staff:test",
            "staff": ["@staff:test"],
        },
        "web": {"public_url": "https://support.test", "secret": "s" * 32},
        "video": {"provider": "jitsi", "jitsi": {"base_url": "https://jitsi.test"}},
        "availability": [
            {"staff": "@staff:test", "days": ["mon"], "start": "09:00", "end": "12:00"}
        ],
        "bridges": [{"user_id": "@nctalk:test"}],
    }


@st.composite
def mutated_configs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid config with a few keys replaced, added or removed (reaches every check)."""
    raw = valid_raw()
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(SECTIONS))
        table = raw.setdefault(section, {})
        if isinstance(table, list):
            table = table[0] if table else {}
        if isinstance(table, dict):
            key = draw(key_names)
            if draw(st.booleans()) and key in table:
                del table[key]
            else:
                table[key] = draw(toml_values)
    return raw


env_vars = st.dictionaries(
    st.one_of(
        st.sampled_from(
            [
                "SUPPORT_BOT_MATRIX_PASSWORD",
                "SUPPORT_BOT_WEB_SECRET",
                "SUPPORT_BOT_MAIL_PORT",
                "SUPPORT_BOT_SERVICE_MAX_MESSAGE_CHARS",
                "SUPPORT_BOT_NOPE",
                "SUPPORT_BOT_",
            ]
        ),
        small,
    ),
    small,
    max_size=3,
)


@PROPERTY
@given(st.one_of(raw_configs, mutated_configs()), env_vars)
def test_parse_config_gives_a_config_or_raises_config_error_only(
    raw: dict[str, Any], env: dict[str, str]
) -> None:
    try:
        config = parse_config(raw, env)
    except ConfigError as error:
        assert error.problems
        assert all(isinstance(key, str) and isinstance(msg, str) for key, msg in error.problems)
        return
    assert isinstance(config, Config)
    assert isinstance(config.matrix.user_id, str) and config.matrix.staff_room


def test_the_mutation_base_is_a_valid_config() -> None:
    assert isinstance(parse_config(valid_raw(), {}), Config)


# --- a smoke check of the strategies themselves -------------------------------------------------


def test_strategies_reach_valid_inputs() -> None:
    """The generators are not all garbage: some examples do parse (otherwise the properties
    above would only ever test the error paths)."""
    assert rules.parse_duration("1h30") == 90
    assert parse_block("2026-12-03 14:00-16:00", PARIS)[0] == datetime(
        2026, 12, 3, 13, 0, tzinfo=UTC
    )
    assert isinstance(parse_instance("https://survey.example.org 6.4.2 123456"), InstanceInfo)
    assert extract_email("mine is Bob@Example.ORG.") == "Bob@example.org"
    assert time(14, 0) and find_ref("voir sp-2026-0042 svp") == "SP-2026-0042"
