"""A real SMTP server for tests: aiosmtpd on a free loopback port, keeping what it receives.

`smtp_server()` speaks clear text only, like a local relay. With a `TestCertificate`
(`make_certificate`, a throw-away CA and a server certificate for `localhost` and `127.0.0.1`)
it offers STARTTLS (`tls="starttls"`) or speaks TLS from the first byte (`tls="implicit"`).
With `logins`, it accepts AUTH LOGIN/PLAIN for those users, in clear text too, so that a test
can see a password that was sent unencrypted: the `Inbox` records, for each login and each
mail, whether the connection was encrypted at that moment.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import ipaddress
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from bot.testing.net import free_port


@dataclass
class Inbox:
    """The aiosmtpd handler: each mail's recipients and parsed message, and its raw bytes; with
    TLS or logins, whether each mail and each login came over an encrypted connection."""

    messages: list[tuple[list[str], EmailMessage]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    encrypted: list[bool] = field(default_factory=list)  # one per mail
    logins: list[tuple[str, bool]] = field(default_factory=list)  # (user, encrypted)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append((list(envelope.rcpt_tos), parsed))
        self.raw.append(envelope.content)
        self.encrypted.append(_encrypted(server))
        return "250 Message accepted"


def _encrypted(server: Any) -> bool:
    # The connection's transport, whether TLS came first or with STARTTLS (aiosmtpd's
    # `session.ssl` is only set by STARTTLS).
    return server.transport.get_extra_info("sslcontext") is not None


@dataclass(frozen=True)
class TestCertificate:
    """PEM files: the CA to trust (`ca_file`) and the server's certificate and key."""

    __test__ = False  # not a pytest test class, despite its name

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def make_certificate(
    directory: Path, names: tuple[str, ...] = ("localhost", "127.0.0.1")
) -> TestCertificate:
    """A CA and a server certificate it signed for `names` (DNS names or IP addresses), valid
    for a day, written to `directory`. Elliptic-curve keys: generated in milliseconds."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)

    def builder(subject: str, issuer: str, public_key: Any) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        builder("support-bot test CA", "support-bot test CA", ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    alternative: list[x509.GeneralName] = []
    for name in names:
        try:
            alternative.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternative.append(x509.DNSName(name))
    cert = (
        builder(names[0], "support-bot test CA", key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    files = TestCertificate(
        directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"
    )
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


@contextlib.contextmanager
def smtp_server(
    *,
    tls: Literal["starttls", "implicit"] | None = None,
    certificate: TestCertificate | None = None,
    logins: Mapping[str, str] | None = None,
) -> Iterator[tuple[Inbox, int]]:
    """A running server and its port; stopped on exit. `tls` needs a `certificate`."""
    inbox = Inbox()
    port = free_port()
    options: dict[str, Any] = {}
    if tls is not None:
        if certificate is None:
            raise ValueError("a TLS server needs a certificate")
        context = certificate.server_context()
        options["tls_context" if tls == "starttls" else "ssl_context"] = context
    if logins is not None:
        accepted = dict(logins)

        def authenticator(
            server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
        ) -> AuthResult:
            if not isinstance(auth_data, LoginPassword):
                return AuthResult(success=False, handled=False)
            user = auth_data.login.decode()
            inbox.logins.append((user, _encrypted(server)))
            ok = accepted.get(user) == auth_data.password.decode()
            return AuthResult(success=ok, handled=False)

        # Accepted in clear too: the point is to see whether the bot would send it so.
        options.update(authenticator=authenticator, auth_require_tls=False)
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()
