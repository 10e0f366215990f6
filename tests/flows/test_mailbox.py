"""The support mailbox read from a real IMAP server (Dovecot, tests/imap.py) into a real
database: order, position across restarts, IDLE and polling, flag and move, too-big mails,
a renumbered folder, a crash between fetch and commit, a server restart, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from tortoise.transactions import in_transaction

from bot.config import InboundMailConfig
from bot.mailbox.imap import KEYWORD, MailboxReader
from bot.mailbox.raw import RawMail
from bot.storage import mailbox as positions
from tests.conftest import ImapServerFactory
from tests.imap import PASSWORD, USER, ImapServer

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
SENDER = "claire.dupont@example.org"
WAIT = 20.0  # seconds a condition may take; never a measure


def message(number: int, body: str = "") -> bytes:
    text = body or f"Bonjour, ceci est la demande numéro {number}."
    return (
        f"From: Claire Dupont <{SENDER}>\r\n"
        "To: support@sondages.pro\r\n"
        f"Subject: Demande {number}\r\n"
        f"Message-ID: <demande-{number}@example.org>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        f"{text}\r\n"
    ).encode()


async def holding(server: ImapServer, *numbers: int) -> ImapServer:
    """`server` with mails `numbers` delivered into its INBOX."""
    for number in numbers:
        await server.append(message(number))
    return server


class Crash(Exception):
    """The process dying between fetch and commit, as the sink sees it."""


@dataclass
class Desk:
    """A sink as the e-mail handler will be: the position advances in the transaction that
    handles the mail; `handled` is what was committed (once each, or the test fails)."""

    crash_on: set[int] = field(default_factory=set)  # UIDs whose first try crashes
    refuse: set[int] = field(default_factory=set)  # UIDs not taken now (False), once
    handled: list[RawMail] = field(default_factory=list)
    offered: list[int] = field(default_factory=list)

    async def __call__(self, mail: RawMail) -> bool:
        self.offered.append(mail.uid)
        if mail.uid in self.refuse:
            self.refuse.discard(mail.uid)
            return False
        async with in_transaction():
            if not await positions.advance(mail.folder, mail.uidvalidity, mail.uid, now=NOW):
                return True  # handled before: nothing changes, the reader may mark it
            if mail.uid in self.crash_on:
                self.crash_on.discard(mail.uid)
                raise Crash  # rolls the position back with everything else
        self.handled.append(mail)
        return True

    def uids(self) -> list[int]:
        return [mail.uid for mail in self.handled]


async def eventually(condition: Callable[[], bool], what: str, within: float = WAIT) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.05)


async def eventually_async(condition: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not await condition():  # type: ignore[misc]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT} s: {what}")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def reading(config: InboundMailConfig, sink: Desk, **options: object):  # type: ignore[no-untyped-def]
    """A reader running in the background, stopped (and awaited) on exit."""
    options.setdefault("backoff", (0.1, 0.5))
    options.setdefault("timeout", 10.0)
    reader = MailboxReader(config, sink, **options)  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(reader.run(stop))
    try:
        yield reader
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT)


async def looked(reader: MailboxReader, times: int = 1) -> None:
    """Until the reader has finished `times` more looks at the folder."""
    seen = [reader.stats.last_check]

    def newer() -> bool:
        if reader.stats.last_check != seen[-1]:
            seen.append(reader.stats.last_check)
        return len(seen) > times

    await eventually(newer, f"{times} look(s) at the folder")


# -- reading ------------------------------------------------------------------------------------


async def test_new_mails_are_handed_over_in_order_flagged_and_never_logged(
    db: None, imap_server: ImapServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aioimaplib")
    caplog.set_level(logging.INFO)
    server = await holding(imap_server(), 1, 2, 3)
    desk = Desk()
    async with reading(server.inbound(poll_interval=3600), desk) as reader:
        await eventually(lambda: len(desk.handled) == 3, "three mails handled")
        validity = await server.uidvalidity()
        first = desk.handled[0]
        assert desk.uids() == [1, 2, 3]
        assert first.raw == message(1)
        assert first.size == len(message(1)) and not first.too_big
        assert (first.folder, first.uidvalidity) == ("INBOX", validity)
        assert first.internal_date.tzinfo is not None
        assert abs((first.internal_date - datetime.now(UTC)).total_seconds()) < 600
        await eventually_async(
            lambda: _all_flagged(server, [1, 2, 3]), "every handled mail flagged"
        )
        assert reader.stats.read == 3 and reader.stats.errors == 0
    assert await positions.position("INBOX") == positions.Position(validity, 3)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert "reading INBOX" in logged
    for secret in (SENDER, "Demande", "demande numéro", PASSWORD, USER):
        assert secret not in logged


async def _all_flagged(server: ImapServer, uids: list[int], folder: str = "INBOX") -> bool:
    for uid in uids:
        if not {"\\Seen", KEYWORD} <= await server.flags(uid, folder):
            return False
    return True


async def test_idle_wakes_the_reader_when_a_mail_arrives(
    db: None, imap_server: ImapServerFactory
) -> None:
    server = imap_server()
    desk = Desk()
    # An hour between looks: only the server's push can bring the mail in time.
    async with reading(server.inbound(poll_interval=3600), desk) as reader:
        await looked(reader)
        await server.append(message(1))
        await eventually(lambda: desk.uids() == [1], "the mail handled")
        # IDLE again, and again woken.
        await server.append(message(2))
        await eventually(lambda: desk.uids() == [1, 2], "the second mail handled")


async def test_idle_is_renewed_and_still_wakes(db: None, imap_server: ImapServerFactory) -> None:
    server = imap_server()
    desk = Desk()
    async with reading(server.inbound(poll_interval=3600), desk, idle_renew=0.3) as reader:
        await looked(reader, times=3)  # IDLE ended and issued again, twice
        await server.append(message(1))
        await eventually(lambda: desk.uids() == [1], "the mail handled")
        assert reader.stats.errors == 0


async def test_a_server_without_idle_is_polled(db: None, imap_server: ImapServerFactory) -> None:
    server = imap_server(without=("IDLE",))
    desk = Desk()
    async with reading(server.inbound(poll_interval=1), desk) as reader:
        await looked(reader)
        await server.append(message(1))
        await eventually(lambda: desk.uids() == [1], "the mail handled at a later look")
        assert reader.stats.errors == 0


async def test_the_stored_position_is_where_a_restart_begins(
    db: None, imap_server: ImapServerFactory
) -> None:
    server = await holding(imap_server(), 1, 2)
    first = Desk()
    async with reading(server.inbound(), first):
        await eventually(lambda: first.uids() == [1, 2], "two mails handled")
        await eventually_async(lambda: _all_flagged(server, [1, 2]), "both flagged")
    # Someone unflags them by hand: the position alone keeps them from coming again.
    await server.unflag(1, KEYWORD)
    await server.unflag(2, KEYWORD)
    await server.append(message(3))
    second = Desk()
    async with reading(server.inbound(poll_interval=1), second) as reader:
        await eventually(lambda: second.uids() == [3], "the new mail handled")
        await looked(reader)
    assert second.offered == [3]


async def test_a_mail_not_taken_now_is_offered_again_before_the_next_ones(
    db: None, imap_server: ImapServerFactory
) -> None:
    server = await holding(imap_server(), 1, 2)
    desk = Desk(refuse={1})
    async with reading(server.inbound(poll_interval=1), desk):
        await eventually(lambda: desk.uids() == [1, 2], "both handled, in order")
    assert desk.offered == [1, 1, 2]
    assert await _all_flagged(server, [1, 2])


# -- after: flag or move --------------------------------------------------------------------


async def test_moved_mails_leave_the_folder_and_nothing_is_deleted(
    db: None, imap_server: ImapServerFactory
) -> None:
    server = await holding(imap_server(), 1, 2)
    desk = Desk()
    config = server.inbound(after="move", move_to="Handled")  # created by the reader
    async with reading(config, desk):
        await eventually(lambda: desk.uids() == [1, 2], "two mails handled")
        await eventually_async(
            lambda: _uids_are(server, "INBOX", []), "the folder emptied by the moves"
        )
    moved = await server.uids("Handled")
    assert len(moved) == 2
    assert await _all_flagged(server, moved, "Handled")
    assert await server.bodies("Handled") == [message(1), message(2)]


async def _uids_are(server: ImapServer, folder: str, expected: list[int]) -> bool:
    return await server.uids(folder) == expected


async def test_without_move_a_copy_is_made_and_the_original_stays_flagged(
    db: None, imap_server: ImapServerFactory
) -> None:
    server = await holding(imap_server(without=("MOVE",)), 1)
    desk = Desk()
    async with reading(
        server.inbound(after="move", move_to="Handled", poll_interval=1), desk
    ) as reader:
        await eventually(lambda: desk.uids() == [1], "the mail handled")
        await eventually_async(lambda: _uids_are(server, "Handled", [1]), "a copy")
        await looked(reader, times=2)
    assert await server.uids("INBOX") == [1]
    assert await _all_flagged(server, [1]) and await _all_flagged(server, [1], "Handled")
    assert "\\Deleted" not in await server.flags(1)
    assert desk.offered == [1]  # the flagged original is not offered again


# -- size cap -------------------------------------------------------------------------------


async def test_a_mail_over_max_size_is_handed_over_as_its_header_only(
    db: None, imap_server: ImapServerFactory
) -> None:
    server = imap_server()
    big = message(1, "x" * 5000 + " LA-FIN-DU-CORPS")
    await server.append(big)
    await server.append(message(2))
    desk = Desk()
    async with reading(server.inbound(max_size=4096), desk):
        await eventually(lambda: desk.uids() == [1, 2], "both handled")
    large, small = desk.handled
    assert large.too_big and large.size == len(big)
    assert large.raw == big.split(b"\r\n\r\n")[0] + b"\r\n\r\n"  # the header, whole
    assert b"LA-FIN-DU-CORPS" not in large.raw
    assert not small.too_big and small.raw == message(2)


# -- renumbering, crashes, restarts ----------------------------------------------------------


async def test_a_renumbered_folder_is_read_from_its_first_mail(
    db: None, imap_server: ImapServerFactory
) -> None:
    server = imap_server()
    await server.append(message(1), "Support")
    await server.append(message(2), "Support")
    desk = Desk()
    async with reading(server.inbound(folder="Support", poll_interval=1), desk):
        await eventually(lambda: desk.uids() == [1, 2], "two mails handled")
        validity = await server.renumber("Support")  # under the reader's feet
        assert await server.append(message(3), "Support") == 1
        await eventually(lambda: desk.uids() == [1, 2, 1], "the new folder's first mail")
    assert desk.handled[-1].raw == message(3)
    assert desk.handled[-1].uidvalidity == validity
    assert await positions.position("Support") == positions.Position(validity, 1)


async def test_a_crash_between_fetch_and_commit_replays_the_mail_once(
    db: None, imap_server: ImapServerFactory
) -> None:
    server = await holding(imap_server(), 1, 2, 3)
    desk = Desk(crash_on={2})
    async with reading(server.inbound(), desk) as reader:
        await eventually(lambda: desk.uids() == [1, 2, 3], "every mail handled")
        await eventually_async(lambda: _all_flagged(server, [1, 2, 3]), "all flagged")
        assert reader.stats.errors == 1 and reader.stats.read == 3
    assert desk.offered == [1, 2, 2, 3]


async def test_a_reader_killed_mid_mail_is_replaced_without_duplicates(
    db: None, imap_server: ImapServerFactory
) -> None:
    server = await holding(imap_server(), 1, 2, 3)
    desk = Desk()
    fetched_second = asyncio.Event()

    async def stuck_on_the_second(mail: RawMail) -> bool:
        if mail.uid == 2:
            fetched_second.set()
            await asyncio.Event().wait()  # the process dies here, before any commit
        return await desk(mail)

    reader = MailboxReader(server.inbound(), stuck_on_the_second, backoff=(0.1, 0.5))
    task = asyncio.create_task(reader.run(asyncio.Event()))
    await asyncio.wait_for(fetched_second.wait(), WAIT)
    task.cancel()  # no clean stop: the kill
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert desk.uids() == [1]
    async with reading(server.inbound(), desk):
        await eventually(lambda: desk.uids() == [1, 2, 3], "the rest handled")
    assert desk.offered == [1, 2, 3]


async def test_the_reader_comes_back_after_the_server_restarts(
    db: None, imap_server: ImapServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await holding(imap_server(), 1)
    desk = Desk()
    async with reading(server.inbound(poll_interval=3600), desk) as reader:
        await eventually(lambda: desk.uids() == [1], "the first mail handled")
        await asyncio.to_thread(server.restart)
        await server.append(message(2))
        await eventually(lambda: desk.uids() == [1, 2], "the mail sent after the restart")
        assert reader.stats.errors >= 1
    assert any("trying again" in r.getMessage() for r in caplog.records)


# -- TLS and login ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
async def test_tls_with_the_servers_certificate(
    db: None, imap_server: ImapServerFactory, mode: str
) -> None:
    server = await holding(imap_server(tls=True), 1)
    port = server.tls_port if mode == "implicit" else server.port
    desk = Desk()
    async with reading(server.inbound(tls=mode, port=port), desk):
        await eventually(lambda: desk.uids() == [1], "the mail handled")
    assert "method=PLAIN" in server.log() and ", TLS," in server.log()


async def test_starttls_required_but_not_offered_means_no_login(
    db: None, imap_server: ImapServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = imap_server()  # no certificate: no STARTTLS
    await server.append(message(1))
    await eventually(lambda: server.log().count("Login:") == 1, "the fixture's own login")
    desk = Desk()
    async with reading(server.inbound(tls="starttls"), desk) as reader:
        await eventually(lambda: reader.stats.errors >= 2, "refused, then again")
    # The server's log has caught up with the reader's connections: none logged in.
    await eventually(lambda: server.log().count("no auth attempts") >= 2, "the log written")
    assert desk.offered == []
    assert server.log().count("Login:") == 1
    assert any("offered no STARTTLS" in r.getMessage() for r in caplog.records)


async def test_an_unknown_certificate_is_refused_with_its_reason(
    db: None, imap_server: ImapServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = imap_server(tls=True)
    desk = Desk()
    config = server.inbound(tls="implicit", port=server.tls_port, ca_file=None)
    async with reading(config, desk) as reader:
        await eventually(lambda: reader.stats.errors >= 1, "the handshake refused")
    await eventually(lambda: "Disconnected" in server.log(), "the log written")
    assert "Login:" not in server.log()
    assert any("SSLCertVerificationError" in r.getMessage() for r in caplog.records)


async def test_a_refused_login_is_logged_without_the_password(
    db: None, imap_server: ImapServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = imap_server()
    desk = Desk()
    async with reading(server.inbound(password="not-the-password"), desk) as reader:
        await eventually(lambda: reader.stats.errors >= 1, "the login refused")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("LOGIN refused: NO [AUTHENTICATIONFAILED]" in w for w in warnings)
    assert not any("not-the-password" in w or USER in w for w in warnings)
