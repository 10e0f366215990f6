"""`support-bot check-config`: validate a config file and say what is wrong, all at once."""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import Mapping

from bot.config import (
    Config,
    ConfigError,
    parse_config_file,
    read_config_file,
    settings_of,
    summarize,
)
from bot.mail import config_warnings, tls_mode
from bot.mailbox import imap


def check_config_command(path: str, env: Mapping[str, str] | None = None) -> int:
    """Print every problem as `key: message` and return 1; or print the summary, then every
    key with its value and where it came from (the file, a variable, or the default), and
    return 0. Secrets are shown as "set" only. Warnings (`warning: key: message`, on standard
    error) do not change the status: a deprecated key, or e-mail sent in clear text to a
    server that is not on this machine.

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
    # The parser reads no files; what the config names is checked here, as `run` would.
    problems = _file_problems(config)
    for key, message in problems:
        print(f"{key}: {message}")
    if problems:
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
    for key, message in [
        *config_warnings(config.mail),
        *imap.config_warnings(config.mail.inbound),
    ]:
        print(f"warning: {key}: {message}", file=sys.stderr)
    return 0


def _file_problems(config: Config) -> list[tuple[str, str]]:
    """Files the config names that the bot could not use."""
    problems: list[tuple[str, str]] = []
    inbound = config.mail.inbound
    for key, ca_file, used in (
        ("mail.ca_file", config.mail.ca_file, tls_mode(config.mail) != "none"),
        (
            "mail.inbound.ca_file",
            inbound.ca_file,
            bool(inbound.host) and imap.tls_mode(inbound) != "none",
        ),
    ):
        if ca_file is None or not used:
            continue
        try:
            ssl.create_default_context(cafile=ca_file)
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
            reason = getattr(error, "strerror", None) or type(error).__name__
            problems.append((key, f"cannot be read as PEM CA certificates ({ca_file}): {reason}"))
    return problems
