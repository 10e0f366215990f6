"""Slow and greedy HTTP clients against the bot's listener (`start_web`, `Limits`): real
sockets on loopback, a handful of connections, timeouts of a fraction of a second.

Several client addresses without a network: every 127.x.y.z address is this machine's
loopback on Linux, so a socket bound to 127.0.0.2 is another client to the server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import pytest_asyncio
from aiohttp import web
from prometheus_client import CollectorRegistry

from bot.i18n import Catalogs
from bot.web import app as web_app
from bot.web.app import Limits, build_web_app, start_web, stop_web
from tests.web.test_feed_staff import never_confirmed, web_config

TIMEOUT = 0.5  # the header and body timeouts of these tests
SLACK = 2.0  # how late a close may come on a busy machine, and still pass
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _ping(request: web.Request) -> web.Response:
    return web.Response(text="pong")


@contextlib.asynccontextmanager
async def serve(limits: Limits, app: web.Application | None = None) -> AsyncIterator[int]:
    if app is None:
        app = web.Application()
        app.router.add_get("/ping", _ping)
    runner = await start_web(app, "127.0.0.1:0", name="test", limits=limits)
    try:
        yield runner.addresses[0][1]
    finally:
        await stop_web(runner)


@pytest_asyncio.fixture
async def opened() -> AsyncIterator[list[Stream]]:
    """The client connections of a test, closed at its end whatever happened."""
    streams: list[Stream] = []
    yield streams
    for _, writer in streams:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def connect(port: int, opened: list[Stream], source: str = "127.0.0.1") -> Stream:
    stream = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    opened.append(stream)
    return stream


async def until_closed(reader: asyncio.StreamReader) -> tuple[bytes, float]:
    """What the server sent until it closed the connection, and how long that took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    data = await asyncio.wait_for(reader.read(), TIMEOUT + SLACK)
    return data, loop.time() - started


async def ping(stream: Stream) -> bytes:
    """One request on a kept-alive connection: the status line of its answer."""
    reader, writer = stream
    writer.write(b"GET /ping HTTP/1.1\r\nHost: bot\r\n\r\n")
    status = await asyncio.wait_for(reader.readline(), SLACK)
    await asyncio.wait_for(reader.readuntil(b"pong"), SLACK)
    return status


# -- the request head ------------------------------------------------------------------------


async def test_a_half_sent_request_head_is_dropped(opened: list[Stream]) -> None:
    async with serve(Limits(header_timeout=TIMEOUT)) as port:
        reader, writer = await connect(port, opened)
        writer.write(b"GET /ping HTTP/1.1\r\nHost: bot\r\n")  # no blank line: never ends
        data, took = await until_closed(reader)
    assert data == b""
    assert TIMEOUT * 0.8 <= took < TIMEOUT + SLACK


async def test_a_trickled_head_does_not_push_the_deadline_back(opened: list[Stream]) -> None:
    async with serve(Limits(header_timeout=TIMEOUT)) as port:
        reader, writer = await connect(port, opened)

        async def trickle() -> None:
            with contextlib.suppress(OSError):
                writer.write(b"GET /ping HTTP/1.1\r\nHost: bot\r\n")
                while True:  # one header byte every 50 ms, for ever
                    writer.write(b"X")
                    await writer.drain()
                    await asyncio.sleep(0.05)

        task = asyncio.create_task(trickle())
        try:
            data, took = await until_closed(reader)
        finally:
            task.cancel()
    assert data == b""
    assert took < TIMEOUT + SLACK


async def test_a_connection_that_sends_nothing_is_closed(opened: list[Stream]) -> None:
    async with serve(Limits(header_timeout=TIMEOUT)) as port:
        reader, _ = await connect(port, opened)
        data, took = await until_closed(reader)
    assert data == b""
    assert took < TIMEOUT + SLACK


async def test_prompt_requests_are_served_on_a_kept_alive_connection(
    opened: list[Stream],
) -> None:
    async with serve(Limits(header_timeout=TIMEOUT)) as port:
        stream = await connect(port, opened)
        assert await ping(stream) == b"HTTP/1.1 200 OK\r\n"
        await asyncio.sleep(TIMEOUT / 2)
        assert await ping(stream) == b"HTTP/1.1 200 OK\r\n"
        # Then idle: the next head's deadline runs from the last answer.
        data, took = await until_closed(stream[0])
    assert data == b""
    assert took < TIMEOUT + SLACK


# -- the request body ------------------------------------------------------------------------


async def test_a_slow_consent_form_body_gets_408(opened: list[Stream]) -> None:
    app = build_web_app(
        config=web_config(),
        catalogs=Catalogs.load(),
        registry=CollectorRegistry(),
        on_confirmed=never_confirmed,
        clock=lambda: datetime(2026, 3, 10, 9, 0, tzinfo=UTC),
        body_timeout=TIMEOUT,
    )
    async with serve(Limits(header_timeout=10.0, lingering_time=TIMEOUT), app) as port:
        reader, writer = await connect(port, opened)
        loop = asyncio.get_running_loop()
        started = loop.time()
        writer.write(
            b"POST /confirm/some-token HTTP/1.1\r\nHost: bot\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n"
            b"csrf=abc"  # 8 bytes of the 100 announced, and no more
        )
        status = await asyncio.wait_for(reader.readline(), TIMEOUT + SLACK)
        took = loop.time() - started
        # Then the rest of the body is waited for `lingering_time` at most, and the end.
        rest, _ = await until_closed(reader)
    assert status == b"HTTP/1.1 408 Request Timeout\r\n"
    assert TIMEOUT * 0.8 <= took < TIMEOUT + SLACK
    assert b"Connection: close" in rest


# -- connection caps -------------------------------------------------------------------------


async def test_connections_are_capped_per_address_and_in_total(
    opened: list[Stream], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    # Long timeouts: the connections held here must stay open for the whole test.
    limits = Limits(header_timeout=30.0, max_connections=4, max_per_address=2)
    async with serve(limits) as port:
        first = [await connect(port, opened) for _ in range(2)]
        for stream in first:  # answered, so the server counts them (kept alive)
            assert await ping(stream) == b"HTTP/1.1 200 OK\r\n"

        # A third from the same address: refused before anything is read.
        reader, _ = await connect(port, opened)
        data, took = await until_closed(reader)
        assert data.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert took < SLACK
        assert "test: connection limit reached (2 open" in caplog.text

        # Other addresses are served, up to the total.
        for source in ("127.0.0.2", "127.0.0.3"):
            assert await ping(await connect(port, opened, source)) == b"HTTP/1.1 200 OK\r\n"
        reader, _ = await connect(port, opened, "127.0.0.4")
        data, _ = await until_closed(reader)
        assert data.startswith(b"HTTP/1.1 503 ")

        # A connection that ends gives its place back.
        first[0][1].close()
        await first[0][1].wait_closed()
        for _ in range(100):  # the server sees the close on its next loop turns
            await asyncio.sleep(0.01)
            reader, writer = stream = await connect(port, opened, "127.0.0.5")
            writer.write(b"GET /ping HTTP/1.1\r\nHost: bot\r\n\r\n")
            status = await asyncio.wait_for(reader.readline(), SLACK)
            if status == b"HTTP/1.1 200 OK\r\n":
                break
        else:
            pytest.fail("the closed connection's place was never given back")
        assert await ping(first[1]) == b"HTTP/1.1 200 OK\r\n"  # the others still work


def test_the_total_cap_leaves_file_descriptors_to_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(web_app.resource, "getrlimit", lambda _: (200, 4096))
    assert web_app.default_max_connections() == 50  # a quarter of them
    monkeypatch.setattr(web_app.resource, "getrlimit", lambda _: (1 << 20, 1 << 20))
    assert web_app.default_max_connections() == web_app.MAX_CONNECTIONS
    monkeypatch.setattr(web_app.resource, "getrlimit", lambda _: (32, 32))
    assert web_app.default_max_connections() == web_app.MAX_CONNECTIONS_PER_ADDRESS
