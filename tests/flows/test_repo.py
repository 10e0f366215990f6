"""The repository queries on a real database (SQLite, and PostgreSQL when configured)."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from tortoise.transactions import in_transaction

from bot.domain.tickets import Channel, Kind, Status, TicketState, take
from bot.storage import personal_data, repo
from bot.storage.models import (
    AuditEntry,
    Booking,
    Client,
    Conversation,
    OutboxItem,
    Reaction,
    RefCounter,
    Ticket,
    TicketNote,
    TimeLog,
    UserPref,
)

PARIS = ZoneInfo("Europe/Paris")
NOW = datetime(2026, 11, 20, 10, 0, tzinfo=PARIS)
ALICE = "@alice:example.org"
BOB = "@bob:example.org"
STAFF = "@staff:support.example"


async def client(key: str = ALICE, **fields: Any) -> Client:
    return await Client.create(key=key, created_at=NOW, **fields)


_seq = iter(range(1, 10_000))


async def ticket(
    owner: Client,
    *,
    kind: Kind = Kind.TICKET,
    channel: Channel = Channel.MESSAGING,
    status: Status = Status.OPEN,
    created_at: datetime = NOW,
    **fields: Any,
) -> Ticket:
    fields.setdefault("ref", f"SP-2026-{next(_seq):04d}")
    return await Ticket.create(
        kind=kind,
        channel=channel,
        status=status,
        category="javascript",
        client=owner,
        room_id="!room:example.org",
        locale="fr",
        description="My survey does not show the second page",
        created_at=created_at,
        **fields,
    )


# --- References ----------------------------------------------------------------------------


async def test_concurrent_allocations_get_distinct_consecutive_refs(db: None) -> None:
    refs = await asyncio.gather(*(repo.allocate_ref("SP", 2026) for _ in range(20)))
    assert sorted(refs) == [f"SP-2026-{n:04d}" for n in range(1, 21)]
    assert await RefCounter.filter(prefix="SP", year=2026).count() == 1


async def test_concurrent_allocations_when_the_row_exists(db: None) -> None:
    await repo.allocate_ref("SP", 2026)
    refs = await asyncio.gather(*(repo.allocate_ref("SP", 2026) for _ in range(20)))
    assert sorted(refs) == [f"SP-2026-{n:04d}" for n in range(2, 22)]


async def test_each_year_restarts_at_one(db: None) -> None:
    assert await repo.allocate_ref("SP", 2026) == "SP-2026-0001"
    assert await repo.allocate_ref("SP", 2026) == "SP-2026-0002"
    assert await repo.allocate_ref("SP", 2027) == "SP-2027-0001"
    assert await repo.allocate_ref("SP", 2026) == "SP-2026-0003"


async def test_prefixes_have_their_own_sequences(db: None) -> None:
    assert await repo.allocate_ref("SP", 2026) == "SP-2026-0001"
    assert await repo.allocate_ref("Q", 2026) == "Q-2026-0001"
    assert await repo.allocate_ref("QR", 2026) == "QR-2026-0001"
    assert await repo.allocate_ref("SP", 2026) == "SP-2026-0002"


async def test_more_digits_after_9999(db: None) -> None:
    await RefCounter.create(prefix="SP", year=2026, last_value=9998)
    assert await repo.allocate_ref("SP", 2026) == "SP-2026-9999"
    assert await repo.allocate_ref("SP", 2026) == "SP-2026-10000"


async def test_allocation_inside_an_outer_transaction(db: None) -> None:
    async with in_transaction():
        first = await repo.allocate_ref("SP", 2026)
        owner = await client()
        await ticket(owner, ref=first)
        second = await repo.allocate_ref("SP", 2026)
    assert (first, second) == ("SP-2026-0001", "SP-2026-0002")
    assert await Ticket.filter(ref=first).exists()


async def test_a_rolled_back_allocation_gives_its_number_back(db: None) -> None:
    with pytest.raises(RuntimeError):
        async with in_transaction():
            assert await repo.allocate_ref("SP", 2026) == "SP-2026-0001"
            raise RuntimeError("the ticket could not be saved")
    assert await repo.allocate_ref("SP", 2026) == "SP-2026-0001"


async def test_concurrent_allocations_inside_outer_transactions(db: None) -> None:
    async def open_one() -> str:
        async with in_transaction():
            return await repo.allocate_ref("SP", 2026)

    refs = await asyncio.gather(*(open_one() for _ in range(10)))
    assert sorted(refs) == [f"SP-2026-{n:04d}" for n in range(1, 11)]


@pytest.mark.parametrize(("prefix", "year"), [("", 2026), ("S-P", 2026), ("SP", 0)])
async def test_bad_prefix_or_year_is_refused(db: None, prefix: str, year: int) -> None:
    with pytest.raises(ValueError):
        await repo.allocate_ref(prefix, year)


# --- Clients and tickets -------------------------------------------------------------------


async def test_get_or_create_client(db: None) -> None:
    created = await repo.get_or_create_client(ALICE, now=NOW, display_name="Alice")
    again = await repo.get_or_create_client(ALICE, now=NOW + timedelta(days=1))
    assert again.pk == created.pk and again.display_name == "Alice"
    renamed = await repo.get_or_create_client(ALICE, now=NOW, display_name="Alice M.")
    assert renamed.display_name == "Alice M."
    assert (await Client.get(key=ALICE)).display_name == "Alice M."


async def test_concurrent_first_contacts_make_one_client(db: None) -> None:
    clients = await asyncio.gather(*(repo.get_or_create_client(BOB, now=NOW) for _ in range(8)))
    assert len({c.pk for c in clients}) == 1
    assert await Client.filter(key=BOB).count() == 1


async def test_first_contact_inside_a_transaction_survives_a_lost_race(db: None) -> None:
    async with in_transaction():
        made = await repo.get_or_create_client(BOB, now=NOW)
        await ticket(made)
    assert await Ticket.filter(client__key=BOB).count() == 1


async def test_ticket_lookups(db: None) -> None:
    alice, bob = await client(ALICE), await client(BOB)
    mine = await ticket(alice, ref="SP-2026-0100")
    await ticket(bob, ref="SP-2026-0101")
    found = await repo.ticket_by_ref("sp-2026-0100 ")
    assert found is not None and found.pk == mine.pk and found.client.key == ALICE
    assert await repo.ticket_by_ref("SP-2026-9999") is None
    assert (await repo.ticket_for_client("SP-2026-0100", ALICE)) is not None
    # Someone else's ticket is not found, exactly like an unknown one.
    assert await repo.ticket_for_client("SP-2026-0101", ALICE) is None
    assert await repo.ticket_for_client("SP-2026-9999", ALICE) is None


async def test_open_tickets_for(db: None) -> None:
    alice, bob = await client(ALICE), await client(BOB)
    open_one = await ticket(alice, created_at=NOW)
    resolved = await ticket(alice, status=Status.RESOLVED, created_at=NOW + timedelta(hours=1))
    for status in (Status.CLOSED, Status.CANCELLED, Status.DECLINED, Status.UNSOLVABLE):
        await ticket(alice, status=status)
    await ticket(bob)
    refs = [t.ref for t in await repo.open_tickets_for(ALICE)]
    assert refs == [open_one.ref, resolved.ref]


async def test_queue_puts_overdue_first_then_by_due_time(db: None) -> None:
    owner = await client()
    now = NOW
    later = await ticket(owner, ref="SP-2026-0003", sla_due=now + timedelta(days=2))
    no_due = await ticket(owner, ref="QR-2026-0001", kind=Kind.QUOTE, sla_due=None)
    soon = await ticket(owner, ref="SP-2026-0002", sla_due=now + timedelta(hours=2))
    overdue_late = await ticket(owner, ref="SP-2026-0004", sla_due=now - timedelta(hours=1))
    overdue_early = await ticket(owner, ref="SP-2026-0005", sla_due=now - timedelta(days=1))
    # Answered in time: its deadline has passed but it is not overdue.
    answered = await ticket(
        owner,
        ref="SP-2026-0006",
        status=Status.IN_PROGRESS,
        sla_due=now - timedelta(days=2),
        first_response_at=now - timedelta(days=3),
    )
    waiting_estimate = await ticket(
        owner,
        ref="SP-2026-0007",
        channel=Channel.INTERVENTION,
        status=Status.AWAITING_ESTIMATE,
        sla_due=now + timedelta(days=1),
    )
    for status in (Status.RESOLVED, Status.CLOSED, Status.AWAITING_CLIENT_CONFIRMATION):
        await ticket(owner, status=status, sla_due=now - timedelta(days=5))
    refs = [t.ref for t in await repo.queue(now)]
    assert refs == [
        overdue_early.ref,
        overdue_late.ref,
        answered.ref,
        soon.ref,
        waiting_estimate.ref,
        later.ref,
        no_due.ref,
    ]
    assert all(t.client.key == ALICE for t in await repo.queue(now))


async def test_state_round_trip(db: None) -> None:
    row = await ticket(await client())
    state = repo.ticket_state(row)
    assert state == TicketState(kind=Kind.TICKET, channel=Channel.MESSAGING, status=Status.OPEN)
    taken = take(state, STAFF, NOW)
    assert isinstance(taken, TicketState)
    changed = repo.apply_state(row, taken)
    assert set(changed) == {"status", "assigned_to", "first_response_at"}
    await row.save(update_fields=changed)
    reloaded = await Ticket.get(pk=row.pk)
    assert repo.ticket_state(reloaded) == taken
    assert reloaded.status == "in_progress"


async def test_audit(db: None) -> None:
    row = await ticket(await client())
    entry = await repo.audit(row, STAFF, "take", Status.OPEN, Status.IN_PROGRESS, at=NOW)
    assert (entry.from_status, entry.to_status, entry.detail) == ("open", "in_progress", None)
    stored = await AuditEntry.get(pk=entry.pk)
    assert stored.at == NOW and stored.actor == STAFF


# --- JSON ----------------------------------------------------------------------------------


async def test_ticket_json_has_the_spec_fields_with_offsets(db: None) -> None:
    row = await ticket(
        await client(),
        channel=Channel.VIDEO,
        status=Status.IN_PROGRESS,
        created_at=datetime(2026, 12, 24, 10, 0, tzinfo=PARIS),
        sla_due=datetime(2026, 12, 30, 18, 0, tzinfo=PARIS),
        first_response_at=datetime(2026, 12, 24, 11, 0, tzinfo=UTC),
        minutes_logged=46,
        assigned_to=STAFF,
    )
    booking = await Booking.create(
        ticket=row,
        staff=STAFF,
        start=datetime(2026, 12, 28, 14, 0, tzinfo=PARIS),
        end=datetime(2026, 12, 28, 14, 45, tzinfo=PARIS),
        slot_lock="x",
        provider="jitsi",
        created_at=NOW,
    )
    loaded = await repo.ticket_by_ref(row.ref)
    assert loaded is not None
    assert (await repo.active_booking(loaded)).pk == booking.pk  # type: ignore[union-attr]
    data = repo.ticket_to_json(loaded, booking=booking, tz=PARIS)
    assert list(data)[: len(repo.TICKET_JSON_FIELDS)] == list(repo.TICKET_JSON_FIELDS)
    assert data["ref"] == row.ref
    assert (data["kind"], data["status"], data["channel"]) == ("ticket", "in_progress", "video")
    assert data["client"] == ALICE
    assert data["created_at"] == "2026-12-24T10:00:00+01:00"
    assert data["sla_due"] == "2026-12-30T18:00:00+01:00"
    assert data["first_response_at"] == "2026-12-24T12:00:00+01:00"
    assert data["billed_tickets"] == 2  # 46 minutes of call: R5
    assert data["booking"] == {
        "start": "2026-12-28T14:00:00+01:00",
        "end": "2026-12-28T14:45:00+01:00",
        "provider": "jitsi",
        "staff": STAFF,
    }
    assert data["accepted_at"] is None and data["warranty_until"] is None
    assert repo.ticket_to_json(loaded, tz=UTC)["created_at"] == "2026-12-24T09:00:00+00:00"
    assert repo.ticket_to_json(loaded)["booking"] is None


async def test_ticket_json_needs_the_client_loaded(db: None) -> None:
    row = await ticket(await client())
    bare = await Ticket.get(pk=row.pk)
    with pytest.raises(ValueError, match="client"):
        repo.ticket_to_json(bare)


async def test_cancelled_booking_is_not_current(db: None) -> None:
    row = await ticket(await client(), channel=Channel.PHONE)
    start = datetime(2026, 12, 1, 10, tzinfo=PARIS)
    await Booking.create(
        ticket=row,
        staff=STAFF,
        start=start,
        end=start + timedelta(minutes=45),
        status="cancelled",
        created_at=NOW,
    )
    assert await repo.active_booking(row) is None


# --- Monthly report ------------------------------------------------------------------------


async def _november(db_tickets: list[tuple[Client, dict[str, Any]]]) -> None:
    for owner, fields in db_tickets:
        await ticket(owner, **fields)


async def test_report_month(db: None) -> None:
    alice = await client(ALICE, display_name="Alice")
    bob = await client(BOB)
    nov = datetime(2026, 11, 10, 9, 0, tzinfo=PARIS)
    await _november(
        [
            (alice, {"minutes_logged": 60, "created_at": nov}),  # 1
            (alice, {"minutes_logged": 61, "created_at": nov}),  # 2
            (alice, {"channel": Channel.VIDEO, "minutes_logged": 45, "created_at": nov}),  # 1
            (alice, {"channel": Channel.PHONE, "minutes_logged": 46, "created_at": nov}),  # 2
            (alice, {"status": Status.CANCELLED, "created_at": nov}),  # 0
            (alice, {"kind": Kind.QUESTION, "created_at": nov}),
            (alice, {"kind": Kind.QUOTE, "created_at": nov}),
            # Local month boundaries in Paris (UTC+1 in November).
            (bob, {"created_at": datetime(2026, 11, 1, 0, 30, tzinfo=PARIS)}),  # in: 1
            (bob, {"created_at": datetime(2026, 11, 30, 23, 30, tzinfo=PARIS)}),  # in: 1
            (bob, {"created_at": datetime(2026, 10, 31, 23, 30, tzinfo=PARIS)}),  # October
            (bob, {"created_at": datetime(2026, 12, 1, 0, 30, tzinfo=PARIS)}),  # December
        ]
    )
    rows = await repo.report_month(2026, 11, PARIS)
    by_client = {row["client"]: row for row in rows}
    assert set(by_client) == {ALICE, BOB}
    a = by_client[ALICE]
    assert a["month"] == "2026-11" and a["client_name"] == "Alice"
    assert (a["tickets"], a["billed_tickets"], a["questions"], a["quotes"]) == (5, 6, 1, 1)
    assert (a["minutes_messaging"], a["minutes_video"], a["minutes_phone"]) == (121, 45, 46)
    assert (a["minutes_intervention"], a["minutes_total"]) == (0, 212)
    b = by_client[BOB]
    assert (b["tickets"], b["billed_tickets"], b["questions"], b["quotes"]) == (2, 2, 0, 0)
    assert [r["client"] for r in await repo.report_month(2026, 10, PARIS)] == [BOB]
    assert await repo.report_month(2026, 9, PARIS) == []


async def test_report_month_refuses_a_bad_month(db: None) -> None:
    with pytest.raises(ValueError):
        await repo.report_month(2026, 13, PARIS)


def test_report_csv_is_safe_for_spreadsheets() -> None:
    rows = [
        {"month": "2026-11", "client": ALICE, "client_name": '=HYPERLINK("x")', "tickets": 2},
        {"month": "2026-11", "client": "bridge:!r:example.org:Bob", "client_name": None},
    ]
    parsed = list(csv.DictReader(io.StringIO(repo.report_csv(rows))))
    assert list(parsed[0]) == list(repo.REPORT_COLUMNS)
    assert parsed[0]["client"] == ALICE  # a Matrix id cannot be a formula: kept as is
    assert parsed[0]["client_name"] == '\'=HYPERLINK("x")'
    assert parsed[0]["tickets"] == "2" and parsed[0]["quotes"] == ""
    assert parsed[1]["client_name"] == ""


# --- Export and erasure --------------------------------------------------------------------


async def _client_with_history() -> tuple[Client, Ticket]:
    alice = await client(ALICE, display_name="Alice Martin", email="alice@example.org")
    row = await ticket(
        alice,
        ref="SP-2026-0042",
        status=Status.CLOSED,
        minutes_logged=61,
        email="alice@example.org",
        instance_url="https://surveys.alice.example/index.php",
        instance_version="6.4.2",
        accepted_at=NOW,
        warranty_until=NOW + timedelta(days=7),
    )
    await TicketNote.create(ticket=row, author_key=ALICE, text="Also page 3 is blank", at=NOW)
    await TimeLog.create(ticket=row, staff=STAFF, minutes=61, note="Fixed Alice's JS", at=NOW)
    await Booking.create(
        ticket=row,
        staff=STAFF,
        start=NOW,
        end=NOW + timedelta(minutes=45),
        slot_lock="lock-1",
        provider="bigbluebutton",
        client_url="https://bbb.example/join?fullName=Alice+Martin",
        created_at=NOW,
    )
    await repo.audit(row, ALICE, "accept", Status.RESOLVED, Status.CLOSED, at=NOW)
    await Conversation.create(
        room_id="!dm:example.org",
        client_key=ALICE,
        step="description",
        data={"description": ["second problem, private"], "email": "alice@example.org"},
        updated_at=NOW,
    )
    await UserPref.create(user_key=ALICE, locale="en")
    await Reaction.create(
        event_id="$r1",
        room_id="!dm:example.org",
        target_event_id="$offer",
        sender=ALICE,
        key="1️⃣",
        at=NOW,
    )
    await OutboxItem.create(
        txn_id="card-1",
        room_id="!staff:example.org",
        kind="message",
        content={"body": "My survey does not show the second page"},
        on_sent=f"card:{row.pk}",
        created_at=NOW,
        sent_at=NOW,
        event_id="$card",
    )
    await OutboxItem.create(
        txn_id="other",
        room_id="!staff:example.org",
        kind="message",
        content={"body": "someone else"},
        created_at=NOW,
        sent_at=NOW,
    )
    return alice, row


async def test_export_client_gives_everything(db: None) -> None:
    await _client_with_history()
    await ticket(await client(BOB), ref="SP-2026-0043")
    data = await personal_data.export_client(ALICE, tz=PARIS)
    assert data is not None
    assert data["client"]["key"] == ALICE and data["client"]["email"] == "alice@example.org"
    assert data["client"]["preferred_locale"] == "en"
    [exported] = data["tickets"]  # not Bob's
    assert exported["ref"] == "SP-2026-0042"
    assert exported["description"] == "My survey does not show the second page"
    assert exported["billed_tickets"] == 2
    assert [n["text"] for n in exported["notes"]] == ["Also page 3 is blank"]
    assert [t["minutes"] for t in exported["time_logs"]] == [61]
    assert exported["bookings"][0]["provider"] == "bigbluebutton"
    assert [a["action"] for a in exported["audit"]] == ["accept"]
    assert data["conversations"][0]["data"]["description"] == ["second problem, private"]
    assert await personal_data.export_client("@nobody:example.org") is None


async def test_erase_keeps_billing_and_removes_personal_data(db: None) -> None:
    alice, row = await _client_with_history()
    later = NOW + timedelta(days=30)
    assert await personal_data.erase_client(ALICE, now=later, actor="cli") is True

    assert await Client.get_or_none(key=ALICE) is None
    erased = await Client.get(pk=alice.pk)
    assert erased.key.startswith("anon:") and len(erased.key) > len("anon:") + 8
    assert (erased.display_name, erased.email, erased.erased_at) == (None, None, later)

    kept = await Ticket.get(pk=row.pk).select_related("client")
    assert kept.description == repo.ERASED_TEXT
    assert (kept.email, kept.instance_url) == (None, None)
    assert (kept.minutes_logged, kept.status, kept.ref) == (61, "closed", "SP-2026-0042")
    assert repo.ticket_to_json(kept)["billed_tickets"] == 2
    assert repo.ticket_to_json(kept)["client"] == erased.key

    note = await TicketNote.get(ticket_id=row.pk)
    assert (note.text, note.author_key) == (repo.ERASED_TEXT, erased.key)
    log = await TimeLog.get(ticket_id=row.pk)
    assert (log.minutes, log.note) == (61, repo.ERASED_TEXT)
    assert (await Booking.get(ticket_id=row.pk)).client_url is None
    assert await Conversation.filter(client_key=ALICE).count() == 0
    assert await UserPref.filter(user_key=ALICE).count() == 0
    assert (await Reaction.get(event_id="$r1")).sender == erased.key
    assert (await OutboxItem.get(txn_id="card-1")).content == {"erased": True}
    assert (await OutboxItem.get(txn_id="other")).content == {"body": "someone else"}

    actions = await AuditEntry.filter(ticket_id=row.pk).order_by("id")
    assert [(a.actor, a.action) for a in actions] == [(erased.key, "accept"), ("cli", "erased")]

    # Nothing left anywhere that names her.
    dump = str(await personal_data.export_client(erased.key))
    for secret in (ALICE, "alice@example.org", "Alice Martin", "page 3", "surveys.alice"):
        assert secret not in dump
    rows = await repo.report_month(2026, 11, PARIS)
    assert [(r["client"], r["billed_tickets"]) for r in rows] == [(erased.key, 2)]


async def test_erase_unknown_client(db: None) -> None:
    assert await personal_data.erase_client("@nobody:example.org", now=NOW) is False


async def test_erased_client_can_come_back_as_a_new_client(db: None) -> None:
    await _client_with_history()
    await personal_data.erase_client(ALICE, now=NOW)
    fresh = await repo.get_or_create_client(ALICE, now=NOW)
    assert fresh.email is None
    assert await repo.open_tickets_for(ALICE) == []


# --- Mailbox position ------------------------------------------------------------------------


async def test_a_mail_is_advanced_over_once_and_a_rolled_back_one_comes_again(db: None) -> None:
    from bot.storage import mailbox

    assert await mailbox.position("INBOX") is None
    async with in_transaction():
        assert await mailbox.advance("INBOX", 7, 10, now=NOW)
    assert not await mailbox.advance("INBOX", 7, 10, now=NOW)  # already handled
    assert not await mailbox.advance("INBOX", 7, 9, now=NOW)

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with in_transaction():
            assert await mailbox.advance("INBOX", 7, 11, now=NOW)
            raise Boom  # the crash between fetch and commit
    assert await mailbox.position("INBOX") == mailbox.Position(7, 10)
    assert await mailbox.advance("INBOX", 7, 11, now=NOW)  # replayed once
    # The server renumbered the folder: counting starts again from the new UIDVALIDITY.
    assert await mailbox.advance("INBOX", 8, 1, now=NOW)
    assert await mailbox.position("INBOX") == mailbox.Position(8, 1)
    assert await mailbox.position("Archive") is None
