"""E-mail over TLS (`[mail] tls`): against a real aiosmtpd offering STARTTLS or speaking TLS
from the first byte, with a certificate made for the test. What the server saw — whether each
login and each mail came encrypted — is the evidence, not what the client believed."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from bot.cli_config import check_config_command
from bot.config import ConfigError, MailConfig, parse_config
from bot.mail import Mailer, MailError, config_warnings, is_local_host, tls_mode
from tests.smtp import TestCertificate, make_certificate, smtp_server
from tests.unit.test_config import MINIMAL_TOML as MINIMAL

USER, PASSWORD = "support", "smtp-password-123"
LOGINS = {USER: PASSWORD}
LINK = "https://support.test.example/confirm/secret-consent-token"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> TestCertificate:
    return make_certificate(tmp_path_factory.mktemp("certificate"))


def mail_config(port: int, **settings: Any) -> MailConfig:
    return MailConfig(host="127.0.0.1", port=port, from_="support@test.example", **settings)


async def send(config: MailConfig) -> None:
    await Mailer(config, timeout=10).send("client@example.org", "Consent", f"Open {LINK}")


# -- against a server -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        pytest.param({"starttls": False}, id="the-old-example-s-starttls-false"),
        pytest.param({}, id="default"),
        pytest.param({"tls": "starttls"}, id="starttls-required"),
    ],
)
async def test_starttls_is_used_whenever_offered(
    certificate: TestCertificate, settings: dict[str, Any]
) -> None:
    with smtp_server(tls="starttls", certificate=certificate, logins=LOGINS) as (inbox, port):
        config = mail_config(
            port, ca_file=str(certificate.ca_file), username=USER, password=PASSWORD, **settings
        )
        await send(config)
    assert inbox.logins == [(USER, True)]  # the password went encrypted
    assert inbox.encrypted == [True]  # and so did the link
    assert LINK in inbox.messages[0][1].get_content()


async def test_implicit_tls(certificate: TestCertificate) -> None:
    with smtp_server(tls="implicit", certificate=certificate, logins=LOGINS) as (inbox, port):
        ca_file = str(certificate.ca_file)
        await send(
            mail_config(port, tls="implicit", ca_file=ca_file, username=USER, password=PASSWORD)
        )
    assert inbox.logins == [(USER, True)]
    assert inbox.encrypted == [True]


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
async def test_an_unknown_certificate_authority_is_refused(
    certificate: TestCertificate, tls: str, caplog: pytest.LogCaptureFixture
) -> None:
    # No ca_file: the system's CAs do not know the test CA.
    settings = {"tls": "implicit"} if tls == "implicit" else {}  # STARTTLS: the default
    with smtp_server(tls=tls, certificate=certificate, logins=LOGINS) as (inbox, port):  # type: ignore[arg-type]
        with pytest.raises(MailError, match="unable to get local issuer certificate"):
            await send(mail_config(port, username=USER, password=PASSWORD, **settings))
    assert inbox.logins == [] and inbox.messages == []
    assert PASSWORD not in caplog.text


async def test_a_certificate_for_another_name_is_refused(tmp_path: Path) -> None:
    other = make_certificate(tmp_path, names=("mail.example.org",))
    with smtp_server(tls="starttls", certificate=other, logins=LOGINS) as (inbox, port):
        with pytest.raises(MailError, match=r"SSLCertVerificationError: .*mismatch"):
            await send(
                mail_config(port, ca_file=str(other.ca_file), username=USER, password=PASSWORD)
            )
    assert inbox.logins == [] and inbox.messages == []


async def test_starttls_required_refuses_a_server_without_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with smtp_server(logins=LOGINS) as (inbox, port):
        with pytest.raises(MailError, match="offered no TLS"):
            await send(mail_config(port, tls="starttls", username=USER, password=PASSWORD))
    assert inbox.logins == [] and inbox.messages == []
    assert "offered no STARTTLS" in caplog.text


async def test_the_default_refuses_clear_text_to_a_server_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The server is on loopback: pretend it is not, as a remote one would be.
    monkeypatch.setattr("bot.mail.is_local_host", lambda host: False)
    with smtp_server(logins=LOGINS) as (inbox, port):
        with pytest.raises(MailError, match="offered no TLS"):
            await send(mail_config(port, username=USER, password=PASSWORD))
    assert inbox.logins == [] and inbox.messages == []


async def test_the_default_sends_in_clear_to_a_local_relay_without_tls() -> None:
    with smtp_server() as (inbox, port):
        await send(mail_config(port))
    assert inbox.encrypted == [False]


async def test_none_never_upgrades(certificate: TestCertificate) -> None:
    with smtp_server(tls="starttls", certificate=certificate) as (inbox, port):
        await send(mail_config(port, tls="none"))
    assert inbox.encrypted == [False]


async def test_a_missing_ca_file_is_a_mail_error(tmp_path: Path) -> None:
    with smtp_server() as (inbox, port):
        with pytest.raises(MailError, match="FileNotFoundError"):
            await send(mail_config(port, ca_file=str(tmp_path / "missing.pem")))
    assert inbox.messages == []


# -- the settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "mode"),
    [
        ({}, "default"),
        ({"port": 465}, "implicit"),
        ({"starttls": True}, "starttls"),
        ({"starttls": False}, "default"),
        ({"starttls": False, "port": 465}, "implicit"),
        ({"tls": "none", "port": 465}, "none"),
        ({"tls": "starttls"}, "starttls"),
        ({"tls": "implicit", "port": 2465}, "implicit"),
    ],
)
def test_tls_mode(settings: dict[str, Any], mode: str) -> None:
    assert tls_mode(MailConfig(**settings)) == mode


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("mail.localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("mail.example.org", False),
        ("localhost.example.org", False),
        ("10.0.0.25", False),
        ("192.168.1.2", False),
        ("::ffff:10.0.0.1", False),
    ],
)
def test_is_local_host(host: str, local: bool) -> None:
    assert is_local_host(host) is local


@pytest.mark.parametrize(
    ("settings", "warned"),
    [
        ({}, []),
        ({"host": "mail.example.org"}, []),  # TLS required there
        ({"tls": "none"}, []),  # a relay on this machine
        ({"tls": "none", "host": "mail.example.org"}, ["mail.tls"]),
        ({"starttls": True}, ["mail.starttls"]),
        ({"starttls": False}, ["mail.starttls"]),
    ],
)
def test_config_warnings(settings: dict[str, Any], warned: list[str]) -> None:
    assert [key for key, _ in config_warnings(MailConfig(**settings))] == warned


def test_clear_text_warning_names_the_password_when_there_is_one() -> None:
    (warning,) = config_warnings(
        MailConfig(tls="none", host="mail.example.org", username="u", password="p")
    )
    assert "password" in warning[1] and "consent links" in warning[1]


def test_tls_is_read_from_the_file_and_the_environment() -> None:
    raw = tomllib.loads(MINIMAL + '[mail]\ntls = "implicit"\nca_file = "/etc/ca.pem"\n')
    config = parse_config(raw, {})
    assert (config.mail.tls, config.mail.ca_file) == ("implicit", "/etc/ca.pem")
    assert parse_config(raw, {"SUPPORT_BOT_MAIL_TLS": "none"}).mail.tls == "none"


@pytest.mark.parametrize(
    ("mail", "key", "fragment"),
    [
        ('tls = "ssl"', "mail.tls", '"starttls", "implicit", "none"'),
        ("tls = true", "mail.tls", "must be a string"),
        ('tls = "none"\nstarttls = false', "mail.starttls", "remove mail.starttls"),
    ],
)
def test_bad_tls_settings(mail: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(tomllib.loads(MINIMAL + "[mail]\n" + mail + "\n"), {})
    problems = dict(caught.value.problems)
    assert fragment in problems[key]


def test_check_config_warns_about_clear_text_to_another_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "bot.toml"
    file.write_text(
        MINIMAL + '[mail]\nhost = "mail.example.org"\ntls = "none"\nstarttls = false\n'
        'username = "u"\npassword = "p"\n',
        encoding="utf-8",
    )
    assert check_config_command(str(file), env={}) == 1  # tls and starttls together
    file.write_text(
        MINIMAL + '[mail]\nhost = "mail.example.org"\ntls = "none"\nusername = "u"\n'
        'password = "p"\n',
        encoding="utf-8",
    )
    capsys.readouterr()
    assert check_config_command(str(file), env={}) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("ok: ")
    (warning,) = captured.err.splitlines()
    assert warning.startswith("warning: mail.tls: ")
    assert "mail.example.org" in warning and "password" in warning


def test_check_config_warns_about_the_deprecated_starttls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "bot.toml"
    file.write_text(MINIMAL + "[mail]\nstarttls = false\n", encoding="utf-8")
    assert check_config_command(str(file), env={}) == 0
    (warning,) = capsys.readouterr().err.splitlines()
    assert warning.startswith("warning: mail.starttls: deprecated")


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_check_config_refuses_an_unreadable_ca_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None
) -> None:
    ca_file = tmp_path / "ca.pem"
    if content is not None:
        ca_file.write_text(content, encoding="utf-8")
    file = tmp_path / "bot.toml"
    file.write_text(MINIMAL + f'[mail]\nca_file = "{ca_file}"\n', encoding="utf-8")
    assert check_config_command(str(file), env={}) == 1
    assert capsys.readouterr().out.startswith("mail.ca_file: cannot be read")


def test_check_config_accepts_a_ca_file(
    tmp_path: Path, certificate: TestCertificate, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "bot.toml"
    file.write_text(MINIMAL + f'[mail]\nca_file = "{certificate.ca_file}"\n', encoding="utf-8")
    assert check_config_command(str(file), env={}) == 0
    assert capsys.readouterr().err == ""
