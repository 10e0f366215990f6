"""The video-meeting interface shared by every provider.

A provider turns one booking into a `Meeting`: one link for the client, one for the staff
member. Links are bearer credentials (whoever holds one joins with its role), so `Meeting`
keeps them out of its `repr` and nothing here logs them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import aiohttp


async def read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or its first `limit + 1` bytes when it is longer (caller refuses it)."""
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            break
    return bytes(body[: limit + 1])


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Meeting:
    """One booked call.

    `client_url` goes to the client (viewer / plain participant), `staff_url` to the staff room
    (moderator). `extra` holds provider details worth persisting (room name, token, creation
    time…); it never holds secrets.
    """

    provider: str
    meeting_id: str
    client_url: str = field(repr=False)
    staff_url: str = field(repr=False)
    extra: Mapping[str, Any] = field(default_factory=_empty)


class VideoError(Exception):
    """A provider refused or could not be reached.

    `key` is short and stable (BigBlueButton's `messageKey`, e.g. `checksumError`, or one of
    ours: `unreachable`, `httpError`, `invalidResponse`, `unauthorized`, `notConfigured`…);
    `detail` is a human-readable explanation meant for staff and logs. Neither ever contains
    a raw server answer or a signed URL: show the client a generic, translated message.
    """

    def __init__(self, key: str, detail: str = "") -> None:
        self.key = key
        self.detail = detail
        super().__init__(f"{key}: {detail}" if detail else key)


@runtime_checkable
class VideoProvider(Protocol):
    """What the booking code needs from a video service."""

    name: str

    async def create_meeting(
        self,
        *,
        booking_id: str,
        title: str,
        start: datetime,
        minutes: int,
        staff_name: str,
        client_name: str,
    ) -> Meeting:
        """Create (or re-use, for the same `booking_id`) the meeting and return its links.

        `title` must not contain personal data (e.g. "Support SP-2026-0042"): servers show
        it to everyone and may keep it in recordings. `start` must be time-zone aware.
        Raises `VideoError`.
        """
        ...

    async def prepare(self, meeting: Meeting) -> None:
        """Make sure the meeting can be joined now (call shortly before `start`).

        A no-op for providers whose rooms live forever (Jitsi, Nextcloud Talk); BigBlueButton
        forgets meetings on restart or when nobody joined in time, so it creates it again
        (`create` is idempotent and the join links stay valid). Raises `VideoError`.
        """
        ...

    async def end_meeting(self, meeting: Meeting) -> None:
        """End the meeting for good: nobody joins it again with its links.

        Called after the booking's change is committed (the call was cancelled, replaced or
        is long over), and possibly again after a crash: a meeting that is already gone is
        success. A no-op for Jitsi (its rooms vanish with their last participant); Nextcloud
        Talk deletes the conversation, BigBlueButton sends `end`. Raises `VideoError`.
        """
        ...
