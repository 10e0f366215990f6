"""Personal data (SPEC §7): what is stored about a client (`holds_data`, `export_client`),
erasing it (`erase_data`, `erase_client`, `erasure_outbox`: cards edited, the bot's messages
redacted), and the outbox's retention (`prune_outbox`). Apart from `bot.storage.repo` because
finding every trace of a person across the tables is one concern of its own."""

from __future__ import annotations

import base64
import html
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

from tortoise.expressions import Q
from tortoise.transactions import in_transaction

from bot.domain.bridge import bridged_nick
from bot.events import MAILTO
from bot.storage.instants import require_aware
from bot.storage.models import (
    AuditEntry,
    Booking,
    Client,
    ConfirmationToken,
    Conversation,
    DeferredEvent,
    MailAttachmentRow,
    MailMessage,
    OrgMember,
    OutboxItem,
    Purchase,
    Reaction,
    Ticket,
    TicketNote,
    TimeLog,
    UndecryptedEvent,
    UserPref,
    WithheldKey,
)
from bot.storage.repo import (
    ANON_PREFIX,
    ERASED_TEXT,
    _iso,
    active_booking,
    audit,
    booking_to_json,
    ticket_to_json,
)

log = logging.getLogger(__name__)


# --- Export and erasure (SPEC §7) ----------------------------------------------------------


async def holds_data(key: str) -> bool:
    """Whether anything stored names `key`: a client row, an intake (even a dropped one, whose
    row keeps the step), a language preference, an undecryptable message, a withheld key,
    a reaction."""
    return (
        await Client.exists(key=key)
        or await Conversation.exists(client_key=key)
        or await UserPref.exists(user_key=key)
        or await UndecryptedEvent.exists(sender=key)
        or await WithheldKey.exists(sender=key)
        or await Reaction.exists(sender=key)
        or (key.startswith(MAILTO) and await MailMessage.exists(address=key[len(MAILTO) :]))
    )


def _mails_of(key: str, ticket_ids: list[int], conversation_ids: list[int]) -> Q:
    """The mails received or sent about their requests and intakes, and (for a sender by
    e-mail) every mail from or to their address."""
    query = Q(ticket_id__in=ticket_ids) | Q(conversation_id__in=conversation_ids)
    if key.startswith(MAILTO):
        query |= Q(address=key[len(MAILTO) :])
    return query


async def _mails_json(
    key: str, ticket_ids: list[int], conversation_ids: list[int], tz: tzinfo
) -> list[dict[str, Any]]:
    rows = await MailMessage.filter(_mails_of(key, ticket_ids, conversation_ids)).order_by("id")
    files = await MailAttachmentRow.filter(mail_id__in=[r.pk for r in rows]).order_by("id")
    by_mail: dict[int, list[dict[str, Any]]] = {}
    for file in files:
        by_mail.setdefault(file.mail_id, []).append(  # type: ignore[attr-defined]
            {
                "filename": file.filename,
                "content_type": file.content_type,
                "size": file.size,
                "data_base64": None if file.data is None else base64.b64encode(file.data).decode(),
            }
        )
    return [
        {
            "direction": row.direction,
            "kind": row.kind,
            "at": _iso(row.at, tz),
            "address": row.address,
            "subject": row.subject,
            "message_id": row.message_id,
            "detail": row.detail,
            "attachments": by_mail.get(row.pk, []),
        }
        for row in rows
    ]


async def export_client(key: str, *, tz: tzinfo = UTC) -> dict[str, Any] | None:
    """Everything stored about `key`, as JSON-ready data; None if nothing names it.

    Someone who never opened a request may still be known by an intake (running, or dropped:
    its row keeps the step) or a language preference: `client` is then None."""
    client = await Client.get_or_none(key=key)
    conversations = await Conversation.filter(client_key=key).order_by("id")
    pref = await UserPref.get_or_none(user_key=key)
    undecrypted = await UndecryptedEvent.filter(sender=key).order_by("received_at")
    withheld = await WithheldKey.filter(sender=key).order_by("received_at", "id")
    reactions = await Reaction.filter(sender=key).order_by("at")
    mails_only = key.startswith(MAILTO) and await MailMessage.exists(address=key[len(MAILTO) :])
    if client is None and not (
        conversations or pref or undecrypted or withheld or reactions or mails_only
    ):
        return None
    tickets = (
        []
        if client is None
        else await Ticket.filter(client=client)
        .select_related("client")
        .order_by("created_at", "id")
    )
    return {
        "client": None if client is None else _client_json(client, pref, tz),
        **({} if client is None else await _prepaid_export(client, tz)),
        "tickets": [await _ticket_export(ticket, tz) for ticket in tickets],
        "conversations": [
            {
                "room_id": c.room_id,
                "step": c.step,
                "data": c.data,
                "updated_at": _iso(c.updated_at, tz),
            }
            for c in conversations
        ],
        "preferences": None if pref is None else {"locale": pref.locale},
        "undecryptable_events": [
            {
                "event_id": e.event_id,
                "room_id": e.room_id,
                "received_at": _iso(e.received_at, tz),
                "withheld": e.withheld,
            }
            for e in undecrypted
        ],
        # What their app said it would not share with the bot (m.room_key.withheld).
        "withheld_keys": [
            {
                "room_id": w.room_id or None,
                "session_id": w.session_id or None,
                "code": w.code,
                "received_at": _iso(w.received_at, tz),
            }
            for w in withheld
        ],
        "reactions": [
            {"room_id": r.room_id, "target": r.target_event_id, "key": r.key, "at": _iso(r.at, tz)}
            for r in reactions
        ],
        "mails": await _mails_json(
            key, [t.pk for t in tickets], [c.pk for c in conversations], tz
        ),
    }


async def _prepaid_export(client: Client, tz: tzinfo) -> dict[str, Any]:
    """The organisation the client belongs to, and the tickets bought for them alone."""
    membership = await OrgMember.filter(client_id=client.id).select_related("organisation").first()
    purchases = await Purchase.filter(client_id=client.id).order_by("at", "id")
    return {
        "organisation": None if membership is None else membership.organisation.name,
        "purchases": [
            {
                "at": _iso(p.at, tz),
                "tickets": p.tickets,
                "note": p.note,
                "recorded_by": p.recorded_by,
            }
            for p in purchases
        ],
    }


def _client_json(client: Client, pref: UserPref | None, tz: tzinfo) -> dict[str, Any]:
    return {
        "key": client.key,
        "display_name": client.display_name,
        "email": client.email,
        "locale": client.locale,
        "preferred_locale": pref.locale if pref else None,
        "terms_shown_at": _iso(client.terms_shown_at, tz),
        "terms_url": client.terms_url,
        "private_room_id": client.private_room_id,
        "created_at": _iso(client.created_at, tz),
        "erased_at": _iso(client.erased_at, tz),
    }


async def _ticket_export(ticket: Ticket, tz: tzinfo) -> dict[str, Any]:
    bookings = await Booking.filter(ticket_id=ticket.pk).order_by("start", "id")
    data = ticket_to_json(ticket, booking=await active_booking(ticket), tz=tz)
    data.update(
        description=ticket.description,
        instance_url=ticket.instance_url,
        instance_version=ticket.instance_version,
        survey_id=ticket.survey_id,
        email=ticket.email,
        locale=ticket.locale,
        room_id=ticket.room_id,
        closed_reason=ticket.closed_reason,
        rating_comment=ticket.rating_comment,
        notes=[
            {"at": _iso(note.at, tz), "author": note.author_key, "text": note.text}
            for note in await TicketNote.filter(ticket_id=ticket.pk).order_by("at", "id")
        ],
        time_logs=[
            {
                "at": _iso(entry.at, tz),
                "staff": entry.staff,
                "minutes": entry.minutes,
                "note": entry.note,
            }
            for entry in await TimeLog.filter(ticket_id=ticket.pk).order_by("at", "id")
        ],
        bookings=[
            {
                **(booking_to_json(b, tz) or {}),
                "status": b.status,
                "created_at": _iso(b.created_at, tz),
                "client_url": b.client_url,
            }
            for b in bookings
        ],
        audit=[
            {
                "at": _iso(entry.at, tz),
                "actor": entry.actor,
                "action": entry.action,
                "from_status": entry.from_status,
                "to_status": entry.to_status,
                "detail": entry.detail,
            }
            for entry in await AuditEntry.filter(ticket_id=ticket.pk).order_by("at", "id")
        ],
    )
    return data


@dataclass(frozen=True, slots=True)
class Erasure:
    """What an erasure leaves to do on Matrix once it is committed (`erasure_outbox`)."""

    anon: str  # the anonymous key the client row now has
    cards: tuple[tuple[int, str], ...]  # (ticket id, reference): cards to show a placeholder
    card_room: str | None  # where the staff cards were seen posted (None: no record left)
    redactions: tuple[tuple[str, str], ...]  # (room id, event id) of the bot's messages


async def erase_client(
    key: str,
    *,
    now: datetime,
    actor: str = "system",
    staff_room: str | None = None,
    card_text: Callable[[str], str] | None = None,
) -> bool:
    """`erase_data`, with its card placeholders and redactions queued in the outbox (for the
    command line, which has no handler's outbox; the running bot sends them). False if
    nothing names `key`."""
    async with in_transaction():
        erasure = await erase_data(key, now=now, actor=actor)
        if erasure is None:
            return False
        rows = erasure_outbox(erasure, staff_room=staff_room, card_text=card_text)
        base = "er" + erasure.anon.removeprefix(ANON_PREFIX)  # a valid, unique transaction id
        await OutboxItem.bulk_create(
            [OutboxItem(txn_id=f"{base}-{n}", created_at=now, **row) for n, row in enumerate(rows)]
        )
    return True


async def _drop_deferred(key: str) -> None:
    """Messages of theirs that a flood deferred are never handled: their text goes too. A
    Matrix account has a lane of its own; behind a bridge, the room's lane holds every
    nickname, and theirs are the ones the bridge prefixed with their nickname."""
    await DeferredEvent.filter(lane=key).delete()
    if not key.startswith("bridge:"):
        return
    for row in await DeferredEvent.filter(lane__startswith="bridge-room:"):
        nick = bridged_nick(key, row.room_id)
        body = str(row.event.get("body", "")) if isinstance(row.event, dict) else ""
        if nick and nick in body:
            await row.delete()


async def erase_data(key: str, *, now: datetime, actor: str = "system") -> Erasure | None:
    """Delete or blank everything that names or describes `key` and keep the billing figures;
    None if nothing names them (see the module doc and `Erasure`).

    One transaction: either everything is erased or nothing is. Each ticket gets an "erased"
    audit entry by `actor` (never the client's own id, which is being erased). The outbox
    rows that held their data are blanked (sent, failed) or deleted (not sent yet: they must
    never go out); the sent ones are returned for redaction, except the card itself, which gets
    a placeholder edit instead.
    """
    require_aware(now)
    async with in_transaction():
        if not await holds_data(key):
            return None
        client = await Client.get_or_none(key=key)
        tickets = [] if client is None else await Ticket.filter(client=client)
        conversations = await Conversation.filter(client_key=key)
        traces, exclusive = await _traces_of(key, client, tickets, conversations)
        ids = [t.pk for t in tickets]
        cards = {f"card:{pk}" for pk in ids}
        redactions, card_room = await _erase_outbox(traces, exclusive, cards)
        # Mails kept (threading, bounces, attachments) go whole: a later mail from them is a
        # new client's.
        mails = _mails_of(key, ids, [c.pk for c in conversations])
        mail_ids = await MailMessage.filter(mails).values_list("id", flat=True)
        await MailAttachmentRow.filter(mail_id__in=list(mail_ids)).delete()
        await MailMessage.filter(id__in=list(mail_ids)).delete()
        anon = f"{ANON_PREFIX}{secrets.token_hex(8)}"
        if ids:
            await Ticket.filter(id__in=ids).update(
                description=ERASED_TEXT, email=None, instance_url=None
            )
            # What staff wrote about the request (a reason, an audit detail, a time note) may
            # quote or describe the client; the minutes, statuses and dates stay.
            await Ticket.filter(id__in=ids, closed_reason__not_isnull=True).update(
                closed_reason=ERASED_TEXT
            )
            # Their rating stays (a number, like the bill); what they wrote with it goes.
            await Ticket.filter(id__in=ids, rating_comment__not_isnull=True).update(
                rating_comment=ERASED_TEXT
            )
            await TicketNote.filter(ticket_id__in=ids).update(text=ERASED_TEXT)
            await TicketNote.filter(ticket_id__in=ids, author_key=key).update(author_key=anon)
            # Notes written by e-mail name the sender's address.
            await TicketNote.filter(ticket_id__in=ids, author_key__startswith=MAILTO).update(
                author_key=anon
            )
            await AuditEntry.filter(ticket_id__in=ids, actor__startswith=MAILTO).update(actor=anon)
            await TimeLog.filter(ticket_id__in=ids, note__not_isnull=True).update(note=ERASED_TEXT)
            await AuditEntry.filter(ticket_id__in=ids, actor=key).update(actor=anon)
            await AuditEntry.filter(ticket_id__in=ids, detail__not_isnull=True).update(
                detail=ERASED_TEXT
            )
            # Join links of providers such as BigBlueButton carry the client's name.
            await Booking.filter(ticket_id__in=ids).update(client_url=None)
            # A consent link still in their mailbox must lead nowhere; the consent given
            # stays on the ticket (`client_confirmed_at`) and in its audit.
            await ConfirmationToken.filter(ticket_id__in=ids).delete()
        await Conversation.filter(client_key=key).delete()
        await UserPref.filter(user_key=key).delete()
        await Reaction.filter(sender=key).update(sender=anon)
        await UndecryptedEvent.filter(sender=key).delete()
        await WithheldKey.filter(sender=key).delete()
        await _drop_deferred(key)
        if client is not None:
            # The tickets bought for them stay (the balance and the reports need them); a note
            # staff wrote about such a purchase may name them.
            await Purchase.filter(client_id=client.id, note__not_isnull=True).update(
                note=ERASED_TEXT
            )
            client.key = anon
            client.display_name = None
            client.email = None
            client.private_room_id = None
            client.erased_at = now
            await client.save(
                update_fields=["key", "display_name", "email", "private_room_id", "erased_at"]
            )
        for ticket in tickets:
            await audit(ticket, actor, "erased", ticket.status, ticket.status, at=now)
    log.info(
        "personal data erased: now %s, %d ticket(s) kept for billing, %d message(s) to redact",
        anon,
        len(tickets),
        len(redactions),
    )
    return Erasure(
        anon=anon,
        cards=tuple((t.pk, t.ref) for t in tickets),
        card_room=card_room,
        redactions=tuple(redactions),
    )


def erasure_outbox(
    erasure: Erasure, *, staff_room: str | None, card_text: Callable[[str], str] | None
) -> list[dict[str, Any]]:
    """The outbox rows of an erasure (`OutboxItem` fields): each staff card edited to
    `card_text(ref)` in `staff_room` (else where the cards were seen; without either, left
    alone), then a redaction of each of the bot's messages that held the client's data."""
    rows: list[dict[str, Any]] = []
    room = staff_room or erasure.card_room
    if room is not None and card_text is not None:
        for ticket_id, ref in erasure.cards:
            text = card_text(ref)
            # An edit as `Context.edit` writes it; a notice that can ping nobody.
            new = {"msgtype": "m.notice", "body": text, "m.mentions": {}}
            content = {**new, "body": f"* {text}", "m.new_content": new}
            rows.append(
                {
                    "room_id": room,
                    "kind": "edit",
                    "content": content,
                    "target": f"card:{ticket_id}",
                }
            )
    for room_id, event_id in erasure.redactions:
        rows.append(
            {"room_id": room_id, "kind": "redaction", "content": {}, "target": f"event:{event_id}"}
        )
    return rows


#: What replaces the content of an outbox row that held a client's data.
ERASED_CONTENT: dict[str, Any] = {"erased": True}
# Outbox kinds that are no event of the bot's to redact.
_NOT_REDACTED = frozenset({"mail", "redaction", "pruned"})
# Free text shorter than this is not looked for in stored messages (a note such as "ok"
# would be found everywhere); the staff messages that quote one also name its request.
_MIN_TRACE_CHARS = 8
# What `bot.cards.defuse` inserts into, or strips from, the client text it echoes.
_INVISIBLE = re.compile("[\u2060\u200b-\u200f\u202a-\u202e\u2066-\u2069\u061c]")
_BATCH = 500


def _fold(text: str) -> str:
    """Text as compared: unescaped, without invisible marks, spaces collapsed, any case."""
    return " ".join(_INVISIBLE.sub("", html.unescape(text)).split()).casefold()


class _Traces:
    """What names or describes one client, to find it in the messages the bot stored: their
    ids and e-mail addresses, the free text of their requests, their references, and (behind
    a bridge) the nickname the bot's answers in that room start with."""

    def __init__(
        self,
        ids: Iterable[str | None],
        texts: Iterable[str | None],
        refs: Iterable[str],
        addressed: Mapping[str, str],
    ) -> None:
        found = {_fold(i) for i in ids if i}
        # Already erased text (a second erasure of an anonymous client) names nobody.
        found |= {
            f for t in texts if t and t != ERASED_TEXT and len(f := _fold(t)) >= _MIN_TRACE_CHARS
        }
        self._needles = found - {""}
        alternatives = "|".join(sorted(map(re.escape, {r.casefold() for r in refs})))
        # A reference is found whole: SP-2026-0001 is not in SP-2026-00012.
        self._refs = re.compile(rf"(?<![\w-])(?:{alternatives})(?!\d)") if alternatives else None
        self._addressed = {room: _fold(nick) + ":" for room, nick in addressed.items()}

    def found_in(self, row: OutboxItem) -> bool:
        prefix = self._addressed.get(row.room_id)
        for text in _strings(row.content, files=row.kind == "file"):
            folded = _fold(text)
            if prefix is not None and folded.startswith(prefix):
                return True
            if any(needle in folded for needle in self._needles):
                return True
            if self._refs is not None and self._refs.search(folded):
                return True
        return False


def _strings(value: Any, *, files: bool) -> Iterator[str]:
    """Every string in a row's JSON content; with `files`, the text of the attached data
    (a report sent as a file names clients)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for name, item in value.items():
            if files and name == "data" and isinstance(item, str):
                try:
                    yield bytes.fromhex(item).decode("utf-8", "replace")
                except ValueError:
                    yield item
            else:
                yield from _strings(item, files=files)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, files=files)


async def _traces_of(
    key: str, client: Client | None, tickets: list[Ticket], conversations: list[Conversation]
) -> tuple[_Traces, set[str]]:
    """The client's traces, and the rooms that are theirs alone (every message the bot sent
    there is about them): their ticket, intake and private rooms in which no other client
    ever asked anything. A bridged room is never theirs alone: a nickname speaks in a room
    the whole bridged conversation shares."""
    ids: list[str | None] = [key]
    texts: list[str | None] = []
    refs: list[str] = []
    ticket_ids = [t.pk for t in tickets]
    if client is not None:
        ids.append(client.email)
    for ticket in tickets:
        ids.append(ticket.email)
        texts += [ticket.description, ticket.instance_url, ticket.rating_comment]
        refs += [ticket.ref, *([ticket.converted_from] if ticket.converted_from else [])]
    # What staff wrote (reasons, time notes) is not looked for: the same words may be about
    # someone else, and the staff messages that echo it name the request, which is.
    if ticket_ids:
        texts += await TicketNote.filter(ticket_id__in=ticket_ids).values_list("text", flat=True)
    for conv in conversations:
        data = conv.data if isinstance(conv.data, Mapping) else {}
        ids += [data.get("email"), data.get("known_email")]
        texts += [*(data.get("description_parts") or []), data.get("pending_text")]
        texts.append(data.get("instance_url"))
    rooms = {t.room_id for t in tickets} | {c.room_id for c in conversations}
    if client is not None and client.private_room_id:
        rooms.add(client.private_room_id)
    addressed = {room: nick for room in rooms if (nick := bridged_nick(key, room)) is not None}
    shared: set[str] = set(addressed)
    if rooms:
        others = Ticket.filter(room_id__in=rooms)
        if client is not None:
            others = others.exclude(client_id=client.pk)
        shared.update(await others.values_list("room_id", flat=True))
        shared.update(
            await Conversation.filter(room_id__in=rooms)
            .exclude(client_key=key)
            .values_list("room_id", flat=True)
        )
    return _Traces(ids, texts, refs, addressed), rooms - shared


async def _erase_outbox(
    traces: _Traces, exclusive: set[str], cards: set[str]
) -> tuple[list[tuple[str, str]], str | None]:
    """Blank (sent, failed) or delete (pending) the outbox rows of the client's own rooms, of
    their cards, and any that holds their traces (the e-mails to them, staff notices quoting
    them). Returns the events to redact and the room the staff cards are posted in."""
    redactions: dict[tuple[str, str], None] = {}  # ordered, without repeats
    card_room: str | None = None
    blank: list[int] = []
    drop: list[int] = []
    last = 0
    while batch := await OutboxItem.filter(id__gt=last).order_by("id").limit(_BATCH):
        last = batch[-1].pk
        for row in batch:
            if card_room is None and (row.on_sent or "").startswith("card:"):
                card_room = row.room_id
            is_card = row.on_sent in cards or row.target in cards
            if row.content == ERASED_CONTENT or not (
                is_card or row.room_id in exclusive or traces.found_in(row)
            ):
                continue
            if row.sent_at is None and not row.failed:
                drop.append(row.pk)
                continue
            blank.append(row.pk)
            # The card itself is edited to a placeholder (its edits, holding the text, go).
            if row.event_id and row.kind not in _NOT_REDACTED and row.on_sent not in cards:
                redactions[(row.room_id, row.event_id)] = None
    for start in range(0, len(blank), _BATCH):
        chunk = blank[start : start + _BATCH]
        await OutboxItem.filter(id__in=chunk).update(content=ERASED_CONTENT)
    for start in range(0, len(drop), _BATCH):
        await OutboxItem.filter(id__in=drop[start : start + _BATCH]).delete()
    return list(redactions), card_room


# --- Outbox retention ----------------------------------------------------------------------


async def prune_outbox(before: datetime) -> int:
    """Forget what the bot said before `before`: the rows sent then, and those given up
    (failed) that were written then; rows still to send are kept. A row with a tag
    (`on_sent`) keeps its room, event id and tag without its content (kind "pruned"): a
    reaction may still look it up (a client's ✅ on a "resolved" message). Returns how many
    rows were deleted or emptied."""
    require_aware(before)
    old = Q(sent_at__lt=before) | Q(failed=True, created_at__lt=before)
    async with in_transaction():
        deleted = await OutboxItem.filter(old, on_sent__isnull=True).delete()
        emptied = (
            await OutboxItem.filter(old, on_sent__not_isnull=True)
            .exclude(kind="pruned")
            .update(kind="pruned", content={}, target=None)
        )
    return deleted + emptied
