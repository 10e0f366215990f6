"""What a running process of the bot shares, whichever command started it (`run`, `demo`):
its logging (`setup_logging`, text or JSON lines) and a clean stop on SIGINT / SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

from bot.config import DEFAULT_LOG_LEVELS, QUIET_LOGGERS, LoggingConfig

__all__ = [
    "LOG_EXTRA_FIELDS",
    "LOG_FORMAT",
    "QUIET_LOGGERS",
    "setup_logging",
    "stop_on_signals",
]

log = logging.getLogger(__name__)

# Only levels and origins: message content belongs in no log line (SPEC §7), so the format adds
# nothing beyond what the code chose to log.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Attributes a JSON line carries besides time, level, logger and message, when the call gives
#: them (`log.info("…", extra={"ref": ticket.ref})`). Identifiers only: any other `extra`, and
#: a dict logged as the message, are dropped, so no message content reaches a JSON line.
LOG_EXTRA_FIELDS = ("event_id", "room_id", "ref")
# The name of the handler `setup_logging` installs, so that a second call replaces it.
_HANDLER_NAME = "support-bot"
# Loggers given a level by the last `setup_logging`, reset by the next one.
_configured: set[str] = set()


class _JsonLines(JsonFormatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the
    `LOG_EXTRA_FIELDS` given, and the traceback of an exception."""

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        # Not super().add_fields: it copies every `extra` attribute of the record.
        moment = datetime.fromtimestamp(record.created, tz=UTC)
        log_data["time"] = moment.isoformat(timespec="milliseconds")
        log_data["level"] = record.levelname
        log_data["logger"] = record.name
        log_data["message"] = record.message
        for key in LOG_EXTRA_FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                log_data[key] = value
        for key in ("exc_info", "stack_info"):
            if message_dict.get(key):
                log_data[key] = message_dict[key]


def setup_logging(
    config: LoggingConfig, *, level: str | None = None, stream: TextIO | None = None
) -> None:
    """Log to `stream` (standard error) as `config` says. `level`, the `--log-level` option,
    overrides `config.level`. A second call replaces what the first installed: the CLI calls
    it before reading the config (so its problems are logged) and again with the config's.

    `config.levels` set particular loggers, louder or quieter than the root. The default
    entries (traffic loggers at WARNING) only ever quiet: with the root at ERROR they are at
    ERROR too, as they were before `[logging]` existed.
    """
    levels = logging.getLevelNamesMapping()
    root_level = levels[level or config.level]
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.set_name(_HANDLER_NAME)
    if config.format == "json":
        handler.setFormatter(_JsonLines())
    else:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(root_level)
    for name in _configured - {name for name, _ in config.levels}:
        logging.getLogger(name).setLevel(logging.NOTSET)
    _configured.clear()
    for name, logger_level in config.levels:
        number = levels[logger_level]
        if (name, logger_level) in DEFAULT_LOG_LEVELS:
            number = max(number, root_level)
        logging.getLogger(name).setLevel(number)
        _configured.add(name)


@contextlib.contextmanager
def stop_on_signals(
    stop: asyncio.Event, on_signal: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Inside a running loop: the first SIGINT or SIGTERM sets `stop` (a clean stop). The
    handlers are then removed, so a second Ctrl-C interrupts at once."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)

    def remove() -> None:
        for sig in signals:
            loop.remove_signal_handler(sig)

    def handle(sig: signal.Signals) -> None:
        log.info("received %s: stopping", sig.name)
        remove()
        if on_signal is not None:
            on_signal(sig.name)
        stop.set()

    for sig in signals:
        loop.add_signal_handler(sig, handle, sig)
    try:
        yield
    finally:
        remove()
