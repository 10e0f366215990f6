"""Who may do what (SPEC §4, §7): staff commands and staff reactions act only for staff, and a
client only ever sees and acts on their own requests.

The tables are built from the live registry (`handlers.build_router().commands` where
`spec.staff`), so a staff command added later is tried here without touching this file. Each
attempt is made against a real world (tickets in several states with their cards, a booking, a
block, logged time, a confirmation token), and checks two things: the answer (a staff command →
exactly the localized "staff command" refusal, in the room it was typed in; a reaction → no
message at all), and that nothing stored changed (a snapshot of every business table before and
after).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tortoise.models import Model

from bot.consent import issue_confirmation
from bot.dispatch import STAFF_ONLY
from bot.domain.tickets import Channel, Kind, Status, initial_state, sla_business_days
from bot.i18n import Msg
from bot.routing import Context, addressed
from bot.storage import repo
from bot.storage.models import (
    AuditEntry,
    Block,
    Booking,
    Client,
    ConfirmationToken,
    Conversation,
    Organisation,
    OrgMember,
    Purchase,
    Reaction,
    RefCounter,
    Reminder,
    SlotOffer,
    StaffFeed,
    Ticket,
    TicketNote,
    TimeLog,
    UserPref,
)
from bot.testing.harness import BOT, STAFF, STAFF_ROOM, BotHarness, FakeClock, Sent
from bot.testing.harness import test_config as make_config
from bot.video.jitsi import JitsiProvider
from handlers import build_router
from handlers.booking import offer_slots
from handlers.common import NOT_FOUND, post_card

# Monday 2026-11-30, 09:00 in Paris: call slots are free from 14:00 on.
MONDAY_9H = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
ALICE, BOB = "@alice:test", "@bob:test"
DM_A, DM_B = "!dm-alice:test", "!dm-bob:test"
MALLORY, DM_M = "@mallory:evil.example", "!dm-mallory:evil.example"
MEMBER, MEMBER_49 = "@member:test", "@member49:test"  # in the staff room, power 0 / 49
BRIDGE, TALK = "@nctalk:test", "!talk:test"

#: Arguments that would make each staff command act, in the world built below. A staff command
#: added later without an entry is tried with a ticket reference and a duration.
STAFF_ARGS: dict[str, str] = {
    "take": "{T1}",
    "queue": "",
    "ticket": "{T1}",
    "convert": "{Q1}",
    "slots": "",
    "block": "2026-12-11 14:00-16:00",
    "unblock": "{block}",
    "calendar": "",
    "estimate": "{T2} 10h",
    "log": "{T1} 1h20 not really",
    "resolve": "{T1}",
    "refuse-warranty": "{T4} no reason",
    "unsolvable": "{T1} no reason",
    "report": "2026-11",
    "book": "{T5}",
    "unbook": "{T5}",
    "org": "new ACME",
    "credit": "@alice:test 10 invoice 118",
    "noshow": "{T5}",
    "reply": "{T1} We are looking into it.",
    "dashboard": "",
}
DEFAULT_STAFF_ARGS = "{T1} 1h"
STAFF_REACTIONS = ("👀", "✅", "✔️", "❌", "🚫")
#: Time between two attempts: under the flood limit (20 client messages a minute), whose
#: notice would be one more answer.
PACE = timedelta(seconds=4)


def staff_commands() -> list[tuple[str, str]]:
    """(typed name, canonical name) of every staff command, every alias included."""
    return [
        (name, spec.names[0])
        for spec in build_router().commands
        if spec.staff
        for name in spec.names
    ]


# --- the world ---------------------------------------------------------------------------------


@dataclass
class World:
    refs: dict[str, str]
    cards: dict[str, str]
    reaction_ids: dict[str, str]

    def fill(self, template: str) -> str:
        return template.format(**self.refs)


async def make_ticket(
    bot: BotHarness,
    *,
    client: str = ALICE,
    room: str = DM_A,
    kind: Kind = Kind.TICKET,
    channel: Channel = Channel.MESSAGING,
    email: str | None = "alice@example.org",
) -> Ticket:
    """A ticket as the intake leaves it, with its card posted by the real `post_card`."""
    now = bot.clock()
    service = bot.config.service
    prefix = {
        Kind.TICKET: service.ticket_prefix,
        Kind.QUESTION: service.question_prefix,
        Kind.QUOTE: service.quote_prefix,
    }[kind]
    owner = await repo.get_or_create_client(client, now=now)
    ticket = await Ticket.create(
        ref=await repo.allocate_ref(prefix, 2026),
        kind=str(kind),
        status=str(initial_state(kind, channel).status),
        category="usage",
        channel=str(channel),
        client=owner,
        room_id=room,
        locale="fr",
        description="Les quotas de mon questionnaire ne se déclenchent pas.",
        email=email,
        created_at=now,
        sla_due=bot.services.calendar.deadline(now, sla_business_days(channel)),
    )
    bot.transport.members.setdefault(room, {BOT, client})

    async def job(ctx: Context) -> None:
        await post_card(ctx, ticket)
        if channel in (Channel.VIDEO, Channel.PHONE):
            await offer_slots(ctx, ticket)

    assert await bot.dispatcher.run_job(f"test-card:{ticket.ref}", job, room_id=STAFF_ROOM)
    await bot.deliverer.deliver_pending()
    await ticket.refresh_from_db()
    assert ticket.card_event_id is not None
    return ticket


async def staff_says(bot: BotHarness, text: str) -> list[Sent]:
    sent = await bot.say(STAFF_ROOM, STAFF, text)
    assert sent, text
    return sent


async def build_world(bot: BotHarness) -> World:
    """Real rows in many states, made through the real handlers where it matters."""
    t1 = await make_ticket(bot)  # open, unassigned: 👀 / !take would change it
    t2 = await make_ticket(bot, channel=Channel.INTERVENTION)
    await staff_says(bot, f"!estimate {t2.ref} 1h")  # waits for a staff ✅
    t3 = await make_ticket(bot, channel=Channel.INTERVENTION)
    await staff_says(bot, f"!estimate {t3.ref} 5h")  # waits for the client's consent
    t3 = await Ticket.get(id=t3.id)
    await issue_confirmation(
        t3,
        tickets=5,
        estimate_minutes=300,
        now=bot.clock(),
        days=7,
        secret=bot.config.web.secret,
    )
    t4 = await make_ticket(bot)
    await staff_says(bot, f"!log {t4.ref} 30 looked at it")
    await staff_says(bot, f"!resolve {t4.ref}")
    t5 = await make_ticket(bot, channel=Channel.VIDEO)
    await bot.say(DM_A, ALICE, "1")  # picks the first offered slot
    q1 = await make_ticket(bot, kind=Kind.QUESTION, channel=Channel.MESSAGING)
    await staff_says(bot, "!block 2026-12-10 14:00-16:00")
    t6 = await make_ticket(bot, client=BOB, room=DM_B, channel=Channel.INTERVENTION)
    await staff_says(bot, f"!estimate {t6.ref} 1h")
    await bot.react(STAFF_ROOM, STAFF, (await Ticket.get(id=t6.id)).card_event_id or "", "✅")
    staff_check = bot.last_reaction_id

    statuses = {
        t.ref: t.status for t in await Ticket.filter(id__in=[t1.id, t2.id, t3.id, t4.id, t6.id])
    }
    assert statuses == {
        t1.ref: Status.OPEN,
        t2.ref: Status.AWAITING_STAFF_CONFIRMATION,
        t3.ref: Status.AWAITING_CLIENT_CONFIRMATION,
        t4.ref: Status.RESOLVED,
        t6.ref: Status.CONFIRMED,
    }
    assert await Booking.filter(ticket_id=t5.id, status="active").count() == 1
    assert await ConfirmationToken.filter(ticket_id=t3.id).count() == 1
    assert await TimeLog.filter(ticket_id=t4.id).count() == 1
    block = await Block.first()
    assert block is not None
    tickets = {"T1": t1, "T2": t2, "T3": t3, "T4": t4, "T5": t5, "T6": t6, "Q1": q1}
    fresh = {name: await Ticket.get(id=t.id) for name, t in tickets.items()}
    return World(
        refs={**{name: t.ref for name, t in fresh.items()}, "block": str(block.id)},
        cards={name: t.card_event_id or "" for name, t in fresh.items()},
        reaction_ids={"staff_check": staff_check},
    )


SNAPSHOT_MODELS: tuple[type[Model], ...] = (
    Ticket,
    AuditEntry,
    TimeLog,
    Booking,
    Block,
    ConfirmationToken,
    Reaction,
    TicketNote,
    SlotOffer,
    Reminder,
    Client,
    Conversation,
    UserPref,
    StaffFeed,
    RefCounter,
    Organisation,
    OrgMember,
    Purchase,
)


async def snapshot() -> dict[str, list[dict[str, Any]]]:
    """Every business row (not the bookkeeping of handled events and the outbox)."""
    return {
        model.__name__: await model.all().order_by(model._meta.pk_attr).values()
        for model in SNAPSHOT_MODELS
    }


@pytest.fixture
async def bot(db_url: str) -> AsyncIterator[BotHarness]:
    config = make_config(bridges=[{"user_id": BRIDGE}])
    async with BotHarness.open(db_url, config, clock=FakeClock(MONDAY_9H)) as harness:
        harness.services.video = JitsiProvider(config.video.jitsi, now=harness.clock)
        transport = harness.transport
        # A bridge in the staff room, even with power: nobody speaking through it is staff.
        transport.members[STAFF_ROOM] |= {BRIDGE, MEMBER, MEMBER_49}
        transport.powers[STAFF_ROOM].update({BRIDGE: 100, MEMBER: 0, MEMBER_49: 49})
        transport.members[TALK] = {BOT, BRIDGE}
        transport.members[DM_M] = {BOT, MALLORY}
        yield harness


@pytest.fixture
async def world(bot: BotHarness) -> World:
    return await build_world(bot)


# --- who tries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Actor:
    id: str
    sender: str
    room: str
    nick: str | None = None  # speaking through the bridge as this nickname

    def body(self, text: str) -> str:
        return f"[nctalk] <{self.nick}> {text}" if self.nick is not None else text


ACTORS = [
    Actor("client-in-own-room", ALICE, DM_A),
    Actor("bridged-staff-id-nick", BRIDGE, TALK, nick=STAFF),
    Actor("bridged-staff-name-nick", BRIDGE, TALK, nick="staff"),
    Actor("bridged-staff-nick-in-staff-room", BRIDGE, STAFF_ROOM, nick=STAFF),
    Actor("bridge-account-in-staff-room", BRIDGE, STAFF_ROOM),
    Actor("other-server-own-room", MALLORY, DM_M),
    Actor("other-server-in-staff-room", MALLORY, STAFF_ROOM),
    Actor("staff-room-member-power-0", MEMBER, STAFF_ROOM),
    Actor("staff-room-member-power-49", MEMBER_49, STAFF_ROOM),
]


def refusal(bot: BotHarness, actor: Actor, name: str) -> tuple[str, str | None]:
    """(plain, formatted) of the staff-command refusal as this actor must get it."""
    text = bot.catalogs.get(bot.config.service.default_locale).render(
        Msg(STAFF_ONLY, {"name": name}), bot.services.tz
    )
    if actor.nick is not None:
        return addressed(actor.nick, text), None  # the nickname, defused, as the bot writes it
    return text, None  # plain text: a refusal has no markup


def variants(world: World) -> list[tuple[str, str]]:
    """(typed text, command name as the bot reads it) for every staff command."""
    tried = []
    for typed, canonical in staff_commands():
        args = world.fill(STAFF_ARGS.get(canonical, DEFAULT_STAFF_ARGS))
        tried.append((f"!{typed} {args}".strip(), typed))
        if args:
            tried.append((f"!{typed}", typed))
    tried += [("!QUEUE", "queue"), ("！queue", "queue"), (f"  !Take {world.refs['T1']}", "take")]
    return tried


def test_every_staff_command_has_arguments_that_make_it_act():
    """Keep STAFF_ARGS in step with the registry (a missing entry still gets tried)."""
    canonical = {name for _, name in staff_commands()}
    assert canonical, "no staff command registered?"
    assert canonical <= set(STAFF_ARGS) | {"book", "unbook"}, canonical - set(STAFF_ARGS)


@pytest.mark.parametrize("actor", ACTORS, ids=[a.id for a in ACTORS])
async def test_staff_commands_are_refused_to_anyone_but_staff(bot, world, actor):
    problems: list[str] = []
    for text, name in variants(world):
        bot.clock.advance(PACE)
        before = await snapshot()
        sent = await bot.say(actor.room, actor.sender, actor.body(text))
        plain, formatted = refusal(bot, actor, name)
        if len(sent) != 1:
            problems.append(f"{text!r}: {len(sent)} messages: {[s.body for s in sent]}")
        else:
            (answer,) = sent
            if answer.room_id != actor.room or answer.body != plain or answer.html != formatted:
                problems.append(f"{text!r}: answered {answer.room_id} {answer.body!r}")
        if await snapshot() != before:
            problems.append(f"{text!r}: stored rows changed")
    assert not problems, "\n".join(problems)


async def test_staff_get_no_refusal_for_the_same_commands(bot, world):
    """The control: with the same arguments, staff are not refused (so the table means it)."""
    for text, name in variants(world):
        if not text.split()[1:] and STAFF_ARGS.get(name, DEFAULT_STAFF_ARGS):
            continue  # the bare form of a command with arguments: a usage answer
        staff_actor = Actor("staff", STAFF, STAFF_ROOM)
        plain, _ = refusal(bot, staff_actor, name)
        sent = await bot.say(STAFF_ROOM, STAFF, text)
        assert sent, text
        assert all(s.body != plain for s in sent), text


# --- staff reactions ---------------------------------------------------------------------------

REACTORS = [
    Actor("client-in-staff-room", ALICE, STAFF_ROOM),
    Actor("client-in-own-room", ALICE, DM_A),
    Actor("bridge-account-in-staff-room", BRIDGE, STAFF_ROOM),
    Actor("other-server-in-staff-room", MALLORY, STAFF_ROOM),
    Actor("staff-room-member-power-0", MEMBER, STAFF_ROOM),
    Actor("staff-room-member-power-49", MEMBER_49, STAFF_ROOM),
]


@pytest.mark.parametrize("actor", REACTORS, ids=[a.id for a in REACTORS])
async def test_staff_reactions_on_real_cards_do_nothing_for_anyone_else(bot, world, actor):
    before = await snapshot()
    sent_before = len(bot.transport.sent)
    for card in ("T1", "T2", "T3", "T4", "T5", "Q1"):
        for key in STAFF_REACTIONS:
            bot.clock.advance(PACE)
            sent = await bot.react(actor.room, actor.sender, world.cards[card], key)
            assert sent == [], (card, key, [s.body for s in sent])
    assert len(bot.transport.sent) == sent_before
    assert await snapshot() == before


async def test_staff_reactions_on_real_cards_act_for_staff(bot, world):
    """The control: the same cards and keys do act when a staff member reacts."""
    sent = await bot.react(STAFF_ROOM, STAFF, world.cards["T1"], "👀")
    assert sent and (await Ticket.get(ref=world.refs["T1"])).assigned_to == STAFF
    await bot.react(STAFF_ROOM, STAFF, world.cards["T2"], "✅")
    assert (await Ticket.get(ref=world.refs["T2"])).status == Status.CONFIRMED
    await bot.react(STAFF_ROOM, STAFF, world.cards["T3"], "❌")
    assert (await Ticket.get(ref=world.refs["T3"])).status == Status.DECLINED


@pytest.mark.parametrize("actor", REACTORS, ids=[a.id for a in REACTORS])
async def test_removing_a_staff_confirmation_is_not_for_anyone_else(bot, world, actor):
    before = await snapshot()
    sent = await bot.redact(actor.room, actor.sender, world.reaction_ids["staff_check"])
    assert sent == []
    assert await snapshot() == before
    assert (await Ticket.get(ref=world.refs["T6"])).status == Status.CONFIRMED


# --- a client sees and acts on their own requests only -----------------------------------------

#: Client commands naming a reference, each with the ticket of Alice it would act on.
CLIENT_COMMANDS = [
    ("status", "T1"),
    ("statut", "T1"),
    ("cancel", "T1"),
    ("annuler", "T1"),
    ("accept", "T4"),
    ("accepter", "T4"),
    ("notsolved", "T4"),
    ("reopen", "T4"),
    ("rouvrir", "T4"),
    ("book", "T5"),
    ("rdv", "T5"),
    ("unbook", "T5"),
    ("confirm", "T3"),
    ("confirmer", "T3"),
    ("status", "Q1"),
    ("cancel", "Q1"),
    ("rate", "T4"),
    ("noter", "T4"),
]
PROBERS = [
    Actor("other-client", BOB, DM_B),
    Actor("other-client-in-owners-room", BOB, DM_A),
    Actor("bridged-nick-of-the-owner", BRIDGE, TALK, nick="Alice"),
    Actor("bridged-nick-equal-to-owner-id", BRIDGE, TALK, nick=ALICE),
    Actor("other-server", MALLORY, DM_M),
]


def unused_ref(ref: str) -> str:
    """A reference of the same shape that no request has."""
    prefix, year, _ = ref.split("-")
    return f"{prefix}-{year}-9999"


def without(sent: list[Sent], ref: str) -> list[tuple[str, str, str | None]]:
    return [
        (s.room_id, s.body.replace(ref, "<ref>"), (s.html or "").replace(ref, "<ref>"))
        for s in sent
    ]


@pytest.mark.parametrize("actor", PROBERS, ids=[a.id for a in PROBERS])
async def test_someone_elses_reference_answers_exactly_like_one_that_does_not_exist(
    bot, world, actor
):
    await make_ticket(bot, client=BOB, room=DM_B)  # Bob has requests of his own
    if actor.room == DM_A:
        bot.transport.members[DM_A].add(BOB)
    problems = []
    for command, owned in CLIENT_COMMANDS:
        ref = world.refs[owned]
        for typed in (ref, ref.lower()):
            bot.clock.advance(PACE * 2)
            before = await snapshot()
            theirs = await bot.say(actor.room, actor.sender, actor.body(f"!{command} {typed}"))
            missing = await bot.say(
                actor.room, actor.sender, actor.body(f"!{command} {unused_ref(typed)}")
            )
            if await snapshot() != before:
                problems.append(f"!{command} {typed}: stored rows changed")
            if len(theirs) != 1 or without(theirs, ref) != without(missing, unused_ref(ref)):
                problems.append(
                    f"!{command} {typed}: {[s.body for s in theirs]} vs "
                    f"{[s.body for s in missing]}"
                )
            else:
                text = bot.catalogs.get("fr").render(Msg(NOT_FOUND, {"ref": ref}), bot.services.tz)
                expected = addressed(actor.nick, text) if actor.nick is not None else text
                if theirs[0].body != expected or theirs[0].room_id != actor.room:
                    problems.append(f"!{command} {typed}: {theirs[0].body!r} is not 'not found'")
    assert not problems, "\n".join(problems)


async def test_the_owner_does_see_and_act_on_the_same_references(bot, world):
    """The control: the same commands work for the ticket's own client."""
    not_found = bot.catalogs.get("fr").render(
        Msg(NOT_FOUND, {"ref": world.refs["T1"]}), bot.services.tz
    )
    sent = await bot.say(DM_A, ALICE, f"!status {world.refs['T1']}")
    assert sent and sent[0].body != not_found and world.refs["T1"] in sent[0].body
    await bot.say(DM_A, ALICE, f"!accept {world.refs['T4']}")
    assert (await Ticket.get(ref=world.refs["T4"])).status == Status.CLOSED
    bot.clock.advance(PACE)
    await bot.say(DM_A, ALICE, f"!rate {world.refs['T4']} 5")
    assert (await Ticket.get(ref=world.refs["T4"])).rating == 5


async def test_tickets_lists_only_the_own_requests(bot, world):
    await make_ticket(bot, client=BOB, room=DM_B)
    sent = await bot.say(DM_B, BOB, "!tickets")
    alice_refs = [ref for name, ref in world.refs.items() if name not in ("block", "T6")]
    assert sent
    text = "\n".join(s.body for s in sent)
    assert world.refs["T6"] in text
    assert not [ref for ref in alice_refs if ref in text]
    assert "Les quotas" not in text
