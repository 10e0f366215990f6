"""Client organisations and prepaid tickets (issue #16 §1): `!org`, `!credit`, `!solde`.

Staff group clients into organisations (`!org new|add|show|list`) and record the tickets they
buy (`!credit NAME 10 [note]`; a negative number corrects a mistake, nothing is ever edited).
Clients see what is left with `!solde` / `!balance` (and in `!tickets`); staff see it on every
card. The balances themselves are `bot.storage.balances`, the look-ups and writes shared with
the command line `bot.storage.organisations`, the names and words `bot.domain.orgs`.

Decisions worth knowing:

* **Staff room only.** `!org` and `!credit` answer with clients' ids and an organisation's
  figures, so they work in the staff room (or a room of staff only) and are refused
  elsewhere, as `!report` is.
* **Names**: matched without case; a name with spaces goes in double quotes
  (`!org add "Acme Europe" @bob:example.org`); see `bot.domain.orgs`.
* **`!credit @user 5`** records on the client when they are in no organisation; for a member
  of one, it is recorded on their organisation, and the answer says so.
* **`!solde` behind a bridge** is refused with a pointer to a private channel, like
  `!tickets`: a nickname proves nothing and everyone in the conversation reads the answer. In
  a shared room it is answered in the client's private room.
"""

from __future__ import annotations

import dataclasses
import logging

from bot.cards import BRIDGE_KEY_PREFIX, defuse
from bot.domain import balance as prepaid
from bot.domain.orgs import (
    OrgInputError,
    clean_note,
    parse_tickets,
    take_words,
)
from bot.i18n import N_, NP_, Msg
from bot.ports import TransportError
from bot.routing import Context, DomainError, Router
from bot.storage import balances, organisations
from bot.storage.balances import Account
from bot.storage.models import Client
from handlers.common import (
    BALANCE_NOTHING_BOUGHT,
    BALANCE_OF,
    BALANCE_OWN,
    balance_msg,
    balance_tickets,
    private_room,
    refresh_account_cards,
    refuse_if_bridged,
    staff_private,
    tickets_msg,
)
from handlers.state import is_shared

__all__ = ["router"]

log = logging.getLogger(__name__)

router = Router("orgs")

# -- messages -----------------------------------------------------------------------------------

_STAFF_ROOM_ONLY = N_("Organisations and prepaid tickets are handled in the staff room only.")
_ORG_USAGE = N_(
    "Usage: !org new NAME · !org add NAME MEMBER · !org show NAME · !org list. A name with "
    'spaces goes in double quotes, as in !org new "Acme Europe"; case does not matter. A '
    "member is a Matrix id, the reference of one of their requests, or a Talk nickname."
)
_TOO_MANY_WORDS = N_("Too many words: put a name with spaces in double quotes, as in {example}")
_NEED_NAME = N_("Give the organisation's name, for example: {example}")
_NEED_MEMBER = N_("Give the member to add, for example: {example}")
_ORG_CREATED = N_(
    "Organisation {name} created. Add its members with !org add {name} @user:server and "
    "record the tickets it buys with !credit {name} 10."
)
_MEMBER_ADDED = N_("{member} is now a member of {name}.")
_MEMBER_MOVED = N_("{member} is now a member of {name} (moved from {old}).")
_ORG_LIST_EMPTY = N_("No organisations yet: !org new NAME creates one.")
_ORG_LIST_TITLE = NP_("{n} organisation:", "{n} organisations:")
_ORG_LIST_LINE = N_("• {name} · {members} · balance {remaining}")
_MEMBERS_COUNT = NP_("{n} member", "{n} members")
_ORG_TITLE = N_("Organisation {name}")
_CLIENT_ALONE_TITLE = N_("{name}: a client in no organisation")
_MEMBERS = N_("Members: {members}")
_NO_MEMBERS = N_("Members: none yet")
_BRIDGED_MEMBER = N_("{name} (via Nextcloud Talk)")
_PURCHASES = N_("Purchases, most recent first:")
_NO_PURCHASES = N_("No purchases recorded.")
_PURCHASE = N_("• {when}: {tickets}, recorded by {staff}")
_PURCHASE_NOTE = N_("• {when}: {tickets}, recorded by {staff} ({note})")
_CREDIT_USAGE = N_(
    'Usage: !credit NAME TICKETS [note], for example !credit "Acme Europe" 10 invoice 118. '
    "NAME is an organisation, or a client in none (their Matrix id or the reference of one of "
    "their requests); a negative number corrects a mistake."
)
_CREDITED = N_("Recorded: {tickets} purchased for {account}.")
_CORRECTED = N_("Recorded: a correction of {tickets} for {account}.")
_CREDITED_VIA = N_("{member} belongs to {account}: the tickets are the organisation's.")
_BALANCE_USAGE = N_('Give an organisation or a client, for example: !balance "Acme Europe"')
_ROOM_FAILED = N_(
    "I could not open a private room to answer you. Please write to me in a direct chat instead."
)

_NEW = ("new", "nouveau", "nouvelle", "create", "creer", "créer")
_ADD = ("add", "ajouter")
_SHOW = ("show", "voir", "montrer")
_LIST = ("list", "liste")
_EXAMPLE_NAME = '"Acme Europe"'


def _quoted(name: str) -> str:
    return f'"{name}"' if " " in name else name


def _staff_here(ctx: Context) -> None:
    """Organisations show clients' ids and figures: only where staff alone read."""
    if not staff_private(ctx):
        raise DomainError(Msg(_STAFF_ROOM_ONLY))


def _words(text: str, count: int, example: str) -> list[str]:
    """Exactly `count` words (the last ones may be missing, never extra ones)."""
    try:
        words, rest = take_words(text, count)
    except OrgInputError as error:
        raise DomainError(error.msg) from None
    if rest:
        raise DomainError(Msg(_TOO_MANY_WORDS, {"example": example}))
    return words


def _member_name(client: Client) -> str:
    return defuse(balances.client_label(client))


def _member_label(client: Client) -> Msg | str:
    name = _member_name(client)
    if client.key.startswith(BRIDGE_KEY_PREFIX):
        return Msg(_BRIDGED_MEMBER, {"name": name})
    if client.display_name and client.display_name != client.key:
        return f"{name} ({defuse(client.key)})"
    return name


def _staff_balance_subject(account: Account) -> Msg:
    return Msg(BALANCE_OF, {"account": defuse(account.name)})


async def _staff_balance(ctx: Context, account: Account) -> str:
    """The account's balance for staff, flagged ⚠️ when a prepaid one is low."""
    line = ctx.render(await balance_msg(account, _staff_balance_subject(account)))
    if not await balances.is_prepaid(account):
        return line
    balance = await balances.balance_of(account)
    if prepaid.level(balance.remaining) is prepaid.Level.OK:
        return line
    return f"⚠️ {line}"


# -- !org ---------------------------------------------------------------------------------------


@router.command(
    "org",
    "organisation",
    help=N_("Client organisations: new, add a member, show, list."),
    usage="new|add|show|list …",
    staff=True,
)
async def org(ctx: Context) -> None:
    _staff_here(ctx)
    try:
        words, rest = take_words(ctx.args, 1)
    except OrgInputError as error:  # pragma: no cover - one bare word cannot fail
        raise DomainError(error.msg) from None
    sub = words[0].casefold() if words else ""
    try:
        if sub in _NEW:
            await _org_new(ctx, rest)
        elif sub in _ADD:
            await _org_add(ctx, rest)
        elif sub in _SHOW:
            await _org_show(ctx, rest)
        elif sub in _LIST and not rest:
            await _org_list(ctx)
        else:
            ctx.reply(Msg(_ORG_USAGE))
    except OrgInputError as error:
        raise DomainError(error.msg) from None


async def _org_new(ctx: Context, rest: str) -> None:
    words = _words(rest, 1, f"!org new {_EXAMPLE_NAME}")
    if not words:
        raise DomainError(Msg(_NEED_NAME, {"example": f"!org new {_EXAMPLE_NAME}"}))
    created = await organisations.create_organisation(words[0], by=ctx.sender.user_id, now=ctx.now)
    log.info("organisation %s created", created.id)
    ctx.reply(Msg(_ORG_CREATED, {"name": defuse(_quoted(created.name))}))


async def _org_add(ctx: Context, rest: str) -> None:
    example = f"!org add {_EXAMPLE_NAME} @bob:example.org"
    words = _words(rest, 2, example)
    if not words:
        raise DomainError(Msg(_NEED_NAME, {"example": example}))
    organisation = await organisations.organisation_named(words[0])
    if len(words) < 2:
        example = f"!org add {defuse(_quoted(organisation.name))} @bob:example.org"
        raise DomainError(Msg(_NEED_MEMBER, {"example": example}))
    client = await organisations.find_client(words[1], now=ctx.now, create=True)
    added = await organisations.add_member(
        organisation, client, by=ctx.sender.user_id, now=ctx.now
    )
    log.info("client %s added to organisation %s", client.id, organisation.id)
    params = {"member": _member_label(client), "name": defuse(organisation.name)}
    if added.moved_from is not None:
        done = Msg(_MEMBER_MOVED, {**params, "old": defuse(added.moved_from)})
    else:
        done = Msg(_MEMBER_ADDED, params)
    account = Account(organisation.id, None, organisation.name)
    ctx.reply("\n".join([ctx.render(done), await _staff_balance(ctx, account)]))
    await refresh_account_cards(ctx, account)


async def _org_show(ctx: Context, rest: str) -> None:
    example = f"!org show {_EXAMPLE_NAME}"
    words = _words(rest, 1, example)
    if not words:
        raise DomainError(Msg(_NEED_NAME, {"example": example}))
    account = await organisations.account_named(words[0], now=ctx.now)
    lines: list[Msg | str] = []
    if account.organisation_id is not None:
        lines.append(Msg(_ORG_TITLE, {"name": defuse(account.name)}))
        members = await organisations.members_of(account.organisation_id)
        if members:
            labels = ", ".join(ctx.render(_member_label(client)) for client in members)
            lines.append(Msg(_MEMBERS, {"members": labels}))
        else:
            lines.append(Msg(_NO_MEMBERS))
    else:
        lines.append(Msg(_CLIENT_ALONE_TITLE, {"name": defuse(account.name)}))
    lines.append(await _staff_balance(ctx, account))
    recent = await organisations.purchases_of(account, limit=organisations.RECENT_PURCHASES)
    lines.append(Msg(_PURCHASES) if recent else Msg(_NO_PURCHASES))
    for purchase in recent:
        params = {
            "when": purchase.at,
            "tickets": balance_tickets(purchase.tickets),
            "staff": defuse(purchase.recorded_by),
        }
        if purchase.note:
            lines.append(Msg(_PURCHASE_NOTE, {**params, "note": defuse(purchase.note)}))
        else:
            lines.append(Msg(_PURCHASE, params))
    ctx.reply("\n".join(ctx.render(line) for line in lines))


async def _org_list(ctx: Context) -> None:
    found = await organisations.organisations()
    if not found:
        ctx.reply(Msg(_ORG_LIST_EMPTY))
        return
    lines = [ctx.render(Msg(_ORG_LIST_TITLE[0], {}, _ORG_LIST_TITLE[1], len(found)))]
    for organisation, members in found:
        balance = await balances.balance_of(Account(organisation.id, None, organisation.name))
        params = {
            "name": defuse(organisation.name),
            "members": Msg(_MEMBERS_COUNT[0], {}, _MEMBERS_COUNT[1], members),
            "remaining": balance_tickets(balance.remaining),
        }
        lines.append(ctx.render(Msg(_ORG_LIST_LINE, params)))
    ctx.reply("\n".join(lines))


# -- !credit ------------------------------------------------------------------------------------


@router.command(
    "credit",
    "crediter",
    help=N_("Record tickets bought by an organisation or a client (negative: a correction)."),
    usage="NAME 10 [note]",
    staff=True,
)
async def credit(ctx: Context) -> None:
    _staff_here(ctx)
    try:
        words, rest = take_words(ctx.args, 2)
        if len(words) < 2:
            raise DomainError(Msg(_CREDIT_USAGE))
        tickets = parse_tickets(words[1])
        note = clean_note(rest)
        account = await organisations.account_named(words[0], now=ctx.now, create_client=True)
        await organisations.record_purchase(
            account, tickets, note, by=ctx.sender.user_id, now=ctx.now
        )
    except OrgInputError as error:
        raise DomainError(error.msg) from None
    log.info("purchase of %d tickets recorded", tickets)
    params = {"tickets": balance_tickets(tickets), "account": defuse(account.name)}
    lines: list[Msg | str] = []
    if account.is_organisation and await organisations.find_organisation(words[0]) is None:
        lines.append(
            Msg(_CREDITED_VIA, {"member": defuse(words[0]), "account": params["account"]})
        )
    lines.append(Msg(_CREDITED if tickets > 0 else _CORRECTED, params))
    lines.append(await _staff_balance(ctx, account))
    ctx.reply("\n".join(ctx.render(line) for line in lines))
    await refresh_account_cards(ctx, account)


# -- !solde -------------------------------------------------------------------------------------


@router.command(
    "balance",
    "solde",
    help=N_("Show how many prepaid tickets are left."),
)
async def balance(ctx: Context) -> None:
    if ctx.is_staff:
        await _staff_balance_of(ctx)
        return
    refuse_if_bridged(ctx)
    client = await Client.get_or_none(key=ctx.sender.key)
    if client is None:  # never asked anything: nothing bought, nothing used, nothing to hide
        subject = Msg(BALANCE_OWN)
        ctx.reply(Msg(BALANCE_NOTHING_BOUGHT, {"subject": subject, "billed": tickets_msg(0)}))
        return
    here = await _private_context(ctx, client)
    here.reply(await balance_msg(await balances.account_of(client.id)))


async def _staff_balance_of(ctx: Context) -> None:
    example = f"!{ctx.command} {_EXAMPLE_NAME}"
    words = _words(ctx.args, 1, example)
    if not words:
        raise DomainError(Msg(_BALANCE_USAGE))
    _staff_here(ctx)
    try:
        account = await organisations.account_named(words[0], now=ctx.now)
    except OrgInputError as error:
        raise DomainError(error.msg) from None
    ctx.reply(await _staff_balance(ctx, account))


async def _private_context(ctx: Context, client: Client) -> Context:
    """Here, or the client's private room when others could read this one (§7)."""
    if not is_shared(ctx):
        return ctx
    try:
        room_id = await private_room(ctx, client, ctx.room_id)
    except TransportError as error:
        log.warning("could not create a private room: %s", error)
        raise DomainError(Msg(_ROOM_FAILED)) from None
    return dataclasses.replace(ctx, room_id=room_id, outgoing=ctx.outgoing)
