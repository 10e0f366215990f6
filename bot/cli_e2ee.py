"""`support-bot e2ee status|setup|restore`: the bot's cross-signing identity, for its operator.

`status` only looks (it may run beside the bot). `setup` and `restore` act as the bot's own
device: they open its key store, so the bot must be stopped (the store's lock refuses
otherwise), and log in as the bot does (the stored session, else a new device).

The recovery key is printed on standard output by `setup` (or written, mode 0600, to the file
`--recovery-key-file` names; an existing file is never overwritten), and read by `restore` from
such a file or standard input (typed without echo on a terminal). It never goes to the logs.
Exit codes: 0 done, 1 refused (what to do is printed on standard error).
"""

from __future__ import annotations

import asyncio
import getpass
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

from bot.config import Config
from bot.matrix.crosssign import (
    CrossSigning,
    CrossSigningError,
    IdentityStatus,
    fingerprint,
    read_recovery_key,
)
from bot.matrix.runtime import MatrixStartError
from bot.matrix.session import Session, write_private_file
from bot.matrix.transport import RoomFacts
from bot.ports import TransportError
from bot.storage.db import database

__all__ = ["e2ee_restore", "e2ee_setup", "e2ee_status"]

EXIT_OK = 0
EXIT_REFUSED = 1
T = TypeVar("T")


@asynccontextmanager
async def _device(config: Config) -> AsyncIterator[CrossSigning]:
    """The bot's device, logged in with its keys uploaded, as at the bot's start."""
    session = Session(config.matrix, RoomFacts())
    await session.open()
    try:
        await session.forget_other_account()
        await session.login()
        await session.upload_keys()
        yield CrossSigning(session, config.matrix)
    finally:
        await session.close()


async def _refusing(action: Callable[[], Awaitable[T]]) -> T | int:
    """`action`'s result, or EXIT_REFUSED after printing why (never a traceback)."""
    try:
        return await action()
    except (CrossSigningError, MatrixStartError, TransportError) as error:
        print(f"support-bot e2ee: {error}", file=sys.stderr)
        return EXIT_REFUSED


async def e2ee_status(config: Config) -> int:
    async def look() -> IdentityStatus:
        session = Session(config.matrix, RoomFacts())
        try:
            await session.view()
            return await CrossSigning(session, config.matrix).status()
        finally:
            await session.close()

    async with database(config.database.url):
        status = await _refusing(look)
    if isinstance(status, int):
        return status
    print(_describe(status))
    return EXIT_OK


def _describe(status: IdentityStatus) -> str:
    if status.master is None:
        return "\n".join(
            [
                f"account:          {status.user_id} (device {status.device_id})",
                "cross-signing:    none (the bot creates it at its next start, or run "
                "`support-bot e2ee setup`)",
            ]
        )
    holds = {True: "yes", False: "no (run `support-bot e2ee restore`)", None: "cannot tell"}
    storage = status.secret_storage_key
    return "\n".join(
        [
            f"account:          {status.user_id} (device {status.device_id})",
            "cross-signing:    yes",
            f"master key:       {fingerprint(status.master)}",
            f"device signed:    {'yes' if status.device_signed else 'no'}",
            f"store holds keys: {holds[status.store_holds_keys]}",
            f"secret storage:   {f'default key {storage}' if storage else 'none'}",
        ]
    )


async def e2ee_setup(config: Config, *, reset: bool, recovery_key_file: str | None) -> int:
    target = Path(recovery_key_file) if recovery_key_file else None
    if target is not None and target.exists():
        print(
            f"support-bot e2ee: {target} exists: name a new file (a recovery key is never "
            "overwritten)",
            file=sys.stderr,
        )
        return EXIT_REFUSED

    async def act() -> str | None:
        async with _device(config) as identity:
            return await identity.setup(reset=reset)

    async with database(config.database.url):
        result = await _refusing(act)
    if isinstance(result, int):
        return result
    if result is None:
        print("The bot's cross-signing identity is already set up; its device is signed.")
        return EXIT_OK
    if target is not None:
        await asyncio.to_thread(write_private_file, target, result)
        shown = f"It is in {target} (mode 0600)."
    else:
        shown = f"\n    {result}\n"
    print(
        f"The bot's cross-signing identity is {'replaced' if reset else 'created'} and its "
        f"device signed. Its recovery key: {shown}\n"
        "Keep it somewhere safe (a password manager): it is shown only this once, and it "
        "restores the same identity on a new installation (`support-bot e2ee restore`)."
    )
    return EXIT_OK


async def e2ee_restore(config: Config, *, recovery_key_file: str | None) -> int:
    try:
        text = await asyncio.to_thread(_read_key_text, recovery_key_file)
    except OSError as error:
        print(
            f"support-bot e2ee: cannot read {recovery_key_file}: {error.strerror}",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    recovery_key = read_recovery_key(text)

    async def act() -> None:
        async with _device(config) as identity:
            await identity.restore(recovery_key)

    async with database(config.database.url):
        result = await _refusing(act)
    if isinstance(result, int):
        return result
    print("The bot's cross-signing identity is restored and its device signed.")
    return EXIT_OK


def _read_key_text(path: str | None) -> str:
    if path is not None:
        return Path(path).read_text(encoding="utf-8")
    if sys.stdin.isatty():
        return getpass.getpass("Recovery key: ")
    return sys.stdin.read()
