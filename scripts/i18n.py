"""Manage the gettext catalogs in `locales/` with Babel.

Run from anywhere, in the project's virtualenv::

    python scripts/i18n.py extract   # bot/, handlers/, templates  ->  locales/messages.pot
    python scripts/i18n.py update    # messages.pot  ->  locales/{fr,en}/LC_MESSAGES/messages.po
    python scripts/i18n.py compile   # messages.po  ->  messages.mo (optional, see below)
    python scripts/i18n.py check     # exit 1 if the .pot is stale or a catalog is incomplete

After adding or changing a message: `extract`, `update`, translate the new entries of
`locales/fr/LC_MESSAGES/messages.po` (review and remove the `#, fuzzy` flags Babel puts on
guesses), then `check` (the unit tests in `tests/unit/test_i18n.py` check the same things).
English is the source language: msgstr may stay empty in `en`, the msgid is used.

`update` creates a missing `.po` (like `pybabel init`), keeps translations, marks changed
messages fuzzy in `fr` and keeps obsolete ones at the end as `#~` for reuse.
`extract` and `update` leave a file untouched when only its dates would change.

The bot does not need `compile`: it compiles each `.po` in memory at startup, so a fresh
clone runs as is. The `.mo` files are for packaging or other gettext tools.

What is extracted (string literals only; never an f-string, translate first and `.format()`
after): the first argument of `_()`, `N_()` and `gettext()`, the first two of `ngettext()` and
`NP_()` (a singular/plural pair kept in a constant, see `bot.i18n.NP_`), and
in `Msg(...)` the `text` (first argument) and `plural` (third argument or keyword), bare or
wrapped in `N_()`: a `Msg` with `plural=` becomes one plural entry, which the `N_` markers
alone could not express. A comment starting with `Translators:` right above a call goes to the
translators.
"""

from __future__ import annotations

import argparse
import ast
import io
import logging
import sys
import tokenize
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from babel import Locale
from babel.messages.catalog import Catalog, Message
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po, write_po

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bot.i18n import (  # noqa: E402  (needs the repository root on sys.path)
    DOMAIN,
    SOURCE_LOCALE,
    SUPPORTED_LOCALES,
    compile_catalog,
    placeholders,
    po_path,
)

logger = logging.getLogger("i18n")

SOURCE_DIRS = ("bot", "handlers")
# The dashboard's Jinja2 templates: `_("…", name=value)` and `ngettext("…", "…", n)` in them are
# messages too (Jinja2's own Babel extractor reads them).
TEMPLATES = "web/templates/**.html"
LOCALES_DIR = ROOT / "locales"
POT_PATH = LOCALES_DIR / f"{DOMAIN}.pot"
PROJECT = "support-bot"
COMMENT_TAGS = ("Translators:",)
COPYRIGHT = "the support-bot authors"
POT_HEADER = """\
# Messages of support-bot, extracted from the code by `python scripts/i18n.py extract`.
# Do not edit: change the code and extract again.
#"""
PO_HEADER = """\
# {language} messages of support-bot: translate the msgstr here.
# Refresh with `python scripts/i18n.py update`, then verify with `python scripts/i18n.py check`.
#"""
WIDTH = 99

SINGULAR_MARKERS = frozenset({"_", "N_", "gettext"})
PLURAL_MARKERS = frozenset({"ngettext", "NP_"})
# Babel maps each extracted call to the argument positions that hold messages.
KEYWORDS: Mapping[str, Any] = {
    "_": None,
    "N_": None,
    "gettext": None,
    "ngettext": (1, 2),
    "NP_": (1, 2),
}
# Lines that change on every run without changing the catalog.
_VOLATILE_HEADERS = (b'"POT-Creation-Date:', b'"PO-Revision-Date:')


# -- extraction ------------------------------------------------------------------------------


def _callee(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def _argument(node: ast.Call, position: int, keyword: str) -> ast.expr | None:
    if len(node.args) > position:
        return node.args[position]
    return next((kw.value for kw in node.keywords if kw.arg == keyword), None)


class _Collector(ast.NodeVisitor):
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.found: list[tuple[int, str, str | tuple[str, str]]] = []
        self._consumed: set[int] = set()

    def _literal(self, node: ast.expr | None) -> str | None:
        """A string literal, bare or inside a marker call (which is then not extracted twice)."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if (
            isinstance(node, ast.Call)
            and _callee(node) in SINGULAR_MARKERS
            and len(node.args) == 1
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            self._consumed.add(id(node))
            return node.args[0].value
        return None

    def _refuse_fstring(self, node: ast.Call, name: str) -> None:
        if any(isinstance(arg, ast.JoinedStr) for arg in node.args):
            logger.warning(
                "%s:%d: f-string in %s(): translate first, then .format()",
                self.filename,
                node.lineno,
                name,
            )

    def visit_Call(self, node: ast.Call) -> None:
        if id(node) not in self._consumed:
            name = _callee(node)
            if name in SINGULAR_MARKERS:
                self._refuse_fstring(node, name)
                text = self._literal(node.args[0] if node.args else None)
                if text is not None:
                    self.found.append((node.lineno, name, text))
            elif name in PLURAL_MARKERS:
                self._refuse_fstring(node, name)
                singular = self._literal(_argument(node, 0, "msgid1"))
                plural = self._literal(_argument(node, 1, "msgid2"))
                if singular is not None and plural is not None:
                    self.found.append((node.lineno, name, (singular, plural)))
            elif name == "Msg":
                text = self._literal(_argument(node, 0, "text"))
                plural = self._literal(_argument(node, 2, "plural"))
                if text is not None and plural is not None:
                    self.found.append((node.lineno, "ngettext", (text, plural)))
                elif text is not None:
                    self.found.append((node.lineno, "N_", text))
        self.generic_visit(node)


def _comments_above(source: str) -> dict[int, str]:
    """Comment-only lines, by line number."""
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT and token.line.strip().startswith("#"):
            comments[token.start[0]] = token.string.lstrip("#").strip()
    return comments


def extract_messages(
    fileobj: IO[bytes],
    keywords: Collection[str],
    comment_tags: Collection[str],
    options: Mapping[str, Any],
) -> Iterator[tuple[int, str, str | tuple[str, str], list[str]]]:
    """Babel extraction method for our Python sources (see the module docstring)."""
    source = fileobj.read().decode(options.get("encoding", "utf-8"))
    filename = getattr(fileobj, "name", "<source>")
    collector = _Collector(filename)
    collector.visit(ast.parse(source, filename))
    comments = _comments_above(source)
    for lineno, funcname, message in collector.found:
        if funcname not in keywords:
            continue
        block: list[str] = []
        line = lineno - 1
        while line in comments:
            block.insert(0, comments[line])
            line -= 1
        start = next(
            (i for i, text in enumerate(block) if text.startswith(tuple(comment_tags))), None
        )
        yield lineno, funcname, message, block[start:] if start is not None else []


def extract_catalog(root: Path = ROOT) -> Catalog:
    """The template catalog of every message marked in `bot/` and `handlers/`."""
    catalog = Catalog(
        project=PROJECT,
        domain=DOMAIN,
        header_comment=POT_HEADER,
        copyright_holder=COPYRIGHT,
        msgid_bugs_address="",
        charset="utf-8",
        fuzzy=False,
    )
    found = []
    for directory in SOURCE_DIRS:
        results = extract_from_dir(
            root / directory,
            method_map=[("**.py", extract_messages), (TEMPLATES, "jinja2.ext:babel_extract")],
            keywords=KEYWORDS,
            comment_tags=COMMENT_TAGS,
            strip_comment_tags=True,
        )
        for filename, lineno, message, comments, context in results:
            found.append(
                (Path(directory, filename).as_posix(), lineno, message, comments, context)
            )
    # Directory walks are in file-system order: sort so every machine writes the same file.
    found.sort(key=lambda item: (item[0], item[1]))
    for path, lineno, message, comments, context in found:
        texts = message if isinstance(message, tuple) else (message,)
        brace = any(placeholders(text) for text in texts)
        catalog.add(
            message,
            None,
            [(path, lineno)],
            auto_comments=comments,
            context=context,
            flags=("python-brace-format",) if brace else (),
        )
    return catalog


# -- files -----------------------------------------------------------------------------------


def _stable(content: bytes) -> list[bytes]:
    return [line for line in content.splitlines() if not line.startswith(_VOLATILE_HEADERS)]


def write_catalog(path: Path, catalog: Catalog, *, ignore_obsolete: bool = False) -> bool:
    """Write `catalog` as a .po/.pot unless only its dates would change; True if written."""
    buffer = io.BytesIO()
    write_po(
        buffer,
        catalog,
        width=WIDTH,
        include_lineno=False,  # line numbers churn on every edit by anyone
        ignore_obsolete=ignore_obsolete,
        include_previous=True,
    )
    content = buffer.getvalue()
    if path.exists() and _stable(path.read_bytes()) == _stable(content):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return True


def read_catalog(path: Path, locale: str | None = None) -> Catalog:
    with path.open("rb") as fileobj:
        return read_po(fileobj, locale=locale, domain=DOMAIN)


def _ids(catalog: Catalog) -> set[str | tuple[str, ...]]:
    return {message.id for message in catalog if message.id}


# -- checks ----------------------------------------------------------------------------------


def _forms(message: Message) -> tuple[str, ...]:
    return (
        tuple(message.string) if isinstance(message.string, (tuple, list)) else (message.string,)
    )


def message_problems(message: Message, num_plurals: int, *, translated: bool) -> list[str]:
    """What is wrong with one catalog entry; `translated` requires a full translation.

    Every form of a plural translation must use the placeholders of the singular and plural
    msgids together: in French the first form also covers 0, so it needs `{n}` even when the
    English singular ("One ticket") does not.
    """
    problems: list[str] = []
    label = message.id if isinstance(message.id, str) else message.id[0]
    forms = _forms(message)
    if translated:
        if message.fuzzy:
            problems.append(f"{label!r}: fuzzy")
        if not all(forms):
            problems.append(f"{label!r}: not translated")
    if message.pluralizable and len(forms) != num_plurals:
        problems.append(f"{label!r}: {len(forms)} plural forms, header says {num_plurals}")
    if message.pluralizable:
        expected = placeholders(message.id[0]) | placeholders(message.id[1])
    else:
        expected = placeholders(message.id)
    for form in forms:
        if form and placeholders(form) != expected:
            problems.append(f"{label!r}: placeholders {sorted(placeholders(form))} in {form!r}")
    return problems


def catalog_problems(template: Catalog, catalog: Catalog, locale: str) -> list[str]:
    """Everything that would make `locale` render a message wrongly or in English."""
    problems: list[str] = []
    expected_plurals = Catalog(locale=locale).plural_forms
    if catalog.plural_forms != expected_plurals:
        problems.append(
            f"header Plural-Forms {catalog.plural_forms!r}, Babel: {expected_plurals!r}"
        )
    for message in template:
        if not message.id:
            continue
        entry = catalog.get(message.id)
        if entry is None or entry.id != message.id:
            problems.append(f"{message.id!r}: missing, run `update`")
            continue
        problems.extend(
            message_problems(entry, catalog.num_plurals, translated=locale != SOURCE_LOCALE)
        )
    return problems


# -- commands --------------------------------------------------------------------------------


def cmd_extract() -> int:
    catalog = extract_catalog()
    written = write_catalog(POT_PATH, catalog)
    count = len(_ids(catalog))
    print(f"{POT_PATH.relative_to(ROOT)}: {count} messages{'' if written else ', unchanged'}")
    return 0


def cmd_update() -> int:
    template = read_catalog(POT_PATH)
    for locale in SUPPORTED_LOCALES:
        path = po_path(locale, LOCALES_DIR)
        if path.exists():
            catalog = read_catalog(path, locale)
        else:
            catalog = Catalog(
                locale=locale,
                domain=DOMAIN,
                header_comment=PO_HEADER.format(language=Locale.parse(locale).english_name),
                project=PROJECT,
                copyright_holder=COPYRIGHT,
                msgid_bugs_address="",
                language_team=Locale.parse(locale).english_name,
                charset="utf-8",
                fuzzy=False,
            )
        # Fuzzy guesses help translators; English msgstr are empty, guesses would be noise.
        catalog.update(template, no_fuzzy_matching=locale == SOURCE_LOCALE)
        written = write_catalog(path, catalog, ignore_obsolete=locale == SOURCE_LOCALE)
        missing = sum(1 for m in catalog if m.id and (m.fuzzy or not all(_forms(m))))
        todo = "" if locale == SOURCE_LOCALE else f", {missing} to translate or review"
        print(f"{path.relative_to(ROOT)}{'' if written else ' unchanged'}{todo}")
    return 0


def cmd_compile() -> int:
    status = 0
    for locale in SUPPORTED_LOCALES:
        path = po_path(locale, LOCALES_DIR)
        catalog = read_catalog(path, locale)
        for message, errors in catalog.check():
            for error in errors:
                print(f"{path.relative_to(ROOT)}: {message.id!r}: {error}", file=sys.stderr)
                status = 1
        path.with_suffix(".mo").write_bytes(compile_catalog(catalog))
        print(f"{path.with_suffix('.mo').relative_to(ROOT)}")
    return status


def cmd_check() -> int:
    problems: list[str] = []
    template = read_catalog(POT_PATH)
    current = _ids(extract_catalog())
    committed = _ids(template)
    for msgid in sorted(current - committed, key=str):
        problems.append(f"{POT_PATH.name}: {msgid!r} is in the code, run `extract`")
    for msgid in sorted(committed - current, key=str):
        problems.append(f"{POT_PATH.name}: {msgid!r} is no longer in the code, run `extract`")
    for locale in SUPPORTED_LOCALES:
        path = po_path(locale, LOCALES_DIR)
        if not path.exists():
            problems.append(f"{path.relative_to(ROOT)}: missing, run `update`")
            continue
        catalog = read_catalog(path, locale)
        problems.extend(
            f"{path.relative_to(ROOT)}: {p}" for p in catalog_problems(template, catalog, locale)
        )
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{len(problems)} problem(s)")
    return 1 if problems else 0


COMMANDS = {
    "extract": cmd_extract,
    "update": cmd_update,
    "compile": cmd_compile,
    "check": cmd_check,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("command", choices=COMMANDS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return COMMANDS[args.command]()


if __name__ == "__main__":
    sys.exit(main())
