"""A real SMTP server for tests: aiosmtpd on a free loopback port, keeping what it receives."""

from __future__ import annotations

import contextlib
import email
import email.policy
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from bot.testing.net import free_port


@dataclass
class Inbox:
    """The aiosmtpd handler: each mail's recipients and parsed message, and its raw bytes."""

    messages: list[tuple[list[str], EmailMessage]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append((list(envelope.rcpt_tos), parsed))
        self.raw.append(envelope.content)
        return "250 Message accepted"


@contextlib.contextmanager
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    """A running server and its port; stopped on exit."""
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()
