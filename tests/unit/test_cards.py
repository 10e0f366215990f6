"""Staff cards and the queue: what staff need to see, and nothing a client can inject."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from zoneinfo import ZoneInfo

import pytest

from bot.cards import (
    ALLOWED_TAGS,
    DESCRIPTION_PREVIEW_CHARS,
    BalanceView,
    BookingView,
    CardView,
    available_actions,
    defuse,
    render_card,
    render_queue,
)
from bot.domain.tickets import Channel, Kind, Status, TicketState
from bot.i18n import Catalogs, Translator

PARIS = ZoneInfo("Europe/Paris")
NOW = datetime(2026, 12, 24, 10, 0, tzinfo=PARIS)
STAFF = "@bob:support.example"


@pytest.fixture(scope="module")
def catalogs() -> Catalogs:
    return Catalogs.load()


@pytest.fixture
def en(catalogs: Catalogs) -> Translator:
    return catalogs.get("en")


@pytest.fixture
def fr(catalogs: Catalogs) -> Translator:
    return catalogs.get("fr")


def view(
    *,
    kind: Kind = Kind.TICKET,
    channel: Channel = Channel.MESSAGING,
    status: Status = Status.OPEN,
    **changes: object,
) -> CardView:
    state_fields = {k: changes.pop(k) for k in list(changes) if k in TicketState.__slots__}
    base = CardView(
        ref="SP-2026-0042",
        state=TicketState(kind=kind, channel=channel, status=status, **state_fields),  # type: ignore[arg-type]
        category="javascript",
        client_name="Alice Martin",
        description="The second page of survey 123456 stays blank since the update.",
        created_at=NOW,
        instance_url="https://surveys.example.org/index.php/admin",
        instance_version="6.4.2",
        survey_id="123456",
        sla_due=datetime(2026, 12, 29, 17, 0, tzinfo=UTC),  # 18:00 in Paris
    )
    return replace(base, **changes)  # type: ignore[arg-type]


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags_of(markup: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(markup)
    return parser.tags


# --- What staff see ------------------------------------------------------------------------


def test_card_shows_what_staff_need(en: Translator) -> None:
    card = view(
        status=Status.IN_PROGRESS,
        assigned_to=STAFF,
        first_response_at=None,
        minutes_logged=61,
        booking=None,
    )
    plain, markup = render_card(card, en, PARIS)
    for expected in (
        "SP-2026-0042",
        "Ticket",
        "in progress",
        "Client: Alice Martin",
        "Category: JavaScript on questions or pages",
        "Channel: messaging",
        "https://surveys.example.org/index.php/admin",
        "LimeSurvey 6.4.2",
        "survey 123456",
        "Answer due by: Tuesday, December 29, 2026 at 6:00 PM",
        f"Assigned to: {STAFF}",
        "Logged: 1h01 · billed: 2 tickets",
        "The second page of survey 123456 stays blank",
        "!log SP-2026-0042 <duration> [note]",
        "!resolve SP-2026-0042",
    ):
        assert expected in plain, expected
    assert "Tuesday, December 29, 2026 at 6:00 PM" in markup
    assert "&lt;duration&gt;" in markup
    assert '<a href="https://surveys.example.org/index.php/admin">' in markup


def test_card_in_french_and_another_time_zone(fr: Translator) -> None:
    plain, _ = render_card(view(), fr, ZoneInfo("America/Montreal"))
    assert "JavaScript dans les questions ou les pages" in plain
    assert "mardi 29 décembre 2026 à 12:00" in plain


def test_bridged_client_is_named_with_its_bridge(en: Translator) -> None:
    plain, markup = render_card(view(client_name="Alice", bridged=True), en, PARIS)
    assert "Client: Alice (via Nextcloud Talk)" in plain
    assert "Alice (via Nextcloud Talk)" in markup


def test_intervention_card_shows_estimate_confirmation_and_booking(en: Translator) -> None:
    start = datetime(2026, 12, 28, 14, 0, tzinfo=PARIS)
    card = view(
        channel=Channel.INTERVENTION,
        status=Status.CONFIRMED,
        estimate_minutes=150,
        confirmed_tickets=3,
        staff_confirmed_by=STAFF,
        client_confirmed_at=NOW,
        booking=BookingView(start, start + timedelta(minutes=45), STAFF, "jitsi"),
    )
    plain, _ = render_card(card, en, PARIS)
    assert "Estimate: 2h30 (3 tickets)" in plain
    assert f"Confirmed for 3 tickets by {STAFF}" in plain
    assert "Client confirmed on Thursday, December 24, 2026 at 10:00 AM" in plain
    assert f"Call: Monday, December 28, 2026 at 2:00 PM – 2:45 PM with {STAFF} (jitsi)" in plain


def test_answered_ticket_shows_the_sla_as_met(en: Translator) -> None:
    plain, _ = render_card(view(first_response_at=NOW), en, PARIS)
    assert "Answered: Thursday, December 24, 2026 at 10:00 AM (due Tuesday" in plain
    assert "Answer due by" not in plain


def test_missed_sla_is_shown_on_every_render_until_closed(en: Translator) -> None:
    plain, markup = render_card(view(sla_missed=True), en, PARIS)
    assert "⚠️ Overdue: the answer was due Tuesday, December 29, 2026 at 6:00 PM" in plain
    assert "Overdue" in markup
    plain, _ = render_card(view(sla_missed=True, status=Status.CANCELLED), en, PARIS)
    assert "Overdue" not in plain
    plain, _ = render_card(view(), en, PARIS)
    assert "Overdue" not in plain


def test_missing_instance_is_said(en: Translator) -> None:
    plain, _ = render_card(
        view(instance_url=None, instance_version=None, survey_id=None), en, PARIS
    )
    assert "Instance: not given" in plain


def test_long_description_is_shortened(en: Translator) -> None:
    text = "word " * 400
    plain, markup = render_card(view(description=text), en, PARIS)
    quoted = "\n".join(line for line in plain.splitlines() if line.startswith(">"))
    assert DESCRIPTION_PREVIEW_CHARS <= len(quoted) <= DESCRIPTION_PREVIEW_CHARS + 10
    assert quoted.endswith("…")
    assert "!ticket SP-2026-0042 shows the full text" in plain
    assert "shows the full text" in markup


def test_multiline_description_keeps_its_lines(en: Translator) -> None:
    plain, markup = render_card(view(description="first line\n\nthird line"), en, PARIS)
    assert "> first line\n>\n> third line" in plain
    assert "first line<br><br>third line" in markup


# --- Actions -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "channel", "status", "extra", "present", "absent"),
    [
        (
            Kind.TICKET,
            Channel.MESSAGING,
            Status.OPEN,
            {},
            ["👀 take", "❌ decline", "!take"],
            ["✅ confirm", "!estimate", "!convert"],
        ),
        (
            Kind.TICKET,
            Channel.INTERVENTION,
            Status.AWAITING_ESTIMATE,
            {},
            ["!estimate", "❌ decline"],
            ["✅ confirm", "!log"],
        ),
        (
            Kind.TICKET,
            Channel.INTERVENTION,
            Status.AWAITING_STAFF_CONFIRMATION,
            {"estimate_minutes": 90},
            ["✅ confirm", "❌ decline"],
            ["!log"],
        ),
        (
            Kind.TICKET,
            Channel.INTERVENTION,
            Status.AWAITING_CLIENT_CONFIRMATION,
            {"estimate_minutes": 180},
            ["Waiting for the client's confirmation"],
            ["✅ confirm", "!log", "!resolve"],
        ),
        (
            Kind.TICKET,
            Channel.INTERVENTION,
            Status.CONFIRMED,
            {"estimate_minutes": 90, "confirmed_tickets": 2, "staff_confirmed_by": STAFF},
            ["!log", "!resolve"],
            ["✅ confirm"],
        ),
        (
            Kind.TICKET,
            Channel.MESSAGING,
            Status.RESOLVED,
            {},
            ["Waiting for the client's acceptance"],
            ["!resolve", "👀 take", "❌ decline"],
        ),
        (
            Kind.TICKET,
            Channel.MESSAGING,
            Status.CANCELLED,
            {},
            ["Nothing left to do"],
            ["👀 take", "!log"],
        ),
        (
            Kind.QUESTION,
            Channel.MESSAGING,
            Status.OPEN,
            {},
            ["!convert", "👀 take"],
            ["!log", "!unsolvable"],
        ),
        (
            Kind.QUOTE,
            Channel.MESSAGING,
            Status.OPEN,
            {},
            ["👀 take", "!resolve"],
            ["!log", "!convert", "!estimate"],
        ),
    ],
)
def test_card_offers_the_actions_of_its_status(
    en: Translator,
    kind: Kind,
    channel: Channel,
    status: Status,
    extra: dict[str, object],
    present: list[str],
    absent: list[str],
) -> None:
    plain, _ = render_card(view(kind=kind, channel=channel, status=status, **extra), en, PARIS)
    for text in present:
        assert text in plain, text
    for text in absent:
        assert text not in plain, text
    assert "!ticket SP-2026-0042" in plain


def test_confirm_is_never_offered_without_the_client_s_consent() -> None:
    state = TicketState(
        kind=Kind.TICKET,
        channel=Channel.INTERVENTION,
        status=Status.AWAITING_STAFF_CONFIRMATION,
        estimate_minutes=121,  # three tickets: R7
    )
    reactions, _ = available_actions(state)
    assert "✅ confirm" not in reactions
    reactions, _ = available_actions(replace(state, client_confirmed_at=NOW))
    assert "✅ confirm" in reactions


# --- Hostile input -------------------------------------------------------------------------

HOSTILE = [
    "<script>alert(1)</script>",
    '<a href="javascript:alert(1)">x</a>',
    "@room please look at this",
    "hello @ROOM!",
    "https://matrix.to/#/@alice:example.org",
    "ping @alice:example.org and matrix:u/alice:example.org",
    '<img src=x onerror="alert(1)"><iframe src="https://evil.example"></iframe>',
    "\u202eevil\u202c <b>bold</b> &amp; </p></ul><p>",
]


def assert_harmless(plain: str, markup: str) -> None:
    for tag, attrs in tags_of(markup):
        assert tag in ALLOWED_TAGS, tag
        assert set(attrs) <= ({"href"} if tag == "a" else set()), (tag, attrs)
        if tag == "a":
            href = attrs["href"] or ""
            assert href.startswith("https://surveys.example.org/"), href
    assert "<script" not in markup.lower()
    assert "javascript:" not in "".join(str(a) for _, a in tags_of(markup))
    for body in (plain, markup):
        assert not re.search(r"@room", body, re.IGNORECASE)
        assert "matrix.to" not in body
        assert "matrix:u/" not in body
        assert "@alice:example.org" not in body
        assert "\u202e" not in body


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_description_cannot_inject_or_ping(en: Translator, text: str) -> None:
    plain, markup = render_card(view(description=text), en, PARIS)
    assert_harmless(plain, markup)
    # Staff still read what was written, as text (bidi overrides aside).
    readable = text.replace("\u202e", "").replace("\u202c", "")
    assert readable in plain.replace("\u2060", "")


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_client_fields_cannot_inject_or_ping(en: Translator, text: str) -> None:
    card = view(
        client_name=text,
        instance_version=text,
        survey_id=text,
        category=text,
        instance_url=text,
    )
    plain, markup = render_card(card, en, PARIS)
    assert_harmless(plain, markup)


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "JavaScript:alert(document.cookie)",
        "https://matrix.to/#/@alice:example.org",
        'https://surveys.example.org/"><script>alert(1)</script>',
        "data:text/html,<script>alert(1)</script>",
    ],
)
def test_only_plain_web_instance_urls_become_links(en: Translator, url: str) -> None:
    _, markup = render_card(view(instance_url=url), en, PARIS)
    hrefs = [attrs.get("href") for tag, attrs in tags_of(markup) if tag == "a"]
    if url.startswith("https://surveys.example.org/"):
        assert len(hrefs) == 1 and "<script" not in markup
    else:
        assert hrefs == []
    assert "<script" not in markup


def test_defuse_keeps_ordinary_text_and_e_mail_addresses() -> None:
    assert defuse("write to alice@example.org about room 12") == (
        "write to alice@example.org about room 12"
    )
    assert defuse("@room") != "@room"
    assert defuse("@room").replace("\u2060", "") == "@room"


# --- Queue ---------------------------------------------------------------------------------


def test_queue_lists_items_in_order_and_flags_overdue(en: Translator) -> None:
    now = datetime(2026, 12, 30, 9, 0, tzinfo=PARIS)
    overdue = view(sla_due=now - timedelta(hours=3))
    soon = view(
        status=Status.IN_PROGRESS,
        assigned_to=STAFF,
        first_response_at=now - timedelta(days=1),
        sla_due=now - timedelta(hours=1),
    )
    quote = view(kind=Kind.QUOTE, sla_due=None, client_name="@room <script>")
    items = [
        replace(overdue, ref="SP-2026-0001"),
        replace(soon, ref="SP-2026-0002"),
        replace(quote, ref="QR-2026-0001"),
    ]
    plain, markup = render_queue(items, en, PARIS, now)
    lines = plain.splitlines()
    assert lines[0] == "Queue: 3 open items"
    assert [line.split(" ")[2] for line in lines[1:]] == [
        "SP-2026-0001",
        "SP-2026-0002",
        "QR-2026-0001",
    ]
    assert "OVERDUE since Wednesday, December 30, 2026 at 6:00 AM" in lines[1]
    assert "unassigned" in lines[1]
    # Answered in time: not overdue, even though its deadline has passed.
    assert "OVERDUE" not in lines[2] and STAFF in lines[2]
    assert "no deadline" in lines[3]
    assert not re.search(r"@room", plain + markup)
    assert "<script" not in markup


def test_queue_with_one_item_and_empty(en: Translator, fr: Translator) -> None:
    plain, _ = render_queue([view()], en, PARIS, NOW)
    assert plain.splitlines()[0] == "Queue: 1 open item"
    plain, markup = render_queue([], en, PARIS, NOW)
    assert plain == "The queue is empty: no open work."
    assert markup == "<p>The queue is empty: no open work.</p>"


# --- The prepaid balance (issue #16 §1) ------------------------------------------------------


@pytest.mark.parametrize(
    ("balance", "line", "flagged"),
    [
        (
            BalanceView(purchased=10, billed=6, account="Acme Europe"),
            "Prepaid balance of Acme Europe: 4 tickets (purchased: 10 tickets, billed: 6 tickets)",
            False,
        ),
        (
            BalanceView(purchased=10, billed=9, account="Acme Europe"),
            "Prepaid balance of Acme Europe: 1 ticket (purchased: 10 tickets, billed: 9 tickets)",
            True,
        ),
        (
            BalanceView(purchased=2, billed=5),
            "Prepaid balance: −3 tickets (purchased: 2 tickets, billed: 5 tickets)",
            True,
        ),
        (
            BalanceView(purchased=0, billed=5, prepaid=False),
            "Prepaid balance: nothing purchased (billed: 5 tickets)",
            False,
        ),
    ],
)
def test_card_shows_the_balance_of_the_account(
    en: Translator, balance: BalanceView, line: str, flagged: bool
) -> None:
    plain, markup = render_card(view(balance=balance), en, PARIS)
    expected = f"⚠️ {line}" if flagged else line
    assert expected in plain.splitlines()
    assert (f"<li>⚠️ <b>{line}</b></li>" in markup) is flagged


def test_card_balance_in_french_agrees_with_the_count(fr: Translator) -> None:
    plain, _ = render_card(view(balance=BalanceView(purchased=1, billed=2)), fr, PARIS)
    assert "⚠️ Solde prépayé : −1 ticket (achats : 1 ticket, facturation : 2 tickets)" in plain


def test_an_organisation_name_is_defused_on_the_card(en: Translator) -> None:
    balance = BalanceView(purchased=5, billed=1, account="@room <b>Evil</b>")
    plain, markup = render_card(view(balance=balance), en, PARIS)
    assert "@room" not in plain and "<b>Evil</b>" not in markup
