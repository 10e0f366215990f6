"""Identifiers that every log line written while an event is handled carries: the event's id,
its room, and the reference of the ticket it concerns once known.

The dispatcher binds the event and room for the whole of an event's handling, the storage
layer adds the ticket's reference when it audits a change; `setup_logging` installs
`ContextFields`, which copies them onto each record (the JSON lines show them; the text lines
do not). Identifiers only, never message content. A context variable, so concurrent events
(each handled in a task of its own) never mix their fields.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from types import MappingProxyType

FIELDS = ("event_id", "room_id", "ref")

_EMPTY: Mapping[str, str] = MappingProxyType({})
_current: ContextVar[Mapping[str, str]] = ContextVar("support_bot_log_fields", default=_EMPTY)


def current() -> Mapping[str, str]:
    return _current.get()


@contextlib.contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """The fields given, on every log line written inside the block (in this task)."""
    token = _current.set(_merged(fields))
    try:
        yield
    finally:
        _current.reset(token)


def bind(**fields: str | None) -> None:
    """Add fields until the end of the enclosing `bound` block (or of the task)."""
    _current.set(_merged(fields))


def _merged(fields: Mapping[str, str | None]) -> Mapping[str, str]:
    merged = dict(_current.get())
    merged.update({key: value for key, value in fields.items() if value and key in FIELDS})
    return MappingProxyType(merged)


class ContextFields(logging.Filter):
    """Copies the bound fields onto each record (a field the call gave itself wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _current.get().items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        return True
