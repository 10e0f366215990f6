"""Prepaid balances per account: an organisation, or a client in none (issue #16 §1).

Queries only: the arithmetic is `bot.domain.balance`, and what a ticket bills is
`bot.domain.tickets.billed_tickets` (the same function as the cards, `!log`, `!report` and
the CLI report), so a balance never disagrees with a bill.

Decisions worth knowing:

* **Membership is current.** An organisation's balance counts every ticket of its members
  today, those opened before they joined included, and the purchases recorded on a member
  while they were an organisation of one: what they bought and used alone comes with them. A
  client moved to another organisation takes their tickets and own purchases along; the
  purchases recorded on an organisation stay with it.
* **Billed as of today, in the month opened.** As the monthly report does, a ticket's whole
  bill (its figures today) counts at the time it was opened: `balance_of(..., until=end)` and
  `monthly_consumption` count tickets opened before `end` and purchases recorded before it.
* **Prepaid accounts.** Warnings are for accounts that buy tickets in advance: those with at
  least one purchase row (`is_prepaid`). Others still have a balance (bought 0), shown to
  staff on every card.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

from bot.domain.balance import Balance
from bot.domain.tickets import Kind, billed_tickets
from bot.storage.instants import require_aware
from bot.storage.models import Client, Organisation, OrgMember, Purchase, Ticket
from bot.storage.repo import (
    _STATE_FIELDS,
    REPORT_COLUMNS,
    REPORT_SUMS,
    month_bounds,
    report_month,
    ticket_state,
)
from bot.storage.satisfaction import average

__all__ = [
    "Account",
    "Balance",
    "account_of",
    "balance_of",
    "client_label",
    "is_prepaid",
    "member_ids",
    "monthly_consumption",
    "monthly_report",
]


@dataclass(frozen=True, slots=True)
class Account:
    """Who holds a balance: an organisation (`organisation_id`), or a client in none
    (`client_id`). `name` is the organisation's name, or the client's display name (their
    nickname behind a bridge, else their id)."""

    organisation_id: int | None
    client_id: int | None
    name: str

    @property
    def is_organisation(self) -> bool:
        return self.organisation_id is not None


def client_label(client: Client) -> str:
    """How a client is named when they are their own account: their display name (a bridged
    client's is their nickname), else their id."""
    return client.display_name or client.key


async def account_of(client_id: int) -> Account:
    """The account a client's tickets are billed to: their organisation, else themselves."""
    membership = await OrgMember.filter(client_id=client_id).select_related("organisation").first()
    if membership is not None:
        organisation: Organisation = membership.organisation
        return Account(organisation.id, None, organisation.name)
    client = await Client.get(id=client_id)
    return Account(None, client.id, client_label(client))


async def member_ids(organisation_id: int) -> list[int]:
    """The client ids of an organisation's members."""
    return list(
        await OrgMember.filter(organisation_id=organisation_id).values_list("client_id", flat=True)
    )


async def _scope(account: Account) -> tuple[list[int], list[int]]:
    """(client ids whose tickets and own purchases count, organisation ids whose purchases
    count)."""
    if account.organisation_id is not None:
        return await member_ids(account.organisation_id), [account.organisation_id]
    if account.client_id is None:
        raise ValueError("an account is an organisation or a client")
    return [account.client_id], []


async def _purchased(clients: list[int], organisations: list[int], until: datetime | None) -> int:
    """Tickets bought by these clients and organisations (corrections included)."""
    total = 0
    for field, ids in (("client_id__in", clients), ("organisation_id__in", organisations)):
        if not ids:
            continue
        query = Purchase.filter(**{field: ids})
        if until is not None:
            query = query.filter(at__lt=until)
        for tickets in await query.values_list("tickets", flat=True):
            total += int(tickets)
    return total


def _ticket_fields() -> tuple[str, ...]:
    return ("id", "client_id", "created_at", *_STATE_FIELDS)


def billed_by(tickets: Iterable[Ticket]) -> int:
    """Tickets billed by these ticket rows, as the terms say (`billed_tickets`)."""
    return sum(billed_tickets(ticket_state(ticket)) for ticket in tickets)


async def _billed(clients: list[int], until: datetime | None) -> int:
    if not clients:
        return 0
    query = Ticket.filter(client_id__in=clients, kind=Kind.TICKET.value)
    if until is not None:
        query = query.filter(created_at__lt=until)
    return billed_by(await query.only(*_ticket_fields()))


async def balance_of(account: Account, *, until: datetime | None = None) -> Balance:
    """An account's balance now, or as it stood at `until` (purchases recorded and tickets
    opened before it, billed as of today)."""
    if until is not None:
        require_aware(until)
    clients, organisations = await _scope(account)
    purchased = await _purchased(clients, organisations, until)
    return Balance(purchased=purchased, billed=await _billed(clients, until))


async def is_prepaid(account: Account) -> bool:
    """Whether tickets were ever bought for this account (one purchase row is enough, even if
    corrected back to zero): warnings are for prepaid accounts."""
    clients, organisations = await _scope(account)
    return bool(
        await Purchase.filter(client_id__in=clients or [-1]).exists()
        or await Purchase.filter(organisation_id__in=organisations or [-1]).exists()
    )


async def monthly_consumption(
    start: datetime, end: datetime
) -> list[tuple[Account, int, int, Balance]]:
    """Per account, for the period [start, end): (account, tickets purchased in it, tickets
    billed by the tickets opened in it, balance at `end`). Every account that had a purchase
    recorded or a ticket billed by `end`; organisations first, by name, then clients alone."""
    require_aware(start)
    require_aware(end)
    organisation_of = dict(await OrgMember.all().values_list("client_id", "organisation_id"))
    purchased_in: dict[tuple[str, int], int] = defaultdict(int)
    billed_in: dict[tuple[str, int], int] = defaultdict(int)
    purchased_until: dict[tuple[str, int], int] = defaultdict(int)
    billed_until: dict[tuple[str, int], int] = defaultdict(int)

    def key(client_id: int | None, organisation_id: int | None) -> tuple[str, int]:
        if organisation_id is None and client_id is not None:
            organisation_id = organisation_of.get(client_id)
        if organisation_id is not None:
            return ("organisation", organisation_id)
        assert client_id is not None
        return ("client", client_id)

    for purchase in await Purchase.filter(at__lt=end).only(
        "id", "client_id", "organisation_id", "tickets", "at"
    ):
        account = key(purchase.client_id, purchase.organisation_id)  # type: ignore[attr-defined]
        purchased_until[account] += purchase.tickets
        if purchase.at >= start:
            purchased_in[account] += purchase.tickets
    tickets = await Ticket.filter(created_at__lt=end, kind=Kind.TICKET.value).only(
        *_ticket_fields()
    )
    for ticket in tickets:
        account = key(ticket.client_id, None)  # type: ignore[attr-defined]
        bill = billed_tickets(ticket_state(ticket))
        billed_until[account] += bill
        if ticket.created_at >= start:
            billed_in[account] += bill

    # An account that bought nothing and was billed nothing (cancelled tickets, questions)
    # has nothing to show.
    seen = set(purchased_until) | {account for account, n in billed_until.items() if n}
    organisations = {
        o.id: o for o in await Organisation.filter(id__in=[i for k, i in seen if k != "client"])
    }
    clients = {c.id: c for c in await Client.filter(id__in=[i for k, i in seen if k == "client"])}
    rows: list[tuple[Account, int, int, Balance]] = []
    for kind, ident in seen:
        if kind == "client":
            account = Account(None, ident, client_label(clients[ident]))
        else:
            account = Account(ident, None, organisations[ident].name)
        balance = Balance(purchased_until[(kind, ident)], billed_until[(kind, ident)])
        rows.append((account, purchased_in[(kind, ident)], billed_in[(kind, ident)], balance))
    rows.sort(key=lambda row: (not row[0].is_organisation, row[0].name.casefold(), _id(row[0])))
    return rows


def _id(account: Account) -> int:
    return account.organisation_id or account.client_id or 0


async def monthly_report(year: int, month: int, tz: tzinfo) -> list[dict[str, Any]]:
    """The monthly report: a line per client (`repo.report_month`, with the organisation
    they belong to), then a line per account (`row` "organisation"; a client in none is an
    organisation of one): its clients' figures added up, the tickets it bought in the month
    (`purchased`) and its balance at the end of the month (`balance`)."""
    start, end = month_bounds(year, month, tz)
    label = f"{year:04d}-{month:02d}"
    client_rows = await report_month(year, month, tz)
    memberships = await OrgMember.all().select_related("client", "organisation")
    organisation_of = {m.client.key: m.organisation for m in memberships}
    keys_of: dict[int, list[str]] = defaultdict(list)
    for membership in memberships:
        keys_of[membership.organisation.id].append(membership.client.key)
    by_key = {row["client"]: row for row in client_rows}
    for row in client_rows:
        organisation = organisation_of.get(row["client"])
        row["organisation"] = organisation.name if organisation is not None else None
    consumption = await monthly_consumption(start, end)
    alone = [account.client_id for account, *_ in consumption if not account.is_organisation]
    client_keys = dict(await Client.filter(id__in=alone).values_list("id", "key"))
    account_rows: list[dict[str, Any]] = []
    for account, purchased, billed, balance in consumption:
        row: dict[str, Any] = dict.fromkeys(REPORT_COLUMNS)
        row.update(dict.fromkeys(REPORT_SUMS, 0))
        row.update(month=label, row="organisation", organisation=account.name)
        if account.organisation_id is not None:
            members = keys_of.get(account.organisation_id, [])
        else:
            members = [client_keys[account.client_id]]
            row["client"] = members[0]
        for key in members:
            for column in REPORT_SUMS:
                row[column] += by_key.get(key, {}).get(column) or 0
        row["rating_average"] = average(row["rating_sum"], row["ratings"])
        # The same bill as the clients' lines (tickets opened in the month, billed today).
        row.update(billed_tickets=billed, purchased=purchased, balance=balance.remaining)
        account_rows.append(row)
    return [*client_rows, *account_rows]
