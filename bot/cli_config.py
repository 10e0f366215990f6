"""`support-bot check-config`: validate a config file and say what is wrong, all at once."""

from __future__ import annotations

import os

from bot.config import ConfigError, load_config, summarize


def check_config_command(path: str) -> int:
    """Print every problem as `key: message` and return 1, or print the summary and return 0.

    Reads `SUPPORT_BOT_*` variables from the process environment, as `run` does, so a secret
    provided there counts.
    """
    try:
        config = load_config(path, os.environ)
    except ConfigError as error:
        for key, message in error.problems:
            print(f"{key}: {message}")
        return 1
    print(summarize(config))
    return 0
