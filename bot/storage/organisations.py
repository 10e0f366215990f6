"""Organisations, their members and purchases (issue #16 §1): the writes and look-ups that the
chat commands (`handlers.orgs`) and the command line (`support-bot org …`) share.

A refusal is an `OrgInputError` carrying a localisable message, so both front ends say the
same thing (the command line in English). Every write takes part in the caller's
transaction. Names follow `bot.domain.orgs` (matched without case; quotes for spaces).

Decisions worth knowing:

* **A member belongs to one organisation.** Adding a member of another organisation moves
  them, and says from where: there is no separate "remove", and a mistake is undone by adding
  them back. The membership row records who added them and when.
* **Clients who have not written yet.** A Matrix id may be added (or credited) before its
  owner ever writes: the client row is created then. A Talk nickname cannot be: it is only
  known, with its conversation, once that person has written.
* **Purchases are never edited**: a correction is a purchase with a negative count. The rows
  (who, when, how many, note) are the audit log of the balance.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q
from tortoise.transactions import in_transaction

from bot.domain.orgs import Member, MemberKind, OrgInputError, clean_name, member, name_key
from bot.i18n import N_
from bot.storage import repo
from bot.storage.balances import Account, account_of, client_label
from bot.storage.models import Client, Organisation, OrgMember, Purchase, Ticket

__all__ = [
    "AddedMember",
    "account_named",
    "add_member",
    "create_organisation",
    "find_client",
    "find_organisation",
    "members_of",
    "organisation_named",
    "organisations",
    "purchases_of",
    "record_purchase",
]

#: How many purchases `!org show` lists (the command line lists them all).
RECENT_PURCHASES = 10

ORG_EXISTS = N_("An organisation called {name} already exists (names are compared without case).")
ORG_UNKNOWN = N_("No organisation is called {name}. !org list shows them.")
ACCOUNT_UNKNOWN = N_(
    "No organisation or client is called {name}. !org list shows the organisations; a client "
    "is named by their Matrix id or the reference of one of their requests."
)
TICKET_UNKNOWN = N_("No ticket, question or quote request has the reference {ref}.")
CLIENT_UNKNOWN = N_("No client is known as {key}.")
NICK_UNKNOWN = N_(
    "No client behind a bridge is called {nick}. A Talk user is known once they have written "
    "to me; you can also give the reference of one of their requests."
)
NICK_AMBIGUOUS = N_(
    "Several clients behind bridges are called {nick}, in different conversations: give the "
    "reference of one of their requests instead ({refs})."
)
ALREADY_MEMBER = N_("{member} is already a member of {name}.")


def _quoted(name: str) -> str:
    return f'"{name}"' if " " in name else name


async def find_organisation(name: str) -> Organisation | None:
    """The organisation whose name folds like `name` (`bot.domain.orgs.name_key`)."""
    return await Organisation.get_or_none(name_key=name_key(name))


async def organisation_named(name: str) -> Organisation:
    found = await find_organisation(name)
    if found is None:
        raise OrgInputError(ORG_UNKNOWN, {"name": _quoted(name)})
    return found


async def create_organisation(name: str, *, by: str, now: datetime) -> Organisation:
    """A new organisation; refused when the name cannot be one or is taken."""
    cleaned = clean_name(name)
    key = name_key(cleaned)
    if await Organisation.exists(name_key=key):
        raise OrgInputError(ORG_EXISTS, {"name": _quoted(cleaned)})
    try:
        async with in_transaction():  # a savepoint: losing a race aborts nothing else
            return await Organisation.create(
                name=cleaned, name_key=key, created_by=by, created_at=now
            )
    except IntegrityError:
        raise OrgInputError(ORG_EXISTS, {"name": _quoted(cleaned)}) from None


async def find_client(word: str, *, now: datetime, create: bool = False) -> Client:
    """The client a staff member designates (`bot.domain.orgs.member`). A Matrix id not seen
    yet is created when `create`; anything else must be known."""
    designated: Member = member(word)
    if designated.kind is MemberKind.TICKET_REF:
        ticket = await repo.ticket_by_ref(designated.value)
        if ticket is None:
            raise OrgInputError(TICKET_UNKNOWN, {"ref": designated.value})
        return ticket.client
    if designated.kind is MemberKind.MATRIX_ID:
        if create:
            return await repo.get_or_create_client(designated.value, now=now)
    elif designated.kind is MemberKind.NICKNAME:
        return await _bridged_client(designated.value)
    found = await Client.get_or_none(key=designated.value)
    if found is None:
        raise OrgInputError(CLIENT_UNKNOWN, {"key": designated.value})
    return found


async def _bridged_client(nick: str) -> Client:
    """The one client behind a bridge with this nickname (in whatever conversation)."""
    candidates = [
        client
        for client in await Client.filter(key__startswith="bridge:", display_name=nick)
        if client.key.endswith(f":{nick}")
    ]
    if not candidates:
        raise OrgInputError(NICK_UNKNOWN, {"nick": nick})
    if len(candidates) > 1:
        refs = []
        for candidate in candidates:
            latest = await Ticket.filter(client_id=candidate.id).order_by("-created_at").first()
            if latest is not None:
                refs.append(latest.ref)
        raise OrgInputError(NICK_AMBIGUOUS, {"nick": nick, "refs": ", ".join(refs) or "-"})
    return candidates[0]


@dataclass(frozen=True, slots=True)
class AddedMember:
    client: Client
    moved_from: str | None  # the organisation they left, if any


async def add_member(
    organisation: Organisation, client: Client, *, by: str, now: datetime
) -> AddedMember:
    """Make `client` a member of `organisation` (moving them from another one)."""
    current = await OrgMember.filter(client_id=client.id).select_related("organisation").first()
    if current is not None and current.organisation.id == organisation.id:
        raise OrgInputError(
            ALREADY_MEMBER, {"member": client_label(client), "name": _quoted(organisation.name)}
        )
    moved_from = None
    if current is not None:
        moved_from = current.organisation.name
        await current.delete()
    await OrgMember.create(organisation=organisation, client=client, added_by=by, added_at=now)
    return AddedMember(client, moved_from)


async def account_named(word: str, *, now: datetime, create_client: bool = False) -> Account:
    """The account a staff member names: an organisation by name, else a client (Matrix id,
    ticket reference, bridge key) and the account they are billed to."""
    found = await find_organisation(word)
    if found is not None:
        return Account(found.id, None, found.name)
    designated = member(word)
    if designated.kind is MemberKind.NICKNAME:
        raise OrgInputError(ACCOUNT_UNKNOWN, {"name": _quoted(word)})
    client = await find_client(word, now=now, create=create_client)
    return await account_of(client.id)


async def record_purchase(
    account: Account, tickets: int, note: str | None, *, by: str, now: datetime
) -> Purchase:
    """A purchase (or, negative, a correction) for an organisation or a client in none."""
    return await Purchase.create(
        organisation_id=account.organisation_id,
        client_id=None if account.is_organisation else account.client_id,
        tickets=tickets,
        note=note,
        recorded_by=by,
        at=now,
    )


async def members_of(organisation_id: int) -> list[Client]:
    rows = (
        await OrgMember.filter(organisation_id=organisation_id)
        .select_related("client")
        .order_by("added_at", "id")
    )
    return [row.client for row in rows]


async def purchases_of(account: Account, *, limit: int | None = None) -> list[Purchase]:
    """The purchases counted in an account's balance, most recent first."""
    if account.organisation_id is not None:
        clients = [c.id for c in await members_of(account.organisation_id)]
        query = Purchase.filter(
            Q(organisation_id=account.organisation_id) | Q(client_id__in=clients or [-1])
        )
    else:
        query = Purchase.filter(client_id=account.client_id)
    query = query.order_by("-at", "-id")
    return list(await (query.limit(limit) if limit is not None else query))


async def organisations() -> list[tuple[Organisation, int]]:
    """Every organisation with its number of members, by name."""
    found = await Organisation.all()
    counts: dict[int, int] = {}
    for organisation_id in await OrgMember.all().values_list("organisation_id", flat=True):
        counts[int(organisation_id)] = counts.get(int(organisation_id), 0) + 1
    found.sort(key=lambda o: (o.name_key, o.id))
    return [(o, counts.get(o.id, 0)) for o in found]
