"""Localisation: messages are values until the edge renders them in the user's locale.

Pure code returns `Msg` values (an English msgid marked with `N_`, its parameters, and an
optional plural form); the shell renders them with a `Translator` for the user's locale.

Catalogs live in `locales/<lang>/LC_MESSAGES/messages.po` at the top of the repository and are
managed with `python scripts/i18n.py extract|update|compile|check`; `locales` is installed as a
package of its own, so they are read through `importlib.resources` from a checkout, an editable
install or a wheel alike. At startup `Catalogs.load()` reads each
supported `.po` and compiles it in memory, once per locale: a fresh clone works without a
compile step, and a stale committed `.mo` can never shadow the `.po` (mtimes after a clone
say nothing about which file is newer).
"""

from __future__ import annotations

import gettext as _gettext
import logging
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from importlib.resources import files
from importlib.resources.abc import Traversable
from io import BytesIO
from typing import Any
from zoneinfo import ZoneInfo

from babel import Locale
from babel.dates import format_date as _babel_format_date
from babel.dates import format_time as _babel_format_time
from babel.messages.catalog import Catalog
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations as _BabelTranslations

logger = logging.getLogger(__name__)


def N_(message: str) -> str:
    """Mark a string for extraction without translating it (it is translated when rendered)."""
    return message


def NP_(singular: str, plural: str) -> tuple[str, str]:
    """Mark a singular/plural pair kept apart from its `Msg`, e.g. in a module constant.

    `TICKETS = NP_("{n} ticket", "{n} tickets")`, then `Msg(TICKETS[0], params, TICKETS[1], n)`.
    Two separate `N_` calls would be extracted as two unrelated messages, and the plural would
    never be translated.
    """
    return singular, plural


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


SUPPORTED_LOCALES: tuple[str, ...] = ("fr", "en")
DEFAULT_LOCALE = "fr"
SOURCE_LOCALE = "en"
DOMAIN = "messages"
# A path computed from this file only worked in a checkout: installed, `bot/` sits in
# site-packages with no `locales/` beside it. The package `locales` is found wherever `bot` is.
# (A real directory, a `Path`, unless the package were imported from a zip.)
LOCALES_DIR: Traversable = files("locales")

# Babel 2.18's CLDR data only has "{1}, {0}" as the full datetime pattern (CLDR's "atTime"
# variant is not exposed), so the joining word comes from the catalog instead.
# Translators: joins a long date and a time, as in "Tuesday, December 29, 2026 at 6:00 PM".
DATETIME_JOIN = N_("{date} at {time}")

# CLDR puts U+202F (narrow no-break space) before AM/PM; it is invisible in test fixtures and
# some Matrix and mail clients render it badly, so plain spaces are used instead.
_NARROW_NBSP = "\u202f"


def normalize_locale(value: str | None) -> str | None:
    """Map a user-supplied locale (`"FR"`, `"fr-FR"`, `"en_GB.UTF-8"`) to a supported one."""
    if not value:
        return None
    language = value.strip().replace("-", "_").split(".", 1)[0].split("@", 1)[0]
    language = language.split("_", 1)[0].lower()
    return language if language in SUPPORTED_LOCALES else None


def po_path(locale: str, locales_dir: Traversable = LOCALES_DIR) -> Traversable:
    """Where the `.po` catalog of `locale` lives."""
    return locales_dir / locale / "LC_MESSAGES" / f"{DOMAIN}.po"


def _is_translated(string_: str | tuple[str, ...] | list[str]) -> bool:
    if isinstance(string_, (tuple, list)):
        return all(string_)
    return bool(string_)


def compile_catalog(catalog: Catalog) -> bytes:
    """The `.mo` bytes of `catalog`, without fuzzy and (partly) untranslated entries.

    Babel's `write_mo` keeps plural entries whose forms are all empty (a tuple of empty strings
    is truthy), which would make `ngettext` return "" instead of falling back to the English.
    """
    compiled = Catalog(locale=catalog.locale, domain=catalog.domain, fuzzy=False)
    compiled.mime_headers = catalog.mime_headers
    for message in catalog:
        if not message.id or message.fuzzy or not _is_translated(message.string):
            continue
        compiled.add(message.id, message.string, context=message.context)
    buffer = BytesIO()
    write_mo(buffer, compiled, use_fuzzy=False)
    return buffer.getvalue()


class _KeepMissing(dict[str, Any]):
    """Leaves unknown `{placeholders}` as they are (last-resort formatting)."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def placeholders(text: str) -> set[str]:
    """The names of the `{placeholders}` of a message (empty if it is not a valid format)."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError:
        return set()


class Translator:
    """Translations and date formatting for one locale; build once, share everywhere."""

    def __init__(self, locale: str, translations: _gettext.NullTranslations) -> None:
        self.locale = locale
        self.babel_locale = Locale.parse(locale)
        self._translations = translations

    @classmethod
    def from_po(cls, locale: str, path: Traversable) -> Translator:
        """Read a `.po` file and compile it in memory."""
        with path.open("rb") as fileobj:
            catalog = read_po(fileobj, locale=locale, domain=DOMAIN)
        translations = _BabelTranslations(fp=BytesIO(compile_catalog(catalog)), domain=DOMAIN)
        return cls(locale, translations)

    @classmethod
    def load(cls, locale: str, locales_dir: Traversable = LOCALES_DIR) -> Translator:
        """The translator of a supported locale from its catalog in `locales_dir`."""
        return cls.from_po(locale, po_path(locale, locales_dir))

    def __repr__(self) -> str:
        return f"Translator({self.locale!r})"

    # -- messages ------------------------------------------------------------------------

    def gettext(self, message: str) -> str:
        return self._translations.gettext(message)

    def ngettext(self, singular: str, plural: str, n: int) -> str:
        return self._translations.ngettext(singular, plural, n)

    def render(self, msg: Msg, tz: ZoneInfo) -> str:
        """Translate `msg`, then fill its placeholders with values formatted for this locale.

        A plural `Msg` gets `n` as a parameter unless it sets one. A translation that does not
        fit the parameters (a placeholder renamed by mistake) falls back to the English text.
        """
        values: dict[str, Any] = {}
        if msg.plural is not None and msg.n is not None:
            values["n"] = msg.n
            template = self.ngettext(msg.text, msg.plural, msg.n)
            english = msg.text if msg.n == 1 else msg.plural
        else:
            if msg.plural is not None:
                logger.warning("Plural message %r has no count; using the singular", msg.text)
            template = self.gettext(msg.text)
            english = msg.text
        values.update({key: self._format_value(value, tz) for key, value in msg.params.items()})
        try:
            return template.format(**values)
        except (KeyError, IndexError, ValueError, AttributeError) as exc:
            logger.warning(
                "Message %r does not fit its parameters in %s (%r); using the English text",
                msg.text,
                self.locale,
                exc,
            )
        try:
            return english.format_map(_KeepMissing(values))
        except (IndexError, ValueError, AttributeError):
            logger.exception("Message %r cannot be formatted; sent unformatted", msg.text)
            return english

    def _format_value(self, value: Any, tz: ZoneInfo) -> Any:
        if isinstance(value, Msg):
            return self.render(value, tz)
        if isinstance(value, datetime):
            return self.format_datetime_long(value, tz)
        if isinstance(value, date):
            return self.format_date_long(value)
        if isinstance(value, time):
            return self.format_time(value)
        if isinstance(value, int):
            return str(value)
        if isinstance(value, (tuple, list)):
            return "\n".join(str(self._format_value(item, tz)) for item in value)
        return value

    # -- dates and times -----------------------------------------------------------------

    def format_datetime_long(self, dt: datetime, tz: ZoneInfo) -> str:
        """`mardi 29 décembre 2026 à 18:00` / `Tuesday, December 29, 2026 at 6:00 PM`."""
        local = _localize(dt, tz)
        return self.gettext(DATETIME_JOIN).format(
            date=self.format_date_long(local.date()), time=self.format_time(local.time())
        )

    def format_date_long(self, value: date, tz: ZoneInfo | None = None) -> str:
        """`mardi 29 décembre 2026` / `Tuesday, December 29, 2026`.

        An aware datetime is first converted to `tz` (its own zone if `tz` is None).
        """
        if isinstance(value, datetime):
            value = _localize(value, tz).date()
        return self._clean(_babel_format_date(value, "full", locale=self.babel_locale))

    def format_time(self, value: time | datetime, tz: ZoneInfo | None = None) -> str:
        """`18:00` / `6:00 PM`. An aware datetime is first converted to `tz`."""
        if isinstance(value, datetime):
            value = _localize(value, tz).time()
        return self._clean(_babel_format_time(value, "short", locale=self.babel_locale))

    @staticmethod
    def _clean(text: str) -> str:
        return text.replace(_NARROW_NBSP, " ")


def _localize(dt: datetime, tz: ZoneInfo | None) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt.isoformat()} cannot be shown in a time zone")
    return dt.astimezone(tz) if tz is not None else dt


class Catalogs:
    """The translators of all supported locales, built once at startup and shared."""

    def __init__(self, translators: Mapping[str, Translator], default: str = DEFAULT_LOCALE):
        if default not in translators:
            raise ValueError(f"default locale {default!r} has no catalog")
        self._translators = dict(translators)
        self.default = default

    @classmethod
    def load(
        cls,
        locales_dir: Traversable = LOCALES_DIR,
        default: str = DEFAULT_LOCALE,
        locales: Iterable[str] = SUPPORTED_LOCALES,
    ) -> Catalogs:
        """Build every translator now, so no message ever pays for reading a catalog."""
        normalized = normalize_locale(default)
        if normalized is None:
            raise ValueError(f"unsupported default locale {default!r}")
        return cls(
            {locale: Translator.load(locale, locales_dir) for locale in locales}, normalized
        )

    @property
    def locales(self) -> tuple[str, ...]:
        return tuple(self._translators)

    def get(self, locale: str | None) -> Translator:
        """The translator for `locale` (any spelling); the default one if unsupported."""
        normalized = normalize_locale(locale)
        if normalized is None or normalized not in self._translators:
            return self._translators[self.default]
        return self._translators[normalized]
