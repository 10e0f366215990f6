"""The floor for `latency.py`: a bare matrix-nio bot that joins on invite and answers every text
message with an `m.notice`. No database, no encryption, no dispatcher: what is left is the
homeserver and nio.

    python bench/echo_bot.py HOMESERVER USER_ID PASSWORD
"""

import asyncio
import sys

from nio import AsyncClient, InviteMemberEvent, LoginResponse, MatrixRoom, RoomMessageText

READY = "echo-bot ready"
# Same shape as support-bot's filter: lazy-loaded members, no presence, room for bursts.
FILTER = {
    "room": {
        "state": {"lazy_load_members": True},
        "timeline": {"limit": 50, "lazy_load_members": True},
    },
    "presence": {"not_types": ["*"]},
}


async def main(homeserver: str, user_id: str, password: str) -> None:
    client = AsyncClient(homeserver, user_id)
    login = await client.login(password, device_name="echo bot")
    if not isinstance(login, LoginResponse):
        sys.exit(f"login failed: {login}")
    await client.sync(timeout=0, sync_filter=FILTER, full_state=True)  # skip the history
    tasks: set[asyncio.Task] = set()

    def spawn(coro) -> None:  # sends run beside the sync loop, not inside its callbacks
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def on_invite(room: MatrixRoom, event: InviteMemberEvent) -> None:
        if event.state_key == client.user_id and event.membership == "invite":
            spawn(client.join(room.room_id))

    async def on_message(room: MatrixRoom, event: RoomMessageText) -> None:
        if event.sender != client.user_id:
            content = {"msgtype": "m.notice", "body": f"echo: {event.body}"}
            spawn(client.room_send(room.room_id, "m.room.message", content))

    client.add_event_callback(on_invite, InviteMemberEvent)
    client.add_event_callback(on_message, RoomMessageText)
    print(READY, flush=True)
    try:
        await client.sync_forever(timeout=30_000, sync_filter=FILTER)
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
