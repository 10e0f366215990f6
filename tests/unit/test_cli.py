"""The `support-bot` command line: parsing, exit codes, and what it prints."""

from __future__ import annotations

import json
import logging
import tomllib
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest

from bot import version as version_module
from bot.cli import QUIET_LOGGERS, main

SUBCOMMANDS = ("run", "demo", "check-config", "migrate", "tickets", "report", "client")

BAD_CONFIG = """\
[matrix]
homeserver = "ftp://matrix.sondages.pro"
user_id = "support"
password = "a real password"
staff_room = "#support-staff:sondages.pro"

[web]
secret = "short"
"""


def valid_config(tmp_path: Path) -> str:
    return f"""\
[matrix]
homeserver = "https://matrix.sondages.pro"
user_id = "@support:sondages.pro"
password = "a real password"
staff_room = "#support-staff:sondages.pro"

[database]
url = "sqlite://{tmp_path}/bot.sqlite3"

[web]
secret = "0123456789abcdef0123"

[video.jitsi]
base_url = "https://meet.sondages.pro"
"""


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """`main` configures logging for the process; give the next tests theirs back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    for name, old in quiet.items():
        logging.getLogger(name).setLevel(old)


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(BAD_CONFIG)
    return path


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert f"\n    {name} " in out, name
    assert "--config" in out


@pytest.mark.parametrize(
    ("argv", "listed"),
    [
        (["tickets", "--help"], ("list", "show", "export")),
        (["client", "--help"], ("export", "erase")),
        (["report", "--help"], ("--month", "--format")),
        (["demo", "--help"], ("--data-dir", "--port", "--no-chat", "--reset", "--imap", "--smtp")),
    ],
)
def test_subcommand_help(
    argv: list[str], listed: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for word in listed:
        assert word in out


def test_check_config_reports_every_bad_key(
    bad_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", str(bad_config)]) == 1
    out = capsys.readouterr().out
    for key in ("matrix.homeserver", "matrix.user_id", "web.secret"):
        assert f"{key}: " in out


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--config", "{path}", "check-config"], id="before"),
        pytest.param(["check-config", "--config", "{path}"], id="after"),
        pytest.param(["--config", "elsewhere.toml", "check-config", "{path}"], id="path-wins"),
    ],
)
def test_config_option_before_or_after_the_subcommand(
    argv: list[str], bad_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([arg.format(path=bad_config) for arg in argv]) == 1
    assert "matrix.homeserver: " in capsys.readouterr().out


def test_run_is_the_default_and_reports_config_errors(
    bad_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(bad_config)]) == 1
    err = capsys.readouterr().err
    assert "matrix.homeserver: " in err
    assert "web.secret: " in err


def test_missing_config_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.toml"
    assert main(["run", "--config", str(missing)]) == 1
    assert f"{missing}: file not found" in capsys.readouterr().err


def test_migrate_applies_then_is_up_to_date(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bot.toml"
    config.write_text(valid_config(tmp_path))

    assert main(["migrate", "--config", str(config)]) == 0
    first = capsys.readouterr().out
    assert first.startswith("applied ")
    assert (tmp_path / "bot.sqlite3").exists()

    assert main(["--config", str(config), "migrate"]) == 0
    assert capsys.readouterr().out.strip() == "database up to date"


@pytest.mark.parametrize("month", ["2026-13", "2026-00", "2026-3", "March", "2026-03-01"])
def test_report_refuses_a_bad_month(month: str, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("bot.cli_tickets", reason="bot/cli_tickets.py is not written yet")
    # Refused while parsing the arguments: no config is read, no database opened.
    with pytest.raises(SystemExit) as exit_:
        main(["report", "--month", month])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"invalid month {month!r}" in err
    assert "YYYY-MM" in err


def test_report_of_an_empty_month_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("bot.cli_tickets", reason="bot/cli_tickets.py is not written yet")
    config = tmp_path / "bot.toml"
    config.write_text(valid_config(tmp_path))
    assert main(["--config", str(config), "migrate"]) == 0
    capsys.readouterr()

    assert main(["--config", str(config), "report", "--month", "2026-03", "--format", "json"]) == 0
    json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("group", ["tickets", "client"])
def test_group_without_subcommand_says_what_to_type(
    group: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([group]) == 2
    assert f"see support-bot {group} --help" in capsys.readouterr().err


def test_unknown_log_level_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["check-config", "--log-level", "chatty"])
    assert exit_.value.code == 2
    assert "--log-level" in capsys.readouterr().err


# -- --version --------------------------------------------------------------------------------

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def pyproject_version() -> str:
    with PYPROJECT.open("rb") as file:
        return tomllib.load(file)["project"]["version"]


@pytest.fixture
def fresh_version() -> Iterator[None]:
    """`version()` is cached for the process; these tests change where it looks."""
    version_module.version.cache_clear()
    yield
    version_module.version.cache_clear()


def test_version_prints_the_installed_version_and_exits_0(
    fresh_version: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    # The installed metadata is pyproject's: scripts/test reinstalls when pyproject changes.
    assert installed_version("support-bot") == pyproject_version()
    assert capsys.readouterr().out == f"support-bot {pyproject_version()}\n"


def test_version_wins_over_the_other_options(
    fresh_version: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--config", "/nonexistent/bot.toml", "--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("support-bot ")


def test_version_falls_back_to_pyproject_when_not_installed(
    fresh_version: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_installed(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.setattr(version_module, "installed_version", not_installed)
    assert version_module.version() == pyproject_version()


def test_version_is_unknown_without_metadata_or_pyproject(
    fresh_version: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def not_installed(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.setattr(version_module, "installed_version", not_installed)
    monkeypatch.setattr(version_module, "PYPROJECT", tmp_path / "pyproject.toml")
    assert version_module.version() == "unknown"
