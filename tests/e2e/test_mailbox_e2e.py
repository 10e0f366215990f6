"""The support mailbox in the running bot: `run_bot` with `[mail.inbound]` reads a real Dovecot
and hands its mails to the sink it was given (by default the e-mail channel, tested end to end
with the demo in tests/e2e/test_demo.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import aiohttp
import pytest
from tortoise.transactions import in_transaction

from bot.app import run_bot
from bot.config import load_config
from bot.mailbox.imap import KEYWORD
from bot.mailbox.raw import MailSink, RawMail
from bot.services import Services
from bot.storage import mailbox as positions
from tests.imap import PASSWORD, USER

from .conftest import make_running_bot

pytestmark = pytest.mark.e2e

MAIL = (
    b"From: Claire Dupont <claire.dupont@example.org>\r\n"
    b"To: support@sondages.pro\r\n"
    b"Subject: Export des reponses\r\n"
    b"\r\n"
    b"Bonjour, l'export CSV de mon questionnaire est vide.\r\n"
)


async def eventually(condition: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.1)


async def test_the_running_bot_hands_the_mailbox_to_its_sink(
    synapse, tmp_path, imap_server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.mailbox")
    server = imap_server()
    await server.append(MAIL)
    bot = await make_running_bot(
        synapse,
        tmp_path,
        extra_toml=f"""
[mail.inbound]
host = "127.0.0.1"
port = {server.port}
tls = "none"
username = "{USER}"
password = "{PASSWORD}"
poll_interval = 1
""",
    )
    config = load_config(bot.config_path, env={})
    stop = asyncio.Event()
    try:
        # A sink given to run_bot (the e-mail handler's place) gets the mails, in order.
        handled: list[RawMail] = []

        def sink(services: Services) -> MailSink:
            async def handle(mail: RawMail) -> bool:
                async with in_transaction():
                    now = services.clock()
                    if await positions.advance(mail.folder, mail.uidvalidity, mail.uid, now=now):
                        handled.append(mail)
                return True

            return handle

        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_bot(config, stop=stop, ready=ready.set, mail_sink=sink))
        await asyncio.wait_for(ready.wait(), 60)
        await eventually(lambda: [m.uid for m in handled] == [1], "the waiting mail handled")
        await server.append(MAIL.replace(b"vide", b"toujours vide"))
        await eventually(lambda: [m.uid for m in handled] == [1, 2], "the new one too")
        assert handled[0].raw == MAIL
        async with aiohttp.ClientSession() as http:
            url = f"http://{config.metrics.listen}/metrics"
            async with http.get(url) as response:
                text = await response.text()
        assert "support_bot_mailbox_mails_read_total 2.0" in text
        assert "support_bot_mailbox_connected 1.0" in text
        stop.set()
        await asyncio.wait_for(task, 30)
        assert {"\\Seen", KEYWORD} <= await server.flags(2)
    finally:
        stop.set()
        await bot.staff.close()
