"""Issue #13: the bot as Element's users meet it, driven with Element's own SDK.

matrix-js-sdk with its Rust crypto (`tests/js`, run by Node ≥ 22) plays the client, in an
encrypted direct chat with the real bot process on the session's Synapse.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio

from .conftest import RunningBot
from .element_sdk import ElementClient
from .test_intake_e2e import DESCRIPTION_FR, FR_QUESTIONS, TIMEOUT

pytestmark = pytest.mark.e2e

ElementFactory = Callable[..., Awaitable[ElementClient]]


@pytest_asyncio.fixture
async def element(running_bot: RunningBot) -> AsyncIterator[ElementFactory]:
    """`await element("erin", isolation=..., cross_sign=...)`: a new user on the js-sdk."""
    clients: list[ElementClient] = []

    async def make(localpart: str, **modes: Any) -> ElementClient:
        user = f"{localpart}{secrets.token_hex(3)}"
        password = "pw-" + secrets.token_hex(8)
        user_id, _ = await running_bot.synapse.register(user, password)
        client = await ElementClient.start(
            running_bot.synapse.base_url,
            user_id,
            password,
            log_path=running_bot.workdir / "element" / f"{user}.log",
            **modes,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def test_first_answer_in_an_encrypted_dm(running_bot, element):
    bot = running_bot
    client = await element("erin")
    dm = await client.create_dm(bot.bot_user_id)
    await client.send(dm, DESCRIPTION_FR)
    answer = await client.wait_for(dm, bot.bot_user_id, FR_QUESTIONS["category"], timeout=TIMEOUT)
    assert answer["decrypted"], answer
    print(answer)
