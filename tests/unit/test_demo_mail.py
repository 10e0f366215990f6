"""`support-bot demo --imap … --smtp …`: the e-mail channel in the demo's bot.toml, and what
the banner says of it. (A demo run reading a real Dovecot: tests/e2e/test_demo.py.)"""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest

from bot.config import parse_config
from bot.demo import (
    IMAP_ENV,
    SMTP_ENV,
    DemoError,
    DemoMail,
    DemoOptions,
    Login,
    MailServer,
    _ensure_config,
    _mail_banner,
    demo_mail,
    mail_server,
    render_config,
)

EXPECT = {
    "homeserver": "http://127.0.0.1:8008",
    "user_id": "@support-bot:localhost",
    "staff_room": "!room:localhost",
    "listen": "127.0.0.1:8080",
}


def config_text(data_dir: Path, mail: DemoMail | None) -> str:
    return render_config(
        data_dir,
        homeserver=EXPECT["homeserver"],
        bot=Login(EXPECT["user_id"], "bot password"),
        staff=Login("@staff:localhost", "staff password"),
        staff_room=EXPECT["staff_room"],
        web_port=8080,
        web_secret="s" * 32,
        pickle_key="p" * 32,
        mail=mail,
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "imaps://support%40example.org@imap.example.org/INBOX",
            MailServer("imap.example.org", 993, "implicit", "support@example.org", None),
        ),
        (
            "imap://support:s%3Acret%2F@127.0.0.1:1143/Support%20tests",
            MailServer("127.0.0.1", 1143, None, "support", "s:cret/", "Support tests"),
        ),
        ("IMAP://u@host", MailServer("host", 143, None, "u", None, "INBOX")),
    ],
)
def test_an_imap_url_names_the_server_the_login_and_the_folder(url, expected) -> None:
    found = mail_server(url, "imap")
    assert found == expected and found.password == expected.password
    assert "cret" not in repr(found)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://127.0.0.1:2525", MailServer("127.0.0.1", 2525, None)),
        ("smtp://me@smtp.example.org", MailServer("smtp.example.org", 587, None, "me")),
        ("smtps://me:pw@smtp.org", MailServer("smtp.org", 465, "implicit", "me", "pw")),
    ],
)
def test_an_smtp_url(url, expected) -> None:
    assert mail_server(url, "smtp") == expected


@pytest.mark.parametrize(
    ("url", "protocol", "fragment"),
    [
        ("imap.example.org", "imap", "expected a URL such as imaps://"),
        ("smtp://me@host:587", "imap", "expected a URL such as imaps://"),
        ("imaps://host/INBOX", "imap", "login is missing"),
        ("imaps://me@:993/INBOX", "imap", "no server"),
        ("imaps://me@host:99999/INBOX", "imap", "port"),
        ("imaps://me@host:port/INBOX", "imap", "port"),
        ("smtp://me@host:587/INBOX", "smtp", "no folder"),
        ("https://host", "smtp", "expected a URL such as smtp://"),
    ],
)
def test_a_bad_url_is_explained(url, protocol, fragment) -> None:
    with pytest.raises(DemoError, match=fragment) as caught:
        mail_server(url, protocol)
    assert caught.value.args[0].startswith(f"--{protocol}: ")


def test_no_mail_servers_no_mail_channel() -> None:
    assert demo_mail(DemoOptions(), {}, ask=None) is None
    with pytest.raises(DemoError, match="--mail-address goes with"):
        demo_mail(DemoOptions(mail_address="a@b.org"), {}, ask=None)


def test_the_mailbox_needs_a_server_to_send_through() -> None:
    with pytest.raises(DemoError, match="--imap needs --smtp"):
        demo_mail(DemoOptions(imap="imaps://a:b@host/INBOX"), {}, ask=None)


def test_servers_from_the_environment_and_a_password_asked_for() -> None:
    asked: list[str] = []

    def ask(prompt: str) -> str:
        asked.append(prompt)
        return "typed secret"

    environ = {
        IMAP_ENV: "imaps://support%40example.org@imap.example.org/INBOX",
        SMTP_ENV: "smtp://support%40example.org:from-env@smtp.example.org",
    }
    mail = demo_mail(DemoOptions(), environ, ask=ask)
    assert mail is not None and mail.imap is not None
    assert mail.imap.password == "typed secret" and mail.smtp.password == "from-env"
    assert asked == ["password of support@example.org on imap.example.org (--imap): "]
    # The support address: the mailbox's login when it is an address.
    assert mail.address == "support@example.org"
    # The command line wins over the environment.
    given = DemoOptions(smtp="smtp://127.0.0.1:2525", mail_address="help@example.org")
    mail = demo_mail(given, environ, ask=ask)
    assert mail is not None and mail.smtp == MailServer("127.0.0.1", 2525, None)
    assert mail.address == "help@example.org"


def test_without_a_terminal_a_missing_password_is_an_error() -> None:
    options = DemoOptions(imap="imaps://me@example.org@host/INBOX", smtp="smtp://127.0.0.1:25")
    with pytest.raises(DemoError, match=f"at a terminal .* in {IMAP_ENV}"):
        demo_mail(options, {}, ask=None)


def test_a_login_that_is_no_address_needs_the_support_address() -> None:
    options = DemoOptions(imap="imap://support:pw@127.0.0.1/INBOX", smtp="smtp://127.0.0.1:25")
    with pytest.raises(DemoError, match="--mail-address"):
        demo_mail(options, {}, ask=None)


def test_a_password_on_the_command_line_is_warned_about(capsys) -> None:
    options = DemoOptions(
        imap="imap://support:pw@127.0.0.1/INBOX",
        smtp="smtp://127.0.0.1:25",
        mail_address="support@localhost",
    )
    assert demo_mail(options, {}, ask=None) is not None
    out = capsys.readouterr().out
    assert "--imap stays in your shell's history" in out and "pw" not in out


def test_the_demo_config_reads_the_mailbox_given(tmp_path: Path) -> None:
    mail = DemoMail(
        address="support@example.org",
        smtp=MailServer("smtp.example.org", 465, "implicit", "me", 'p"w\\'),
        imap=MailServer("127.0.0.1", 1143, None, "support", "imap pw", "Support tests"),
    )
    config = parse_config(tomllib.loads(config_text(tmp_path, mail)), {})
    inbound = config.mail.inbound
    assert (inbound.host, inbound.port, inbound.tls, inbound.folder) == (
        "127.0.0.1",
        1143,
        None,
        "Support tests",
    )
    assert (inbound.username, inbound.password) == ("support", "imap pw")
    assert (config.mail.host, config.mail.port, config.mail.tls) == (
        "smtp.example.org",
        465,
        "implicit",
    )
    assert (config.mail.username, config.mail.password) == ("me", 'p"w\\')
    assert config.mail.from_ == '"Support (demo)" <support@example.org>'
    assert config.service.confirmation == "chat"

    # Without: no mailbox read, and the banner says how to give one in one line.
    config = parse_config(tomllib.loads(config_text(tmp_path, None)), {})
    assert config.mail.inbound.host is None
    [line] = _mail_banner(config)
    assert line.startswith("E-mail channel: off.") and "--imap imaps://" in line


def test_the_banner_says_where_to_write_and_where_answers_go(tmp_path: Path) -> None:
    mail = DemoMail(
        address="support@example.org",
        smtp=MailServer("smtp.example.org", 587, None, "me", "pw"),
        imap=MailServer("imap.example.org", 993, "implicit", "me", "pw", "Tests"),
    )
    text = "\n".join(_mail_banner(parse_config(tomllib.loads(config_text(tmp_path, mail)), {})))
    assert "write to support@example.org" in text
    assert "imap.example.org:993/Tests" in text and "smtp.example.org:587" in text
    assert "card's thread" in text
    assert "pw" not in text.replace("support", "")


def test_the_config_is_rewritten_for_other_mail_servers_and_kept_without(tmp_path: Path) -> None:
    path = tmp_path / "bot.toml"
    first = DemoMail(
        address="support@localhost",
        smtp=MailServer("127.0.0.1", 2525, None),
        imap=MailServer("127.0.0.1", 1143, None, "support", "one"),
    )
    config = _ensure_config(path, config_text(tmp_path, first), expect=EXPECT, mail_given=True)
    assert config.mail.inbound.password == "one"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds passwords
    # Another password: rewritten (the old file kept aside).
    second = DemoMail(
        first.address, first.smtp, MailServer("127.0.0.1", 1143, None, "support", "two")
    )
    config = _ensure_config(path, config_text(tmp_path, second), expect=EXPECT, mail_given=True)
    assert config.mail.inbound.password == "two"
    assert "one" in (tmp_path / "bot.toml.old").read_text()
    # A run without mail options keeps the mailbox of the file.
    config = _ensure_config(path, config_text(tmp_path, None), expect=EXPECT)
    assert config.mail.inbound.host == "127.0.0.1"


def test_mail_settings_the_bot_refuses_are_explained(tmp_path: Path) -> None:
    mail = DemoMail(
        address="not an address",
        smtp=MailServer("127.0.0.1", 2525, None),
        imap=MailServer("127.0.0.1", 1143, None, "support", "pw", "Traités"),
    )
    with pytest.raises(DemoError) as caught:
        _ensure_config(
            tmp_path / "bot.toml", config_text(tmp_path, mail), expect=EXPECT, mail_given=True
        )
    message = caught.value.args[0]
    assert "mail.from" in message and "mail.inbound.folder" in message
