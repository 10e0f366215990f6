"""Catalogs and rendering: French complete and consistent, dates and plurals per locale."""

from __future__ import annotations

import importlib.util
import io
import logging
import string
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from types import ModuleType
from zoneinfo import ZoneInfo

import pytest
from babel.messages.catalog import Catalog, Message
from babel.messages.pofile import read_po, write_po

from bot.i18n import (
    LOCALES_DIR,
    N_,
    SUPPORTED_LOCALES,
    Catalogs,
    Msg,
    Translator,
    normalize_locale,
)

ROOT = Path(__file__).resolve().parents[2]
POT = LOCALES_DIR / "messages.pot"
PARIS = ZoneInfo("Europe/Paris")
EVENING = datetime(2026, 12, 29, 18, 0, tzinfo=PARIS)


def _read(path: Path, locale: str | None = None) -> Catalog:
    with path.open("rb") as fileobj:
        return read_po(fileobj, locale=locale)


def _po(locale: str) -> Catalog:
    return _read(LOCALES_DIR / locale / "LC_MESSAGES" / "messages.po", locale)


def _names(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}


def _forms(message: Message) -> tuple[str, ...]:
    return tuple(message.string) if message.pluralizable else (message.string,)


def _label(message: Message) -> str:
    return message.id[0] if message.pluralizable else message.id


@pytest.fixture(scope="module")
def script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("i18n_script", ROOT / "scripts" / "i18n.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def catalogs() -> Catalogs:
    return Catalogs.load()


def _translator(tmp_path: Path, locale: str, entries: list[tuple[object, object]]) -> Translator:
    """A translator read from a .po written here, the way the bot reads the real ones."""
    catalog = Catalog(locale=locale)
    for msgid, msgstr in entries:
        catalog.add(msgid, msgstr)
    path = tmp_path / f"{locale}.po"
    with path.open("wb") as fileobj:
        write_po(fileobj, catalog)
    return Translator.from_po(locale, path)


# -- the committed catalogs ------------------------------------------------------------------


def test_pot_is_up_to_date_with_the_code(script: ModuleType, tmp_path: Path) -> None:
    fresh = tmp_path / "messages.pot"
    script.write_catalog(fresh, script.extract_catalog())
    current = {m.id for m in _read(fresh) if m.id}
    committed = {m.id for m in _read(POT) if m.id}
    assert current - committed == set(), "run `python scripts/i18n.py extract` and `update`"
    assert committed - current == set(), "run `python scripts/i18n.py extract` and `update`"


@pytest.mark.parametrize("locale", SUPPORTED_LOCALES)
def test_header_plural_rule_is_babel_s(locale: str) -> None:
    assert _po(locale).plural_forms == Catalog(locale=locale).plural_forms


def test_french_plural_rule_is_the_pinned_one() -> None:
    assert _po("fr").plural_forms == "nplurals=2; plural=(n > 1);"


def test_every_message_is_translated_in_french() -> None:
    french = _po("fr")
    problems = []
    for message in _read(POT):
        if not message.id:
            continue
        entry = french.get(message.id)
        if entry is None or entry.id != message.id:
            problems.append(f"missing (run update): {_label(message)!r}")
        elif entry.fuzzy:
            problems.append(f"fuzzy: {_label(message)!r}")
        elif not all(_forms(entry)):
            problems.append(f"untranslated: {_label(message)!r}")
    assert problems == []


def test_english_catalog_has_every_message() -> None:
    english = _po("en")
    missing = [_label(m) for m in _read(POT) if m.id and english.get(m.id) is None]
    assert missing == []


@pytest.mark.parametrize("locale", SUPPORTED_LOCALES)
def test_placeholders_match(locale: str) -> None:
    """Each translated form uses the placeholders of the msgids.

    For plurals, every form must use those of singular and plural together: the French first
    form also covers 0, so it needs `{n}` even if the English singular ("One ticket") has none.
    """
    problems = []
    for message in _po(locale):
        if not message.id:
            continue
        if message.pluralizable:
            expected = _names(message.id[0]) | _names(message.id[1])
        else:
            expected = _names(message.id)
        for form in _forms(message):
            if form and _names(form) != expected:
                problems.append((_label(message), form))
    assert problems == []


@pytest.mark.parametrize("locale", SUPPORTED_LOCALES)
def test_plural_entries_have_the_header_s_number_of_forms(locale: str) -> None:
    catalog = _po(locale)
    wrong = [
        (_label(m), len(m.string))
        for m in catalog
        if m.id and m.pluralizable and len(m.string) != catalog.num_plurals
    ]
    assert wrong == []


def test_script_check_passes(script: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert script.cmd_check() == 0, capsys.readouterr().err


# -- extraction ------------------------------------------------------------------------------


def test_extraction_understands_msg_plurals_and_markers(script: ModuleType) -> None:
    source = b"""
from bot.i18n import Msg, N_

def reply(n, translator, name):
    # Translators: shown after the summary.
    first = Msg(N_("Ticket {ref} is open."), {"ref": "SP-1"})
    many = Msg(N_("{n} ticket"), {"when": Msg(N_("today"))}, plural=N_("{n} tickets"), n=n)
    positional = Msg("{n} hour", {}, "{n} hours", n)
    marked = N_("Help")
    direct = translator.ngettext("{n} slot", "{n} slots", n)
    lazy = _(f"Hello {name}")
    dynamic = Msg(name)
    return translator.gettext("Bye")

PAIR = NP_("{n} day", "{n} days")
"""
    found = list(
        script.extract_messages(
            io.BytesIO(source), script.KEYWORDS.keys(), script.COMMENT_TAGS, {}
        )
    )
    messages = [message for _, _, message, _ in found]
    assert messages == [
        "Ticket {ref} is open.",
        ("{n} ticket", "{n} tickets"),
        "today",
        ("{n} hour", "{n} hours"),
        "Help",
        ("{n} slot", "{n} slots"),
        "Bye",
        ("{n} day", "{n} days"),
    ]
    assert found[0][3] == ["Translators: shown after the summary."]


# -- rendering -------------------------------------------------------------------------------


def test_datetime_in_french(catalogs: Catalogs) -> None:
    msg = Msg(N_("{date} at {time}"), {"date": "x", "time": "y"})
    assert catalogs.get("fr").render(msg, PARIS) == "x à y"
    assert catalogs.get("fr").format_datetime_long(EVENING, PARIS) == (
        "mardi 29 décembre 2026 à 18:00"
    )


def test_datetime_in_english(catalogs: Catalogs) -> None:
    assert catalogs.get("en").format_datetime_long(EVENING, PARIS) == (
        "Tuesday, December 29, 2026 at 6:00 PM"
    )


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        ("fr", "Rendez-vous : mardi 29 décembre 2026 à 18:00"),
        ("en", "Appointment: Tuesday, December 29, 2026 at 6:00 PM"),
    ],
)
def test_render_formats_datetime_params_in_the_user_zone(
    tmp_path: Path, locale: str, expected: str
) -> None:
    translator = _translator(
        tmp_path,
        locale,
        [
            ("Appointment: {when}", "Rendez-vous : {when}" if locale == "fr" else ""),
            ("{date} at {time}", "{date} à {time}" if locale == "fr" else ""),
        ],
    )
    in_utc = EVENING.astimezone(UTC)
    assert translator.render(Msg("Appointment: {when}", {"when": in_utc}), PARIS) == expected


def test_dates_ints_nested_and_lists(catalogs: Catalogs) -> None:
    translator = catalogs.get("en")
    lines = (Msg("Line {i}", {"i": 1}), Msg("Line {i}", {"i": 2}))
    msg = Msg(
        "{day} / {count} / {inner} /\n{lines}",
        {"day": date(2026, 12, 29), "count": 1234, "inner": Msg("{x}!", {"x": 5}), "lines": lines},
    )
    assert translator.render(msg, PARIS) == (
        "Tuesday, December 29, 2026 / 1234 / 5! /\nLine 1\nLine 2"
    )
    assert catalogs.get("fr").format_date_long(date(2026, 12, 29)) == "mardi 29 décembre 2026"
    assert catalogs.get("fr").format_time(EVENING.astimezone(UTC), PARIS) == "18:00"


def test_nested_msg_is_translated_too(tmp_path: Path) -> None:
    translator = _translator(
        tmp_path,
        "fr",
        [("Status: {state}", "Statut : {state}"), ("open", "ouvert")],
    )
    msg = Msg("Status: {state}", {"state": Msg("open")})
    assert translator.render(msg, PARIS) == "Statut : ouvert"


@pytest.mark.parametrize(
    ("locale", "n", "expected"),
    [
        ("fr", 0, "0 heure restante"),
        ("fr", 1, "1 heure restante"),
        ("fr", 2, "2 heures restantes"),
        ("en", 0, "0 hours left"),
        ("en", 1, "1 hour left"),
        ("en", 2, "2 hours left"),
    ],
)
def test_plurals(tmp_path: Path, locale: str, n: int, expected: str) -> None:
    french = ("{n} heure restante", "{n} heures restantes")
    translator = _translator(
        tmp_path,
        locale,
        # English msgstr stay empty: the msgids are used.
        [(("{n} hour left", "{n} hours left"), french if locale == "fr" else ("", ""))],
    )
    assert translator.ngettext("{n} hour left", "{n} hours left", n).format(n=n) == expected
    msg = Msg("{n} hour left", plural="{n} hours left", n=n)
    assert translator.render(msg, PARIS) == expected


def test_fuzzy_entries_are_not_used(tmp_path: Path) -> None:
    catalog = Catalog(locale="fr")
    catalog.add("Hello", "Au revoir", flags=("fuzzy",))
    path = tmp_path / "fr.po"
    with path.open("wb") as fileobj:
        write_po(fileobj, catalog)
    assert Translator.from_po("fr", path).gettext("Hello") == "Hello"


def test_broken_translation_falls_back_to_english(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    translator = _translator(tmp_path, "fr", [("Ticket {ref}", "Ticket {reference}")])
    with caplog.at_level(logging.WARNING, logger="bot.i18n"):
        assert translator.render(Msg("Ticket {ref}", {"ref": "SP-2026-0042"}), PARIS) == (
            "Ticket SP-2026-0042"
        )
    assert "Ticket {ref}" in caplog.text


def test_missing_parameter_does_not_crash(catalogs: Catalogs) -> None:
    assert catalogs.get("fr").render(Msg("Ticket {ref}"), PARIS) == "Ticket {ref}"


def test_naive_datetime_is_refused(catalogs: Catalogs) -> None:
    with pytest.raises(ValueError, match="naive"):
        catalogs.get("fr").format_datetime_long(datetime(2026, 12, 29, 18, 0), PARIS)  # noqa: DTZ001


# -- registry --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("fr", "fr"),
        ("FR", "fr"),
        ("fr-FR", "fr"),
        ("fr_CA.UTF-8", "fr"),
        ("en_GB", "en"),
        (" en ", "en"),
        ("de", None),
        ("", None),
        (None, None),
    ],
)
def test_normalize_locale(raw: str | None, expected: str | None) -> None:
    assert normalize_locale(raw) == expected


def test_translators_are_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    original = Translator.from_po.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Translator], locale: str, path: Path) -> Translator:
        built.append(locale)
        return original(cls, locale, path)

    monkeypatch.setattr(Translator, "from_po", classmethod(counting))
    registry = Catalogs.load()
    assert sorted(built) == sorted(SUPPORTED_LOCALES)
    french = registry.get("fr")
    for spelling in ("fr", "FR", "fr-FR", "de", None, "xx_YY"):
        assert registry.get(spelling) is french
    assert registry.get("en_GB") is registry.get("en")
    for _ in range(100):
        registry.get("en").render(Msg("{n} hour", plural="{n} hours", n=2), PARIS)
    assert sorted(built) == sorted(SUPPORTED_LOCALES)


def test_default_locale_is_configurable() -> None:
    registry = Catalogs.load(default="en-US")
    assert registry.get("de").locale == "en"
    with pytest.raises(ValueError):
        Catalogs.load(default="de")
