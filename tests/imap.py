"""A real IMAP server for tests: Dovecot (Debian's `dovecot-imapd`) on free loopback ports, with
a temporary maildir and a config of its own (nothing of /etc/dovecot is read).

    server = ImapServer.start()              # or the `imap_server` fixture
    uid = await server.append(b"From: …")   # delivered by IMAP APPEND
    config = server.inbound()                # an InboundMailConfig pointing at it
    server.restart()                         # same ports, same mailbox
    server.stop()

Dovecot runs unprivileged: as the current user, or, when the tests run as root, as `nobody`
(Dovecot's login processes refuse root, and so does its mail access for UID 0). Its files
live in a short directory of their own under the system's temporary directory (its sockets'
paths must stay under 108 bytes, which pytest's directories can exceed). One static login,
`support` with `PASSWORD`. With a `TestCertificate` the plain port offers STARTTLS and a
second port speaks TLS from the first byte; without, plain text only. `without` removes
capabilities (IDLE, MOVE) from what the server announces, to play an older server.

Helpers that look at the mailbox (`append`, `uids`, `flags`, `renumber`…) use the standard
library's imaplib in a thread: the code under test (aioimaplib) is not the one checking it.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bot.config import InboundMailConfig
from bot.testing.net import free_port
from tests.smtp import TestCertificate, make_certificate

__all__ = ["NO_DOVECOT", "PASSWORD", "USER", "ImapServer", "dovecot_binary", "make_certificate"]

DOVECOT_ENV = "SUPPORT_BOT_DOVECOT"
NO_DOVECOT = (
    "Dovecot (dovecot-imapd) is not installed: IMAP tests skipped (apt-get install"
    " dovecot-imapd; ./scripts/test installs it when it may use apt-get, or set"
    f" {DOVECOT_ENV} to a dovecot binary)"
)
USER = "support"
PASSWORD = "imap-test-password"
# What Dovecot 2.3 announces once logged in, minus what a test takes away (`without`).
_CAPABILITIES = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES"
    " THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN"
    " NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES"
    " WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SPECIAL-USE STATUS=SIZE LITERAL+"
)


def dovecot_binary() -> str | None:
    """The dovecot master binary with its IMAP service installed, or None."""
    given = os.environ.get(DOVECOT_ENV)
    if given:  # a path that is not a program: skipped like a missing Dovecot, not an error
        return given if os.access(given, os.X_OK) else None
    found = shutil.which("dovecot") or (
        "/usr/sbin/dovecot" if os.access("/usr/sbin/dovecot", os.X_OK) else None
    )
    # dovecot-core alone has no IMAP service: Debian's dovecot-imapd brings it.
    if found is None or not Path("/usr/lib/dovecot/imap").exists():
        return None
    return found


@dataclass
class ImapServer:
    """A running Dovecot: its plain port, its TLS port (with a certificate), its files."""

    binary: str
    directory: Path
    port: int
    tls_port: int | None = None
    certificate: TestCertificate | None = None
    without: tuple[str, ...] = ()
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @classmethod
    def start(
        cls, *, tls: bool = False, without: tuple[str, ...] = (), binary: str | None = None
    ) -> ImapServer:
        binary = binary or dovecot_binary()
        if binary is None:
            raise RuntimeError(NO_DOVECOT)
        # /tmp rather than $TMPDIR: short socket paths, and `nobody` can reach it.
        directory = Path(
            tempfile.mkdtemp(prefix="sb-imap-", dir="/tmp" if os.path.isdir("/tmp") else None)
        )
        server = cls(
            binary=binary,
            directory=directory,
            port=free_port(),
            tls_port=free_port() if tls else None,
            certificate=make_certificate(directory / "tls") if tls else None,
            without=without,
        )
        try:
            server._write_config()
            server.resume()
        except BaseException:
            server.close()
            raise
        return server

    # -- the process -----------------------------------------------------------------------

    def _write_config(self) -> None:
        user, group, uid, gid = _account()
        base = self.directory
        for name in ("run", "state", "mail"):
            (base / name).mkdir(exist_ok=True)
        tls = "ssl = no"
        if self.certificate is not None:
            tls = (
                f"ssl = yes\nssl_cert = <{self.certificate.cert_file}\n"
                f"ssl_key = <{self.certificate.key_file}"
            )
        capabilities = " ".join(
            word for word in _CAPABILITIES.split() if word not in set(self.without)
        )
        (base / "dovecot.conf").write_text(
            f"""# Written by tests/imap.py for one test server.
protocols = imap
listen = 127.0.0.1
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
{tls}
# Clear-text logins are accepted too, so that tls = "none" can be tested.
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{base}/mail/%u
imap_capability = {capabilities}
first_valid_uid = 1
default_login_user = {user}
default_internal_user = {user}
default_internal_group = {group}
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={base}/mail/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {self.port}
  }}
  inet_listener imaps {{
    port = {self.tls_port or 0}
  }}
}}
service anvil {{
  chroot =
}}
""",
            encoding="utf-8",
        )
        if os.geteuid() == 0:
            for path in (base, *base.rglob("*")):
                os.chown(path, uid, gid)

    def resume(self, timeout: float = 15.0) -> None:
        """Start (again) on the same ports with the same mailbox; wait for the greeting."""
        if self._process is not None:
            raise RuntimeError("already running")
        options: dict[str, Any] = {}
        if os.geteuid() == 0:
            _, _, uid, gid = _account()
            options = {"user": uid, "group": gid, "extra_groups": []}
        self._process = subprocess.Popen(
            [self.binary, "-F", "-c", str(self.directory / "dovecot.conf")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group, ended whole by `stop`
            **options,
        )
        deadline = time.monotonic() + timeout
        while not _greets(self.port):
            if self._process.poll() is not None:
                error = (
                    self._process.stderr.read().decode(errors="replace")
                    if self._process.stderr
                    else ""
                )
                self._process = None
                raise RuntimeError(f"dovecot exited at start: {error.strip()}\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"dovecot did not answer within {timeout} s\n{self.log()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server (its mailbox stays, for `resume`)."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        # What the master started and left behind (it ends them itself on SIGTERM).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        if process.stderr is not None:
            process.stderr.close()

    def restart(self) -> None:
        self.stop()
        self.resume()

    def close(self) -> None:
        """Stop the server and remove its files."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def log(self) -> str:
        path = self.directory / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- what the bot is told ----------------------------------------------------------------

    def inbound(self, **changes: Any) -> InboundMailConfig:
        """`[mail.inbound]` for this server: clear text on the plain port unless `changes`
        say otherwise (`tls="starttls"`, `tls="implicit"` with `port=server.tls_port`…)."""
        config = InboundMailConfig(
            host="127.0.0.1",
            port=self.port,
            tls="none",
            ca_file=str(self.certificate.ca_file) if self.certificate else None,
            username=USER,
            password=PASSWORD,
        )
        return replace(config, **changes)

    # -- looking at the mailbox (imaplib, in a thread) --------------------------------------

    async def append(self, raw: bytes, folder: str = "INBOX") -> int:
        """Deliver `raw` into `folder` (created if missing): its UID."""
        return await asyncio.to_thread(self._append, raw, folder)

    async def uids(self, folder: str = "INBOX") -> list[int]:
        return await asyncio.to_thread(self._uids, folder)

    async def flags(self, uid: int, folder: str = "INBOX") -> set[str]:
        return await asyncio.to_thread(self._flags, uid, folder)

    async def unflag(self, uid: int, flag: str, folder: str = "INBOX") -> None:
        await asyncio.to_thread(self._unflag, uid, flag, folder)

    async def bodies(self, folder: str = "INBOX") -> list[bytes]:
        """The mails of `folder`, whole, in UID order."""
        return await asyncio.to_thread(self._bodies, folder)

    async def uidvalidity(self, folder: str = "INBOX") -> int:
        return await asyncio.to_thread(self._uidvalidity, folder)

    async def renumber(self, folder: str) -> int:
        """Delete `folder` and create it again, empty: the server gives it a new UIDVALIDITY,
        returned. (INBOX cannot be deleted: use another folder.)"""
        return await asyncio.to_thread(self._renumber, folder)

    @contextlib.contextmanager
    def _client(self) -> Iterator[imaplib.IMAP4]:
        client = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        try:
            client.login(USER, PASSWORD)
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    def _append(self, raw: bytes, folder: str) -> int:
        with self._client() as client:
            client.create(_quote(folder))
            status, data = client.append(_quote(folder), None, None, raw)
            assert status == "OK", data
            found = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
            assert found, data
            return int(found[1])

    def _select(self, client: imaplib.IMAP4, folder: str) -> None:
        status, data = client.select(_quote(folder), readonly=True)
        assert status == "OK", data

    def _uids(self, folder: str) -> list[int]:
        with self._client() as client:
            self._select(client, folder)
            status, data = client.uid("SEARCH", "ALL")
            assert status == "OK", data
            return [int(uid) for uid in (data[0] or b"").split()]

    def _flags(self, uid: int, folder: str) -> set[str]:
        with self._client() as client:
            self._select(client, folder)
            status, data = client.uid("FETCH", str(uid), "(FLAGS)")
            assert status == "OK", data
            found = re.search(rb"FLAGS \(([^)]*)\)", data[0] or b"") if data[0] else None
            if found is None:
                raise LookupError(f"no mail {uid} in {folder}")
            return {flag.decode() for flag in found[1].split()}

    def _unflag(self, uid: int, flag: str, folder: str) -> None:
        with self._client() as client:
            assert client.select(_quote(folder))[0] == "OK"
            status, data = client.uid("STORE", str(uid), "-FLAGS.SILENT", f"({flag})")
            assert status == "OK", data

    def _bodies(self, folder: str) -> list[bytes]:
        with self._client() as client:
            self._select(client, folder)
            bodies = []
            for uid in self._uids(folder):
                status, data = client.uid("FETCH", str(uid), "(BODY.PEEK[])")
                assert status == "OK" and isinstance(data[0], tuple), data
                bodies.append(data[0][1])
            return bodies

    def _uidvalidity(self, folder: str) -> int:
        with self._client() as client:
            status, data = client.status(_quote(folder), "(UIDVALIDITY)")
            assert status == "OK", data
            found = re.search(rb"UIDVALIDITY (\d+)", data[0])
            assert found, data
            return int(found[1])

    def _renumber(self, folder: str) -> int:
        before = self._uidvalidity(folder)
        with self._client() as client:
            assert client.delete(_quote(folder))[0] == "OK"
            assert client.create(_quote(folder))[0] == "OK"
        after = self._uidvalidity(folder)
        assert after != before, "the server kept the UIDVALIDITY"
        return after


def _quote(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _account() -> tuple[str, str, int, int]:
    """Who runs Dovecot: this user, or `nobody` when this is root."""
    import grp

    entry = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
    return entry.pw_name, grp.getgrgid(entry.pw_gid).gr_name, entry.pw_uid, entry.pw_gid


def _greets(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            return sock.recv(64).startswith(b"* OK")
    except OSError:
        return False
