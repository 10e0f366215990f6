"""matrix-nio client helpers for end-to-end tests and benchmarks.

These clients play the humans (customers, staff) talking to the bot through a real homeserver.
`wait_for_message` reads what arrives by syncing the client itself: do not run `sync_forever`
on such a client, and call `sync_once` rather than `client.sync`, so that no message is lost.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    LoginResponse,
    MessageDirection,
    RoomCreateResponse,
    RoomInviteResponse,
    RoomMessageNotice,
    RoomMessagesError,
    RoomMessageText,
    RoomSendResponse,
    SyncError,
    SyncResponse,
)

Message = RoomMessageText | RoomMessageNotice
Predicate = Callable[[Message], bool]

# Synapse puts at most 10 events of a room in one sync by default; a burst beyond that arrives
# with `limited: true`. Ask for more, and fill any remaining gap with /messages.
DEFAULT_TIMELINE_LIMIT = 100
# Longest single long-poll, so a timeout is noticed even on a silent server.
_MAX_POLL = 5.0

# Messages that a sync brought but no waiter has taken yet, per client: a reply that arrived in
# the same sync as the one a test was waiting for is kept for the next wait, not dropped.
_backlogs: weakref.WeakKeyDictionary[AsyncClient, deque[tuple[str, Message]]] = (
    weakref.WeakKeyDictionary()
)


def sync_filter(timeline_limit: int = DEFAULT_TIMELINE_LIMIT) -> dict[str, Any]:
    return {"room": {"timeline": {"limit": timeline_limit}}}


async def login_client(
    base_url: str,
    user_id: str,
    password: str,
    *,
    store_path: Path,
    device_name: str = "support-bot test client",
    encryption: bool = True,
) -> AsyncClient:
    """A logged-in `AsyncClient` that has done its first sync (so waits see only new events).

    With `encryption`, the E2EE store lives in `store_path` and the device keys are uploaded,
    so the client can take part in encrypted rooms. The caller closes the client.
    """
    await asyncio.to_thread(store_path.mkdir, parents=True, exist_ok=True)
    config = AsyncClientConfig(encryption_enabled=encryption, store_sync_tokens=False)
    client = AsyncClient(base_url, user_id, store_path=str(store_path), config=config)
    try:
        response = await client.login(password, device_name=device_name)
        if not isinstance(response, LoginResponse):
            raise RuntimeError(f"login of {user_id} failed: {response}")
        if encryption and client.should_upload_keys:
            await client.keys_upload()
        first = await client.sync(timeout=0, sync_filter=sync_filter(), full_state=True)
        if not isinstance(first, SyncResponse):
            raise RuntimeError(f"first sync of {user_id} failed: {first}")
    except BaseException:
        await client.close()
        raise
    return client


async def sync_once(
    client: AsyncClient,
    *,
    timeout: float = 0.0,
    timeline_limit: int = DEFAULT_TIMELINE_LIMIT,
) -> list[tuple[str, Message]]:
    """One sync. Use it instead of `client.sync` on clients given to `wait_for_message`.

    Returns the (room_id, message) pairs of text and notice messages from other users in
    joined rooms, oldest first, and keeps them for the next `wait_for_message`. A limited
    timeline is completed with /messages back to the previous sync token: nothing is lost.
    Raises `SyncFailed` if the homeserver answered with an error.
    """
    since = client.next_batch
    response = await client.sync(
        timeout=int(timeout * 1000), sync_filter=sync_filter(timeline_limit), since=since
    )
    if isinstance(response, SyncError):
        raise SyncFailed(f"sync failed: {response}")
    if client.olm is not None:
        await _encryption_housekeeping(client)
    messages: list[tuple[str, Message]] = []
    for room_id, info in response.rooms.join.items():
        events = list(info.timeline.events)
        if info.timeline.limited and since and info.timeline.prev_batch:
            events = await _fetch_gap(client, room_id, info.timeline.prev_batch, since) + events
        messages.extend(
            (room_id, event)
            for event in events
            if isinstance(event, RoomMessageText | RoomMessageNotice)
            and event.sender != client.user_id
        )
    _backlog(client).extend(messages)
    return messages


async def wait_for_message(
    client: AsyncClient,
    room_id: str,
    predicate: Predicate | None = None,
    timeout: float = 15.0,
    *,
    timeline_limit: int = DEFAULT_TIMELINE_LIMIT,
) -> Message:
    """Sync until a text or notice message from another user matching `predicate` arrives.

    Messages that arrived in earlier syncs and were not taken by an earlier wait are
    considered first, oldest first; the one returned is taken. Raises `TimeoutError`
    (listing what did arrive in the room) after `timeout` seconds.
    """
    found = await wait_for_messages(
        client, room_id, 1, predicate, timeout, timeline_limit=timeline_limit
    )
    return found[0]


async def wait_for_messages(
    client: AsyncClient,
    room_id: str,
    count: int,
    predicate: Predicate | None = None,
    timeout: float = 15.0,
    *,
    timeline_limit: int = DEFAULT_TIMELINE_LIMIT,
) -> list[Message]:
    """Like `wait_for_message`, for `count` matching messages, returned in timeline order."""
    backlog = _backlog(client)
    found: list[Message] = []

    def take() -> None:
        kept: list[tuple[str, Message]] = []
        while backlog:
            event_room, event = backlog.popleft()
            if (
                len(found) < count
                and event_room == room_id
                and (predicate is None or predicate(event))
            ):
                found.append(event)
            else:
                kept.append((event_room, event))
        backlog.extend(kept)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_error: SyncFailed | None = None
    take()
    while len(found) < count:
        remaining = deadline - loop.time()
        if remaining <= 0:
            seen = [f"{event.sender}: {event.body!r}" for rid, event in backlog if rid == room_id]
            raise TimeoutError(
                f"{client.user_id} got {len(found)} of {count} matching message(s) in "
                f"{room_id} within {timeout} s; other messages there: {seen[-10:]}"
                + (f"; last sync error: {last_error}" if last_error else "")
            )
        try:
            await sync_once(
                client, timeout=min(remaining, _MAX_POLL), timeline_limit=timeline_limit
            )
        except SyncFailed as error:
            last_error = error
            await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))
            continue
        take()
    return found


def discard_messages(client: AsyncClient) -> None:
    """Forget the messages kept for `wait_for_message` (e.g. between phases of a test)."""
    _backlog(client).clear()


async def shared_room(creator: AsyncClient, *members: AsyncClient, **room_create: Any) -> str:
    """Create a room, invite and join `members`, and sync everyone once; return its id.

    The sync matters: nio only knows a room after a sync, and `room_send` of a client with
    encryption enabled refuses rooms it does not know.
    """
    created = await creator.room_create(**room_create)
    if not isinstance(created, RoomCreateResponse):
        raise RuntimeError(f"room_create failed: {created}")
    for member in members:
        invited = await creator.room_invite(created.room_id, member.user_id)
        if not isinstance(invited, RoomInviteResponse):
            raise RuntimeError(f"invite of {member.user_id} failed: {invited}")
        joined = await member.join(created.room_id)
        if not isinstance(joined, JoinResponse):
            raise RuntimeError(f"join of {member.user_id} failed: {joined}")
    for client in (creator, *members):
        await sync_once(client)
    return created.room_id


async def send_text(
    client: AsyncClient, room_id: str, body: str, *, msgtype: str = "m.text"
) -> str:
    """Send a plain message; return its event id."""
    sent = await client.room_send(
        room_id,
        "m.room.message",
        {"msgtype": msgtype, "body": body},
        ignore_unverified_devices=True,
    )
    if not isinstance(sent, RoomSendResponse):
        raise RuntimeError(f"sending to {room_id} failed: {sent}")
    return sent.event_id


class SyncFailed(RuntimeError):
    """A sync returned an error."""


async def _encryption_housekeeping(client: AsyncClient) -> None:
    """What `sync_forever` does after each sync, so plain syncs keep E2EE working."""
    if client.should_upload_keys:
        await client.keys_upload()
    if client.should_query_keys:
        await client.keys_query()
    if client.should_claim_keys:
        await client.keys_claim(client.get_users_for_key_claiming())
    await client.send_to_device_messages()


def _backlog(client: AsyncClient) -> deque[tuple[str, Message]]:
    return _backlogs.setdefault(client, deque())


async def _fetch_gap(client: AsyncClient, room_id: str, start: str, until: str) -> list[Any]:
    """Events between the sync token `until` and the timeline's `prev_batch`, oldest first."""
    events: list[Any] = []
    token = start
    while True:
        for attempt in range(3):
            page = await client.room_messages(
                room_id, start=token, end=until, direction=MessageDirection.back, limit=100
            )
            if not isinstance(page, RoomMessagesError):
                break
            await asyncio.sleep(0.2 * (attempt + 1))
        else:
            # Not SyncFailed: the sync token has already moved on, so retrying the sync would
            # silently lose these events.
            raise RuntimeError(f"/messages in {room_id} failed: {page}")
        events.extend(page.chunk)
        if not page.chunk or not page.end or page.end == token:
            break
        token = page.end
    events.reverse()
    return events
