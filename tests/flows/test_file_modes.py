"""Files only the bot's user can read: the SQLite database (the access token) and its -wal and
-shm, the E2EE key store and the pickle key, which leaves the database for
`store_path/pickle.key`. Run with the usual umask 022, under which these files used to be
0644 and the store 0755."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tortoise.backends.base.executor import EXECUTOR_CACHE

from bot.config import MatrixConfig
from bot.matrix.runtime import MatrixStartError, get_state, set_state
from bot.matrix.session import PICKLE_KEY, PICKLE_KEY_FILE, Session
from bot.matrix.transport import RoomFacts
from bot.process import PRIVATE_UMASK, private_umask
from bot.storage.db import close_db, open_db, protect_sqlite_files
from bot.storage.models import BotState

OLD_KEY = "a-pickle-key-an-older-version-kept-in-the-database"


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(autouse=True)
def usual_umask() -> Iterator[None]:
    """022, as a shell or a service manager leaves it; the test's own one given back."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[str]:
    EXECUTOR_CACHE.clear()
    url = f"sqlite://{tmp_path}/bot.sqlite3"
    await open_db(url)
    try:
        yield url
    finally:
        await close_db()
        EXECUTOR_CACHE.clear()


def matrix(store: Path, pickle_key: str | None = None) -> MatrixConfig:
    return MatrixConfig(
        homeserver="https://matrix.test.example",
        user_id="@bot:test.example",
        staff_room="!staff:test.example",
        password="unused-here",
        store_path=str(store),
        pickle_key=pickle_key,
    )


async def open_session(config: MatrixConfig) -> str:
    """Open a session over the store (nothing is sent) and return its pickle key."""
    session = Session(config, RoomFacts())
    client = await session.open()
    try:
        return client.config.pickle_key
    finally:
        await session.close()


# -- the database -----------------------------------------------------------------------------


async def test_a_new_sqlite_database_and_its_wal_are_private(
    database: str, tmp_path: Path
) -> None:
    await set_state("access_token", "syt_secret")  # a write: the -wal and -shm exist now
    path = tmp_path / "bot.sqlite3"
    companions = [Path(f"{path}-wal"), Path(f"{path}-shm")]
    assert all(file.exists() for file in companions)
    assert {file.name: mode(file) for file in (path, *companions)} == {
        "bot.sqlite3": 0o600,
        "bot.sqlite3-wal": 0o600,
        "bot.sqlite3-shm": 0o600,
    }


async def test_an_existing_database_readable_by_others_is_made_private(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/bot.sqlite3?synchronous=FULL"
    path = tmp_path / "bot.sqlite3"
    EXECUTOR_CACHE.clear()
    await open_db(url)
    try:
        await set_state("access_token", "syt_secret")
        # As an older version left them (0644, from SQLite's default less the umask).
        for name in (path, f"{path}-wal", f"{path}-shm"):
            os.chmod(name, 0o644)
        protect_sqlite_files(url)  # what each start does
        assert [mode(name) for name in (path, f"{path}-wal", f"{path}-shm")] == [0o600] * 3
    finally:
        await close_db()
    os.chmod(path, 0o666)
    await open_db(url)  # any command that opens it
    try:
        assert mode(path) == 0o600
        assert await get_state("access_token") == "syt_secret"  # still the same database
    finally:
        await close_db()
        EXECUTOR_CACHE.clear()


def test_postgres_and_memory_urls_are_left_alone(tmp_path: Path) -> None:
    protect_sqlite_files("postgres://bot@127.0.0.1/bot")
    protect_sqlite_files("sqlite://:memory:")
    assert list(tmp_path.iterdir()) == []


def test_private_umask() -> None:
    previous = private_umask()
    try:
        assert previous == 0o022
        assert os.umask(PRIVATE_UMASK) == 0o077
    finally:
        os.umask(previous)


# -- the key store and its pickle key --------------------------------------------------------


async def test_a_new_store_and_its_generated_key_are_private(
    database: str, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    key = await open_session(matrix(store))
    key_file = store / PICKLE_KEY_FILE
    assert mode(store) == 0o700
    assert mode(key_file) == 0o600
    assert key_file.read_text(encoding="utf-8").strip() == key
    assert len(key) >= 32
    assert await get_state(PICKLE_KEY) is None  # not in the database
    assert await open_session(matrix(store)) == key  # the same at the next start


async def test_an_existing_store_is_made_private(database: str, tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir(mode=0o755)
    nio_database = store / "@bot:test.example_DEVICE.db"
    nio_database.write_bytes(b"")
    nio_database.chmod(0o644)
    await open_session(matrix(store))
    assert (mode(store), mode(nio_database)) == (0o700, 0o600)


async def test_a_key_kept_in_the_database_moves_to_the_store_once(
    database: str, tmp_path: Path
) -> None:
    await BotState.create(key=PICKLE_KEY, value=OLD_KEY)
    store = tmp_path / "store"
    assert await open_session(matrix(store)) == OLD_KEY  # the store still opens
    assert (store / PICKLE_KEY_FILE).read_text(encoding="utf-8").strip() == OLD_KEY
    assert mode(store / PICKLE_KEY_FILE) == 0o600
    assert await BotState.filter(key=PICKLE_KEY).count() == 0
    assert await open_session(matrix(store)) == OLD_KEY


async def test_a_move_interrupted_before_the_row_went_finishes(
    database: str, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / PICKLE_KEY_FILE).write_text(OLD_KEY + "\n", encoding="utf-8")
    await BotState.create(key=PICKLE_KEY, value=OLD_KEY)
    assert await open_session(matrix(store)) == OLD_KEY
    assert await BotState.filter(key=PICKLE_KEY).count() == 0
    assert mode(store / PICKLE_KEY_FILE) == 0o600


async def test_a_different_key_in_the_database_is_kept_and_reported(
    database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / PICKLE_KEY_FILE).write_text("the-file-s-own-key-0123456789\n", encoding="utf-8")
    await BotState.create(key=PICKLE_KEY, value=OLD_KEY)
    assert await open_session(matrix(store)) == "the-file-s-own-key-0123456789"
    assert await get_state(PICKLE_KEY) == OLD_KEY
    assert "other than" in caplog.text
    assert OLD_KEY not in caplog.text and "the-file-s-own-key" not in caplog.text


async def test_an_empty_key_file_stops_the_start(database: str, tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / PICKLE_KEY_FILE).write_text("\n", encoding="utf-8")
    with pytest.raises(MatrixStartError, match="empty"):
        await open_session(matrix(store))


async def test_a_configured_key_writes_no_file(database: str, tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert await open_session(matrix(store, "configured-key-0123456789")) == (
        "configured-key-0123456789"
    )
    assert not (store / PICKLE_KEY_FILE).exists()
    assert await get_state(PICKLE_KEY) is None
