"""Every handler module's router, included explicitly (importing a module registers nothing
anywhere else). `build_router()` is called once by the composition root and by the tests."""

from __future__ import annotations

import importlib

from bot.app import Sweeper
from bot.dispatch import Router

# Order matters for plain text: the first modules see it first.
MODULES = ("commands", "intake", "staff", "booking", "interventions", "privacy")


def _modules() -> list:
    found = []
    for name in MODULES:
        try:
            found.append(importlib.import_module(f"handlers.{name}"))
        except ModuleNotFoundError as error:
            if error.name != f"handlers.{name}":
                raise
    return found


def build_router() -> Router:
    root = Router("root")
    for module in _modules():
        root.include(module.router)
    from handlers import commands

    commands.HELP_ROUTER = root
    return root


def sweepers() -> list[Sweeper]:
    found: list[Sweeper] = []
    for module in _modules():
        found.extend(getattr(module, "SWEEPERS", ()))
    return found
