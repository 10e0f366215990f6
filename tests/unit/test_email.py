"""E-mail addresses: what intake keeps (`extract_email`, through email-validator) and the form
`bot.mail` hands to SMTP."""

from __future__ import annotations

import pytest
from aiosmtplib.email import extract_recipients

from bot.domain.intake_answers import extract_email
from bot.mail import build_message, smtp_address


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("mon adresse : jean@exemple.fr.", "jean@exemple.fr"),
        # Internationalised domains are stored normalised: lower case, in Unicode...
        ("jean@EXÄMPLE.org", "jean@exämple.org"),
        ("jean@xn--exmple-cua.org", "jean@exämple.org"),
        ("ivan@пример.РФ", "ivan@пример.рф"),
        # ...and NFC: "a" + combining diaeresis is "ä".
        ("jean@exa\u0308mple.org", "jean@exämple.org"),
        ("élise@exämple.org", "élise@exämple.org"),
        # Role mailboxes are case-insensitive.
        ("Postmaster@Example.org", "postmaster@example.org"),
    ],
)
def test_addresses_are_normalised(text: str, address: str) -> None:
    assert extract_email(text) == address
    assert extract_email(address) == address  # stored, read back as is


@pytest.mark.parametrize(
    "text",
    [
        "jean@exa\u200bmple.org",  # zero-width space in the domain
        "je\u200ban@example.org",  # ...in the local part
        "jean@example.org\u200b",  # ...at the end
        "jean@exa\u00admple.org",  # soft hyphen
        "jean@exa\u200dmple.org",  # zero-width joiner
        "jean@exa\u2060mple.org",  # word joiner
        "jean@exa\ufe0fmple.org",  # variation selector
        "jean@exa\u202emple.org",  # right-to-left override
        "jean@exa\u3164mple.org",  # Hangul filler
        "jean@exa\x00mple.org",
        "jean@example.test",  # special-use domains receive no mail
        "jean@example.local",
        "jean@example.o",
        "jean@example.c0m",
        '"jean dupont"@example.org',
        "jean@[192.0.2.1]",
    ],
)
def test_invisible_characters_and_undeliverable_names_are_refused(text: str) -> None:
    assert extract_email(text) is None


@pytest.mark.parametrize(
    ("address", "on_the_wire"),
    [
        ("jean@example.org", "jean@example.org"),
        ("jean@exämple.org", "jean@xn--exmple-cua.org"),
        ("ivan@пример.рф", "ivan@xn--e1afmkfd.xn--p1ai"),
        # No ASCII form: kept, and aiosmtplib asks the server for SMTPUTF8.
        ("élise@exämple.org", "élise@exämple.org"),
    ],
)
def test_mail_goes_to_the_ascii_form(address: str, on_the_wire: str) -> None:
    assert smtp_address(address) == on_the_wire
    message = build_message("Support <support@example.org>", address, "Subject", "Text")
    assert extract_recipients(message) == [on_the_wire]


@pytest.mark.parametrize("address", ["jean@exa\u200bmple.org", "jean", "jean@example.test"])
def test_mail_refuses_what_is_not_an_address(address: str) -> None:
    with pytest.raises(ValueError) as raised:
        smtp_address(address)
    assert "jean" not in str(raised.value)  # personal data stays out of errors
