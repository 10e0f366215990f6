"""Organisations and prepaid tickets (issue #16 §1) through the real router and database:
`!org`, `!credit`, `!solde`/`!balance`, the balance in `!tickets` and on cards, the warnings
(an estimate above the balance, a balance falling to one ticket or below zero: once per
crossing), and the monthly report's figures per organisation.

Expected texts are rendered from the handlers' msgids with the same catalogs (French, the
service default), so the tests hold whatever the wording.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bot.cards import defuse
from bot.dispatch import STAFF_ONLY
from bot.domain import tickets as lifecycle
from bot.domain.tickets import Channel, Kind, Status
from bot.i18n import Msg
from bot.routing import addressed
from bot.storage import balances, organisations, repo
from bot.storage.balances import Account
from bot.storage.models import Organisation, OrgMember, Purchase, Ticket
from bot.testing.harness import BOT, STAFF, STAFF_ROOM, BotHarness, FakeClock, Sent
from bot.testing.harness import test_config as base_config
from handlers import billing, common, consent, orgs
from handlers.common import post_card

# Thursday 26 November 2026, 10:00 in Paris.
NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
ALICE, BOB, CAROL = "@alice:test", "@bob:test", "@carol:test"
DM, BOB_DM, CAROL_DM = "!dm-alice:test", "!dm-bob:test", "!dm-carol:test"
BRIDGE, TALK, TALK2 = "@nctalk:test", "!talk:test", "!talk2:test"
NICK = "Alice Martin"
PACE = timedelta(seconds=4)  # under the flood limit between two messages of one sender


@pytest.fixture
async def bot(db_url: str) -> AsyncIterator[BotHarness]:
    config = base_config(
        service={"confirmation": "chat"},
        bridges=[{"user_id": BRIDGE}],
        mail={"host": "127.0.0.1", "port": 1, "from": "support@test.example"},
    )
    async with BotHarness.open(db_url, config, clock=FakeClock(NOW)) as harness:
        for room, user in ((DM, ALICE), (BOB_DM, BOB), (CAROL_DM, CAROL)):
            harness.transport.members[room] = {BOT, user}
        harness.transport.members[TALK] = {BOT, BRIDGE}
        harness.transport.members[TALK2] = {BOT, BRIDGE}
        yield harness


# -- helpers ------------------------------------------------------------------------------------


def fr(bot: BotHarness, msg: Msg | str, **params: Any) -> str:
    if isinstance(msg, str):
        msg = Msg(msg, params)
    return bot.catalogs.get("fr").render(msg, bot.services.tz)


def tickets(bot: BotHarness, n: int) -> str:
    return fr(bot, common.balance_tickets(n))


async def staff(bot: BotHarness, text: str) -> list[Sent]:
    bot.clock.advance(PACE)
    return await bot.say(STAFF_ROOM, STAFF, text)


async def say(bot: BotHarness, room: str, sender: str, text: str) -> list[Sent]:
    bot.clock.advance(PACE)
    return await bot.say(room, sender, text)


def bodies(sent: list[Sent], room: str) -> list[str]:
    """New messages (not card edits) of one room."""
    return [
        s.body
        for s in sent
        if s.room_id == room and s.content.get("m.relates_to", {}).get("rel_type") != "m.replace"
    ]


def edits(sent: list[Sent]) -> list[str]:
    return [
        s.content["m.new_content"]["body"]
        for s in sent
        if s.room_id == STAFF_ROOM and "m.new_content" in s.content
    ]


def only(sent: list[Sent], room: str = STAFF_ROOM) -> str:
    found = bodies(sent, room)
    assert len(found) == 1, found
    return found[0]


async def make_ticket(
    bot: BotHarness,
    client_key: str = ALICE,
    room_id: str = DM,
    *,
    channel: Channel = Channel.MESSAGING,
    kind: Kind = Kind.TICKET,
    minutes: int = 0,
    created_at: datetime | None = None,
    status: Status | None = None,
    display_name: str | None = None,
) -> Ticket:
    """A ticket as the intake leaves it, its card posted by the real `post_card`."""
    created = created_at or bot.clock()
    client = await repo.get_or_create_client(client_key, now=created, display_name=display_name)
    prefix = {Kind.TICKET: "SP", Kind.QUESTION: "Q", Kind.QUOTE: "QT"}[kind]
    ticket = await Ticket.create(
        ref=await repo.allocate_ref(prefix, created.year),
        kind=str(kind),
        status=str(status or lifecycle.initial_state(kind, channel).status),
        category="theme",
        channel=str(channel),
        client=client,
        room_id=room_id,
        locale="fr",
        description="Le bouton d'envoi de notre thème est caché sur les téléphones.",
        email="client@example.org",
        created_at=created,
        minutes_logged=minutes,
    )

    async def job(ctx):
        await post_card(ctx, ticket)

    assert await bot.dispatcher.run_job(f"test-card:{ticket.ref}", job, room_id=STAFF_ROOM)
    await bot.deliverer.deliver_pending()
    return await Ticket.get(id=ticket.id)


async def account(name: str) -> Account:
    found = await organisations.organisation_named(name)
    return Account(found.id, None, found.name)


async def acme_with_alice(bot: BotHarness, bought: int | None = None) -> None:
    await staff(bot, "!org new ACME")
    await staff(bot, f"!org add acme {ALICE}")
    if bought is not None:
        await staff(bot, f"!credit ACME {bought}")


# -- !org ---------------------------------------------------------------------------------------


async def test_org_new_add_show_list(bot):
    sent = await staff(bot, '!org new "Acme Europe"')
    assert only(sent) == fr(bot, orgs._ORG_CREATED, name='"Acme Europe"')
    organisation = await Organisation.get(name="Acme Europe")
    assert organisation.name_key == "acme europe" and organisation.created_by == STAFF

    # Names are matched without case, and typographic quotes are quotes.
    sent = await staff(bot, "!org nouveau “ACME   europe”")
    assert only(sent) == fr(bot, organisations.ORG_EXISTS, name='"ACME europe"')
    sent = await staff(bot, f"!org add «acme EUROPE» {ALICE}")
    added = fr(bot, orgs._MEMBER_ADDED, member=defuse(ALICE), name="Acme Europe")
    assert only(sent).startswith(added)
    member = await OrgMember.get(client__key=ALICE)
    assert member.organisation_id == organisation.id and member.added_by == STAFF  # type: ignore[attr-defined]

    await staff(bot, "!org new Globex")
    await staff(bot, f"!org add Globex {BOB}")  # a Matrix id not seen yet: a client row is made
    sent = await staff(bot, f'!org ajouter "Acme Europe" {BOB}')
    assert only(sent).startswith(
        fr(bot, orgs._MEMBER_MOVED, member=defuse(BOB), name="Acme Europe", old="Globex")
    )
    sent = await staff(bot, f'!org add "Acme Europe" {BOB}')
    assert only(sent) == fr(bot, organisations.ALREADY_MEMBER, member=BOB, name='"Acme Europe"')

    shown = only(await staff(bot, '!org show "acme europe"'))
    lines = shown.splitlines()
    assert lines[0] == fr(bot, orgs._ORG_TITLE, name="Acme Europe")
    assert lines[1] == fr(bot, orgs._MEMBERS, members=defuse(f"{ALICE}, {BOB}"))
    assert lines[-1] == fr(bot, orgs._NO_PURCHASES)

    listed = only(await staff(bot, "!org liste")).splitlines()
    assert listed[0] == fr(bot, Msg(orgs._ORG_LIST_TITLE[0], {}, orgs._ORG_LIST_TITLE[1], 2))
    assert listed[1] == fr(
        bot,
        orgs._ORG_LIST_LINE,
        name="Acme Europe",
        members=Msg(orgs._MEMBERS_COUNT[0], {}, orgs._MEMBERS_COUNT[1], 2),
        remaining=common.balance_tickets(0),
    )
    assert listed[2].startswith("• Globex")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("!org", Msg(orgs._ORG_USAGE)),
        ("!org frobnicate", Msg(orgs._ORG_USAGE)),
        ("!org new", Msg(orgs._NEED_NAME, {"example": '!org new "Acme Europe"'})),
        ("!org new Acme Europe", Msg(orgs._TOO_MANY_WORDS, {"example": '!org new "Acme Europe"'})),
        ('!org new "Acme', None),
        ('!org "new ACME', None),
        ("!org new @alice:test", None),
        ("!org new SP-2026-0001", None),
        ('!org new ""', None),
        ("!org add Nope @bob:test", Msg(organisations.ORG_UNKNOWN, {"name": "Nope"})),
        ("!org show Nope", None),
        ("!org add ACME", Msg(orgs._NEED_MEMBER, {"example": "!org add ACME @bob:example.org"})),
        ("!org add ACME SP-2026-0999", Msg(organisations.TICKET_UNKNOWN, {"ref": "SP-2026-0999"})),
        ("!org add ACME Zorro", Msg(organisations.NICK_UNKNOWN, {"nick": "Zorro"})),
        ("!org add ACME bridge:!x:test:Zorro", None),
    ],
)
async def test_org_refuses_bad_input_with_a_clear_answer(bot, text, expected):
    await staff(bot, "!org new ACME")
    before = (await Organisation.all().count(), await OrgMember.all().count())
    sent = await staff(bot, text)
    answer = only(sent)
    if expected is not None:
        assert answer == fr(bot, expected)
    assert "Sorry" not in answer and "Désolé" not in answer  # an answer, not an apology
    assert (await Organisation.all().count(), await OrgMember.all().count()) == before


async def test_unclosed_quotes_and_reserved_names_are_explained(bot):
    answer = only(await staff(bot, '!org new "Acme'))
    assert answer == fr(
        bot,
        'A quotation mark is not closed. Put a name with spaces in quotes: "{example}"',
        example="Acme Europe",
    )
    for name in ("@alice:test", "SP-2026-0001", "bridge:x"):
        answer = only(await staff(bot, f"!org new {name}"))
        assert answer == fr(
            bot,
            "A name cannot start with @ or bridge:, nor look like a ticket reference: those name "
            "clients.",
        )
    assert await Organisation.all().count() == 0


async def test_a_bridged_nickname_is_added_by_name_or_by_reference(bot):
    await staff(bot, "!org new ACME")
    first = await make_ticket(bot, f"bridge:{TALK}:{NICK}", TALK, display_name=NICK)
    sent = await staff(bot, f'!org add ACME "{NICK}"')
    label = fr(bot, orgs._BRIDGED_MEMBER, name=NICK)
    assert only(sent).startswith(fr(bot, orgs._MEMBER_ADDED, member=label, name="ACME"))

    # The same nickname in another Talk conversation: ambiguous, the references tell them apart.
    second = await make_ticket(bot, f"bridge:{TALK2}:{NICK}", TALK2, display_name=NICK)
    await staff(bot, "!org new Globex")
    sent = await staff(bot, f'!org add Globex "{NICK}"')
    assert only(sent) == fr(
        bot, organisations.NICK_AMBIGUOUS, nick=NICK, refs=f"{first.ref}, {second.ref}"
    )
    sent = await staff(bot, f"!org add Globex {second.ref}")
    assert only(sent).startswith(fr(bot, orgs._MEMBER_ADDED, member=label, name="Globex"))
    assert await OrgMember.filter(organisation__name="Globex").count() == 1
    assert (await balances.account_of(first.client_id)).name == "ACME"  # type: ignore[attr-defined]


# -- !credit ------------------------------------------------------------------------------------


async def test_credit_records_purchases_and_corrections_never_edits(bot):
    await acme_with_alice(bot)
    sent = await staff(bot, "!credit acme 10 facture 2026-118")
    lines = only(sent).splitlines()
    assert lines[0] == fr(bot, orgs._CREDITED, tickets=common.balance_tickets(10), account="ACME")
    subject = Msg(common.BALANCE_OF, {"account": "ACME"})
    assert lines[1] == fr(
        bot,
        common.BALANCE_LINE,
        subject=subject,
        remaining=common.balance_tickets(10),
        purchased=common.balance_tickets(10),
        billed=common.tickets_msg(0),
    )
    sent = await staff(bot, "!credit ACME −2 saisie en double")
    assert only(sent).splitlines()[0] == fr(
        bot, orgs._CORRECTED, tickets=common.balance_tickets(-2), account="ACME"
    )
    rows = await Purchase.all().order_by("id").values("tickets", "note", "recorded_by", "at")
    assert rows == [
        {"tickets": 10, "note": "facture 2026-118", "recorded_by": STAFF, "at": NOW + PACE * 3},
        {"tickets": -2, "note": "saisie en double", "recorded_by": STAFF, "at": NOW + PACE * 4},
    ]
    assert (await balances.balance_of(await account("ACME"))).remaining == 8

    # A member names their organisation's account; a client in none is their own.
    sent = await staff(bot, f"!credit {ALICE} 1")
    assert only(sent).splitlines()[0] == fr(
        bot, orgs._CREDITED_VIA, member=defuse(ALICE), account="ACME"
    )
    sent = await staff(bot, f"!credit {CAROL} 5")
    assert only(sent).splitlines()[0] == fr(
        bot, orgs._CREDITED, tickets=common.balance_tickets(5), account=defuse(CAROL)
    )
    carol = await Purchase.get(tickets=5)
    assert carol.organisation_id is None and carol.client_id is not None  # type: ignore[attr-defined]
    assert (await balances.balance_of(await account("ACME"))).remaining == 9

    shown = only(await staff(bot, "!org show ACME")).splitlines()
    assert shown[-3:] == [
        fr(
            bot,
            orgs._PURCHASE,
            when=NOW + PACE * 5,
            tickets=common.balance_tickets(1),
            staff=defuse(STAFF),
        ),
        fr(
            bot,
            orgs._PURCHASE_NOTE,
            when=NOW + PACE * 4,
            tickets=common.balance_tickets(-2),
            staff=defuse(STAFF),
            note="saisie en double",
        ),
        fr(
            bot,
            orgs._PURCHASE_NOTE,
            when=NOW + PACE * 3,
            tickets=common.balance_tickets(10),
            staff=defuse(STAFF),
            note="facture 2026-118",
        ),
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ("", Msg(orgs._CREDIT_USAGE)),
        ("ACME", Msg(orgs._CREDIT_USAGE)),
        ("ACME ten", None),
        ("ACME 1.5", None),
        ("ACME 2h", None),
        ("ACME 0", None),
        ("ACME 99999", None),
        ("Nope 5", None),
        ("SP-2026-0999 5", Msg(organisations.TICKET_UNKNOWN, {"ref": "SP-2026-0999"})),
    ],
)
async def test_credit_refuses_bad_input(bot, args, expected):
    await acme_with_alice(bot)
    answer = only(await staff(bot, f"!credit {args}".strip()))
    if expected is not None:
        assert answer == fr(bot, expected)
    assert "Désolé" not in answer
    assert await Purchase.all().count() == 0


async def test_credit_messages_for_numbers_and_names(bot):
    await acme_with_alice(bot)
    not_a_number = fr(
        bot,
        "The number of tickets must be a whole number, such as 10, or -2 to correct a mistake.",
    )
    assert only(await staff(bot, "!credit ACME dix")) == not_a_number
    assert only(await staff(bot, "!credit ACME 0")) == fr(bot, "Zero tickets: nothing to record.")
    assert only(await staff(bot, "!credit Nope 5")) == fr(
        bot, organisations.ACCOUNT_UNKNOWN, name="Nope"
    )


# -- who may do it --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["!org new ACME", "!org list", "!credit ACME 10", "!crediter ACME 1"]
)
async def test_a_client_typing_staff_commands_is_refused_politely(bot, text):
    sent = await say(bot, DM, ALICE, text)
    name = text.split()[0][1:]
    assert only(sent, DM) == fr(bot, STAFF_ONLY, name=name)
    assert await Organisation.all().count() == 0 and await Purchase.all().count() == 0


async def test_staff_outside_the_staff_room_are_pointed_to_it(bot):
    await acme_with_alice(bot, bought=3)
    for text in ("!org show ACME", "!credit ACME 1", "!solde ACME"):
        sent = await say(bot, DM, STAFF, text)
        assert only(sent, DM) == fr(bot, orgs._STAFF_ROOM_ONLY)
    assert await Purchase.all().count() == 1


# -- what clients and staff see -----------------------------------------------------------------


async def test_the_client_sees_the_balance_in_solde_balance_and_tickets(bot):
    # Nothing asked, nothing bought: an answer all the same.
    sent = await say(bot, CAROL_DM, CAROL, "!solde")
    assert only(sent, CAROL_DM) == fr(
        bot,
        common.BALANCE_NOTHING_BOUGHT,
        subject=Msg(common.BALANCE_OWN),
        billed=common.tickets_msg(0),
    )
    await acme_with_alice(bot, bought=10)
    await make_ticket(bot, minutes=61)  # 2 tickets
    await make_ticket(bot, channel=Channel.VIDEO, minutes=46)  # 2 tickets (45 min each)
    await make_ticket(bot, kind=Kind.QUESTION)  # nothing
    expected = fr(
        bot,
        common.BALANCE_LINE,
        subject=Msg(common.BALANCE_OF, {"account": "ACME"}),
        remaining=common.balance_tickets(6),
        purchased=common.balance_tickets(10),
        billed=common.tickets_msg(4),
    )
    assert only(await say(bot, DM, ALICE, "!solde"), DM) == expected
    assert only(await say(bot, DM, ALICE, "!balance"), DM) == expected
    listing = only(await say(bot, DM, ALICE, "!tickets"), DM).splitlines()
    assert listing[-1] == expected and len(listing) == 5

    # A client in no organisation is an organisation of one.
    await make_ticket(bot, BOB, BOB_DM, minutes=130)  # 3 tickets
    await staff(bot, f"!credit {BOB} 2")
    assert only(await say(bot, BOB_DM, BOB, "!solde"), BOB_DM) == fr(
        bot,
        common.BALANCE_LINE,
        subject=Msg(common.BALANCE_OWN),
        remaining=common.balance_tickets(-1),
        purchased=common.balance_tickets(2),
        billed=common.tickets_msg(3),
    )
    assert "−1" in tickets(bot, -1)


async def test_solde_behind_a_bridge_is_refused_with_a_pointer(bot):
    await make_ticket(bot, f"bridge:{TALK}:{NICK}", TALK, display_name=NICK)
    sent = await say(bot, TALK, BRIDGE, f"[nctalk] <{NICK}> !solde")
    refusal = fr(bot, common.BRIDGED_REFUSED, email="support@test.example")
    assert only(sent, TALK) == addressed(NICK, refusal)


async def test_solde_in_a_shared_room_is_answered_in_private(bot):
    shared = "!shared:test"
    bot.transport.members[shared] = {BOT, ALICE, CAROL}
    await make_ticket(bot)
    await staff(bot, f"!credit {ALICE} 4")
    sent = await say(bot, shared, ALICE, "!solde")
    assert "4" not in "".join(bodies(sent, shared))  # the shared room is told where, no figure
    (private,) = bot.transport.created_rooms
    assert bodies(sent, private["room_id"]) == [
        fr(
            bot,
            common.BALANCE_LINE,
            subject=Msg(common.BALANCE_OWN),
            remaining=common.balance_tickets(3),
            purchased=common.balance_tickets(4),
            billed=common.tickets_msg(1),
        )
    ]


async def test_staff_see_the_balance_on_every_card(bot):
    await acme_with_alice(bot, bought=3)
    first = await make_ticket(bot)
    card = bodies(bot.transport.sent, STAFF_ROOM)[-1]
    balance_line = fr(
        bot,
        "{subject}: {remaining} (purchased: {purchased}, billed: {billed})",
        subject=Msg("Prepaid balance of {account}", {"account": "ACME"}),
        remaining=common.balance_tickets(2),
        purchased=common.balance_tickets(3),
        billed=common.tickets_msg(1),
    )
    assert balance_line in card.splitlines()
    second = await make_ticket(bot)  # the balance is down to one: flagged
    card = bodies(bot.transport.sent, STAFF_ROOM)[-1]
    assert any(line.startswith("⚠️ ") and "ACME" in line for line in card.splitlines())
    # Logging on the second ticket redraws the first one's card with the new balance.
    sent = await staff(bot, f"!log {second.ref} 1h30")
    redrawn = [body for body in edits(sent) if first.ref in body.splitlines()[0]]
    now_line = fr(
        bot,
        "{subject}: {remaining} (purchased: {purchased}, billed: {billed})",
        subject=Msg("Prepaid balance of {account}", {"account": "ACME"}),
        remaining=common.balance_tickets(0),
        purchased=common.balance_tickets(3),
        billed=common.tickets_msg(3),
    )
    assert redrawn and f"⚠️ {now_line}" in redrawn[-1].splitlines()

    # A client who bought nothing: their card says so, unflagged.
    await make_ticket(bot, BOB, BOB_DM)
    card = bodies(bot.transport.sent, STAFF_ROOM)[-1]
    nothing = fr(
        bot,
        "{subject}: nothing purchased (billed: {billed})",
        subject=Msg("Prepaid balance"),
        billed=common.tickets_msg(1),
    )
    assert nothing in card.splitlines()


# -- warnings -----------------------------------------------------------------------------------


def low_client(bot: BotHarness, ref: str, remaining: int, subject: Msg) -> str:
    return fr(
        bot,
        "{subject} is now {remaining} ({ref}). Your request goes on; to buy tickets, contact "
        "the support team.",
        subject=subject,
        remaining=common.balance_tickets(remaining),
        ref=ref,
    )


async def test_low_and_negative_balance_warnings_come_once_per_crossing(bot):
    await acme_with_alice(bot, bought=3)
    ticket = await make_ticket(bot)  # bills 1: 2 left
    acme = Msg(common.BALANCE_OF, {"account": "ACME"})
    low_staff = "⚠️ The prepaid balance of {account} is down to {remaining} ({ref})."
    negative_staff = "⚠️ The prepaid balance of {account} is below zero: {remaining} ({ref})."

    sent = await staff(bot, f"!log {ticket.ref} 1h30")  # 2 tickets: 1 left, low
    assert fr(
        bot, low_staff, account="ACME", remaining=common.balance_tickets(1), ref=ticket.ref
    ) in bodies(sent, STAFF_ROOM)
    assert low_client(bot, ticket.ref, 1, acme) in bodies(sent, DM)

    sent = await staff(bot, f"!log {ticket.ref} 20")  # still 2 tickets: nothing to say
    assert not [b for b in bodies(sent, STAFF_ROOM) if b.startswith("⚠️")]
    sent = await staff(bot, f"!log {ticket.ref} 1h")  # 3 tickets: 0 left, still low: no repeat
    assert not [b for b in bodies(sent, STAFF_ROOM) if "ACME" in b]
    assert not [b for b in bodies(sent, DM) if "ACME" in b]

    sent = await staff(bot, f"!log {ticket.ref} 1h")  # 4 tickets: below zero, told once
    warned = fr(
        bot, negative_staff, account="ACME", remaining=common.balance_tickets(-1), ref=ticket.ref
    )
    assert warned in bodies(sent, STAFF_ROOM)
    client_warning = fr(
        bot,
        "{subject} is now below zero: {remaining} ({ref}). Your request goes on; the support "
        "team will contact you about buying tickets.",
        subject=acme,
        remaining=common.balance_tickets(-1),
        ref=ticket.ref,
    )
    assert client_warning in bodies(sent, DM)
    # Nothing was held up: the time was logged.
    assert (await Ticket.get(id=ticket.id)).minutes_logged == 90 + 20 + 60 + 60
    sent = await staff(bot, f"!log {ticket.ref} 1h")
    assert warned.split(":")[0] not in "\n".join(bodies(sent, STAFF_ROOM))

    # Tickets bought lift it again: the next fall is told again.
    await staff(bot, "!credit ACME 4")  # 7 bought, 5 billed: 2 left
    sent = await staff(bot, f"!log {ticket.ref} 1h")  # 6 billed: 1 left
    assert fr(
        bot, low_staff, account="ACME", remaining=common.balance_tickets(1), ref=ticket.ref
    ) in bodies(sent, STAFF_ROOM)


async def test_no_warnings_for_an_account_that_never_bought_tickets(bot):
    ticket = await make_ticket(bot)
    sent = await staff(bot, f"!log {ticket.ref} 3h")
    balance_words = fr(bot, "Prepaid balance").casefold()
    assert not [b for b in bodies(sent, STAFF_ROOM) if balance_words in b.casefold()]
    assert len(bodies(sent, DM)) == 1  # only the rule "a new ticket started"


async def test_a_ticket_opened_by_the_intake_tells_the_client_in_its_answer(bot):
    await staff(bot, f"!credit {ALICE} 2")  # the new ticket bills 1: 1 left, low
    for text in (
        "Mon questionnaire n'envoie plus les invitations par e-mail depuis lundi.",
        "5",
        "https://survey.example.org 6.4.2",
        "1",
        "alice@example.org",
    ):
        await say(bot, DM, ALICE, text)
    sent = await say(bot, DM, ALICE, "oui")
    (answer,) = bodies(sent, DM)  # one message for the step, the warning one of its paragraphs
    ref = (await Ticket.all().order_by("-id").first()).ref  # type: ignore[union-attr]
    assert low_client(bot, ref, 1, Msg(common.BALANCE_OWN)) in answer.split("\n\n")
    assert fr(
        bot,
        "⚠️ The prepaid balance of {account} is down to {remaining} ({ref}).",
        account=defuse(ALICE),
        remaining=common.balance_tickets(1),
        ref=ref,
    ) in bodies(sent, STAFF_ROOM)


async def test_an_estimate_above_the_balance_is_told_before_the_consent_request(bot):
    await acme_with_alice(bot, bought=2)
    ticket = await make_ticket(bot, channel=Channel.INTERVENTION)  # bills 1: 1 left
    sent = await staff(bot, f"!estimate {ticket.ref} 3h")  # 3 tickets: would leave −1
    staff_texts = bodies(sent, STAFF_ROOM)
    assert staff_texts[0] == fr(
        bot,
        consent._OVER_BALANCE_STAFF,
        ref=ticket.ref,
        tickets=common.tickets_msg(3),
        account="ACME",
        remaining=common.balance_tickets(1),
        after=common.balance_tickets(-1),
    )
    assert staff_texts[1].startswith(ticket.ref)  # then the consent, as before
    client_texts = bodies(sent, DM)
    assert client_texts[0] == fr(
        bot,
        consent._OVER_BALANCE_CLIENT,
        subject=Msg(common.BALANCE_OF, {"account": "ACME"}),
        remaining=common.balance_tickets(1),
        after=common.balance_tickets(-1),
        ref=ticket.ref,
    )
    assert "!confirm" in client_texts[1]  # the consent request comes after
    assert (await Ticket.get(id=ticket.id)).status == Status.AWAITING_CLIENT_CONFIRMATION

    # Within the balance: no warning.
    await staff(bot, "!credit ACME 5")
    sent = await staff(bot, f"!estimate {ticket.ref} 3h")
    assert not [b for b in bodies(sent, STAFF_ROOM) if b.startswith("⚠️")]


async def test_an_estimate_above_the_balance_behind_a_bridge_shows_no_figure(bot):
    key = f"bridge:{TALK}:{NICK}"
    ticket = await make_ticket(bot, key, TALK, channel=Channel.INTERVENTION, display_name=NICK)
    await staff(bot, f"!credit {ticket.ref} 1")
    sent = await staff(bot, f"!estimate {ticket.ref} 2h")
    told = fr(
        bot,
        consent._OVER_BALANCE_CLIENT_BRIDGED,
        subject=Msg(common.BALANCE_OWN),
        ref=ticket.ref,
    )
    assert bodies(sent, TALK)[0] == addressed(NICK, told)


# -- the monthly report ---------------------------------------------------------------------------


async def seed_month(bot: BotHarness) -> None:
    """November 2026: ACME (Alice, Bob) and Carol alone; purchases before and in the month."""
    october = datetime(2026, 10, 20, 9, 0, tzinfo=UTC)
    november = datetime(2026, 11, 10, 9, 0, tzinfo=UTC)
    december = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    await staff(bot, "!org new ACME")
    await staff(bot, f"!org add ACME {ALICE}")
    await staff(bot, f"!org add ACME {BOB}")
    acme = await Organisation.get(name="ACME")
    carol = await repo.get_or_create_client(CAROL, now=october)
    for organisation, client, count, at in (
        (acme, None, 10, october),
        (acme, None, 5, november),
        (acme, None, -1, november),
        (None, carol, 3, november),
        (acme, None, 20, december),  # after the month: not in it
    ):
        await Purchase.create(
            organisation=organisation, client=client, tickets=count, recorded_by=STAFF, at=at
        )
    await make_ticket(bot, ALICE, DM, minutes=200, created_at=october)  # 4, before the month
    await make_ticket(bot, ALICE, DM, minutes=61, created_at=november)  # 2
    await make_ticket(
        bot, BOB, BOB_DM, channel=Channel.VIDEO, minutes=46, created_at=november
    )  # 2
    await make_ticket(bot, BOB, BOB_DM, kind=Kind.QUESTION, created_at=november)  # 0
    await make_ticket(bot, CAROL, CAROL_DM, minutes=30, created_at=november)  # 1
    await make_ticket(bot, CAROL, CAROL_DM, status=Status.CANCELLED, created_at=november)  # 0
    await make_ticket(bot, CAROL, CAROL_DM, minutes=300, created_at=december)  # after


async def test_monthly_consumption_for_a_seeded_month(bot):
    await seed_month(bot)
    start = datetime(2026, 11, 1, tzinfo=bot.services.tz)
    end = datetime(2026, 12, 1, tzinfo=bot.services.tz)
    rows = await balances.monthly_consumption(start, end)
    assert [
        (a.name, bought, billed, (b.purchased, b.billed, b.remaining))
        for a, bought, billed, b in rows
    ] == [
        ("ACME", 4, 4, (14, 8, 6)),
        (CAROL, 3, 1, (3, 1, 2)),
    ]
    assert rows[0][0].organisation_id is not None and rows[1][0].client_id is not None


async def test_report_in_chat_gains_the_prepaid_tickets_per_organisation(bot):
    await seed_month(bot)
    [report] = bodies(await staff(bot, "!report 2026-11"), STAFF_ROOM)
    clients_part, accounts_part = report.split("\n\n")
    assert defuse(ALICE) in clients_part and defuse(CAROL) in clients_part
    lines = accounts_part.splitlines()
    assert lines[0] == fr(bot, billing._BALANCES_TITLE, month="2026-11")
    cells = {
        line.split("|")[0].strip(): [c.strip() for c in line.split("|")[1:]] for line in lines[1:]
    }
    # purchased, billed, balance at the end of the month
    assert cells[fr(bot, billing._COL_ORGANISATION)] == [
        fr(bot, billing._COL_PURCHASED),
        fr(bot, billing._COL_BILLED),
        fr(bot, billing._COL_BALANCE),
    ]
    assert cells["ACME"] == ["4", "4", "6"]
    assert cells[defuse(CAROL)] == ["3", "1", "2"]
    assert cells[fr(bot, billing._TOTAL)] == ["7", "5", "8"]


async def test_report_rows_per_organisation_for_csv_and_json(bot):
    await seed_month(bot)
    rows = await balances.monthly_report(2026, 11, bot.services.tz)
    accounts = {row["organisation"]: row for row in rows if row["row"] == "organisation"}
    clients = {row["client"]: row for row in rows if row["row"] == "client"}
    assert clients[ALICE]["organisation"] == "ACME" and clients[CAROL]["organisation"] is None
    acme, carol = accounts["ACME"], accounts[CAROL]
    assert (acme["purchased"], acme["billed_tickets"], acme["balance"]) == (4, 4, 6)
    assert (acme["tickets"], acme["questions"], acme["minutes_video"]) == (2, 1, 46)
    assert (carol["purchased"], carol["billed_tickets"], carol["balance"]) == (3, 1, 2)
    assert carol["client"] == CAROL
    parsed = list(csv.DictReader(io.StringIO(repo.report_csv(rows))))
    assert [(r["row"], r["organisation"], r["purchased"], r["balance"]) for r in parsed[-2:]] == [
        ("organisation", "ACME", "4", "6"),
        ("organisation", CAROL, "3", "2"),
    ]


# -- month boundaries in local time (the report's months are the service's, Paris) ---------------

PARIS_MARCH_1 = datetime(2026, 2, 28, 23, 30, tzinfo=UTC)  # 00:30 on 1 March in Paris (UTC+1)
PARIS_MARCH_31 = datetime(2026, 3, 31, 21, 30, tzinfo=UTC)  # 23:30 on 31 March (UTC+2)
PARIS_APRIL_1 = datetime(2026, 3, 31, 22, 30, tzinfo=UTC)  # 00:30 on 1 April (UTC+2)


def balances_table(report: str) -> dict[str, list[str]]:
    """The prepaid tickets table of a `!report` answer: organisation → its cells."""
    part = report.split("\n\n")[-1]
    return {
        line.split("|")[0].strip(): [c.strip() for c in line.split("|")[1:]]
        for line in part.splitlines()[1:]
    }


async def test_rows_near_midnight_count_in_the_local_month(bot):
    """A purchase or a ticket counts in the month of the service's time zone: 00:30 in Paris
    on 1 March is 23:30 UTC on 28 February, yet March's."""
    await acme_with_alice(bot)
    acme = await Organisation.get(name="ACME")
    for count, at in (
        (10, datetime(2026, 2, 10, 9, 0, tzinfo=UTC)),
        (1, PARIS_MARCH_1),
        (2, PARIS_MARCH_31),
        (4, PARIS_APRIL_1),
    ):
        await Purchase.create(organisation=acme, tickets=count, recorded_by=STAFF, at=at)
    await make_ticket(bot, minutes=61, created_at=PARIS_MARCH_1)  # 2 tickets, March
    await make_ticket(bot, minutes=30, created_at=PARIS_APRIL_1)  # 1 ticket, April

    # purchased in the month, billed in the month, balance at its end
    expected = {
        "2026-02": ["10", "0", "10"],
        "2026-03": ["3", "2", "11"],
        "2026-04": ["4", "1", "14"],
    }
    for month, cells in expected.items():
        [report] = bodies(await staff(bot, f"!report {month}"), STAFF_ROOM)
        assert balances_table(report)["ACME"] == cells, month
    for month, opened in (("2026-02", 0), ("2026-03", 1), ("2026-04", 1)):
        rows = await balances.monthly_report(*map(int, month.split("-")), bot.services.tz)
        assert sum(r["tickets"] for r in rows if r["row"] == "client") == opened, month
