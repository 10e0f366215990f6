"""The installed wheel against a throwaway Synapse: `check-config` passes, `!help` is answered.

Run by `scripts/wheel-check` with the repository's .venv, which has matrix-synapse and
matrix-nio; the bot itself is the `support-bot` of the wheel's venv, given on the command line:

    .venv/bin/python scripts/wheel_smoke.py --support-bot VENV/bin/support-bot \\
        --expect-version 0.1.0 --workdir DIR

Everything but the bot's process is the end-to-end tests' own: the homeserver is
`bot.testing.synapse.Synapse`, the bot's account, staff room and config come from
`tests/e2e/conftest.py` (`make_running_bot`), the client is `bot.testing.matrix`'s. The answer is
checked in French, the default locale: it proves the catalogs shipped in the wheel are read.
Prints one line per step; exits 1 on any failure, after the bot's and Synapse's last log lines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bot.testing.matrix import send_text, wait_for_message  # noqa: E402  (needs ROOT)
from bot.testing.synapse import Synapse, synapse_available  # noqa: E402
from tests.e2e.conftest import RunningBot, make_running_bot  # noqa: E402

FRENCH_HELP = "Voici ce que je comprends"  # the start of `!help`'s answer in French
START_TIMEOUT = 60.0
ANSWER_TIMEOUT = 30.0
# The wheel's process must see nothing of this checkout or of the .venv running this script.
HIDDEN_ENV = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")


class SmokeFailed(Exception):
    """A step went wrong; the message says which and what was seen."""


@dataclass
class WheelBot(RunningBot):
    """The end-to-end tests' `RunningBot`, but running the wheel's `support-bot` command."""

    executable: str = "support-bot"

    def _spawn(self, log: IO[str]) -> subprocess.Popen:
        env = {key: value for key, value in os.environ.items() if key not in HIDDEN_ENV}
        return subprocess.Popen(
            [self.executable, "--config", str(self.config_path), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env={**env, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )


def say(message: str) -> None:
    print(f"wheel-smoke: {message}", flush=True)


async def smoke(executable: str, version: str, workdir: Path) -> None:
    started = time.monotonic()
    if not synapse_available():
        raise SmokeFailed("matrix-synapse is not installed in this Python (use the repo's .venv)")
    synapse = await Synapse.astart(workdir / "synapse")
    bot: WheelBot | None = None
    try:
        say(f"Synapse answers at {synapse.base_url} ({time.monotonic() - started:.1f} s)")
        (workdir / "bot").mkdir()
        prepared = await make_running_bot(synapse, workdir / "bot")
        bot = WheelBot(
            **{field.name: getattr(prepared, field.name) for field in fields(prepared)},
            executable=executable,
        )
        await check_config(bot)
        try:
            await bot.start(timeout=START_TIMEOUT)
        except (RuntimeError, TimeoutError) as error:
            raise SmokeFailed(f"the wheel's bot did not start: {error}") from error
        say(f"the wheel's bot is ready as {bot.bot_user_id} ({time.monotonic() - started:.1f} s)")
        check_version_line(bot, version)

        client, room_id = await bot.new_client("smoke")
        await send_text(client, room_id, "!help")
        try:
            answer = await wait_for_message(
                client,
                room_id,
                lambda event: event.sender == bot.bot_user_id,
                timeout=ANSWER_TIMEOUT,
            )
        except TimeoutError as error:
            raise SmokeFailed(f"no answer to !help: {error}") from error
        if FRENCH_HELP not in answer.body:
            raise SmokeFailed(f"!help was not answered with the French help: {answer.body!r}")
        say(f"!help answered in French by the wheel's bot ({time.monotonic() - started:.1f} s)")

        code = await bot.stop()
        if code != 0:
            raise SmokeFailed(f"the bot exited with status {code} on SIGTERM")
        say("the bot stopped cleanly on SIGTERM")
    except BaseException:
        if bot is not None and bot.starts:
            say("the bot's log ends with:\n" + bot.logs()[-4000:])
        say("Synapse's log ends with:\n" + synapse.log_tail(20))
        raise
    finally:
        if bot is not None:
            await bot.stop()
            for client in [*bot.clients, bot.staff]:
                await client.close()
        await synapse.astop()


async def check_config(bot: WheelBot) -> None:
    """`support-bot check-config` of the wheel accepts the config the bot will run with."""
    checked = await asyncio.to_thread(
        subprocess.run,
        [bot.executable, "check-config", str(bot.config_path)],
        capture_output=True,
        text=True,
        cwd=bot.workdir,
        env={key: value for key, value in os.environ.items() if key not in HIDDEN_ENV},
        timeout=60,
    )
    output = (checked.stdout + checked.stderr).strip()
    if checked.returncode != 0:
        raise SmokeFailed(f"check-config exited {checked.returncode}:\n{output}")
    # Its first line is the one-line summary; the effective settings follow.
    say(f"check-config: {output.splitlines()[0] if output else 'ok'}")


def check_version_line(bot: WheelBot, version: str) -> None:
    """The bot's log names its version before anything else it does (an operator reads it)."""
    lines = [line for line in bot.logs().splitlines() if "support-bot " in line]
    wanted = f"support-bot {version} starting"
    if not lines or wanted not in lines[0]:
        raise SmokeFailed(f"the bot's first line is not {wanted!r}: {lines[:1]}")
    say(f"log: {lines[0][lines[0].index('support-bot ') :]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--support-bot", required=True, help="the wheel venv's support-bot")
    parser.add_argument("--expect-version", required=True, help="the version in the log")
    parser.add_argument("--workdir", required=True, type=Path, help="an empty scratch directory")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        asyncio.run(smoke(args.support_bot, args.expect_version, args.workdir.resolve()))
    except SmokeFailed as error:
        say(f"FAILED: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
