"""Chaos, small counts (`bench/chaos.py` does the big run): the real bot process on a real
Synapse, SIGKILLed mid-conversation, cut off from a stopped homeserver, and cut off from its
PostgreSQL database. Every client message must be answered exactly once and every intake must
end with the right ticket. The whole file takes about two minutes.
"""

from __future__ import annotations

import os
import random

import pytest

from bench import chaos
from bot.testing.synapse import Synapse

pytestmark = pytest.mark.slow

# After a 10 s outage the bot's backoff (0.5-1 s doubling) retries within about 16 s: every
# answer must come within this once the server or the database is back.
CATCH_UP = 45.0


def _log(line: str) -> None:
    print(line)  # shown by pytest when a test fails


def _assert_ok(outcome: chaos.Outcome) -> None:
    assert outcome.ok, outcome.report()


async def test_kills_lose_and_duplicate_nothing(synapse, tmp_path):
    outcome = await chaos.scenario_kills(
        synapse,
        tmp_path,
        conversations=10,
        kills=3,
        wave=10,
        rng=random.Random(),
        log=_log,
    )
    _log(outcome.report())
    assert outcome.kills == 3
    _assert_ok(outcome)


async def test_homeserver_outage_is_waited_out_with_backoff(tmp_path):
    # A homeserver of our own: this test stops it (the session's one serves other tests).
    hs = await Synapse.astart(tmp_path / "synapse")
    try:
        outcome, hs = await chaos.scenario_outage(
            hs,
            tmp_path / "bot",
            clients=6,
            outage=10,
            rng=random.Random(),
            catch_up=CATCH_UP,
            log=_log,
        )
    finally:
        await hs.astop()
    _log(outcome.report())
    _assert_ok(outcome)


async def test_database_outage_is_waited_out_and_caught_up(synapse, tmp_path):
    admin_dsn = os.environ.get("SUPPORT_BOT_TEST_POSTGRES", "").strip()
    if not admin_dsn:
        pytest.skip("SUPPORT_BOT_TEST_POSTGRES not set: the database outage runs on PostgreSQL")
    problem = await chaos.postgres_available(admin_dsn)
    if problem:
        pytest.skip(f"PostgreSQL unavailable: {problem}")
    outcome = await chaos.scenario_db(
        synapse,
        tmp_path,
        clients=6,
        outage=10,
        rng=random.Random(),
        pg_dsn=admin_dsn,
        catch_up=CATCH_UP,
        log=_log,
    )
    _log(outcome.report())
    _assert_ok(outcome)
