"""The version of support-bot: the installed distribution's, else the checkout's pyproject.toml.

One place for `support-bot --version` and the first log line of `run`, so that what an operator
reads in a log and what the command prints can never disagree.
"""

from __future__ import annotations

import tomllib
from functools import cache
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from pathlib import Path

DISTRIBUTION = "support-bot"
# Only meaningful in a checkout: installed, nothing is beside the `bot` package.
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
UNKNOWN = "unknown"


@cache
def version() -> str:
    """`0.1.0`; `unknown` when neither the metadata nor a pyproject.toml says it."""
    try:
        return installed_version(DISTRIBUTION)
    except PackageNotFoundError:
        pass
    # Run from a checkout that was never installed (`PYTHONPATH=. python -m bot`).
    try:
        with PYPROJECT.open("rb") as file:
            return str(tomllib.load(file)["project"]["version"])
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError):
        return UNKNOWN
