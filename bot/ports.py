"""What the handlers and the outbox need from the chat network, as a protocol: Matrix is one
implementation (`bot.matrix.transport.NioTransport`), the tests' recording transport another.

Pure declarations: nothing here imports nio.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


class TransportError(Exception):
    """A Matrix request failed. `retryable`: trying the same request later may work.

    Network errors, 5xx and rate limits are retryable; other 4xx answers are not.
    `retry_after` (seconds) is set when the server said how long to wait.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        errcode: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.errcode = errcode
        self.status = status

    @property
    def rate_limited(self) -> bool:
        return self.status == 429 or self.errcode == "M_LIMIT_EXCEEDED"


@runtime_checkable
class Transport(Protocol):
    """Acting on Matrix. Async methods raise `TransportError`; the others read local state."""

    @property
    def bot_user_id(self) -> str: ...

    async def send_event(
        self,
        room_id: str,
        event_type: str,
        content: dict[str, Any],
        txn_id: str,
        *,
        encrypt: bool = True,
    ) -> str:
        """Send an event; the event id. In an encrypted room it is encrypted, unless
        `encrypt` is False (a notice every member must be able to read)."""

    async def upload(self, data: bytes, content_type: str, filename: str) -> str: ...

    async def redact(self, room_id: str, event_id: str, reason: str | None = None) -> None:
        """Redact an event (the bot's own, when it erases what it wrote about someone); asking
        again for the same event is harmless."""

    async def create_room(
        self,
        *,
        name: str,
        invite: list[str],
        is_direct: bool,
        encrypted: bool,
        key: str | None = None,
    ) -> str:
        """A new room; with `key`, asking again with the same key returns the same room (a
        replay after a crash creates no second one)."""

    async def invite(self, room_id: str, user_id: str) -> None: ...

    async def ensure_room(self, room_id: str) -> None:
        """Know the room's state and whole member list (read it once if needed), so that
        `joined_members` and the other local reads are right for a room not seen lately."""

    def joined_members(self, room_id: str) -> set[str]: ...

    def power_level(self, room_id: str, user_id: str) -> int: ...

    def is_encrypted(self, room_id: str) -> bool: ...

    def is_direct(self, room_id: str) -> bool: ...
