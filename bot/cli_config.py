"""`support-bot check-config`: validate a config file and say what is wrong, all at once."""

from __future__ import annotations

import os
from collections.abc import Mapping

from bot.config import (
    ConfigError,
    parse_config_file,
    read_config_file,
    settings_of,
    summarize,
)


def check_config_command(path: str, env: Mapping[str, str] | None = None) -> int:
    """Print every problem as `key: message` and return 1; or print the summary, then every
    key with its value and where it came from (the file, a variable, or the default), and
    return 0. Secrets are shown as "set" only.

    Reads `SUPPORT_BOT_*` variables from the process environment (unless `env` is given), as
    `run` does, so a secret provided there counts.
    """
    env = os.environ if env is None else env
    try:
        raw = read_config_file(path)
        config = parse_config_file(raw, env, path)
    except ConfigError as error:
        for key, message in error.problems:
            print(f"{key}: {message}")
        return 1
    print(summarize(config))
    print(f"file: {path}" if raw is not None else f"file: none ({path} not found)")
    settings = settings_of(config, raw, env)
    width = max(len(f"{s.path} = {s.shown}") for s in settings)
    for setting in settings:
        line = f"{setting.path} = {setting.shown}"
        # Values are aligned up to a point: one long URL must not push every origin far right.
        origin = setting.origin
        if origin not in ("file", "default"):
            origin = f"environment: {origin}"
        print(f"  {line:<{min(width, 60)}}  ({origin})")
    return 0
