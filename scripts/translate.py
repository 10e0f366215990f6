"""Fill French translations from a JSON file, or list what is left to translate.

    python scripts/translate.py todo [FILE]    # untranslated/fuzzy fr entries → JSON skeleton
    python scripts/translate.py apply FILE     # merge {msgid: msgstr | [singular, plural]}

The JSON keys are English msgids (for plurals, the singular msgid); the values are the
French text (a list of forms for plurals). Applying clears the fuzzy flag of the entries it
fills. Run `python scripts/i18n.py check` afterwards.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from i18n import read_catalog, write_catalog  # noqa: E402

from bot.i18n import po_path  # noqa: E402


def _key(message) -> str:
    return message.id[0] if isinstance(message.id, tuple) else message.id


def todo(out: str | None) -> int:
    catalog = read_catalog(po_path("fr"), "fr")
    missing = {}
    for message in catalog:
        if not message.id:
            continue
        forms = message.string if isinstance(message.string, tuple | list) else (message.string,)
        if message.fuzzy or not all(forms):
            missing[_key(message)] = ["", ""] if isinstance(message.id, tuple) else ""
    text = json.dumps(missing, ensure_ascii=False, indent=1)
    if out:
        Path(out).write_text(text, encoding="utf-8")
    else:
        print(text)
    return 0


def apply(path: str) -> int:
    mapping = json.loads(Path(path).read_text(encoding="utf-8"))
    catalog = read_catalog(po_path("fr"), "fr")
    filled = 0
    for message in catalog:
        if not message.id:
            continue
        value = mapping.get(_key(message))
        if not value:
            continue
        if isinstance(message.id, tuple):
            forms = value if isinstance(value, list) else [value, value]
            message.string = tuple(forms[: catalog.num_plurals] + forms[-1:] * 0)
        else:
            message.string = value if isinstance(value, str) else value[0]
        message.flags.discard("fuzzy")
        filled += 1
    write_catalog(po_path("fr"), catalog)
    print(f"filled {filled} entr{'y' if filled == 1 else 'ies'}")
    return 0


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "todo"
    if command == "todo":
        raise SystemExit(todo(sys.argv[2] if len(sys.argv) > 2 else None))
    if command == "apply":
        raise SystemExit(apply(sys.argv[2]))
    raise SystemExit(__doc__)
