"""Issue #16 §1–2 in an encrypted direct chat, end to end: the prepaid balance and the rating.

The real bot process on the session's Synapse; a client with end-to-end encryption (nio, its
own key store) opens a ticket through the intake, in English or in French; staff credit them
three tickets and log 1 h 30 in the staff room: with the ticket the opening billed, two
are used. The client reads, decrypted, the warning that their balance fell to one ticket and
the answer to `!balance` / `!solde`. Staff resolve, the client accepts, and rates by
reacting 4️⃣ on the question.

The reaction goes out as Element sends it in an encrypted room: a plain `m.reaction` (the
relation must stay readable by the homeserver, so neither matrix-js-sdk nor nio encrypts
reactions). What is checked is what the client reads, decrypted, word for word as the
catalogs render it; on the wire every message of the bot in the chat is Megolm-encrypted,
and the client is left with no message it cannot decrypt.
"""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

import pytest
from nio import AsyncClient, MegolmEvent, RoomMessagesResponse, RoomSendResponse

from bot.cards import _RATING, defuse
from bot.i18n import Catalogs, Msg
from bot.storage.models import Ticket
from bot.testing.matrix import Message, send_text, wait_for_message
from handlers import billing, closing, common, orgs
from handlers import satisfaction as rating

from .conftest import RunningBot
from .test_encrypted_intake import MEGOLM, assert_readable_and_never_cannot_read, wire_events
from .test_intake_e2e import DESCRIPTION_EN, DESCRIPTION_FR, INSTANCE, REF, TIMEOUT, ask

pytestmark = pytest.mark.e2e

STAFF_LOCALE = "fr"  # the service's default language, the staff room's
TZ = ZoneInfo("Europe/Paris")


@dataclass(frozen=True)
class Speaker:
    """How a client of one language goes through the intake and types the commands."""

    locale: str
    steps: tuple[tuple[str, str], ...]  # (what the client types, a part of the bot's answer)
    balance: str
    accept: str


SPEAKERS = {
    "en": Speaker(
        "en",
        (
            ("!lang en", "English"),
            (DESCRIPTION_EN, "Which category fits your request?"),
            ("data", "What is the address of your LimeSurvey"),
            (INSTANCE, "How would you like to be helped?"),
            ("messaging", "Which e-mail address"),
            ("{email}", "Here is your request:"),
            ("yes", "Your ticket SP-"),
        ),
        "!balance",
        "!accept",
    ),
    "fr": Speaker(
        "fr",
        (
            (DESCRIPTION_FR, "Quelle catégorie correspond à votre demande"),
            ("5", "Quelle est l’adresse de votre LimeSurvey"),
            (INSTANCE, "Quel mode d’assistance préférez-vous"),
            ("1", "À quelle adresse e-mail pouvons-nous vous contacter"),
            ("{email}", "{email}"),
            ("oui", "Votre ticket SP-"),
        ),
        "!solde",
        "!accepter",
    ),
}


def rendered(locale: str, msgid: str | Msg, **params: object) -> str:
    msg = msgid if isinstance(msgid, Msg) else Msg(msgid, params)
    return Catalogs.load().get(locale).render(msg, TZ)


def new_from_bot(bot: RunningBot, *, start: str = "", has: str = ""):
    """A new message (not an edit) of the bot beginning with `start` and holding `has`."""

    def match(event) -> bool:
        return (
            event.sender == bot.bot_user_id
            and "m.relates_to" not in event.source.get("content", {})
            and event.body.startswith(start)
            and has in event.body
        )

    return match


async def staff_says(bot: RunningBot, text: str, *, start: str = "", has: str = ""):
    await send_text(bot.staff, bot.staff_room_id, text)
    return await wait_for_message(
        bot.staff, bot.staff_room_id, new_from_bot(bot, start=start, has=has), timeout=TIMEOUT
    )


async def client_reads(bot: RunningBot, client: AsyncClient, dm: str, text: str):
    """The bot's message `text` (exactly), as `client` decrypted it."""
    return await wait_for_message(
        client, dm, lambda e: e.sender == bot.bot_user_id and e.body == text, timeout=TIMEOUT
    )


async def history(client: AsyncClient, dm: str) -> list:
    """The chat's events as `client` reads them from the homeserver's history (nio decrypts
    what it has the keys for; what it cannot stays a `MegolmEvent`)."""
    page = await client.room_messages(dm, start=client.next_batch, limit=200)
    assert isinstance(page, RoomMessagesResponse), page
    return page.chunk


@pytest.mark.parametrize("locale", sorted(SPEAKERS))
async def test_balance_warning_solde_and_rating_by_reaction_in_an_encrypted_chat(
    running_bot, bot_db, locale
):
    bot = running_bot
    speaker = SPEAKERS[locale]
    await bot.wait_joined(bot.staff, bot.staff_room_id)
    client, dm = await bot.new_client(f"enc{locale}", encrypted=True)
    assert client.rooms[dm].encrypted
    email = f"{client.user_id[1:].split(':')[0]}@example.org"

    # 1. The intake, in the client's language: a ticket is opened.
    answers = []
    for typed, expected in speaker.steps:
        answers.append(
            await ask(client, dm, bot, typed.format(email=email), expected.format(email=email))
        )
    ref = REF.search(answers[-1].body).group(0)

    # 2. Three tickets bought, one already billed by the opening (2 left); 1 h 30 logged
    # bills a second one: the balance falls to one ticket, and the client is warned.
    credited = rendered(
        STAFF_LOCALE,
        orgs._CREDITED,
        tickets=common.balance_tickets(3),
        account=defuse(client.user_id),
    )
    await staff_says(bot, f"!credit {client.user_id} 3", start=credited)
    await send_text(bot.staff, bot.staff_room_id, f"!log {ref} 1h30")
    counted = rendered(
        locale,
        billing._CROSSED_CLIENT,
        ref=ref,
        tickets=common.tickets_msg(2),
        rule=Msg(billing._RULE_HOUR),
    )
    answers.append(await client_reads(bot, client, dm, counted))
    own = Msg(common.BALANCE_OWN)
    warning = rendered(
        locale, common._LOW_CLIENT, subject=own, remaining=common.balance_tickets(1), ref=ref
    )
    answers.append(await client_reads(bot, client, dm, warning))

    await send_text(client, dm, speaker.balance)
    line = rendered(
        locale,
        common.BALANCE_LINE,
        subject=own,
        remaining=common.balance_tickets(1),
        purchased=common.balance_tickets(3),
        billed=common.tickets_msg(2),
    )
    answers.append(await client_reads(bot, client, dm, line))

    # 3. Resolved, accepted: the rating question; a 4️⃣ on it, as Element sends it.
    await send_text(bot.staff, bot.staff_room_id, f"!resolve {ref}")
    resolved = rendered(locale, closing._RESOLVED_CLIENT, ref=ref)
    answers.append(await client_reads(bot, client, dm, resolved))
    await send_text(client, dm, f"{speaker.accept} {ref}")
    # The thanks for accepting, up to its warranty date (the real clock's).
    accepted = rendered(locale, closing._ACCEPTED_CLIENT, ref=ref, warranty_until="\0")
    accepted = accepted.split("\0")[0]
    answers.append(
        await wait_for_message(client, dm, new_from_bot(bot, start=accepted), timeout=TIMEOUT)
    )
    question = await client_reads(bot, client, dm, rendered(locale, rating._QUESTION, ref=ref))
    answers.append(question)
    reacted = await client.room_send(
        dm,
        "m.reaction",
        {"m.relates_to": {"rel_type": "m.annotation", "event_id": question.event_id, "key": "4️⃣"}},
    )
    assert isinstance(reacted, RoomSendResponse), reacted
    thanks = (
        rendered(locale, rating._THANKS, ref=ref, stars=4)
        + " "
        + rendered(locale, rating._COMMENT_INVITE)
    )
    answers.append(await client_reads(bot, client, dm, thanks))

    # Staff see the rating on the ticket; it is stored with it.
    await staff_says(
        bot, f"!ticket {ref}", start=f"🎫 {ref}", has=rendered(STAFF_LOCALE, _RATING, stars=4)
    )
    assert (await Ticket.get(ref=ref)).rating == 4

    # Every message of the bot in the chat went encrypted, and the client read them all.
    assert_readable_and_never_cannot_read(answers)
    wire = await wire_events(bot, client, dm)
    sent = [
        e
        for e in wire
        if e["sender"] == bot.bot_user_id and e["type"] in ("m.room.message", "m.room.encrypted")
    ]
    assert len(sent) >= len(answers)
    assert all(
        e["type"] == "m.room.encrypted" and e["content"]["algorithm"] == MEGOLM for e in sent
    )
    [reaction] = [e for e in wire if e["event_id"] == reacted.event_id]
    assert reaction["type"] == "m.reaction"  # in the clear, as Element sends it
    read = await history(client, dm)
    assert [e for e in read if isinstance(e, MegolmEvent)] == []
    from_the_bot = [e for e in read if isinstance(e, Message) and e.sender == bot.bot_user_id]
    assert len(from_the_bot) == len(sent)
