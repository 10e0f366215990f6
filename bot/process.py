"""What a running process of the bot shares, whichever command started it (`run`, `demo`):
its logging (`setup_logging`, text or JSON lines, library records cleaned of message
contents, nio's repeated decryption warnings demoted), private files (`private_umask`) and a
clean stop on SIGINT / SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

from bot.config import DEFAULT_LOG_LEVELS, QUIET_LOGGERS, LoggingConfig
from bot.logcontext import FIELDS, ContextFields

__all__ = [
    "LOG_EXTRA_FIELDS",
    "LOG_FORMAT",
    "NIO_CRYPTO_LOGGER",
    "NIO_DECRYPTION_NOISE",
    "QUIET_LOGGERS",
    "LibraryContentFilter",
    "NioDecryptionNoise",
    "private_umask",
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
LOG_EXTRA_FIELDS = FIELDS
# The name of the handler `setup_logging` installs, so that a second call replaces it.
_HANDLER_NAME = "support-bot"
#: Loggers of the bot's own code, which never log what clients or staff wrote; every other
#: logger is a library's, whose records `LibraryContentFilter` cleans.
OWN_LOGGERS = ("bot", "handlers", "__main__")
#: What stands for anything a library record might have quoted.
REDACTED = "[content redacted]"
# Library messages known to quote what they handle: nio's schema errors print the invalid
# event or /sync response (`On instance: {… 'body': …}`), and its HTTP/2 and Olm traces the
# event or payload. The part before the first ": " is kept, the rest replaced.
_QUOTING = re.compile(
    r"(Error validating|Validating response schema|Handling Http2 event"
    r"|Failed to parse Olm message payload)"
)
# A Python or JSON repr of a mapping or a list of strings (`{'body': …}`, `["…"]`): how a
# library that dumps an object writes it, wherever that happens in the message.
_STRUCTURE = re.compile(r"""[{\[]\s*['"]""")
# A %-style placeholder of a logging template (`%s`, `%(body)r`, `%5.2f`).
_PLACEHOLDER = re.compile(r"%(\([^)]*\))?[-#0 +]*\d*(\.\d+)?[a-zA-Z]")
# Loggers given a level by the last `setup_logging`, reset by the next one.
_configured: set[str] = set()
#: The logger of nio's end-to-end encryption.
NIO_CRYPTO_LOGGER = "nio.crypto.log"
#: nio's warnings at each attempt to decrypt an event whose room key has not come (nio tries
#: at the sync that brings it, the bot at every retry, i.e. at every new key: five lines or
#: so each time), and at the echo of the bot's own key request. The bot says it once per
#: event and change of its state instead (`bot.matrix.pending`).
NIO_DECRYPTION_NOISE = re.compile(
    r"(Received a undecryptable Megolm event from a"
    r"|Error decrypting megolm event"
    r"|Failed to re-share key \S+ with \S+: No session found)"
)


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


class LibraryContentFilter(logging.Filter):
    """On the handler (so that it sees the records of every logger, propagated or not):
    records of library loggers that quote event contents are redacted in place, keeping
    their logger, level and the start of their message. nio logs a malformed event whole
    (`WARNING nio.events.misc: Error validating event: … {'body': 'SECRET …'}`), as an
    f-string, so the message itself is looked at, not only its arguments:

    * a message `_QUOTING` knows, or in which a mapping or a list shows: kept up to its first
      ": ", then `REDACTED`;
    * arguments that are structures (mappings, lists, bytes: an event, a response, a body)
      are replaced by `REDACTED` before the message is formatted;
    * an exception whose text shows a structure keeps only its class name.

    Records of the bot's own loggers (`OWN_LOGGERS`) pass untouched: they never carry
    content, and this filter must not hide their identifiers."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _is_own(record.name):
            return True
        if isinstance(record.args, Mapping):  # `("%(body)s", {…})`, or `("%r", {…})`
            record.msg, record.args = _PLACEHOLDER.sub(REDACTED, str(record.msg)), ()
        elif record.args:
            record.args = tuple(_plain(arg) for arg in record.args)
        if not isinstance(record.msg, str):  # an object logged as the message
            record.msg, record.args = REDACTED, ()
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a broken format: nothing of it is worth the risk
            record.msg, record.args = REDACTED, ()
            message = REDACTED
        if _QUOTING.search(message) or _STRUCTURE.search(message):
            record.msg, record.args = _head(message), ()
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            if _STRUCTURE.search(str(error)):
                record.msg = f"{record.msg} ({type(error).__name__}: {REDACTED})"
                record.exc_info, record.exc_text = None, None
        return True


class NioDecryptionNoise(logging.Filter):
    """On nio's crypto logger (which writes these records itself): its `NIO_DECRYPTION_NOISE`
    warnings become DEBUG records, shown only when that logger is set to DEBUG. Every other
    record of it, its errors and its other warnings (a device key mismatch, a key that cannot
    be imported…), passes as it is."""

    def filter(self, record: logging.LogRecord) -> bool:
        # nio writes f-strings, or an exception as the message: no arguments to format.
        if record.levelno != logging.WARNING or not NIO_DECRYPTION_NOISE.match(str(record.msg)):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _is_own(name: str) -> bool:
    return any(name == own or name.startswith(own + ".") for own in OWN_LOGGERS)


class _Redacted:
    """Stands for a structure in a record's arguments, the same through `%s` and `%r`."""

    def __repr__(self) -> str:
        return REDACTED

    __str__ = __repr__


_REDACTED_ARG = _Redacted()


def _plain(arg: object) -> object:
    """`arg` when it is a scalar (a number, a text, an identifier), else a `REDACTED` mark."""
    if arg is None or isinstance(arg, bool | int | float | str):
        return arg
    return _REDACTED_ARG


def _head(message: str) -> str:
    """The start of a message that quotes content: up to its first ": " (or structure)."""
    cut = message.find(": ")
    structure = _STRUCTURE.search(message)
    if structure is not None and (cut < 0 or structure.start() < cut):
        cut = structure.start()
    head = (message if cut < 0 else message[:cut]).rstrip(" :")
    return f"{head}: {REDACTED}" if head else REDACTED


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
    # On the handler, not on loggers: a logger's filters miss the records propagated to it.
    handler.addFilter(LibraryContentFilter())
    handler.addFilter(ContextFields())  # the event, room and ticket being handled
    if config.format == "json":
        handler.setFormatter(_JsonLines())
    else:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(root_level)
    nio_crypto = logging.getLogger(NIO_CRYPTO_LOGGER)
    for old_filter in [f for f in nio_crypto.filters if isinstance(f, NioDecryptionNoise)]:
        nio_crypto.removeFilter(old_filter)
    nio_crypto.addFilter(NioDecryptionNoise())
    for name in _configured - {name for name, _ in config.levels}:
        logging.getLogger(name).setLevel(logging.NOTSET)
    _configured.clear()
    for name, logger_level in config.levels:
        number = levels[logger_level]
        if (name, logger_level) in DEFAULT_LOG_LEVELS:
            number = max(number, root_level)
        logging.getLogger(name).setLevel(number)
        _configured.add(name)


#: What `private_umask` leaves: files 0600, directories 0700.
PRIVATE_UMASK = 0o077


def private_umask() -> int:
    """From now on, files and directories this process creates are its user's alone (the
    database, the key store and whatever a library writes there hold secrets); returns the
    previous umask. The database and the store are also made private explicitly
    (`bot.storage.db`, `bot.matrix.session`), whoever created them."""
    return os.umask(PRIVATE_UMASK)


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
