"""The intake conversation (SPEC §3, R1): pure transitions, table-driven."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.domain.intake import (
    CATEGORIES,
    CATEGORY_KINDS,
    CHANNELS,
    AddToTicket,
    InstanceInfo,
    Intake,
    IntakeStep,
    OpenRequest,
    RequestKind,
    Transition,
    advance,
    cancel,
    due_at,
    expire,
    extract_email,
    intake_from_data,
    intake_to_data,
    is_expired,
    needs_reminder,
    parse_instance,
    question_for,
    remind,
    start,
)
from bot.i18n import Msg

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
DESCRIPTION = "My survey stops at page 2 when quotas are full."
URL = "https://survey.example.org"


def feed(transition: Transition, *texts: str, now: datetime = NOW) -> Transition:
    for text in texts:
        transition = advance(transition.intake, text, now=now)
    return transition


def at_step(step: IntakeStep, **changes: object) -> Intake:
    """An intake that reached `step` with every earlier answer given."""
    base = Intake(
        step=step,
        started_at=NOW,
        last_activity_at=NOW,
        description_parts=(DESCRIPTION,),
        category="expressions",
        channel="messaging",
        email="client@example.org",
    )
    return replace(base, **changes)


def texts(transition: Transition) -> list[str]:
    return [reply.text for reply in transition.replies]


# -- catalogues --------------------------------------------------------------------------


def test_categories_follow_the_spec() -> None:
    assert [(c.number, c.key) for c in CATEGORIES] == [
        (1, "configuration"),
        (2, "expressions"),
        (3, "javascript"),
        (4, "theme"),
        (5, "data"),
        (6, "install-theme"),
        (7, "plugin"),
        (8, "usage"),
        (9, "feasibility"),
        (10, "other"),
    ]
    assert [CATEGORY_KINDS[c.key] for c in CATEGORIES] == [RequestKind.TICKET] * 8 + [
        RequestKind.QUESTION,
        RequestKind.QUOTE,
    ]
    assert [(c.number, c.key) for c in CHANNELS] == [
        (1, "messaging"),
        (2, "video"),
        (3, "phone"),
        (4, "intervention"),
    ]


def test_stored_step_values_never_change() -> None:
    assert [step.value for step in IntakeStep] == [
        "description",
        "category",
        "instance",
        "channel",
        "email",
        "confirm",
        "related",
        "edit",
        "done",
        "cancelled",
        "expired",
    ]


def test_category_question_lists_each_label_as_its_own_message() -> None:
    question = question_for(at_step(IntakeStep.CATEGORY))
    lines = question.params["choices"]
    assert len(lines) == 10
    assert [line.params["label"] for line in lines] == [Msg(c.label) for c in CATEGORIES]


# -- happy paths -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("category", "kind"),
    [("1", RequestKind.TICKET), ("9", RequestKind.QUESTION), ("10", RequestKind.QUOTE)],
)
@pytest.mark.parametrize(
    ("channel", "key"),
    [("1", "messaging"), ("2", "video"), ("3", "phone"), ("4", "intervention")],
)
def test_happy_path_opens_the_request(
    category: str, kind: RequestKind, channel: str, key: str
) -> None:
    first = start(now=NOW, text=DESCRIPTION, known_email=None)
    assert first.intake.step is IntakeStep.CATEGORY
    end = feed(first, category, f"{URL} 6.4.2 123456", channel, "client@example.org")
    assert end.intake.step is IntakeStep.CONFIRM
    end = feed(end, "yes")
    assert end.intake.step is IntakeStep.DONE
    assert end.replies
    assert end.effects == (
        OpenRequest(
            kind=kind,
            category=CATEGORIES[int(category) - 1].key,
            channel=key,
            description=DESCRIPTION,
            instance_url=URL,
            instance_version="6.4.2",
            survey_id="123456",
            email="client@example.org",
        ),
    )


def test_summary_shows_every_field() -> None:
    transition = feed(
        start(now=NOW, text=DESCRIPTION),
        "feasibility",
        f"{URL} 6.x 4242",
        "vidéo",
        "client@example.org",
    )
    summary = transition.replies[-1]
    assert transition.intake.step is IntakeStep.CONFIRM
    assert summary.params["description"] == DESCRIPTION
    assert summary.params["category"] == Msg(CATEGORIES[8].label)
    assert summary.params["channel"] == Msg(CHANNELS[1].label)
    assert summary.params["email"] == "client@example.org"
    instance = summary.params["instance"]
    assert (instance.params["url"], instance.params["version"]) == (URL, "6.x")
    assert instance.params["survey_id"] == "4242"
    assert "feasibility" in summary.params["kind_note"].text


def test_summary_previews_a_very_long_description() -> None:
    summary = question_for(at_step(IntakeStep.CONFIRM, description_parts=("x" * 5000,)))
    assert len(summary.params["description"]) < 1100


# -- description -------------------------------------------------------------------------


def test_short_description_then_second_message() -> None:
    first = start(now=NOW, text="Help!")
    assert first.intake.step is IntakeStep.DESCRIPTION
    assert first.intake.description_parts == ("Help!",)
    assert first.replies[-1].params["min"] == 20
    second = feed(first, "The survey does not save answers.")
    assert second.intake.step is IntakeStep.CATEGORY
    assert second.intake.description_parts == ("Help!", "The survey does not save answers.")


def test_start_with_nothing_asks_for_the_description() -> None:
    first = start(now=NOW, text="   ")
    assert first.intake.step is IntakeStep.DESCRIPTION
    assert first.intake.description_parts == ()
    assert len(first.replies) == 2


@pytest.mark.parametrize("text", ["", "   ", "!skip", "!passer"])
def test_description_refuses_empty_and_skip(text: str) -> None:
    first = start(now=NOW, text="Hi")
    after = feed(first, text)
    assert after.intake.description_parts == ("Hi",)
    assert after.intake.step is IntakeStep.DESCRIPTION
    assert len(after.replies) == 2


def test_long_text_at_category_is_added_to_the_description() -> None:
    first = start(now=NOW, text=DESCRIPTION)
    extra = "Also the quota message is shown in English to French respondents."
    after = feed(first, extra)
    assert after.intake.step is IntakeStep.CATEGORY
    assert after.intake.description_parts == (DESCRIPTION, extra)
    assert after.replies[0].text.startswith("I added this message")
    assert after.replies[-1] == question_for(after.intake)


def test_description_is_capped_after_the_first_part() -> None:
    first = start(now=NOW, text="x" * 60_000)
    assert first.intake.step is IntakeStep.CATEGORY
    after = feed(first, "y" * 30)
    assert after.intake.description_parts == ("x" * 60_000,)
    assert "longer than" in after.replies[0].text


# -- category and channel ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("1", "configuration"),
        ("2.", "expressions"),
        ("2)", "expressions"),
        (" (3) ", "javascript"),
        ("JavaScript", "javascript"),
        ("Thème", "theme"),
        ("theme", "theme"),
        ("données", "data"),
        ("Data", "data"),
        ("install-theme", "install-theme"),
        ("Install theme", "install-theme"),
        ("installer un thème", "install-theme"),
        ("plugin", "plugin"),
        ("Extension", "plugin"),
        ("utilisation", "usage"),
        ("9", "feasibility"),
        ("Faisabilité ?", "feasibility"),
        ("10", "other"),
        ("autre", "other"),
        ("5 - data", "data"),
        ("2. Quotas", "expressions"),
    ],
)
def test_category_answers(text: str, key: str) -> None:
    after = advance(at_step(IntakeStep.CATEGORY, category=None), text, now=NOW)
    assert after.intake.category == key
    assert after.intake.step is IntakeStep.INSTANCE


@pytest.mark.parametrize("text", ["0", "11", "99", "abc", "théâtre", "3 data", "1234", "✅"])
def test_wrong_category_is_explained_and_asked_again(text: str) -> None:
    intake = at_step(IntakeStep.CATEGORY, category=None)
    after = advance(intake, text, now=NOW)
    assert after.intake.step is IntakeStep.CATEGORY
    assert after.intake.category is None
    assert after.intake.description_parts == intake.description_parts
    assert texts(after) == ["That is not one of the categories.", question_for(intake).text]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("1", "messaging"),
        ("messagerie", "messaging"),
        ("Messaging", "messaging"),
        ("courriel", "messaging"),
        ("E-mail", "messaging"),
        ("chat", "messaging"),
        ("2", "video"),
        ("2.", "video"),
        ("Vidéo", "video"),
        ("video", "video"),
        ("VISIO", "video"),
        ("2️⃣", "video"),
        ("3", "phone"),
        ("téléphone", "phone"),
        ("Telephone", "phone"),
        ("phone", "phone"),
        ("4", "intervention"),
        ("Intervention", "intervention"),
        ("4) intervention", "intervention"),
    ],
)
def test_channel_answers(text: str, key: str) -> None:
    after = advance(at_step(IntakeStep.CHANNEL, channel=None), text, now=NOW)
    assert after.intake.channel == key
    assert after.intake.step is IntakeStep.EMAIL


@pytest.mark.parametrize("text", ["5", "0", "pigeon", "2 phone", "!skip", "a video call tomorrow"])
def test_wrong_channel_is_explained_and_asked_again(text: str) -> None:
    intake = at_step(IntakeStep.CHANNEL, channel=None)
    after = advance(intake, text, now=NOW)
    assert after.intake == replace(intake, last_activity_at=NOW)
    assert len(after.replies) == 2
    assert after.replies[-1] == question_for(intake)


# -- instance ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"{URL} 6.4.1 123456", InstanceInfo(URL, "6.4.1", "123456")),
        (URL, InstanceInfo(URL)),
        ("http://localhost:8080/limesurvey", InstanceInfo("http://localhost:8080/limesurvey")),
        (f"<{URL}>, version 5.x", InstanceInfo(URL, "5.x")),
        (f"My LimeSurvey is {URL} (version 6.4.2+240129)", InstanceInfo(URL, "6.4.2+240129")),
        (f"{URL} 6.4.2 (Build 240129)", InstanceInfo(URL, "6.4.2")),
        (f"{URL} v6 sid=98765", InstanceInfo(URL, "6", "98765")),
        (
            f"{URL}/index.php/123456?lang=fr",
            InstanceInfo(f"{URL}/index.php/123456?lang=fr", None, "123456"),
        ),
        (
            f"{URL}/index.php?r=survey/index&sid=424242",
            InstanceInfo(f"{URL}/index.php?r=survey/index&sid=424242", None, "424242"),
        ),
        ("https://enquêtes.exemple.fr 3.28", InstanceInfo("https://enquêtes.exemple.fr", "3.28")),
    ],
)
def test_instance_parsing(text: str, expected: InstanceInfo) -> None:
    assert parse_instance(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "survey.example.org",
        "I do not know",
        "https://",
        "https:///path",
        "https://nohost",
        "ftp://survey.example.org",
        f"{URL} {URL}/other",
        f"{URL} 123",
        f"{URL} 6.4 6.5",
        f"{URL} 123456 654321",
        "https://[::1",
        "https://example.org:99999",
        f"{URL} LS6",
    ],
)
def test_instance_garbage_is_explained(text: str) -> None:
    assert isinstance(parse_instance(text), Msg)
    intake = at_step(IntakeStep.INSTANCE)
    after = advance(intake, text, now=NOW)
    assert after.intake.step is IntakeStep.INSTANCE
    assert after.intake.instance_url is None
    assert len(after.replies) == 2
    assert after.replies[-1] == question_for(intake)


def test_bare_host_gets_the_url_to_send() -> None:
    hint = parse_instance("survey.example.org 6.4")
    assert isinstance(hint, Msg)
    assert hint.params["url"] == "https://survey.example.org"


@pytest.mark.parametrize("text", ["!skip", "!passer", "!SKIP", "skip"])
def test_instance_can_be_skipped(text: str) -> None:
    after = advance(at_step(IntakeStep.INSTANCE), text, now=NOW)
    assert after.intake.step is IntakeStep.CHANNEL
    assert after.intake.instance_url is None


def test_instance_answer_is_stored() -> None:
    after = advance(at_step(IntakeStep.INSTANCE), f"{URL} 6.4.1 123456", now=NOW)
    intake = after.intake
    assert (intake.instance_url, intake.instance_version, intake.survey_id) == (
        URL,
        "6.4.1",
        "123456",
    )


# -- e-mail ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("client@example.org", "client@example.org"),
        ("Jean.Dupont+ls@Example.FR", "Jean.Dupont+ls@example.fr"),
        ("mon adresse : jean@exemple.fr.", "jean@exemple.fr"),
        ("<mailto:bob@example.co.uk>", "bob@example.co.uk"),
        # An internationalised local part is kept: bot.mail leaves it to SMTPUTF8.
        ("élise@exämple.org", "élise@exämple.org"),
        ("jean@exämple.org", "jean@exämple.org"),
        ("jean@example", None),
        ("jean@@example.org", None),
        ("jean@example..org", None),
        (".jean@example.org", None),
        ("jean@-example.org", None),
        ("jean@example.o", None),
        ("a@example.org b@example.org", None),
        ("no address here", None),
        ("", None),
    ],
)
def test_extract_email(text: str, address: str | None) -> None:
    assert extract_email(text) == address


def test_email_good_and_bad() -> None:
    intake = at_step(IntakeStep.EMAIL, email=None)
    bad = advance(intake, "jean at exemple dot fr", now=NOW)
    assert bad.intake.step is IntakeStep.EMAIL
    assert len(bad.replies) == 2
    good = feed(bad, "jean@exemple.fr")
    assert good.intake.step is IntakeStep.CONFIRM
    assert good.intake.email == "jean@exemple.fr"


@pytest.mark.parametrize("answer", ["yes", "Oui", "o", "Y", "ok", "✅"])
def test_known_email_is_shown_and_kept(answer: str) -> None:
    intake = at_step(IntakeStep.EMAIL, email=None, known_email="old@example.org")
    assert question_for(intake).params["email"] == "old@example.org"
    after = advance(intake, answer, now=NOW)
    assert after.intake.email == "old@example.org"
    assert after.intake.step is IntakeStep.CONFIRM


def test_known_email_is_replaced() -> None:
    intake = at_step(IntakeStep.EMAIL, email=None, known_email="old@example.org")
    refused = advance(intake, "non", now=NOW)
    assert refused.intake.step is IntakeStep.EMAIL
    assert refused.intake.email is None
    after = feed(refused, "new@example.org")
    assert after.intake.email == "new@example.org"
    assert after.intake.known_email == "old@example.org"


# -- summary, edit -----------------------------------------------------------------------


@pytest.mark.parametrize("answer", ["yes", "YES", "oui", "Oui !", "o", "y", "✅", "✔️", "👍"])
def test_summary_confirmed(answer: str) -> None:
    after = advance(at_step(IntakeStep.CONFIRM), answer, now=NOW)
    assert after.intake.step is IntakeStep.DONE
    assert isinstance(after.effects[0], OpenRequest)


@pytest.mark.parametrize("answer", ["maybe", "1", "ouiii", "!skip"])
def test_summary_wrong_answer(answer: str) -> None:
    intake = at_step(IntakeStep.CONFIRM)
    after = advance(intake, answer, now=NOW)
    assert after.intake.step is IntakeStep.CONFIRM
    assert after.effects == ()
    assert after.replies[-1] == question_for(intake)


def test_no_then_edit_channel_returns_to_summary_with_fields_intact() -> None:
    intake = at_step(
        IntakeStep.CONFIRM,
        instance_url=URL,
        instance_version="6.4.2",
        survey_id="123456",
    )
    edit = advance(intake, "non", now=NOW)
    assert edit.intake.step is IntakeStep.EDIT
    channel = feed(edit, "4")
    assert channel.intake.step is IntakeStep.CHANNEL
    assert channel.intake.return_to_summary
    summary = feed(channel, "téléphone")
    assert summary.intake.step is IntakeStep.CONFIRM
    assert not summary.intake.return_to_summary
    assert summary.intake == replace(intake, channel="phone")
    done = feed(summary, "oui")
    assert done.effects[0].channel == "phone"
    assert done.effects[0].survey_id == "123456"


@pytest.mark.parametrize(
    ("answer", "step"),
    [
        ("1", IntakeStep.DESCRIPTION),
        ("description", IntakeStep.DESCRIPTION),
        ("2", IntakeStep.CATEGORY),
        ("Catégorie", IntakeStep.CATEGORY),
        ("3", IntakeStep.INSTANCE),
        ("instance", IntakeStep.INSTANCE),
        ("canal", IntakeStep.CHANNEL),
        ("channel", IntakeStep.CHANNEL),
        ("5", IntakeStep.EMAIL),
        ("e-mail", IntakeStep.EMAIL),
        ("courriel", IntakeStep.EMAIL),
        ("le canal", IntakeStep.CHANNEL),
        ("0", IntakeStep.CONFIRM),
        ("résumé", IntakeStep.CONFIRM),
    ],
)
def test_edit_names_a_step(answer: str, step: IntakeStep) -> None:
    after = advance(at_step(IntakeStep.EDIT), answer, now=NOW)
    assert after.intake.step is step
    assert after.intake.return_to_summary is (step is not IntakeStep.CONFIRM)


def test_edit_wrong_answer() -> None:
    intake = at_step(IntakeStep.EDIT)
    after = advance(intake, "7", now=NOW)
    assert after.intake.step is IntakeStep.EDIT
    assert after.replies[-1] == question_for(intake)


def test_no_with_a_step_name_goes_there_directly() -> None:
    after = advance(at_step(IntakeStep.CONFIRM), "Non, le canal", now=NOW)
    assert after.intake.step is IntakeStep.CHANNEL
    assert after.intake.return_to_summary


def test_editing_the_description_adds_to_it() -> None:
    intake = at_step(IntakeStep.CONFIRM)
    after = feed(Transition(intake, ()), "no", "1", "It also fails on mobile.")
    assert after.intake.step is IntakeStep.CONFIRM
    assert after.intake.description_parts == (DESCRIPTION, "It also fails on mobile.")


def test_editing_the_category_can_change_the_kind() -> None:
    intake = at_step(IntakeStep.CONFIRM)
    after = feed(Transition(intake, ()), "no", "2", "10", "yes")
    assert after.effects[0].kind is RequestKind.QUOTE


def test_editing_the_email_offers_the_current_one() -> None:
    intake = at_step(IntakeStep.CONFIRM)
    email_step = feed(Transition(intake, ()), "no", "email")
    assert email_step.replies[-1].params["email"] == "client@example.org"
    back = feed(email_step, "oui")
    assert back.intake.step is IntakeStep.CONFIRM
    assert back.intake.email == "client@example.org"


# -- related (R1) ------------------------------------------------------------------------


def test_open_ticket_asks_whether_related() -> None:
    first = start(now=NOW, text="Still broken", open_ticket_ref="SP-2026-0042")
    assert first.intake.step is IntakeStep.RELATED
    assert first.intake.pending_text == "Still broken"
    assert first.replies[-1].params["ref"] == "SP-2026-0042"


@pytest.mark.parametrize("answer", ["1", "1.", "SP-2026-0042", "sp-2026-0042", "même", "same"])
def test_related_answer_adds_to_the_ticket(answer: str) -> None:
    first = start(now=NOW, text="Still broken", open_ticket_ref="SP-2026-0042")
    after = feed(first, answer)
    assert after.intake.step is IntakeStep.DONE
    assert after.effects == (AddToTicket("SP-2026-0042", "Still broken"),)
    assert after.intake.description_parts == ()


@pytest.mark.parametrize("answer", ["2", "new", "Nouveau", "nouveau problème"])
def test_related_answer_new_problem(answer: str) -> None:
    long = start(now=NOW, text=DESCRIPTION, open_ticket_ref="SP-2026-0042")
    after = feed(long, answer)
    assert after.intake.step is IntakeStep.CATEGORY
    assert after.intake.description_parts == (DESCRIPTION,)
    assert after.effects == ()
    short = feed(start(now=NOW, text="Hi", open_ticket_ref="SP-2026-0042"), answer)
    assert short.intake.step is IntakeStep.DESCRIPTION
    assert short.intake.description_parts == ("Hi",)


def test_related_keeps_a_long_extra_message_and_refuses_other_answers() -> None:
    first = start(now=NOW, text="Still broken", open_ticket_ref="SP-2026-0042")
    extra = "And the export to Excel fails too now."
    kept = feed(first, extra)
    assert kept.intake.step is IntakeStep.RELATED
    assert kept.intake.pending_text == f"Still broken\n\n{extra}"
    wrong = feed(kept, "3")
    assert wrong.intake == kept.intake
    assert len(wrong.replies) == 2
    done = feed(wrong, "1")
    assert done.effects == (AddToTicket("SP-2026-0042", f"Still broken\n\n{extra}"),)


# -- cancel, reminders, expiry -----------------------------------------------------------


def test_cancel_drops_the_request() -> None:
    after = cancel(at_step(IntakeStep.CHANNEL), NOW)
    assert after.intake.step is IntakeStep.CANCELLED
    assert after.effects == ()
    assert texts(after) == ["Request dropped, no ticket was opened."]
    again = cancel(after.intake, NOW)
    assert again.intake.step is IntakeStep.CANCELLED


def test_reminder_once_after_24_hours() -> None:
    intake = at_step(IntakeStep.CHANNEL)
    assert not needs_reminder(intake, NOW + timedelta(hours=23, minutes=59))
    assert needs_reminder(intake, NOW + timedelta(hours=24))
    assert due_at(intake) == NOW + timedelta(hours=24)
    reminded = remind(intake, NOW + timedelta(hours=24))
    assert reminded.intake.reminded
    assert reminded.intake.step is IntakeStep.CHANNEL
    assert reminded.replies[0].n == 6
    assert reminded.replies[-1] == question_for(intake)
    assert not needs_reminder(reminded.intake, NOW + timedelta(days=3))
    assert due_at(reminded.intake) == NOW + timedelta(days=7)
    # The client answers: a later silence may be reminded again.
    answered = advance(reminded.intake, "video", now=NOW + timedelta(days=2))
    assert not answered.intake.reminded
    assert needs_reminder(answered.intake, NOW + timedelta(days=3))


def test_expiry_after_seven_days() -> None:
    intake = at_step(IntakeStep.CONFIRM, reminded=True)
    assert not is_expired(intake, NOW + timedelta(days=6, hours=23))
    assert is_expired(intake, NOW + timedelta(days=7))
    expired = expire(intake, NOW + timedelta(days=7))
    assert expired.intake.step is IntakeStep.EXPIRED
    assert expired.effects == ()
    assert expired.replies[0].n == 7
    assert not is_expired(expired.intake, NOW + timedelta(days=30))
    assert not needs_reminder(expired.intake, NOW + timedelta(days=30))
    assert due_at(expired.intake) is None


@pytest.mark.parametrize("step", [IntakeStep.DONE, IntakeStep.CANCELLED, IntakeStep.EXPIRED])
def test_closed_intake_does_not_move(step: IntakeStep) -> None:
    intake = at_step(step)
    after = advance(intake, "yes", now=NOW + timedelta(hours=1))
    assert after.intake == intake
    assert after.effects == ()
    assert after.replies


# -- storage -----------------------------------------------------------------------------


def test_stored_data_round_trip() -> None:
    intake = at_step(
        IntakeStep.RELATED,
        description_parts=("a", "b"),
        pending_text="x",
        open_ticket_ref="SP-2026-0001",
        reminded=True,
    )
    data = intake_to_data(intake)
    assert data["step"] == "related"
    assert intake_from_data({**data, "added_later": 1}) == intake


# -- properties --------------------------------------------------------------------------

_texts = st.one_of(
    st.text(max_size=300),
    st.sampled_from(
        [
            "",
            " ",
            "yes",
            "non",
            "2",
            "4.",
            "vidéo",
            "!skip",
            "0",
            "1",
            "description",
            "client@example.org",
            f"{URL} 6.4.2 123456",
            DESCRIPTION,
            "✅",
        ]
    ),
    st.just("é" * 100_000),
    st.just("https://" + "a." * 40_000 + "org"),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    first=_texts,
    rest=st.lists(_texts, max_size=25),
    known=st.sampled_from([None, "old@example.org"]),
    ref=st.sampled_from([None, "SP-2026-0042"]),
)
def test_advance_never_raises_and_never_loses_text(
    first: str, rest: list[str], known: str | None, ref: str | None
) -> None:
    transition = start(now=NOW, text=first, known_email=known, open_ticket_ref=ref)
    assert transition.replies
    assert isinstance(transition.intake.step, IntakeStep)
    for minutes, text in enumerate(rest, start=1):
        before = transition.intake.description_parts
        transition = advance(transition.intake, text, now=NOW + timedelta(minutes=minutes))
        parts = transition.intake.description_parts
        assert isinstance(transition.intake.step, IntakeStep)
        assert transition.replies
        assert all(isinstance(reply, Msg) for reply in transition.replies)
        assert parts[: len(before)] == before
        assert intake_from_data(intake_to_data(transition.intake)) == transition.intake
