"""Localisation: messages are values until the edge renders them in the user's locale.

Pure code returns `Msg` values (an English msgid marked with `N_`, its parameters, and an
optional plural form); the shell renders them with a `Translator` for the user's locale.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def N_(message: str) -> str:
    """Mark a string for extraction without translating it (it is translated when rendered)."""
    return message


@dataclass(frozen=True, slots=True)
class Msg:
    """A reply before translation.

    `text` is the English msgid (marked with `N_`), `params` fill its `{placeholders}` after
    translation. For plurals, `plural` is the English plural msgid and `n` the count.
    Parameter values that are aware datetimes are formatted by the translator in the user's
    locale and time zone; `Msg` values nested as parameters are rendered first.
    """

    text: str
    params: Mapping[str, Any] = field(default_factory=dict)
    plural: str | None = None
    n: int | None = None
