"""Fixtures shared by every test directory.

- `synapse` (session): one throwaway homeserver for the whole run (~2.7 s to start cold).
- `matrix_user` (function): `await matrix_user("alice")` → a logged-in, synced nio client.
- `postgres_dsn` (session): a fresh database when SUPPORT_BOT_TEST_POSTGRES is set, else None.
- `db_url` (function, parametrized sqlite/postgres): a Tortoise URL to a database of its own,
  already migrated to the latest schema and holding no rows. Migrating costs ~2.7 s per
  database (Tortoise replays every migration), so it is done once per run into a template: a
  copy of the file for SQLite, `CREATE DATABASE … TEMPLATE` for PostgreSQL (~20-30 ms here,
  DROP ~10 ms). Tests never see each other's rows and need no truncation.
- `empty_db_url` (function, parametrized the same): a database with nothing in it, not even
  the schema, for the tests of migrating itself.
- `db` (function): `db_url`'s database opened for the test.
- `imap_server` (function): `imap_server(tls=True)` → a real Dovecot on free ports with an
  empty mailbox (tests/imap.py); skips where Dovecot is not installed.

Databases left behind by a killed run are named `support_bot_test_*`; they are not dropped
automatically because another run may be using the same server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest
import pytest_asyncio

if TYPE_CHECKING:
    from nio import AsyncClient

    from bot.testing.synapse import Synapse
    from tests.imap import ImapServer
    from tests.smtp import Inbox

POSTGRES_ENV = "SUPPORT_BOT_TEST_POSTGRES"
NO_POSTGRES = f"{POSTGRES_ENV} not set: PostgreSQL tests skipped"
NO_SYNAPSE = "matrix-synapse is not installed: end-to-end tests skipped (pip install -e '.[test]')"
_E2E_DIR = Path(__file__).parent / "e2e"

T = TypeVar("T")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _E2E_DIR in item.path.parents:
            item.add_marker(pytest.mark.e2e)


# -- Matrix ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synapse]:
    from bot.testing.synapse import Synapse, synapse_available

    if not synapse_available():
        pytest.skip(NO_SYNAPSE)
    server = Synapse.start(tmp_path_factory.mktemp("synapse"))
    try:
        yield server
    finally:
        server.stop()


MatrixUserFactory = Callable[..., Awaitable["AsyncClient"]]


@pytest_asyncio.fixture
async def matrix_user(synapse: Synapse, tmp_path: Path) -> AsyncIterator[MatrixUserFactory]:
    """`await matrix_user("alice", admin=False, encryption=True)` → logged-in AsyncClient.

    The localpart gets a random suffix, so tests never collide on the shared homeserver.
    Clients are closed at teardown.
    """
    from bot.testing.matrix import login_client

    clients: list[AsyncClient] = []

    async def make(name: str, *, admin: bool = False, encryption: bool = True) -> AsyncClient:
        localpart = f"{name}-{secrets.token_hex(4)}".lower()
        password = secrets.token_urlsafe(16)
        user_id, _ = await synapse.register(localpart, password, admin=admin)
        client = await login_client(
            synapse.base_url,
            user_id,
            password,
            store_path=tmp_path / "nio" / localpart,
            encryption=encryption,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


# -- databases -------------------------------------------------------------------------------


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a private loop in a worker thread.

    Sync fixtures can then use asyncpg without touching the event loops that pytest-asyncio
    manages in the main thread.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


def tortoise_url(dsn: str) -> str:
    """Tortoise 1.1 reads `postgres://` (it also knows `postgresql://`, but be explicit)."""
    scheme, rest = dsn.split("://", 1)
    return f"postgres://{rest}" if scheme == "postgresql" else dsn


async def _create_database(admin_dsn: str, name: str, *, template: str | None = None) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    try:
        # template0 by default: whatever someone installed into template1 does not leak into
        # tests.
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template or "template0"}"')
    finally:
        await conn.close()


async def _drop_database(admin_dsn: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        force = " WITH (FORCE)" if conn.get_server_version().major >= 13 else ""
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"{force}')
    finally:
        await conn.close()


@pytest.fixture(autouse=True)
def _logging_left_as_found() -> Iterator[None]:
    """Logging as each test found it: a test that runs the CLI, the demo or `setup_logging`
    in-process configures the process (its handler on the root, quieter traffic loggers); left
    so, a later test's `caplog` misses records and a handler writes to a closed stream."""
    manager = logging.root.manager
    levels = {
        name: logger.level
        for name, logger in manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    root_level, root_handlers = logging.root.level, list(logging.root.handlers)
    yield
    for name, logger in list(manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level != levels.get(name, logging.NOTSET):
            logger.setLevel(levels.get(name, logging.NOTSET))
    logging.root.setLevel(root_level)
    for handler in logging.root.handlers[:]:
        if handler not in root_handlers and handler.get_name() == "support-bot":
            logging.root.removeHandler(handler)


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str | None]:
    """A DSN (same scheme and host as SUPPORT_BOT_TEST_POSTGRES) to a fresh database, or None."""
    admin_dsn = os.environ.get(POSTGRES_ENV, "").strip()
    if not admin_dsn:
        yield None
        return
    name = f"support_bot_test_{secrets.token_hex(4)}"
    _run(_create_database(admin_dsn, name))
    try:
        yield _with_database(admin_dsn, name)
    finally:
        _run(_drop_database(admin_dsn, name))


async def _migrate(url: str) -> None:
    from bot.storage.db import apply_migrations

    await apply_migrations(url)


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to the latest schema, copied by each test that wants one."""
    path = tmp_path_factory.mktemp("template") / "db.sqlite3"
    _run(_migrate(f"sqlite://{path}"))
    return path


@pytest.fixture(scope="session")
def _postgres_template(postgres_dsn: str | None) -> Iterator[str | None]:
    """The name of a PostgreSQL database migrated to the latest schema (nobody connected to
    it once migrated, as CREATE DATABASE … TEMPLATE requires), or None without PostgreSQL."""
    if postgres_dsn is None:
        yield None
        return
    name = f"{urlsplit(postgres_dsn).path.lstrip('/')}_template"
    _run(_create_database(postgres_dsn, name))
    try:
        _run(_migrate(tortoise_url(_with_database(postgres_dsn, name))))
        yield name
    finally:
        _run(_drop_database(postgres_dsn, name))


DB_PARAMS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


def _database_url(
    request: pytest.FixtureRequest, tmp_path: Path, *, migrated: bool
) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "db.sqlite3"
        if migrated:
            shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
        yield f"sqlite://{path}"
        return
    session_dsn: str | None = request.getfixturevalue("postgres_dsn")
    if session_dsn is None:
        pytest.skip(NO_POSTGRES)
    template = request.getfixturevalue("_postgres_template") if migrated else None
    name = f"{urlsplit(session_dsn).path.lstrip('/')}_{secrets.token_hex(3)}"
    _run(_create_database(session_dsn, name, template=template))
    try:
        yield tortoise_url(_with_database(session_dsn, name))
    finally:
        _run(_drop_database(session_dsn, name))


@pytest.fixture(params=DB_PARAMS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A Tortoise database URL to a database of this test's own: migrated, no rows."""
    yield from _database_url(request, tmp_path, migrated=True)


@pytest.fixture(params=DB_PARAMS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A Tortoise database URL to an empty database of this test's own (no schema)."""
    yield from _database_url(request, tmp_path, migrated=False)


@pytest_asyncio.fixture
async def db(db_url: str) -> AsyncIterator[None]:
    """`db_url`'s database, opened (migrated) for the test and closed after it."""
    from tortoise.backends.base.executor import EXECUTOR_CACHE

    from bot.storage.db import close_db, open_db

    # Tortoise caches insert statements per connection name across inits: a test on
    # PostgreSQL after one on SQLite would reuse SQLite's `?` placeholders.
    EXECUTOR_CACHE.clear()
    await open_db(db_url)
    try:
        yield
    finally:
        await close_db()


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    """A real SMTP server (aiosmtpd) on a free port: its inbox and the port."""
    from tests.smtp import smtp_server

    with smtp_server() as server:
        yield server


# -- IMAP ----------------------------------------------------------------------------------------

ImapServerFactory = Callable[..., "ImapServer"]


@pytest.fixture
def imap_server() -> Iterator[ImapServerFactory]:
    """`imap_server(tls=False, without=())` → a running Dovecot with an empty mailbox of its
    own (tests/imap.py), stopped and removed at teardown; skips where Dovecot is missing."""
    from tests.imap import NO_DOVECOT, ImapServer, dovecot_binary

    if dovecot_binary() is None:
        pytest.skip(NO_DOVECOT)
    servers: list[ImapServer] = []

    def make(**options: Any) -> ImapServer:
        server = ImapServer.start(**options)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()
