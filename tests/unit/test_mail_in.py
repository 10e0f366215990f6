"""Reading incoming mails (`bot.domain.mail_in`) and answering the intake by mail
(`bot.domain.mail_intake`): real-world-shaped mails, pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.domain.intake import IntakeStep, OpenRequest
from bot.domain.mail_in import html_to_text, new_text, parse_mail, resolution_answer
from bot.domain.mail_intake import answer_by_mail, read_answers, start_by_mail, subject_topic

NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
SUPPORT = "support@example.org"


def parse(raw: str | bytes, **options):
    data = raw.encode() if isinstance(raw, str) else raw
    return parse_mail(
        data, folder="INBOX", uidvalidity=5, uid=9, now=NOW, own_address=SUPPORT, **options
    )


def headers(extra: str = "", sender: str = "Jean Dupont <Jean.Dupont@Example.ORG>") -> str:
    return (
        f"From: {sender}\r\nTo: {SUPPORT}\r\nSubject: Re: [SP-2026-0042] Quota\r\n"
        "Date: Thu, 26 Nov 2026 08:00:00 +0100\r\nMessage-ID: <abc@example.org>\r\n"
        "In-Reply-To: <q1@example.org>\r\nReferences: <q0@example.org> <q1@example.org>\r\n"
        f"{extra}"
    )


# -- quoting of real mail programs --------------------------------------------------------------

GMAIL_FR = (
    "Bonjour,\n\n1. 2\n2. https://sondage.example.org 6.4.2\n\nCordialement,\nJean\n\n"
    "Le jeu. 26 nov. 2026 à 10:12, Support <support@example.org> a écrit :\n"
    "> Bonjour,\n> 1. Quelle catégorie ?\n"
)
GMAIL_EN_WRAPPED = (
    "It works now, thanks!\n\nOn Thu, Nov 26, 2026 at 10:12 AM Support Team <\n"
    "support@example.org> wrote:\n\n> Hello\n> old text\n"
)
THUNDERBIRD = "My answer is below.\n\nOn 26/11/2026 10:12, Support wrote:\n> Hello\n> old\n"
OUTLOOK_FR = (
    "Voici la capture demandée.\n\n________________________________\n"
    "De : Support <support@example.org>\nEnvoyé : jeudi 26 novembre 2026 10:12\n"
    "À : Jean Dupont <jean@example.org>\nObjet : [SP-2026-0042] Quota\n\nBonjour,\nold\n"
)
OUTLOOK_EN = (
    "Please see attached.\n\nFrom: Support <support@example.org>\n"
    "Sent: Thursday, November 26, 2026 10:12 AM\nTo: Jean <jean@example.org>\n"
    "Subject: RE: [SP-2026-0042] Quota\n\nHello\n"
)
SIGNATURE = "Texte de la réponse.\n-- \nJean Dupont\nACME SA\n"
LIST = "Steps:\n- open the survey\n- click save\nNothing happens."


@pytest.mark.parametrize(
    ("body", "kept", "gone"),
    [
        (GMAIL_FR, "2. https://sondage.example.org 6.4.2", "Quelle catégorie"),
        (GMAIL_EN_WRAPPED, "It works now, thanks!", "old text"),
        (THUNDERBIRD, "My answer is below.", "old"),
        (OUTLOOK_FR, "Voici la capture demandée.", "Envoyé"),
        (OUTLOOK_EN, "Please see attached.", "Sent:"),
        (SIGNATURE, "Texte de la réponse.", "ACME"),
        (LIST, "- click save", "\n>"),
    ],
)
def test_new_text_keeps_the_answer_and_cuts_the_history(body, kept, gone):
    text = new_text(body)
    assert kept in text
    assert gone not in text


def test_a_plain_mail_is_read_with_its_threading_and_references():
    mail = parse(headers("Content-Type: text/plain; charset=utf-8\r\n") + "\r\n" + GMAIL_FR)
    assert mail.event_id == "mail:INBOX:5:9" and mail.room_id == "email"
    assert mail.address == "jean.dupont@example.org"
    assert mail.sender == "mailto:jean.dupont@example.org"
    assert mail.display_name == "Jean Dupont"
    assert mail.refs == ("SP-2026-0042",)
    assert mail.message_id == "<abc@example.org>"
    assert mail.thread_ids == ("<q1@example.org>", "<q0@example.org>")
    assert mail.language == "fr"
    assert mail.auto is None and mail.bounce is None
    assert mail.ts == datetime(2026, 11, 26, 7, 0, tzinfo=UTC)  # the Date, in UTC
    assert "Quelle catégorie" not in mail.text
    assert "abc@example.org" not in repr(mail) and "Jean" not in repr(mail)


def test_the_arrival_is_the_server_date_and_never_in_the_future():
    raw = headers() + "\r\nHello, this is a test of the arrival time of a mail.\r\n"
    internal = NOW - timedelta(hours=5)
    assert parse(raw, internal_date=internal).ts == internal
    assert parse(raw, internal_date=NOW + timedelta(days=1)).ts == NOW


def test_english_is_recognised_and_short_texts_have_no_language():
    raw = headers() + "\r\nHello, my survey stopped saving answers after the last update.\r\n"
    assert parse(raw).language == "en"
    assert parse(headers() + "\r\n1. 8\r\n").language is None
    raw = headers("Content-Language: en-GB\r\n") + "\r\nok\r\n"
    assert parse(raw).language == "en"


def test_latin1_and_quoted_printable_are_decoded():
    body = "Caf\xe9 cr\xe8me : le questionnaire ne s'affiche pas.".encode("latin-1")
    raw = (
        headers(
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
            "Content-Transfer-Encoding: 8bit\r\n"
        ).encode()
        + b"\r\n"
        + body
    )
    assert "Café crème" in parse(raw).text
    qp = (
        headers(
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: quoted-printable\r\n"
        )
        + "\r\nR=C3=A9ponse =C3=A0 la question\r\n"
    )
    assert parse(qp).text == "Réponse à la question"
    unknown = headers("Content-Type: text/plain; charset=x-unknown-charset\r\n") + "\r\nhello\r\n"
    assert parse(unknown).text == "hello"


def test_html_only_mails_become_text_without_scripts_images_or_quotes():
    markup = (
        "<html><head><style>p{color:red}</style><script>alert(1)</script></head><body>"
        '<p>Bonjour&nbsp;!</p><p>Voir <a href="https://evil.example/x">ce lien</a></p>'
        '<img src="https://tracker.example/pixel.gif" alt="pixel">'
        "<ol><li>8</li><li>https://sondage.example.org</li></ol>"
        "<blockquote>ancien message</blockquote></body></html>"
    )
    text = html_to_text(markup)
    assert "Bonjour" in text and "ce lien" in text
    for gone in ("alert", "color:red", "tracker", "evil.example", "pixel", "ancien message"):
        assert gone not in text
    assert "1. 8" in text and "2. https://sondage.example.org" in text
    raw = headers("MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n")
    mail = parse(raw + "\r\n" + markup)
    assert mail.html_only and "Bonjour" in mail.text


@pytest.mark.parametrize(
    ("extra", "sender", "why"),
    [
        ("Auto-Submitted: auto-replied\r\n", None, "auto-submitted: auto-replied"),
        (
            "Auto-Submitted: auto-generated; owner-email=x@y\r\n",
            None,
            "auto-submitted: auto-generated",
        ),
        ("X-Autoreply: yes\r\n", None, "x-autoreply"),
        ("Precedence: bulk\r\n", None, "precedence: bulk"),
        ("List-Id: <users.lists.example.org>\r\n", None, "list"),
        ("Return-Path: <>\r\n", None, "null return-path"),
        ("", "MAILER-DAEMON@mx.example.org", "daemon"),
        ("", f"Support <{SUPPORT}>", "loop"),
        ("", "not an address", "no sender"),
    ],
)
def test_automatic_mails_are_recognised(extra, sender, why):
    raw = headers(extra, sender=sender or "Jean <jean@example.org>")
    assert parse(raw + "\r\nJe suis absent jusqu'au 3 décembre.\r\n").auto == why


def test_auto_submitted_no_is_a_person():
    raw = headers("Auto-Submitted: no\r\n") + "\r\nA real answer from a person.\r\n"
    assert parse(raw).auto is None


DSN = (
    "From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\nTo: support@example.org\r\n"
    "Subject: Undelivered Mail Returned to Sender\r\nMessage-ID: <dsn1@mx.example.org>\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
    "--b\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
    "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n"
    "\r\nFinal-Recipient: rfc822; jean@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
    "Diagnostic-Code: smtp; 550 5.1.1 <jean@example.org>: user unknown\r\n"
    "\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nFrom: support@example.org\r\n"
    "Message-ID: <ours-42@example.org>\r\nSubject: [SP-2026-0042] Quota\r\n\r\nHello\r\n"
    "--b--\r\n"
)


def test_a_delivery_status_notification_names_the_mail_that_bounced():
    mail = parse(DSN)
    assert mail.auto == "delivery-status"
    assert mail.bounce is not None
    assert mail.bounce.original_message_id == "<ours-42@example.org>"
    assert (mail.bounce.action, mail.bounce.status) == ("failed", "5.1.1")
    assert "user unknown" in mail.bounce.diagnostic
    assert mail.bounce.recipients == ("jean@example.org",)
    assert mail.attachments == ()
    headers_only = DSN.replace("message/rfc822", "text/rfc822-headers")
    assert parse(headers_only).bounce.original_message_id == "<ours-42@example.org>"


def test_attachments_are_files_the_sender_chose_not_embedded_images():
    raw = (
        headers('MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="m"\r\n')
        + '\r\n--m\r\nContent-Type: multipart/related; boundary="r"\r\n\r\n'
        + '--r\r\nContent-Type: text/html\r\n\r\n<p>See the file</p><img src="cid:logo">\r\n'
        + "--r\r\nContent-Type: image/png\r\nContent-ID: <logo>\r\n"
        + 'Content-Disposition: inline; filename="image001.png"\r\n'
        + "Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--r--\r\n"
        + "--m\r\nContent-Type: application/octet-stream\r\n"
        + 'Content-Disposition: attachment; filename="../../etc/survey.lss"\r\n'
        + "Content-Transfer-Encoding: base64\r\n\r\nc3VydmV5\r\n--m--\r\n"
    )
    mail = parse(raw)
    assert [(a.filename, a.size, a.data) for a in mail.attachments] == [
        ("survey.lss", 6, b"survey")
    ]
    assert mail.text == "See the file"


def test_a_mail_over_the_size_cap_keeps_its_headers_only():
    mail = parse(headers() + "\r\n", too_big=True, size=50_000_000)
    assert mail.too_big and mail.size == 50_000_000 and mail.text == ""
    assert mail.address == "jean.dupont@example.org"


def test_garbage_is_read_without_an_exception():
    mail = parse(b"\xff\xfe garbage without headers \x00\x01")
    assert mail.address is None and mail.auto == "no sender"


# -- the intake by mail -------------------------------------------------------------------------


def test_subject_topic_drops_reply_prefixes_and_tags():
    assert subject_topic("Re: TR: [SP-2026-0042] Quota plein") == "Quota plein"
    assert subject_topic("AW: Fwd: Survey") == "Survey"


def test_read_answers_numbered_in_several_styles():
    numbered, loose = read_answers("Bonjour,\n1. 8\n2)\nhttps://x.example.org\nQ3: vidéo", 3)
    assert numbered == {1: "8", 2: "https://x.example.org", 3: "vidéo"}
    assert loose == ["Bonjour,"]


def test_a_complete_reply_opens_the_request_with_the_chat_rules():
    turn = start_by_mail(
        now=NOW,
        subject="Re: Quota",
        text="My quota does not stop the survey when it is full.",
        address="jean@example.org",
    )
    assert turn.asked == (IntakeStep.CATEGORY, IntakeStep.INSTANCE, IntakeStep.CHANNEL)
    done = answer_by_mail(
        turn.intake, turn.asked, "1. 2\n2. !skip\n3. video", now=NOW, instance_asked=True
    )
    (effect,) = done.effects
    assert isinstance(effect, OpenRequest)
    assert (effect.kind.value, effect.category, effect.channel) == (
        "ticket",
        "expressions",
        "video",
    )
    assert effect.email == "jean@example.org" and effect.instance_url is None
    assert effect.description.startswith("Quota\n\nMy quota")


def test_wrong_answers_are_explained_and_only_they_asked_again():
    turn = start_by_mail(now=NOW, subject="", text="x" * 30, address="jean@example.org")
    again = answer_by_mail(turn.intake, turn.asked, "1. 42\n2. example.org\n3. 1", now=NOW)
    assert again.asked == (IntakeStep.CATEGORY, IntakeStep.INSTANCE)
    assert [note.text for note in again.notes] == [
        "That is not one of the categories.",
        "Please write the full address, starting with https:// (for example {url}).",
    ]
    assert again.intake.channel == "messaging"
    unnumbered = answer_by_mail(again.intake, again.asked, "Bonjour\nplugin\nskip", now=NOW)
    assert unnumbered.effects and unnumbered.effects[0].category == "plugin"


def test_a_short_mail_asks_for_a_description_and_prose_is_kept():
    turn = start_by_mail(now=NOW, subject="Aide", text="", address="jean@example.org")
    assert turn.asked[0] is IntakeStep.DESCRIPTION
    text = (
        "1. Les invitations ne partent plus depuis la mise à jour.\n"
        "2. 5\n3. https://s.example.org\n4. 1"
    )
    done = answer_by_mail(turn.intake, turn.asked, text, now=NOW)
    assert done.effects and "invitations ne partent plus" in done.effects[0].description


def test_with_an_open_request_the_mail_may_go_to_it():
    turn = start_by_mail(
        now=NOW,
        subject="Encore",
        text="Toujours bloqué",
        address="j@example.org",
        open_ticket_ref="SP-2026-0042",
    )
    assert turn.asked[0] is IntakeStep.RELATED
    about = answer_by_mail(turn.intake, turn.asked, "1", now=NOW)
    assert about.effects[0].ref == "SP-2026-0042"
    new = answer_by_mail(turn.intake, turn.asked, "2. 8\n4. 1", now=NOW)
    assert new.intake.step is not IntakeStep.RELATED and new.intake.category == "usage"


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("1", True),
        ("  1.\n\nMerci beaucoup", True),
        ("1 merci, tout fonctionne", True),
        ("\n\n2) L'export est toujours vide", False),
        ("2 - it still fails", False),
        ("2", False),
        ("10 réponses manquent", None),
        ("1,5 h de perdues", None),
        ("2h plus tard, toujours rien", None),
        ("Merci, c'est résolu", None),
        ("3", None),
        ("", None),
    ],
)
def test_the_answer_to_a_solved_mail_is_read_from_the_first_line(
    text: str, answer: bool | None
) -> None:
    assert resolution_answer(text) is answer
