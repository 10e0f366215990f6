"""Organisation names and the words of `!org` and `!credit` (issue #16 §1): pure parsing.

Decisions worth knowing:

* **Names are matched without case.** `name_key` folds a name (Unicode NFKC, runs of spaces
  made one, `casefold`): "ACME", "acme" and " Acme " are one organisation, and a second
  organisation whose name folds the same is refused. The name is kept as first typed.
* **A name with spaces is given in double quotes**: `!org new "Acme Europe"`. Typographic
  quotes (“ ” „ « ») count as double quotes, since phones type them. The apostrophe is an
  ordinary character (`L'Atelier`). A word without quotes ends at the first space.
* **What a name cannot be**: empty, longer than `MAX_NAME_CHARS`, with control characters,
  starting with `@` (a Matrix id) or `bridge:` (a bridged client's key), or shaped like a
  ticket reference (`SP-2026-0042`): those designate clients where a name is expected.
* **Members** are designated by their Matrix id (`@alice:example.org`), the reference of one
  of their tickets (any client, a Talk nickname too), a bridged client's key
  (`bridge:<room id>:<nickname>`), or a Talk nickname alone when one bridged client has it.
* **Ticket counts** are whole numbers, `+10`, `10`, `-2` or `−2`; zero is refused (nothing
  to record), as is more than `MAX_PURCHASE_TICKETS` either way (a typo).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from bot.i18n import N_, Msg

__all__ = [
    "MAX_NAME_CHARS",
    "MAX_NOTE_CHARS",
    "MAX_PURCHASE_TICKETS",
    "Member",
    "MemberKind",
    "OrgInputError",
    "clean_name",
    "clean_note",
    "member",
    "name_key",
    "parse_tickets",
    "take_words",
]

MAX_NAME_CHARS = 128
MAX_NOTE_CHARS = 500
#: The largest purchase or correction one command records.
MAX_PURCHASE_TICKETS = 10_000

_QUOTES = str.maketrans({"“": '"', "”": '"', "„": '"', "«": '"', "»": '"'})
_WORD = re.compile(r'\s*(?:"(?P<quoted>[^"]*)"|(?P<bare>[^\s"]\S*))')
_REF = re.compile(r"[A-Za-z]{1,10}-[0-9]{4}-[0-9]{4,}")
_MATRIX_ID = re.compile(r"@[^\s:]+:[^\s:][^\s]*")
_TICKETS = re.compile(r"[+\-−]?[0-9]{1,9}")
_BRIDGE_PREFIX = "bridge:"

_UNCLOSED = N_('A quotation mark is not closed. Put a name with spaces in quotes: "{example}"')
_NAME_EMPTY = N_("The name is empty.")
_NAME_TOO_LONG = N_("A name has at most {max} characters.")
_NAME_CONTROL = N_("A name cannot contain control characters.")
_NAME_RESERVED = N_(
    "A name cannot start with @ or bridge:, nor look like a ticket reference: those name clients."
)
_NOT_A_NUMBER = N_(
    "The number of tickets must be a whole number, such as 10, or -2 to correct a mistake."
)
_ZERO = N_("Zero tickets: nothing to record.")
_TOO_MANY = N_("At most {max} tickets can be recorded at once.")
_NOTE_TOO_LONG = N_("A note has at most {max} characters.")


class OrgInputError(ValueError):
    """Input `!org` or `!credit` cannot accept; `msg` explains it to the user. The exception
    text never holds the input, so logging it leaks nothing."""

    def __init__(self, reason: str, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.params: Mapping[str, Any] = dict(params or {})

    @property
    def msg(self) -> Msg:
        return Msg(str(self.args[0]), self.params)


def take_words(text: str, count: int) -> tuple[list[str], str]:
    """The first `count` words of `text` (a word in double quotes may hold spaces) and the
    rest, as typed. Fewer words when the text has fewer.

    >>> take_words('add "Acme Europe" @bob:example.org', 2)
    (['add', 'Acme Europe'], '@bob:example.org')
    >>> take_words("credit L'Atelier 10 paid by card", 2)
    (['credit', "L'Atelier"], '10 paid by card')
    """
    folded = text.translate(_QUOTES)  # the same length: positions hold for `text`
    words: list[str] = []
    position = 0
    while len(words) < count:
        if not folded[position:].strip():
            position = len(folded)
            break
        match = _WORD.match(folded, position)
        if match is None:  # an opening quote without its closing one
            raise OrgInputError(_UNCLOSED, {"example": "Acme Europe"})
        quoted = match.group("quoted")
        words.append(quoted if quoted is not None else match.group("bare"))
        position = match.end()
    return words, text[position:].strip()


def _fold_spaces(text: str) -> str:
    return " ".join(text.split())


def clean_name(text: str) -> str:
    """The name to store for an organisation (spaces folded, NFC); `OrgInputError` if it
    cannot be one (see the module docstring)."""
    name = unicodedata.normalize("NFC", _fold_spaces(text))
    if not name:
        raise OrgInputError(_NAME_EMPTY)
    if any(unicodedata.category(char) in {"Cc", "Cf", "Zl", "Zp"} for char in name):
        raise OrgInputError(_NAME_CONTROL)
    if len(name) > MAX_NAME_CHARS or len(name_key(name)) > MAX_NAME_CHARS:
        raise OrgInputError(_NAME_TOO_LONG, {"max": MAX_NAME_CHARS})
    if name.startswith("@") or name.casefold().startswith(_BRIDGE_PREFIX) or _REF.fullmatch(name):
        raise OrgInputError(_NAME_RESERVED)
    return name


def name_key(name: str) -> str:
    """What two names must share to be the same organisation.

    >>> name_key("  ACME   Europe ") == name_key("acme europe") == name_key("Ａｃｍｅ Europe")
    True
    """
    return unicodedata.normalize("NFKC", _fold_spaces(name)).casefold()


class MemberKind(StrEnum):
    MATRIX_ID = "matrix_id"
    TICKET_REF = "ticket_ref"
    BRIDGE_KEY = "bridge_key"
    NICKNAME = "nickname"


@dataclass(frozen=True, slots=True)
class Member:
    """How a client is designated in a command (see the module docstring)."""

    kind: MemberKind
    value: str


def member(word: str) -> Member:
    """
    >>> [member(w).kind.value for w in ("@bob:example.org", "sp-2026-0042", "Bob Martin")]
    ['matrix_id', 'ticket_ref', 'nickname']
    """
    word = word.strip()
    if _MATRIX_ID.fullmatch(word):
        return Member(MemberKind.MATRIX_ID, word)
    if _REF.fullmatch(word):
        return Member(MemberKind.TICKET_REF, word.upper())
    if word.startswith(_BRIDGE_PREFIX):
        return Member(MemberKind.BRIDGE_KEY, word)
    return Member(MemberKind.NICKNAME, word)


def parse_tickets(word: str) -> int:
    """A number of tickets bought (negative: a correction).

    >>> parse_tickets("+10"), parse_tickets("−2")
    (10, -2)
    """
    text = word.strip()
    if not _TICKETS.fullmatch(text):
        raise OrgInputError(_NOT_A_NUMBER)
    number = int(text.replace("−", "-"))
    if number == 0:
        raise OrgInputError(_ZERO)
    if abs(number) > MAX_PURCHASE_TICKETS:
        raise OrgInputError(_TOO_MANY, {"max": MAX_PURCHASE_TICKETS})
    return number


def clean_note(text: str) -> str | None:
    """A purchase's note, or None when there is none."""
    note = text.strip()
    if len(note) > MAX_NOTE_CHARS:
        raise OrgInputError(_NOTE_TOO_LONG, {"max": MAX_NOTE_CHARS})
    return note or None
