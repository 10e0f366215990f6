"""The client intake end to end: the real bot process, a real Synapse, real nio clients.

Dates depend on the real clock here, so they are checked by shape ("… à 18:00"); the flow tests
check exact dates with a fixed clock.
"""

from __future__ import annotations

import re
import secrets
import time

import pytest
from nio import AsyncClient, RoomCreateResponse

from bot.testing.matrix import login_client, send_text, shared_room, sync_once, wait_for_message

from .conftest import RunningBot, make_running_bot

pytestmark = pytest.mark.e2e

DESCRIPTION_FR = "Mon questionnaire n'envoie plus les invitations par e-mail depuis lundi."
DESCRIPTION_EN = "My survey no longer sends the invitation e-mails since Monday."
INSTANCE = "https://survey.example.org 6.4.2 123456"
FR_QUESTIONS = {
    "category": "Quelle catégorie correspond à votre demande",
    "instance": "Quelle est l’adresse de votre LimeSurvey",
    "channel": "Quel mode d’assistance préférez-vous",
    "email": "À quelle adresse e-mail pouvons-nous vous contacter",
}
FR_THANKS = "Merci ! J’enregistre votre demande."
EN_THANKS = "Thank you! I am registering your request."
REF = re.compile(r"\bSP-\d{4}-\d{4}\b")
TIMEOUT = 30


def from_bot(bot: RunningBot, *needles: str):
    def predicate(event) -> bool:
        return event.sender == bot.bot_user_id and all(n in event.body for n in needles)

    return predicate


async def ask(client: AsyncClient, room: str, bot: RunningBot, text: str, *expected: str):
    """Send `text`, then wait for the bot's message containing every `expected` part."""
    await send_text(client, room, text)
    return await wait_for_message(client, room, from_bot(bot, *expected), timeout=TIMEOUT)


async def staff_card(bot: RunningBot, ref: str):
    return await wait_for_message(
        bot.staff, bot.staff_room_id, from_bot(bot, ref), timeout=TIMEOUT
    )


async def test_full_intake_in_french_opens_a_ticket_and_posts_the_card(running_bot):
    client, dm = await running_bot.new_client("alice")
    first = await ask(client, dm, running_bot, DESCRIPTION_FR, FR_QUESTIONS["category"])
    assert first.body.startswith("Bonjour !")  # one message: the welcome, then the question
    await ask(client, dm, running_bot, "5", FR_QUESTIONS["instance"])
    await ask(client, dm, running_bot, INSTANCE, FR_QUESTIONS["channel"])
    await ask(client, dm, running_bot, "1", FR_QUESTIONS["email"])
    summary = await ask(client, dm, running_bot, "alice@example.org", "alice@example.org")
    assert DESCRIPTION_FR in summary.body
    opened = await ask(client, dm, running_bot, "oui", "SP-")
    # One message: the thank-you, then the opened ticket.
    assert opened.body.startswith(f"{FR_THANKS}\n\nVotre ticket SP-")
    ref = REF.search(opened.body).group(0)
    assert ref.endswith("-0001")
    assert " à 18:00" in opened.body
    assert opened.source["content"]["msgtype"] == "m.notice"
    card = await staff_card(running_bot, ref)
    assert DESCRIPTION_FR in card.body


async def test_full_intake_in_english(running_bot):
    client, dm = await running_bot.new_client("bob")
    await ask(client, dm, running_bot, "!lang en", "English")
    await ask(client, dm, running_bot, DESCRIPTION_EN, "Which category fits your request?")
    await ask(client, dm, running_bot, "data", "What is the address of your LimeSurvey")
    await ask(client, dm, running_bot, "!skip", "How would you like to be helped?")
    await ask(client, dm, running_bot, "messaging", "Which e-mail address")
    await ask(client, dm, running_bot, "bob@example.org", "Here is your request:")
    opened = await ask(client, dm, running_bot, "yes", "Your ticket SP-")
    assert opened.body.startswith(f"{EN_THANKS}\n\nYour ticket SP-")
    assert re.search(r"by \w+day, \w+ \d{1,2}, \d{4} at 6:00 PM at the latest", opened.body)
    assert "A member of the support team will answer you here" in opened.body
    await staff_card(running_bot, REF.search(opened.body).group(0))


async def test_sigkill_mid_intake_resumes_at_the_same_step(running_bot):
    client, dm = await running_bot.new_client("carol")
    await ask(client, dm, running_bot, DESCRIPTION_FR, FR_QUESTIONS["category"])
    await ask(client, dm, running_bot, "5", FR_QUESTIONS["instance"])
    running_bot.kill()
    # Answered while the bot is down: handled after the restart, at the stored step.
    await send_text(client, dm, INSTANCE)
    await running_bot.start()
    await wait_for_message(
        client, dm, from_bot(running_bot, FR_QUESTIONS["channel"]), timeout=TIMEOUT
    )
    await ask(client, dm, running_bot, "1", FR_QUESTIONS["email"])
    running_bot.kill()
    await running_bot.start()
    await ask(client, dm, running_bot, "carol@example.org", "carol@example.org")
    opened = await ask(client, dm, running_bot, "oui", "SP-")
    ref = REF.search(opened.body).group(0)
    card = await staff_card(running_bot, ref)
    assert DESCRIPTION_FR in card.body and "survey.example.org" in card.body


async def test_bridged_intake_through_a_bridge_account(synapse, tmp_path):
    password = "pw-" + secrets.token_hex(8)
    bridge_id, _ = await synapse.register(f"nctalk{secrets.token_hex(3)}", password)
    bot = await make_running_bot(
        synapse, tmp_path, extra_toml=f'\n[[bridges]]\nuser_id = "{bridge_id}"\n'
    )
    await bot.start()
    bridge = await login_client(
        synapse.base_url, bridge_id, password, store_path=tmp_path / "bridge", encryption=False
    )
    bot.clients.append(bridge)
    try:
        created = await bridge.room_create(name="Talk: support", invite=[bot.bot_user_id])
        assert isinstance(created, RoomCreateResponse), created
        room = created.room_id
        await bot.wait_joined(bridge, room)

        async def alice(text: str, *expected: str):
            return await ask(bridge, room, bot, f"[nctalk] <Alice> {text}", "Alice: ", *expected)

        first = await alice(DESCRIPTION_FR, FR_QUESTIONS["category"])
        # The welcome and the question: one message, addressed once.
        assert first.body.startswith("Alice: Bonjour !") and first.body.count("Alice: ") == 1
        assert "formatted_body" not in first.source["content"]  # plain text for the bridge
        # Bob, behind the same bridge account, is a conversation of his own.
        bob = await ask(bridge, room, bot, "[nctalk] <Bob> Bonjour", "Bob: ")
        assert bob.body.startswith("Bob: Bonjour !") and bob.body.count("Bob: ") == 1
        await alice("5", FR_QUESTIONS["instance"])
        await alice("!passer", FR_QUESTIONS["channel"])
        await alice("1", FR_QUESTIONS["email"])
        await alice("alice@example.org", "alice@example.org")
        opened = await alice("oui", "SP-")
        assert opened.body.startswith(f"Alice: {FR_THANKS}\n\nVotre ticket SP-")
        assert opened.body.count("Alice: ") == 1 and " à 18:00" in opened.body
        card = await staff_card(bot, REF.search(opened.body).group(0))
        assert "Alice" in card.body
    finally:
        await bot.stop()
        for client in [*bot.clients, bot.staff]:
            await client.close()


async def accept_next_invite(client: AsyncClient, wait: float = TIMEOUT) -> str:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        await sync_once(client, timeout=0.5)
        if client.invited_rooms:
            room_id = next(iter(client.invited_rooms))
            await client.join(room_id)
            await sync_once(client)
            return room_id
    raise TimeoutError(f"{client.user_id} was invited nowhere")


async def test_request_in_a_shared_room_moves_to_a_private_room(running_bot, tmp_path):
    alice, _ = await running_bot.new_client("alice")
    bob, _ = await running_bot.new_client("bob")
    room = await shared_room(alice, bob, name="Our team")
    await alice.room_invite(room, running_bot.bot_user_id)
    await running_bot.wait_joined(alice, room)
    await sync_once(bob)

    moved = await ask(alice, room, running_bot, DESCRIPTION_FR, "invit")
    assert "invitations par e-mail" not in moved.body
    private = await accept_next_invite(alice)
    assert private != room
    question = await wait_for_message(
        alice, private, from_bot(running_bot, FR_QUESTIONS["category"]), timeout=TIMEOUT
    )
    assert question.body
    await ask(alice, private, running_bot, "5", FR_QUESTIONS["instance"])
    await ask(alice, private, running_bot, "!passer", FR_QUESTIONS["channel"])
    await ask(alice, private, running_bot, "1", FR_QUESTIONS["email"])
    await ask(alice, private, running_bot, "alice@example.org", "alice@example.org")
    opened = await ask(alice, private, running_bot, "oui", "SP-")
    ref = REF.search(opened.body).group(0)
    await staff_card(running_bot, ref)

    # Bob saw the move notice and nothing of the request; he was not invited.
    seen = [event for _, event in await sync_once(bob) if event.sender == running_bot.bot_user_id]
    assert private not in bob.invited_rooms and private not in bob.rooms
    for event in seen:
        assert ref not in event.body
        assert "invitations par e-mail" not in event.body
        assert "alice@example.org" not in event.body
