"""The demo's bot.toml is valid TOML whatever its data directory is called."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.config import parse_config
from bot.demo import DemoOptions, Login, render_config, run_demo, toml_string

ODD_NAMES = [
    "plain",
    "with space",
    'quote"d',
    "back\\slash",
    "trailing\\",
    "tab\there",
    "new\nline",
    "carriage\rreturn",
    "escape\x1bchar",
    "del\x7fchar",
    "bell\x07",
    "😀 emoji outside the BMP",
    "𝕦𝕟𝕚𝕔𝕠𝕕𝕖",
    "accentué",
    "'''triple'''",
    '"""triple"""',
    "hash # not a comment",
    "dollar $HOME",
    "\\u00e9 not an escape",
]


@pytest.mark.parametrize("text", ODD_NAMES)
def test_toml_string_round_trips(text: str) -> None:
    assert tomllib.loads(f"key = {toml_string(text)}")["key"] == text


# Every Unicode scalar value: surrogates are not text (see below).
@given(st.text(st.characters(exclude_categories=["Cs"])))
def test_toml_string_round_trips_any_text(text: str) -> None:
    assert tomllib.loads(f"key = {toml_string(text)}")["key"] == text


def test_a_lone_surrogate_cannot_be_written() -> None:
    # Python decodes a file name's non-UTF-8 bytes to lone surrogates; TOML has no way to say it.
    with pytest.raises(ValueError):
        toml_string("bad\udcff")


def test_demo_refuses_a_data_dir_that_is_not_utf8(capsys: pytest.CaptureFixture[str]) -> None:
    options = DemoOptions(data_dir="/tmp/bad\udcff", port=0, chat=False, reset=False)
    assert run_demo(options) == 1
    assert "not UTF-8" in capsys.readouterr().err


@pytest.mark.parametrize("name", ODD_NAMES)
def test_demo_config_is_valid_for_any_data_dir(tmp_path: Path, name: str) -> None:
    data_dir = tmp_path / name
    text = render_config(
        data_dir,
        homeserver="http://127.0.0.1:8008",
        bot=Login("@support:localhost", "bot password"),
        staff=Login("@staff:localhost", "staff password"),
        staff_room="!room:localhost",
        web_port=8080,
        web_secret="s" * 32,
        pickle_key="p" * 32,
    )
    config = parse_config(tomllib.loads(text), {})
    assert config.matrix.store_path == str(data_dir / "store")
    assert config.database.url == "sqlite://" + str(data_dir / "bot.sqlite3")
