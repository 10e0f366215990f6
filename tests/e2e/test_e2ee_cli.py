"""`support-bot e2ee status|setup|restore` as an operator runs them, beside the real bot process.

What the operator reads (standard output and error, exit codes) and what other users see
(`/keys/query` as another account, signatures checked with vodozemac).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_asyncio
from nio import AsyncClient

from bot.matrix.crosssign import RECOVERY_KEY_FILE, fingerprint
from bot.matrix.secretstore import decode_recovery_key, encode_recovery_key, new_key

from .conftest import RunningBot, make_running_bot
from .test_cross_signing import keys_seen_by, only_key, published_identity

pytestmark = pytest.mark.e2e


@pytest_asyncio.fixture
async def bot(synapse, tmp_path: Path):
    """A configured bot that has not started yet."""
    made = await make_running_bot(synapse, tmp_path)
    try:
        yield made
    finally:
        await made.stop()
        await made.staff.close()


@pytest_asyncio.fixture
async def observer(matrix_user) -> AsyncClient:
    return await matrix_user("observer", encryption=False)


async def e2ee(
    bot: RunningBot, *args: str, stdin: str = "", config: Path | None = None
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "bot", "--config", str(config or bot.config_path), "e2ee"]
    return await asyncio.to_thread(
        subprocess.run,
        [*command, *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=bot.workdir,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=120,
    )


def recovery_key_in(output: str) -> str:
    """The recovery key `setup` printed: the indented line of 12 groups of 4."""
    (line,) = [line.strip() for line in output.splitlines() if line.startswith("    ")]
    decode_recovery_key(line)
    return line


def stored_device(bot: RunningBot) -> str:
    with sqlite3.connect(bot.workdir / "bot.sqlite3") as db:
        (device,) = db.execute("SELECT value FROM bot_state WHERE key = 'device_id'").fetchone()
    return device


async def test_setup_before_the_first_start_then_the_bot_keeps_that_identity(
    bot: RunningBot, observer: AsyncClient
) -> None:
    setup = await e2ee(bot, "setup")
    assert setup.returncode == 0, setup.stderr
    recovery_key = recovery_key_in(setup.stdout)
    assert "shown only this once" in setup.stdout
    assert recovery_key.replace(" ", "") not in setup.stderr.replace(" ", "")  # not logged

    device = stored_device(bot)
    master = await published_identity(observer, bot.bot_user_id, device)
    await bot.start()  # the same device, already signed: nothing created

    assert not (bot.workdir / "store" / RECOVERY_KEY_FILE).exists()
    assert await published_identity(observer, bot.bot_user_id, device) == master
    # `status` looks while the bot runs; it shows the master key, never a private one.
    status = await e2ee(bot, "status")
    assert status.returncode == 0, status.stderr
    assert f"master key:       {fingerprint(master)}" in status.stdout
    assert "device signed:    yes" in status.stdout
    assert "store holds keys: yes" in status.stdout
    # `setup` and `restore` act as the device: refused while the bot holds its store.
    again = await e2ee(bot, "setup")
    assert again.returncode == 1
    assert "another support-bot process is using the key store" in again.stderr


async def test_restore_on_a_new_store_keeps_the_identity_and_a_wrong_key_changes_nothing(
    bot: RunningBot, observer: AsyncClient
) -> None:
    await bot.start()  # the first start creates the identity and writes the key file
    key_file = bot.workdir / "store" / RECOVERY_KEY_FILE
    first_device = stored_device(bot)
    master = await published_identity(observer, bot.bot_user_id, first_device)
    kept = bot.workdir / "operator-kept-key.txt"
    shutil.copy(key_file, kept)
    await bot.stop()
    shutil.rmtree(bot.workdir / "store")  # the store is lost

    wrong = await e2ee(bot, "restore", stdin=encode_recovery_key(new_key()) + "\n")
    assert wrong.returncode == 1
    assert "does not open the account's Secret Storage" in wrong.stderr
    assert "nothing was changed" in wrong.stderr
    mistyped = await e2ee(bot, "restore", stdin="EsT" + "x" * 45 + "\n")
    assert mistyped.returncode == 1 and "typing mistake" in mistyped.stderr
    answer = await keys_seen_by(observer, bot.bot_user_id)
    assert only_key(answer["master_keys"][bot.bot_user_id]) == master

    restored = await e2ee(bot, "restore", "--recovery-key-file", str(kept))
    assert restored.returncode == 0, restored.stderr
    new_device = stored_device(bot)
    assert new_device != first_device
    assert await published_identity(observer, bot.bot_user_id, new_device) == master

    await bot.start()
    assert not key_file.exists()  # no new identity, no new key
    assert await published_identity(observer, bot.bot_user_id, new_device) == master


async def test_reset_replaces_the_identity_with_the_password_and_says_what_to_do_without(
    bot: RunningBot, observer: AsyncClient
) -> None:
    await bot.start()
    device = stored_device(bot)
    master = await published_identity(observer, bot.bot_user_id, device)
    await bot.stop()

    # With an access token only, a replacement needs what the bot does not have.
    with sqlite3.connect(bot.workdir / "bot.sqlite3") as db:
        (token,) = db.execute("SELECT value FROM bot_state WHERE key = 'access_token'").fetchone()
    toml = bot.config_path.read_text()
    password_line = next(line for line in toml.splitlines() if line.startswith("password ="))
    token_only = bot.workdir / "token-only.toml"
    token_only.write_text(toml.replace(password_line, f'access_token = "{token}"'))
    refused = await e2ee(bot, "setup", "--reset", config=token_only)
    assert refused.returncode == 1
    assert "SUPPORT_BOT_MATRIX_PASSWORD=... support-bot e2ee setup" in refused.stderr
    answer = await keys_seen_by(observer, bot.bot_user_id)
    assert only_key(answer["master_keys"][bot.bot_user_id]) == master

    # Without --reset, an identity the store holds is kept.
    kept = await e2ee(bot, "setup")
    assert kept.returncode == 0, kept.stderr
    assert "already set up" in kept.stdout

    new_key_file = bot.workdir / "new-recovery-key.txt"
    reset = await e2ee(bot, "setup", "--reset", "--recovery-key-file", str(new_key_file))
    assert reset.returncode == 0, reset.stderr
    assert "replaced" in reset.stdout
    assert new_key_file.stat().st_mode & 0o077 == 0
    decode_recovery_key(new_key_file.read_text())
    new_master = await published_identity(observer, bot.bot_user_id, device)
    assert new_master != master
    # The file is never overwritten.
    again = await e2ee(bot, "setup", "--reset", "--recovery-key-file", str(new_key_file))
    assert again.returncode == 1 and "never overwritten" in again.stderr
