"""Issue #13: the bot's cross-signing identity against a real Synapse.

The Matrix shell starts as in production; what other users see is read as they read it
(`/keys/query` with another account's token) and every signature is checked with vodozemac
against the published public keys. Requests the bot sends are recorded (a spy on the one
method every request goes through) to show that a restart uploads nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import stat
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import pytest_asyncio
from nio import AsyncClient

from bot.matrix.crosssign import CACHE_FILE, RECOVERY_KEY_FILE, read_recovery_key
from bot.matrix.runtime import MatrixStartError
from bot.matrix.secretstore import decode_recovery_key, encode_recovery_key, new_key
from bot.matrix.session import CountingClient
from bot.testing.synapse import Synapse
from tests.signatures import signed_by

from .test_matrix_shell import Bot, make_bot

pytestmark = pytest.mark.e2e

UPLOADS = ("/keys/device_signing/upload", "/keys/signatures/upload")


@pytest_asyncio.fixture
async def db(tmp_path: Path):
    from bot.storage.db import database

    async with database(f"sqlite://{tmp_path}/db.sqlite3"):
        yield


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(method, path) of every request the bot's client sends from now on."""
    calls: list[tuple[str, str]] = []
    original = CountingClient.send

    async def spy(self: CountingClient, method: str, path: str, *args: Any, **kw: Any) -> Any:
        calls.append((method, path.split("?")[0]))
        return await original(self, method, path, *args, **kw)

    monkeypatch.setattr(CountingClient, "send", spy)
    return calls


def identity_writes(calls: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Uploads of keys or signatures, and writes of the identity's account data."""
    return [
        (method, path)
        for method, path in calls
        if any(path.endswith(upload) for upload in UPLOADS)
        or (method == "PUT" and ("m.cross_signing" in path or "m.secret_storage" in path))
    ]


@pytest_asyncio.fixture
async def bot(synapse: Synapse, matrix_user: Any, tmp_path: Path, db: None):
    staff = await matrix_user("staff", encryption=False)
    made = await make_bot(synapse, staff, tmp_path)
    try:
        yield made
    finally:
        await made.stop()


@pytest_asyncio.fixture
async def observer(matrix_user: Any) -> AsyncClient:
    return await matrix_user("observer", encryption=False)


async def keys_seen_by(observer: AsyncClient, user_id: str) -> dict[str, Any]:
    """`/keys/query` for `user_id` as another user sees it."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{observer.homeserver}/_matrix/client/v3/keys/query",
            json={"device_keys": {user_id: []}},
            headers={"Authorization": f"Bearer {observer.access_token}"},
        ) as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


def only_key(entry: dict[str, Any]) -> str:
    (public,) = entry["keys"].values()
    return public


async def published_identity(observer: AsyncClient, user_id: str, device_id: str) -> str:
    """Check what clients check (master key → self-signing key → device) and return the
    master key."""
    answer = await keys_seen_by(observer, user_id)
    master = answer["master_keys"][user_id]
    self_signing = answer["self_signing_keys"][user_id]
    assert master["usage"] == ["master"] and self_signing["usage"] == ["self_signing"]
    master_key, self_signing_key = only_key(master), only_key(self_signing)
    assert signed_by(self_signing, user_id, master_key), "self-signing key not signed by master"
    device = answer["device_keys"][user_id][device_id]
    assert signed_by(device, user_id, self_signing_key), f"device {device_id} not cross-signed"
    return master_key


def with_matrix(bot: Bot, **changes: Any) -> None:
    bot.config = dataclasses.replace(
        bot.config, matrix=dataclasses.replace(bot.config.matrix, **changes)
    )


def recovery_key_of(bot: Bot) -> str:
    path = Path(bot.config.matrix.store_path) / RECOVERY_KEY_FILE
    return read_recovery_key(path.read_text())


# -- tests ---------------------------------------------------------------------------------


async def test_the_first_start_publishes_an_identity_that_signs_the_device(
    bot: Bot, observer: AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    shell = await bot.start()
    assert shell.device_id

    master = await published_identity(observer, bot.user_id, shell.device_id)

    # The recovery key was written once, for the operator, readable by the bot's user alone.
    store = Path(bot.config.matrix.store_path)
    key_file = store / RECOVERY_KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    recovery_key = recovery_key_of(bot)
    decode_recovery_key(recovery_key)  # a well-formed recovery key
    # Neither it nor any private key is in the logs or in the clear in the store's copy.
    assert "".join(recovery_key.split()[:3]) not in caplog.text.replace(" ", "")
    assert recovery_key.split()[0] + " " + recovery_key.split()[1] not in caplog.text
    cache = (store / CACHE_FILE).read_text()
    assert stat.S_IMODE((store / CACHE_FILE).stat().st_mode) == 0o600
    assert "seeds" not in cache and master in cache  # only the public key shows
    assert "created the bot's identity" in caplog.text
    assert f"signed device {shell.device_id}" in caplog.text
    assert str(key_file) in caplog.text


async def test_a_restart_with_the_same_store_keeps_the_identity_without_uploading(
    bot: Bot,
    observer: AsyncClient,
    sent: list[tuple[str, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    shell = await bot.start()
    device = shell.device_id
    master = await published_identity(observer, bot.user_id, device)
    assert identity_writes(sent), "the first start uploaded nothing?"
    await bot.stop()
    sent.clear()
    caplog.clear()

    shell = await bot.start()

    assert shell.device_id == device
    assert identity_writes(sent) == []
    assert any(path.endswith("/keys/query") for _, path in sent)  # it did look
    assert await published_identity(observer, bot.user_id, device) == master
    # It knew the identity as its own: nothing to tell the operator but the key file left.
    assert [
        r.getMessage()
        for r in caplog.records
        if r.name == "bot.matrix.crosssign"
        and r.levelno >= logging.WARNING
        and "recovery key is still in" not in r.getMessage()
    ] == []


async def test_a_fresh_store_and_the_recovery_key_restore_the_same_identity(
    bot: Bot, observer: AsyncClient, sent: list[tuple[str, str]], tmp_path: Path
) -> None:
    shell = await bot.start()
    first_device = shell.device_id
    master = await published_identity(observer, bot.user_id, first_device)
    recovery_key = recovery_key_of(bot)
    await bot.stop()
    sent.clear()

    # A new installation: an empty store (hence a new device), the recovery key configured.
    with_matrix(bot, store_path=str(tmp_path / "new-store"), recovery_key=recovery_key)
    shell = await bot.start()

    assert shell.device_id != first_device
    # Users see the same identity; the new device is signed by it.
    assert await published_identity(observer, bot.user_id, shell.device_id) == master
    writes = identity_writes(sent)
    assert [path for _, path in writes if path.endswith(UPLOADS[0])] == []  # no new identity
    assert [path for _, path in writes if path.endswith(UPLOADS[1])] != []  # a signature
    assert not (tmp_path / "new-store" / RECOVERY_KEY_FILE).exists()  # no new recovery key

    # Its store now holds the keys: the next start needs the recovery key no more.
    await bot.stop()
    with_matrix(bot, recovery_key=None)
    sent.clear()
    shell = await bot.start()
    assert identity_writes(sent) == []
    assert await published_identity(observer, bot.user_id, shell.device_id) == master


@pytest.mark.parametrize(
    ("wrong_key", "message"),
    [
        (lambda: encode_recovery_key(new_key()), "does not open the account's Secret Storage"),
        (lambda: "EsT" + "x" * 45, "typing mistake"),
    ],
)
async def test_a_wrong_recovery_key_is_refused_and_resets_nothing(
    bot: Bot,
    observer: AsyncClient,
    sent: list[tuple[str, str]],
    tmp_path: Path,
    wrong_key: Any,
    message: str,
) -> None:
    shell = await bot.start()
    master = await published_identity(observer, bot.user_id, shell.device_id)
    await bot.stop()
    sent.clear()

    with_matrix(bot, store_path=str(tmp_path / "new-store"), recovery_key=wrong_key())
    with pytest.raises(MatrixStartError, match=message) as refused:
        await bot.start()

    assert "matrix.recovery_key" in str(refused.value)
    assert identity_writes(sent) == []
    answer = await keys_seen_by(observer, bot.user_id)
    assert only_key(answer["master_keys"][bot.user_id]) == master
    bot.shell = None  # refused at start: nothing to stop


async def test_a_fresh_store_without_the_key_runs_unsigned_and_says_what_to_do(
    bot: Bot,
    observer: AsyncClient,
    sent: list[tuple[str, str]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shell = await bot.start()
    master = await published_identity(observer, bot.user_id, shell.device_id)
    await bot.stop()
    sent.clear()

    with_matrix(bot, store_path=str(tmp_path / "new-store"))
    shell = await bot.start()  # the bot still starts: it answers, with a warning in Element

    assert identity_writes(sent) == []
    answer = await keys_seen_by(observer, bot.user_id)
    assert only_key(answer["master_keys"][bot.user_id]) == master  # never replaced
    device = answer["device_keys"][bot.user_id][shell.device_id]
    assert not signed_by(device, bot.user_id, only_key(answer["self_signing_keys"][bot.user_id]))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("support-bot e2ee restore" in line for line in errors), errors


async def test_secret_storage_lost_on_the_homeserver_is_written_again_from_the_store(
    bot: Bot, observer: AsyncClient, sent: list[tuple[str, str]], tmp_path: Path
) -> None:
    shell = await bot.start()
    master = await published_identity(observer, bot.user_id, shell.device_id)
    recovery_key = recovery_key_of(bot)
    # Account data cannot be deleted: an emptied default key is what a lost one looks like.
    client = shell._session.nio()
    user = quote(bot.user_id, safe="")
    async with (
        aiohttp.ClientSession() as http,
        http.put(
            f"{client.homeserver}/_matrix/client/v3/user/{user}/account_data/"
            "m.secret_storage.default_key",
            json={},
            headers={"Authorization": f"Bearer {client.access_token}"},
        ) as response,
    ):
        assert response.status == 200
    await bot.stop()
    sent.clear()

    await bot.start()  # the store still holds the keys: Secret Storage is written again
    assert [path for _, path in identity_writes(sent) if path.endswith(UPLOADS)] == []
    assert any("m.secret_storage.default_key" in path for _, path in identity_writes(sent))
    await bot.stop()

    # …so that the recovery key still restores the identity on a new store.
    with_matrix(bot, store_path=str(tmp_path / "new-store"), recovery_key=recovery_key)
    shell = await bot.start()
    assert await published_identity(observer, bot.user_id, shell.device_id) == master


async def test_with_an_access_token_only_the_first_upload_needs_no_password(
    bot: Bot, observer: AsyncClient, sent: list[tuple[str, str]]
) -> None:
    # Synapse applies MSC3967: a first identity is published without interactive auth.
    matrix = bot.config.matrix
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{matrix.homeserver}/_matrix/client/v3/login",
            json={
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": matrix.user_id},
                "password": matrix.password,
            },
        ) as response,
    ):
        assert response.status == 200
        token = (await response.json())["access_token"]
    with_matrix(bot, password=None, access_token=token)

    shell = await bot.start()

    await published_identity(observer, bot.user_id, shell.device_id)
    uploads = [path for _, path in sent if path.endswith(UPLOADS[0])]
    assert len(uploads) == 1  # one request: no second try with an `auth`
